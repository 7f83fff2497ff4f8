"""redact_url / Redactor / RedactingFilter: credentials never reach a log line."""

from __future__ import annotations

import io
import logging

import pytest

from indexer.redact import MASK, RedactingFilter, Redactor, redact_url, url_secrets

ALCHEMY_KEY = "AbCdEf123_-xyz0987654321"
INFURA_KEY = "0123456789abcdef0123456789abcdef"
QUICKNODE_TOKEN = "0123456789abcdef0123456789abcdef01234567"
HELIUS_KEY = "3f1b2c4d-1234-5678-9abc-def012345678"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # provider URL shapes: key in the path
        (f"wss://eth-mainnet.g.alchemy.com/v2/{ALCHEMY_KEY}", "wss://eth-mainnet.g.alchemy.com/v2/***"),
        (f"https://eth-mainnet.g.alchemy.com/v2/{ALCHEMY_KEY}", "https://eth-mainnet.g.alchemy.com/v2/***"),
        (f"wss://mainnet.infura.io/ws/v3/{INFURA_KEY}", "wss://mainnet.infura.io/ws/v3/***"),
        (f"https://mainnet.infura.io/v3/{INFURA_KEY}", "https://mainnet.infura.io/v3/***"),
        (f"https://old-bird.quiknode.pro/{QUICKNODE_TOKEN}/", "https://old-bird.quiknode.pro/***/"),
        (f"wss://old-bird.quiknode.pro/{QUICKNODE_TOKEN}", "wss://old-bird.quiknode.pro/***"),
        ("https://rpc.ankr.com/eth/" + "ab12" * 16, "https://rpc.ankr.com/eth/***"),
        # a short key right after a version segment is still a key
        ("https://eth-sepolia.g.alchemy.com/v2/shortKey9", "https://eth-sepolia.g.alchemy.com/v2/***"),
        # key in the query string (names kept, every value hidden)
        (f"https://mainnet.helius-rpc.com/?api-key={HELIUS_KEY}", "https://mainnet.helius-rpc.com/?api-key=***"),
        (f"wss://mainnet.helius-rpc.com/?api-key={HELIUS_KEY}", "wss://mainnet.helius-rpc.com/?api-key=***"),
        ("https://rpc.example.com/eth?apikey=s3cr3t&network=main", "https://rpc.example.com/eth?apikey=***&network=***"),
        ("https://rpc.example.com/?token", "https://rpc.example.com/?***"),
        # userinfo, with and without a port
        ("https://user:pa55word@rpc.example.com:8545/", "https://***@rpc.example.com:8545/"),
        ("wss://onlyuser@rpc.example.com/ws", "wss://***@rpc.example.com/ws"),
        ("http://user:p%40ss@[2001:db8::1]:8545/path", "http://***@[2001:db8::1]:8545/path"),
        # fragments are hidden too
        ("https://rpc.example.com/#secretfragment", "https://rpc.example.com/#***"),
    ],
)
def test_redact_url_hides_credentials(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ws://127.0.0.1:8545",
        "http://127.0.0.1:8545/",
        "ws://[::1]:8545",
        "http://[::1]:8899/",
        "http://localhost:8545/rpc",
        "https://api.mainnet-beta.solana.com",
        "wss://api.devnet.solana.com/",
        "https://solana-rpc.example.com/solana-mainnet-beta/",  # long, but a plain route name
        "https://rpc.example.com/eth/mainnet/archive",
        "localhost:8545",
        "https://rpc.example.com/?",
    ],
)
def test_redact_url_leaves_secretless_urls_unchanged(url: str) -> None:
    assert redact_url(url) == url


def test_redact_url_is_idempotent() -> None:
    url = f"https://u:p@eth-mainnet.g.alchemy.com/v2/{ALCHEMY_KEY}?k=v#f"
    once = redact_url(url)
    assert redact_url(once) == once
    assert ALCHEMY_KEY not in once and "u:p" not in once


def test_redact_url_masks_unparseable_text_completely() -> None:
    # An unclosed IPv6 bracket can't be parsed: we can't tell what's secret, so hide it all.
    assert redact_url("http://[::1:8545/abc") == MASK


