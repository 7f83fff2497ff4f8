"""Retry policy, in one place: which errors are retried where, and how long to wait."""

from __future__ import annotations

import types

from tenacity import wait_exponential_jitter

from indexer.errors import IndexerError, RpcError, RpcRangeTooLarge, RpcTransportError

_wait = wait_exponential_jitter(initial=0.5, max=30.0, jitter=1.0)
_request_wait = wait_exponential_jitter(initial=0.1, max=10.0, jitter=0.5)


def session_delay(failures: int, exc: BaseException | None = None) -> float:
    """Jittered exponential backoff, capped at 30 s, for reconnecting the whole session."""
    delay = _wait(types.SimpleNamespace(attempt_number=max(1, failures)))
    return max(delay, getattr(exc, "retry_after", None) or 0.0)


def request_delay(attempt: int, exc: BaseException | None = None) -> float:
    """Backoff for retrying one request on a live connection (429 honours Retry-After)."""
    delay = _request_wait(types.SimpleNamespace(attempt_number=max(1, attempt)))
    return max(delay, getattr(exc, "retry_after", None) or 0.0)


def retry_on_connection(exc: BaseException) -> bool:
    """Errors worth retrying on the same connection: rate limits, server errors, garbage, inconsistency.
    Not transport errors (the connection is gone: the session reconnects) and not range errors (asking
    the same range again cannot help: the caller splits it)."""
    return (isinstance(exc, RpcError) and exc.retryable
            and not isinstance(exc, (RpcTransportError, RpcRangeTooLarge)))


def retry_session(exc: BaseException) -> bool:
    if isinstance(exc, IndexerError):
        return exc.retryable
    return isinstance(exc, (OSError, TimeoutError))
