"""Every configuration key is documented, and the shipped example configs load.

The key list comes from the pydantic models themselves (walked recursively), so a new field without
documentation fails here, naming the key. Documented means: it appears in the shipped config.toml under its
own section, as `key =` or commented out as `# key =`, or in README.md's configuration table as `section.key`.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from indexer.config import Config, load_config
from indexer.daemon import make_redactor
from indexer.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "scripts" / "configs"
EXPECTED_EXAMPLES = ("polygon-amoy.toml", "ethereum-mainnet.toml", "solana-devnet.toml")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")
_SECTION = re.compile(r"^\s*\[\[?\s*([A-Za-z_][A-Za-z0-9_]*)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*#?\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


def _nested_model(annotation) -> tuple[type[BaseModel] | None, bool]:
    """(the model inside `annotation`, whether it is a list of them): Model, Model | None, list[Model]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (list, tuple) and args:
        model, _ = _nested_model(args[0])
        return model, model is not None
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            model, many = _nested_model(arg)
            if model is not None:
                return model, many
    return None, False


def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf field: database.path, chain.ws_url, tokens[].address, ..."""
    keys = []
    for name, info in model.model_fields.items():
        nested, many = _nested_model(info.annotation)
        if nested is None:
            keys.append(prefix + name)
        else:
            keys.extend(config_keys(nested, f"{prefix}{name}{'[]' if many else ''}."))
    return keys


def toml_documented(path: Path) -> set[str]:
    """section.key (tokens[].key for [[tokens]]) of every `key =` or `# key =` line, by section."""
    found, section = set(), None
    for line in path.read_text().splitlines():
        m = _SECTION.match(line)
        if m and not line.lstrip().startswith("#"):
            name = m.group(1)
            section = f"{name}[]" if line.strip().startswith("[[") else name
            continue
        m = _KEY.match(line)
        if m and section is not None:
            found.add(f"{section}.{m.group(1)}")
    return found


def readme_documented() -> set[str]:
    """First-column keys of the table in README.md's "## Configuration" section."""
    text = (ROOT / "README.md").read_text()
    start = text.find("\n## Configuration")
    assert start >= 0, "README.md has no '## Configuration' section"
    end = text.find("\n## ", start + 1)
    section = text[start:end if end >= 0 else len(text)]
    return set(re.findall(r"^\|\s*`([A-Za-z_][A-Za-z0-9_\[\]]*\.[A-Za-z0-9_.]+)`\s*\|", section, re.M))


def test_the_model_walk_finds_every_section():
    keys = config_keys()
    for key in ("database.path", "chain.ws_url", "chain.commitment", "tokens[].address", "tokens[].profile",
                "metrics.ready_max_lag_blocks", "logging.format"):
        assert key in keys
    assert {k.split(".")[0] for k in keys} == {"database", "chain", "tokens[]", "metrics", "logging"}
    assert len(keys) >= 25


def test_every_config_key_is_documented():
    in_toml = toml_documented(ROOT / "config.toml")
    in_readme = readme_documented()
    undocumented = [k for k in config_keys() if k not in in_toml and k not in in_readme]
    assert not undocumented, (f"undocumented config key(s): {', '.join(undocumented)}: add them to config.toml "
                              "(`key = ...` or `# key = ...` in their section) or to README.md's configuration table")


def test_documentation_names_no_key_that_does_not_exist():
    keys = set(config_keys())
    stale_toml = sorted(toml_documented(ROOT / "config.toml") - keys)
    stale_readme = sorted(readme_documented() - keys)
    assert not stale_toml, f"config.toml documents unknown key(s): {stale_toml}"
    assert not stale_readme, f"README.md documents unknown key(s): {stale_readme}"


