"""Logging setup: JSON lines for machines (journald, files, pipes), readable text on a terminal.

Every line emitted while handling a block carries the chain and block number, without threading
them through every call: `with log_context(chain="mainnet", block_number=123): ...` puts them in a
contextvar (so it follows asyncio tasks correctly), and a handler filter copies them onto each
record. Fields given via `extra=` win over the context.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

from indexer.redact import RedactingFilter, Redactor

FORMATS = ("auto", "json", "text")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# The order in which context fields are shown in text output (others follow alphabetically).
CONTEXT_FIELDS = ("chain", "block_number", "block_hash", "slot", "token", "tx", "log_index")

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("indexer_log_context", default={})

# Attributes every LogRecord has; anything else came from `extra=` or from log_context.
_STANDARD_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",  # added in Python 3.12
}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Attach fields (chain=..., block_number=..., ...) to every log line emitted inside the block.

    Nests: inner fields are merged over outer ones and restored on exit. None values are dropped,
    so `log_context(block_hash=maybe_hash)` never prints `block_hash=None`.
    """
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    """A copy of the fields log_context has attached in the current thread/task."""
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Copies the log_context fields onto the record (explicit `extra=` fields win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_ATTRS and not k.startswith("_")}


def _exception_text(record: logging.LogRecord) -> str | None:
    # RedactingFilter pre-renders (and scrubs) exc_text; use it so the secret-free text is shown.
    if record.exc_text:
        return record.exc_text
    if record.exc_info:
        return "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    return None


def _json_safe(value: Any) -> Any:
    # uint256 amounts and block numbers stay exact: ints are JSON ints (arbitrary precision);
    # bytes become 0x-hex; anything else exotic becomes its str().
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "0x" + bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO-8601 UTC), level, logger, msg, context/extra fields,
    and exc_type/exc (traceback text) for exceptions."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, tz=dt.timezone.utc)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extra_fields(record).items():
            if key not in out:
                out[key] = _json_safe(value)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
        exc = _exception_text(record)
        if exc:
            out["exc"] = exc
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`2024-05-01 12:00:00.123 INFO  indexer.pipeline: committed block [chain=x block_number=7]`"""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S")
        line = f"{ts}.{int(record.msecs):03d} {record.levelname:<5} {record.name}: {record.getMessage()}"
        fields = _extra_fields(record)
        if fields:
            order = [k for k in CONTEXT_FIELDS if k in fields] + sorted(k for k in fields if k not in CONTEXT_FIELDS)
            line += " [" + " ".join(f"{k}={fields[k]}" for k in order) + "]"
        exc = _exception_text(record)
        if exc:
            line += "\n" + exc
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def setup_logging(
    level: str | int = "INFO",
    fmt: str = "auto",
    redactor: Redactor | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Configure the root logger with one handler and return it.

    fmt="auto" writes JSON unless `stream` is a terminal. Calling it again replaces the handler it
    installed before (handlers installed by others, e.g. pytest's, are left alone). `stream`
    defaults to sys.stderr *at call time*.
    """
    if fmt not in FORMATS:
        raise ValueError(f"logging format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if isinstance(level, str):
        if level.upper() not in LEVELS:
            raise ValueError(f"logging level: {level!r} is not one of {', '.join(LEVELS)}")
        level = logging.getLevelName(level.upper())
    stream = sys.stderr if stream is None else stream
    use_json = fmt == "json" or (fmt == "auto" and not _is_tty(stream))

    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(ContextFilter())
    if redactor is not None:
        # After ContextFilter, so context fields are scrubbed too.
        handler.addFilter(RedactingFilter(redactor))
    handler._indexer_handler = True  # type: ignore[attr-defined]

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_indexer_handler", False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    return handler
