"""config.toml -> validated, immutable settings.

Unknown keys are rejected with their full path; `${VAR}` and `${VAR:-default}` are interpolated in
string values (after TOML parsing, so a variable can never inject TOML), and every interpolated value is
remembered as a secret so the redactor can hide it everywhere.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from indexer.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASS|AUTH|CRED", re.IGNORECASE)
_EVM_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_BASE58 = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{32,44}$")

EVM_PROFILES = ("erc20", "erc3643", "erc8056", "backed", "chainequity", "security")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(_Strict):
    path: str = "data/indexer.db"
    # WAL + NORMAL keeps every committed block across kill -9; FULL also across power loss.
    synchronous: Literal["normal", "full"] = "normal"
    # blocks that may share one SQLite transaction during backfill (a block is never split)
    batch_blocks: int = Field(default=500, ge=1, le=100_000)


class ChainConfig(_Strict):
    kind: Literal["evm", "solana"] = "evm"
    name: str = Field(default="devchain", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    chain_id: int | None = Field(default=None, ge=0)
    ws_url: str
    http_url: str | None = None
    start_block: int = Field(default=0, ge=0)
    confirmations: int = Field(default=0, ge=0, le=10_000)
    max_reorg_depth: int = Field(default=64, ge=1, le=100_000)
    stall_timeout: float = Field(default=30.0, gt=0)
    request_timeout: float = Field(default=30.0, gt=0)
    # eth_getLogs range control (blocks); the range adapts between 1 and max_getlogs_range
    initial_getlogs_range: int = Field(default=100, ge=1)
    max_getlogs_range: int = Field(default=100_000, ge=1)
    fetch_concurrency: int = Field(default=2, ge=1, le=32)
    verify_interval: float = Field(default=0.0, ge=0, description="seconds between self-audits; 0 = off")
    # Solana only
    commitment: Literal["confirmed", "finalized"] | None = None
    max_supported_transaction_version: int = Field(default=0, ge=0)

    @field_validator("ws_url")
    @classmethod
    def _ws(cls, v: str) -> str:
        if not re.match(r"^wss?://", v):
            raise ValueError("must start with ws:// or wss://")
        return v

    @field_validator("http_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not re.match(r"^https?://", v):
            raise ValueError("must start with http:// or https://")
        return v

    @model_validator(mode="after")
    def _solana_commitment(self) -> "ChainConfig":
        if self.kind == "solana" and self.commitment is None:
            raise ValueError("chain.commitment is required for kind = \"solana\" (\"confirmed\" or \"finalized\")")
        if self.kind == "solana" and not self.http_url:
            raise ValueError("chain.http_url is required for kind = \"solana\": its WebSocket serves subscriptions only")
        if self.kind == "solana" and self.confirmations:
            raise ValueError("chain.confirmations does not apply to Solana: chain.commitment sets finality")
        if self.kind == "evm" and self.commitment is not None:
            raise ValueError("chain.commitment applies only to kind = \"solana\"")
        if self.initial_getlogs_range > self.max_getlogs_range:
            raise ValueError("initial_getlogs_range must not exceed max_getlogs_range")
        return self


class TokenConfig(_Strict):
    address: str
    profile: str | list[str] = "erc20"
    label: str | None = None
    identity_registry: str | None = None

    @property
    def profiles(self) -> tuple[str, ...]:
        return (self.profile,) if isinstance(self.profile, str) else tuple(self.profile)


class MetricsConfig(_Strict):
    enabled: bool = True
    listen: str = "127.0.0.1:9108"
    ready_max_lag_blocks: int = Field(default=5, ge=0)
    ready_max_lag_seconds: float = Field(default=60.0, gt=0)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9108")
        return v

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class LoggingConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"


class Config(_Strict):
    database: DatabaseConfig = DatabaseConfig()
    chain: ChainConfig
    tokens: list[TokenConfig] = Field(min_length=1)
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _tokens(self) -> "Config":
        seen = set()
        for i, token in enumerate(self.tokens):
            if self.chain.kind == "evm":
                if not _EVM_ADDRESS.match(token.address):
                    raise ValueError(f"tokens[{i}].address: {token.address!r} is not a 0x-prefixed 20-byte hex address")
                if token.identity_registry and not _EVM_ADDRESS.match(token.identity_registry):
                    raise ValueError(f"tokens[{i}].identity_registry: not a 0x-prefixed 20-byte hex address")
                for p in token.profiles:
                    if p not in EVM_PROFILES:
                        raise ValueError(f"tokens[{i}].profile: unknown profile {p!r}; known: {', '.join(EVM_PROFILES)}")
            else:
                if not _BASE58.match(token.address):
                    raise ValueError(f"tokens[{i}].address: {token.address!r} is not a base58 Solana mint address")
            key = token.address.lower() if self.chain.kind == "evm" else token.address
            if key in seen:
                raise ValueError(f"tokens[{i}].address: {token.address} is listed twice")
            seen.add(key)
        return self

    # values interpolated from the environment: treated as secrets by the redactor
    _secrets: tuple[str, ...] = ()

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def token_addresses(self) -> list[str]:
        if self.chain.kind == "evm":
            return [t.address.lower() for t in self.tokens]
        return [t.address for t in self.tokens]


def _interpolate(value: Any, path: str, secrets: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else k, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", secrets) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        env = os.environ.get(name)
        if env is None or env == "":
            if default is None:
                raise ConfigError(f"config key {path}: environment variable ${{{name}}} is not set",
                                  hint=f"export {name}=... or write ${{{name}:-default}}")
            return default
        # a secret: named like one, or a piece of a longer value (an API key in a URL's path or query).
        # A variable that is a whole value (a database path, a local node's URL) stays readable in logs;
        # secrets inside whole URLs are hidden by the URL redactor anyway.
        if len(env) >= 4 and (_SECRET_NAME.search(name) or m.group(0) != value):
            secrets.append(env)
        return env

    return _VAR.sub(sub, value)


def _format_validation(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ""
        for part in e["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{loc}'")
        elif e["type"] == "missing":
            lines.append(f"missing key '{loc}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)


def parse_config(data: dict, source: str = "config") -> Config:
    secrets: list[str] = []
    data = _interpolate(data, "", secrets)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {source}: {_format_validation(exc)}",
                          hint="see the documented keys in config.toml / README.md") from None
    object.__setattr__(cfg, "_secrets", tuple(secrets))
    return cfg


def load_config(path: str | os.PathLike | None = None) -> Config:
    path = Path(path or os.environ.get("INDEXER_CONFIG") or "config.toml")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found", hint="pass --config PATH or set INDEXER_CONFIG") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    cfg = parse_config(data, source=str(path))
    # relative database paths are relative to the config file's directory
    db = Path(cfg.database.path)
    if not db.is_absolute():
        db = (path.parent / db)
        object.__setattr__(cfg.database, "path", str(db))
    return cfg
