"""config.toml validation: unknown keys named by path, ${VAR} interpolation, field checks, the CLI's exit code."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from indexer.config import load_config, parse_config
from indexer.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "0x71C95911E9a5D330f4D621842EC243EE1343292e"
SOLANA_MINT = "XsbEhLAtcf6HdfpFZ5xEMdqW8nfAvcsP5bdudRLJzJp"


def base(**over) -> dict:
    data = {"chain": {"ws_url": "ws://127.0.0.1:8545"}, "tokens": [{"address": TOKEN}]}
    for key, value in over.items():
        data[key] = value
    return data


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.exit_code == 2
    return str(info.value)


def test_minimal_config_defaults():
    cfg = parse_config(base())
    assert cfg.chain.kind == "evm" and cfg.chain.name == "devchain" and cfg.chain.http_url is None
    assert cfg.tokens[0].profiles == ("erc20",)
    assert cfg.token_addresses() == [TOKEN.lower()]
    assert cfg.metrics.host_port == ("127.0.0.1", 9108)
    assert cfg.secrets == ()


@pytest.mark.parametrize(("data", "path"), [
    (base(foo=1), "foo"),
    (base(chain={"ws_url": "ws://x:1", "foo": 1}), "chain.foo"),
    (base(tokens=[{"address": TOKEN, "bar": 2}]), "tokens[0].bar"),
    (base(tokens=[{"address": TOKEN}, {"address": "0x" + "11" * 20, "lable": "x"}]), "tokens[1].lable"),
    (base(database={"pth": "x.db"}), "database.pth"),
    (base(metrics={"listen": "127.0.0.1:1", "port": 3}), "metrics.port"),
    (base(logging={"levle": "INFO"}), "logging.levle"),
])
def test_unknown_keys_are_rejected_with_their_full_path(data, path):
    assert f"unknown key '{path}'" in error_of(data)


def test_missing_required_keys():
    assert "missing key 'chain'" in error_of({"tokens": [{"address": TOKEN}]})
    assert "missing key 'chain.ws_url'" in error_of({"chain": {}, "tokens": [{"address": TOKEN}]})
    assert "missing key 'tokens[0].address'" in error_of(base(tokens=[{"profile": "erc20"}]))
    assert "tokens" in error_of(base(tokens=[]))


def test_env_interpolation(monkeypatch):
    monkeypatch.setenv("IDX_TEST_KEY", "s3cretKey123")
    monkeypatch.delenv("IDX_TEST_UNSET", raising=False)
    cfg = parse_config(base(chain={"ws_url": "wss://eth.example.com/v2/${IDX_TEST_KEY}",
                                   "http_url": "${IDX_TEST_UNSET:-https://fallback.example.com}",
                                   "name": "${IDX_TEST_UNSET:-mainnet}"}))
    assert cfg.chain.ws_url == "wss://eth.example.com/v2/s3cretKey123"
    assert cfg.chain.http_url == "https://fallback.example.com"
    assert cfg.chain.name == "mainnet"
    assert cfg.secrets == ("s3cretKey123",)  # only values taken from the environment are secrets


def test_only_secret_looking_or_embedded_values_are_secrets(monkeypatch):
    monkeypatch.setenv("IDX_TEST_DB", "/var/lib/indexer/x.db")
    monkeypatch.setenv("IDX_TEST_WS", "ws://127.0.0.1:8545")
    monkeypatch.setenv("IDX_TEST_API_KEY", "abcd1234efgh5678")
    monkeypatch.setenv("IDX_TEST_PART", "k3yInAPath9")
    cfg = parse_config(base(database={"path": "${IDX_TEST_DB}"},
                            chain={"ws_url": "${IDX_TEST_WS}", "http_url": "https://h.example.com/${IDX_TEST_PART}"},
                            metrics={"listen": "127.0.0.1:9108"},
                            tokens=[{"address": TOKEN, "label": "${IDX_TEST_API_KEY}"}]))
    # whole values (a path, a local URL) stay readable; a KEY-named value and a piece of a URL are secrets
    assert set(cfg.secrets) == {"abcd1234efgh5678", "k3yInAPath9"}


def test_env_default_may_be_empty_and_empty_var_uses_default(monkeypatch):
    monkeypatch.setenv("IDX_TEST_EMPTY", "")
    cfg = parse_config(base(chain={"ws_url": "ws://127.0.0.1:8545", "http_url": "${IDX_TEST_EMPTY:-}"}))
    assert cfg.chain.http_url is None


def test_interpolated_text_is_never_parsed_as_toml(monkeypatch):
    monkeypatch.setenv("IDX_TEST_INJECT", 'x"\nfoo = 1')
    cfg = parse_config(base(tokens=[{"address": TOKEN, "label": "${IDX_TEST_INJECT}"}]))
    assert cfg.tokens[0].label == 'x"\nfoo = 1'


@pytest.mark.parametrize(("data", "key"), [
    (base(chain={"ws_url": "${IDX_TEST_MISSING}"}), "chain.ws_url"),
    (base(tokens=[{"address": TOKEN, "label": "a ${IDX_TEST_MISSING} b"}]), "tokens[0].label"),
    (base(database={"path": "${IDX_TEST_MISSING}/x.db"}), "database.path"),
])
def test_missing_variable_names_the_key(monkeypatch, data, key):
    monkeypatch.delenv("IDX_TEST_MISSING", raising=False)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    msg = str(info.value)
    assert f"config key {key}" in msg and "IDX_TEST_MISSING" in msg
    assert "IDX_TEST_MISSING:-" in info.value.hint


@pytest.mark.parametrize(("data", "needle"), [
    (base(chain={"ws_url": "http://127.0.0.1:8545"}), "chain.ws_url: must start with ws:// or wss://"),
    (base(chain={"ws_url": "127.0.0.1:8545"}), "chain.ws_url"),
    (base(chain={"ws_url": "ws://x:1", "http_url": "ftp://x"}), "chain.http_url: must start with http"),
    (base(tokens=[{"address": "0x1234"}]), "tokens[0].address"),
    (base(tokens=[{"address": "0x" + "g" * 40}]), "tokens[0].address"),
    (base(tokens=[{"address": TOKEN, "identity_registry": "nope"}]), "tokens[0].identity_registry"),
    (base(tokens=[{"address": TOKEN}, {"address": TOKEN.lower()}]), "tokens[1].address"),
    (base(tokens=[{"address": TOKEN, "profile": "erc1400"}]), "tokens[0].profile: unknown profile 'erc1400'"),
    (base(tokens=[{"address": TOKEN, "profile": ["erc20", "bogus"]}]), "unknown profile 'bogus'"),
    (base(metrics={"listen": "9108"}), "metrics.listen: must be HOST:PORT"),
    (base(metrics={"listen": "127.0.0.1:99999"}), "metrics.listen"),
    (base(metrics={"listen": "127.0.0.1:http"}), "metrics.listen"),
    (base(chain={"ws_url": "ws://x:1", "name": "bad name!"}), "chain.name"),
    (base(chain={"ws_url": "ws://x:1", "commitment": "finalized"}), "commitment applies only"),
    (base(chain={"ws_url": "ws://x:1", "initial_getlogs_range": 10, "max_getlogs_range": 5}), "initial_getlogs_range"),
    (base(chain={"ws_url": "ws://x:1", "confirmations": -1}), "chain.confirmations"),
    (base(database={"synchronous": "off"}), "database.synchronous"),
    (base(logging={"level": "TRACE"}), "logging.level"),
])
def test_invalid_values_name_the_field(data, needle):
    assert needle in error_of(data)


def test_solana_chain_rules():
    sol = {"kind": "solana", "ws_url": "wss://api.mainnet-beta.solana.com",
           "http_url": "https://api.mainnet-beta.solana.com", "commitment": "confirmed"}
    cfg = parse_config(base(chain=sol, tokens=[{"address": SOLANA_MINT}]))
    no_http = {k: v for k, v in sol.items() if k != "http_url"}
    assert "http_url is required" in error_of(base(chain=no_http, tokens=[{"address": SOLANA_MINT}]))
    assert "confirmations does not apply" in error_of(base(chain={**sol, "confirmations": 2},
                                                          tokens=[{"address": SOLANA_MINT}]))
    assert cfg.token_addresses() == [SOLANA_MINT]  # base58 keeps its case
    no_commitment = {k: v for k, v in sol.items() if k != "commitment"}
    assert "commitment is required" in error_of(base(chain=no_commitment, tokens=[{"address": SOLANA_MINT}]))
    assert "tokens[0].address" in error_of(base(chain=sol, tokens=[{"address": TOKEN}]))


def test_ipv6_listen():
    cfg = parse_config(base(metrics={"listen": "[::1]:9108"}))
    assert cfg.metrics.host_port == ("::1", 9108)


def test_shipped_config_parses(monkeypatch):
    for var in ("INDEXER_DB", "INDEXER_WS_URL", "INDEXER_HTTP_URL", "INDEXER_METRICS_LISTEN"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(ROOT / "config.toml")
    assert cfg.chain.kind == "evm" and cfg.chain.chain_id == 31337
    assert cfg.chain.ws_url == "ws://127.0.0.1:8545" and cfg.chain.http_url == "http://127.0.0.1:8545"
    assert cfg.tokens[0].profiles == ("erc3643",)
    assert cfg.database.path == str(ROOT / "data" / "indexer.db")  # relative to the config file
    assert cfg.metrics.listen == "127.0.0.1:9108"
    # and every key it documents is a key the model knows (parse_config would have rejected it otherwise)
    raw = tomllib.loads((ROOT / "config.toml").read_text())
    assert set(raw) == {"database", "chain", "tokens", "metrics", "logging"}


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[chain\nws_url = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_absolute_database_path_is_kept(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(f'[database]\npath = "/var/lib/indexer/x.db"\n[chain]\nws_url = "ws://h:1"\n'
                        f'[[tokens]]\naddress = "{TOKEN}"\n')
    assert load_config(cfg_file).database.path == "/var/lib/indexer/x.db"


# ---- through the real CLI --------------------------------------------------------------------------

def run_cli(config: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("indexer")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "indexer"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("INDEXER_")}
    return subprocess.run(cmd + ["--config", str(config), "status", "--no-node"], capture_output=True, text=True,
                          timeout=60, cwd=config.parent, env=env)


@pytest.mark.parametrize(("body", "needle"), [
    (f'[chain]\nws_url = "ws://h:1"\nfoo = 1\n[[tokens]]\naddress = "{TOKEN}"\n', "chain.foo"),
    (f'[chain]\nws_url = "ws://h:1"\n[[tokens]]\naddress = "{TOKEN}"\nbar = 2\n', "tokens[0].bar"),
    (f'[chain]\nws_url = "${{IDX_TEST_CLI_MISSING}}"\n[[tokens]]\naddress = "{TOKEN}"\n', "chain.ws_url"),
    ('[chain]\nws_url = "ws://h:1"\n[[tokens]]\naddress = "0x12"\n', "tokens[0].address"),
])
def test_cli_bad_config_exits_2_naming_the_key(tmp_path, body, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(body)
    proc = run_cli(cfg)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_cli_good_config_status_without_node(tmp_path):
    cfg = tmp_path / "good.toml"
    cfg.write_text(f'[database]\npath = "idx.db"\n[chain]\nws_url = "ws://127.0.0.1:1"\n'
                   f'[[tokens]]\naddress = "{TOKEN}"\n[logging]\nformat = "text"\n')
    proc = run_cli(cfg)
    assert proc.returncode == 0, proc.stderr
    assert "devchain" in proc.stdout