def test_the_shipped_config_loads(monkeypatch):
    for var in ("INDEXER_DB", "INDEXER_WS_URL", "INDEXER_HTTP_URL", "INDEXER_METRICS_LISTEN"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(ROOT / "config.toml")
    assert cfg.chain.kind == "evm" and cfg.tokens


# --------------------------------------------------------------------------- example configs


def required_vars(path: Path) -> list[str]:
    """${VAR} references without a default in the config's string values (comments don't count)."""
    found: list[str] = []

    def walk(value) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            found.extend(m.group(1) for m in _VAR.finditer(value) if m.group(2) is None)

    walk(tomllib.loads(path.read_text()))
    return list(dict.fromkeys(found))


def example_configs() -> list[Path]:
    return sorted(CONFIGS.glob("*.toml"))


def test_the_example_configs_are_shipped():
    names = {p.name for p in example_configs()}
    missing = [n for n in EXPECTED_EXAMPLES if n not in names]
    assert not missing, f"scripts/configs/ lacks {missing}"


def _clean_env(monkeypatch) -> None:
    for var in ("INDEXER_DB", "INDEXER_METRICS_LISTEN", "ALCHEMY_API_KEY", "INFURA_API_KEY"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("path", example_configs(), ids=lambda p: p.name)
def test_example_config_loads_with_its_variables_and_names_each_missing_one(path, monkeypatch):
    _clean_env(monkeypatch)
    needed = required_vars(path)
    values = {var: f"TestKey{i}x{var.lower()}9f8e7d6c5b4a" for i, var in enumerate(needed)}
    for var, value in values.items():
        monkeypatch.setenv(var, value)
    cfg = load_config(path)
    assert cfg.tokens
    redactor = make_redactor(cfg)
    for value in values.values():
        assert value in cfg.chain.ws_url + (cfg.chain.http_url or "")
        assert value not in redactor.scrub(f"{cfg.chain.ws_url} {cfg.chain.http_url}")
    for var in needed:
        monkeypatch.delenv(var)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert f"${{{var}}}" in str(info.value) and info.value.exit_code == 2
        monkeypatch.setenv(var, values[var])


@pytest.mark.parametrize("name, chain_id, host, keys", [
    ("polygon-amoy.toml", 80002, "polygon-amoy.g.alchemy.com/v2/", ["ALCHEMY_API_KEY"]),
    ("ethereum-mainnet.toml", 1, "eth-mainnet.g.alchemy.com/v2/", ["ALCHEMY_API_KEY"]),
])
def test_evm_examples_point_at_the_right_network(name, chain_id, host, keys, monkeypatch):
    _clean_env(monkeypatch)
    path = CONFIGS / name
    assert required_vars(path) == keys
    monkeypatch.setenv(keys[0], "k3yValue0123456789")
    cfg = load_config(path)
    assert cfg.chain.kind == "evm" and cfg.chain.chain_id == chain_id
    assert cfg.chain.ws_url == f"wss://{host}k3yValue0123456789"
    assert cfg.chain.http_url == f"https://{host}k3yValue0123456789"
    # realistic, not the dev chain's zeros: history starts at the token's deployment, reorgs are expected
    assert cfg.chain.start_block > 1_000_000
    assert 1 <= cfg.chain.confirmations < cfg.chain.max_reorg_depth
    assert cfg.chain.max_reorg_depth >= 32
    assert cfg.metrics.ready_max_lag_blocks >= cfg.chain.confirmations
    text = path.read_text()
    # the token address is a placeholder and says so; so is the start block that goes with it
    address_line = text.index(f'address = "{cfg.tokens[0].address}"')
    assert "PLACEHOLDER" in text[max(0, address_line - 300):address_line]
    assert re.search(r"^start_block = \d+\s+# PLACEHOLDER", text, re.M)
    # every numeric chain setting is explained in a comment on its line
    for key in ("start_block", "confirmations", "max_reorg_depth"):
        assert re.search(rf"^{key} = \d+\s+#\s*\S", text, re.M), key
    assert "INFURA_API_KEY" in text or name == "polygon-amoy.toml"