def test_url_secrets_lists_raw_and_percent_decoded_forms() -> None:
    secrets = url_secrets(f"https://alice:p%40ss@h.example.com/v2/{ALCHEMY_KEY}?api-key={HELIUS_KEY}")
    for expected in ("alice:p%40ss", "alice", "p%40ss", "p@ss", ALCHEMY_KEY, HELIUS_KEY):
        assert expected in secrets
    assert url_secrets("http://127.0.0.1:8545") == []


def test_scrub_replaces_configured_url_with_redacted_form_and_bare_secrets() -> None:
    url = f"wss://eth-mainnet.g.alchemy.com/v2/{ALCHEMY_KEY}"
    redactor = Redactor(urls=[url], secrets=["hunter2-password"])
    text = (
        f"cannot connect to {url}: 401; retrying with key {ALCHEMY_KEY} "
        "(password hunter2-password)"
    )
    assert redactor.scrub(text) == (
        "cannot connect to wss://eth-mainnet.g.alchemy.com/v2/***: 401; retrying with key *** "
        "(password ***)"
    )


def test_scrub_finds_unconfigured_urls_in_text() -> None:
    redactor = Redactor()
    text = (
        "errors: ['https://u:p@h.example.com:1/x?k=abc'], "
        f"(see http://[::1]:9/?t=zz). Done: https://mainnet.infura.io/v3/{INFURA_KEY}."
    )
    assert redactor.scrub(text) == (
        "errors: ['https://***@h.example.com:1/x?k=***'], "
        "(see http://[::1]:9/?t=***). Done: https://mainnet.infura.io/v3/***."
    )


def test_scrub_ignores_short_and_numeric_values() -> None:
    # Ports, chain ids and block numbers come from the environment too; masking them would
    # garble every block number in the logs.
    redactor = Redactor(secrets=["8545", "123456", "eth", ""])
    assert redactor.secret_count == 0
    text = "block 123456 on port 8545 of eth"
    assert redactor.scrub(text) == text


def test_scrub_masks_the_longest_match_first() -> None:
    redactor = Redactor(secrets=["abcdef123", "abcdef123456789"])
    assert redactor.scrub("x abcdef123456789 y abcdef123 z") == "x *** y *** z"


def test_secrets_added_later_are_scrubbed() -> None:
    redactor = Redactor()
    assert redactor.scrub("token zzTopSecret99") == "token zzTopSecret99"
    redactor.add_secret("zzTopSecret99")
    assert redactor.scrub("token zzTopSecret99") == "token ***"


def _logger_with_filter(redactor: Redactor) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s %(endpoint)s"))
    handler.addFilter(RedactingFilter(redactor))
    logger = logging.getLogger("test_redact.filter")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_filter_scrubs_message_args_extra_and_exception() -> None:
    url = f"https://mainnet.infura.io/v3/{INFURA_KEY}"
    logger, stream = _logger_with_filter(Redactor(urls=[url], secrets=["db-password-xyz"]))
    try:
        raise ConnectionError(f"HTTPSConnectionPool: Max retries exceeded with url: {url}")
    except ConnectionError:
        logger.exception(
            "request to %s failed (auth %s)", url, "db-password-xyz", extra={"endpoint": url}
        )
    out = stream.getvalue()
    assert INFURA_KEY not in out
    assert "db-password-xyz" not in out
    assert out.startswith(
        "ERROR request to https://mainnet.infura.io/v3/*** failed (auth ***) "
        "https://mainnet.infura.io/v3/***\n"
    )
    assert "Traceback (most recent call last)" in out
    assert "ConnectionError: HTTPSConnectionPool: Max retries exceeded with url: https://mainnet.infura.io/v3/***" in out


def test_filter_scrubs_stack_info() -> None:
    logger, stream = _logger_with_filter(Redactor(secrets=["stack-secret-1"]))
    # The stack's last frame shows this very source line, secret literal included.
    logger.info("here", stack_info=True, extra={"endpoint": "stack-secret-1"})
    out = stream.getvalue()
    assert "Stack (most recent call last)" in out
    assert 'extra={"endpoint": "***"}' in out
    assert "stack-secret-1" not in out


def test_filter_survives_unformattable_arguments() -> None:
    logger, stream = _logger_with_filter(Redactor(secrets=["s3cr3t-value"]))
    logger.info("two %s %s", "s3cr3t-value", extra={"endpoint": "-"})  # one argument missing
    assert stream.getvalue() == "INFO 'two %s %s' % ('***',) (unformattable log arguments) -\n"
