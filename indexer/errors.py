"""Error hierarchy. Every error says what happened and, where possible, what to do about it.

`retryable` decides the daemon's reaction in one place: retryable errors are retried with backoff
forever (the chain will come back); fatal ones stop the daemon with exit code != 0.
"""

from __future__ import annotations


class IndexerError(Exception):
    """Base class. `hint` is a one-line 'how to fix' shown after the message."""

    retryable = False
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} (hint: {self.hint})" if self.hint else base


class ConfigError(IndexerError):
    exit_code = 2


class UsageError(IndexerError):
    exit_code = 2


class DatabaseError(IndexerError):
    """Database cannot be opened or written (corrupt, read-only, full disk, locked by another daemon)."""

    exit_code = 3


class DatabaseLockedError(DatabaseError):
    pass


class ChainMismatchError(DatabaseError):
    """The database belongs to another chain (chain id or genesis differ)."""


class ReorgTooDeepError(IndexerError):
    """A reorganisation deeper than max_reorg_depth: refusing to write a wrong cap table."""

    exit_code = 4


class RpcError(IndexerError):
    """An error answer or transport failure from the node. Subclasses say whether a retry helps."""

    retryable = True

    def __init__(self, message: str, *, method: str | None = None, code: int | None = None,
                 hint: str | None = None, retry_after: float | None = None):
        super().__init__(message, hint)
        self.method = method
        self.code = code
        self.retry_after = retry_after


class RpcTransportError(RpcError):
    """Connection refused/reset, timeout, closed socket: reconnect and retry."""


class RpcRateLimited(RpcError):
    """HTTP 429 or a provider's rate-limit error: back off (honouring Retry-After), never shrink ranges."""


class RpcServerError(RpcError):
    """HTTP 5xx or an internal error from the node: back off and retry."""


class RpcGarbage(RpcError):
    """A reply that is not valid JSON-RPC: counted and retried."""


class RpcRangeTooLarge(RpcError):
    """eth_getLogs range too large / too many results: shrink the range (use `suggested_to` if given)."""

    def __init__(self, message: str, *, suggested_to: int | None = None, **kw):
        super().__init__(message, **kw)
        self.suggested_to = suggested_to


class RpcInconsistent(RpcError):
    """An answer that does not fit the block asked for (logs of another block hash): refetch."""


class RpcFatal(RpcError):
    """The node rejected the request in a way a retry cannot fix (method missing, bad params)."""

    retryable = False


class BlockNotAvailable(RpcError):
    """The node does not (yet) have this block/slot: wait and retry."""


class NodeStalled(RpcError):
    """No new head for stall_timeout seconds: reconnect."""
