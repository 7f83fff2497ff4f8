"""setup_logging / log_context: JSON lines with context fields, readable text on a TTY, no secrets."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import os
import pty
import re
from collections.abc import Iterator

import pytest

from indexer.logs import current_context, log_context, setup_logging
from indexer.redact import Redactor

SECRET_URL = "wss://eth-mainnet.g.alchemy.com/v2/AbCdEf123_-xyz0987654321"


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def _json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_has_utc_timestamp_level_logger_and_message() -> None:
    stream = io.StringIO()
    setup_logging(level="INFO", fmt="json", stream=stream)
    logging.getLogger("indexer.pipeline").info("committed %d events", 3)
    logging.getLogger("indexer.pipeline").debug("not shown at INFO")
    [line] = _json_lines(stream)
    assert set(line) == {"ts", "level", "logger", "msg"}
    assert line["level"] == "INFO" and line["logger"] == "indexer.pipeline"
    assert line["msg"] == "committed 3 events"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    ts = dt.datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.timezone.utc) - ts).total_seconds()) < 60


def test_auto_format_is_json_when_stream_is_not_a_tty() -> None:
    stream = io.StringIO()
    setup_logging(fmt="auto", stream=stream)
    logging.getLogger("indexer").warning("hello")
    assert _json_lines(stream)[0]["msg"] == "hello"


def test_auto_format_is_text_on_a_real_tty() -> None:
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            setup_logging(fmt="auto", stream=tty)
            with log_context(chain="devchain", block_number=42):
                logging.getLogger("indexer.pipeline").warning("reorg detected")
            tty.flush()
        out = os.read(master, 4096).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert not out.lstrip().startswith("{")
    assert re.match(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} WARNING indexer\.pipeline: reorg detected "
        r"\[chain=devchain block_number=42\]",
        out,
    ), out


def test_context_fields_are_attached_and_nested_contexts_merge() -> None:
    stream = io.StringIO()
    setup_logging(fmt="json", stream=stream)
    log = logging.getLogger("indexer.store")
    with log_context(chain="mainnet"):
        with log_context(block_number=19_000_000, block_hash="0xabc", tx=None):
            log.info("commit")
            assert current_context() == {"chain": "mainnet", "block_number": 19_000_000, "block_hash": "0xabc"}
        log.info("between blocks")
    log.info("outside")
    commit, between, outside = _json_lines(stream)
    assert commit["chain"] == "mainnet" and commit["block_number"] == 19_000_000
    assert commit["block_hash"] == "0xabc" and "tx" not in commit
    assert between["chain"] == "mainnet" and "block_number" not in between
    assert "chain" not in outside and current_context() == {}


def test_extra_fields_win_over_context_and_stay_exact() -> None:
    stream = io.StringIO()
    setup_logging(fmt="json", stream=stream)
    big = 2**256 - 1  # a uint256 amount must not be rounded through a float
    with log_context(chain="mainnet", log_index=1):
        logging.getLogger("indexer").info(
            "skip", extra={"log_index": 7, "token": "0x" + "11" * 20, "amount": big, "raw": b"\x01\xff"}
        )
    [line] = _json_lines(stream)
    assert line["log_index"] == 7 and line["chain"] == "mainnet"
    assert line["amount"] == big
    assert line["raw"] == "0x01ff"


def test_context_follows_asyncio_tasks_independently() -> None:
    stream = io.StringIO()
    setup_logging(fmt="json", stream=stream)
    log = logging.getLogger("indexer.pipeline")

    async def handle(block: int) -> None:
        with log_context(block_number=block):
            await asyncio.sleep(0)  # interleave the two tasks
            log.info("block")

    async def main() -> None:
        with log_context(chain="devchain"):
            await asyncio.gather(handle(1), handle(2))

    asyncio.run(main())
    lines = _json_lines(stream)
    assert sorted(line["block_number"] for line in lines) == [1, 2]
    assert all(line["chain"] == "devchain" for line in lines)


def test_exception_is_a_json_field_and_is_scrubbed() -> None:
    stream = io.StringIO()
    setup_logging(fmt="json", redactor=Redactor(urls=[SECRET_URL]), stream=stream)
    try:
        raise ConnectionRefusedError(f"connect to {SECRET_URL} refused")
    except ConnectionRefusedError:
        with log_context(chain="mainnet", endpoint=SECRET_URL):
            logging.getLogger("indexer.rpc").exception("websocket failed: %s", SECRET_URL)
    raw = stream.getvalue()
    assert "AbCdEf123_-xyz0987654321" not in raw
    [line] = _json_lines(stream)
    assert line["msg"] == "websocket failed: wss://eth-mainnet.g.alchemy.com/v2/***"
    assert line["endpoint"] == "wss://eth-mainnet.g.alchemy.com/v2/***"
    assert line["exc_type"] == "ConnectionRefusedError"
    assert line["exc"].startswith("Traceback (most recent call last):")
    assert line["exc"].endswith("ConnectionRefusedError: connect to wss://eth-mainnet.g.alchemy.com/v2/*** refused")


def test_text_format_renders_traceback_after_the_line() -> None:
    stream = io.StringIO()
    setup_logging(fmt="text", stream=stream)
    try:
        1 // 0
    except ZeroDivisionError:
        logging.getLogger("indexer").error("boom", exc_info=True)
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith("ERROR indexer: boom")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1].startswith("ZeroDivisionError")


def test_setup_twice_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    first, second = io.StringIO(), io.StringIO()
    setup_logging(fmt="json", stream=first)
    handler = setup_logging(fmt="json", level="DEBUG", stream=second)
    logging.getLogger("indexer").debug("once")
    assert first.getvalue() == ""
    assert len(_json_lines(second)) == 1
    assert foreign in root.handlers and handler in root.handlers
    root.removeHandler(foreign)


def test_bad_level_or_format_names_the_setting() -> None:
    with pytest.raises(ValueError, match="logging level: 'LOUD'"):
        setup_logging(level="LOUD", stream=io.StringIO())
    with pytest.raises(ValueError, match="logging format: 'xml'"):
        setup_logging(fmt="xml", stream=io.StringIO())
