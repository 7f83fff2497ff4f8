"""JSON-RPC over WebSocket and HTTP: requests, batches, subscriptions, and one error classifier.

The WebSocket reader only routes frames: replies resolve their request's future; a subscription
notification is stored as the latest value and wakes its waiter. Nothing is decoded or written inside
the reader, and notifications cannot pile up (a head is a wake-up signal; the cursor is the truth).
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import logging
import re
import time
import urllib.parse
from typing import Any, Callable

import websockets

from indexer.errors import (BlockNotAvailable, RpcError, RpcFatal, RpcGarbage, RpcRangeTooLarge, RpcRateLimited,
                            RpcServerError, RpcTransportError)

log = logging.getLogger(__name__)

_RANGE_HINT = re.compile(r"\[\s*(0x[0-9a-fA-F]+|\d+)\s*,\s*(0x[0-9a-fA-F]+|\d+)\s*\]")
_RANGE_WORDS = ("query returned more than", "response size exceeded", "response too large", "block range",
                "too many results", "range is too large", "range too large", "exceed maximum block range",
                "results limit", "log response size", "max results", "limit exceeded", "query timeout exceeded",
                "range limit", "exceeds limit", "is bigger than")
_RATE_WORDS = ("rate limit", "too many requests", "request rate", "exceeded its compute units", "capacity",
               "throughput")
_NOT_AVAILABLE_WORDS = ("header not found", "unknown block", "block not found", "not available", "missing trie node")


def _int(v: str) -> int:
    return int(v, 16) if v.startswith("0x") else int(v)


def classify_error(method: str, code: int | None, message: str, data: Any = None,
                   http_status: int | None = None, retry_after: float | None = None) -> RpcError:
    """The one place that decides what an error answer means for the caller."""
    msg = (message or "").strip()
    where = f"{method}: {msg}" if msg else method
    if data is not None:
        # some providers put the reason in `data` (Tenderly: {"payload": "range 9009594 is bigger than ..."})
        try:
            msg = f"{msg} {json.dumps(data)}"
        except (TypeError, ValueError):
            msg = f"{msg} {data}"
    low = msg.lower()
    if code == -32601:
        return RpcFatal(f"method not supported by the node ({where})", method=method, code=code,
                        hint="use a node/provider that offers this method")
    if http_status == 429 or code == 429 or any(w in low for w in _RATE_WORDS):
        return RpcRateLimited(f"rate limited ({where})", method=method, code=code, retry_after=retry_after)
    if method == "eth_getLogs" and (code in (-32005, -32602, -32614) or any(w in low for w in _RANGE_WORDS)):
        if code == -32602 and not any(w in low for w in _RANGE_WORDS) and not _RANGE_HINT.search(msg):
            return RpcFatal(f"invalid params ({where})", method=method, code=code)
        m = _RANGE_HINT.search(msg)
        return RpcRangeTooLarge(f"range too large ({where})", method=method, code=code,
                                suggested_to=_int(m.group(2)) if m else None)
    if "missing trie node" in low and method == "eth_call":
        return RpcFatal(f"the node has no state for that block ({where})", method=method, code=code,
                        hint="historical eth_call needs an archive node")
    if code in (-32004, -32014) or any(w in low for w in _NOT_AVAILABLE_WORDS):
        return BlockNotAvailable(f"not available yet ({where})", method=method, code=code)
    if http_status is not None and http_status >= 500:
        return RpcServerError(f"server error HTTP {http_status} ({where})", method=method, code=code,
                              retry_after=retry_after)
    if code in (-32600, -32602):
        return RpcFatal(f"request rejected ({where})", method=method, code=code)
    if http_status is not None and 400 <= http_status < 500 and http_status not in (408, 425):
        hint = "check the API key in the URL" if http_status in (401, 403) else None
        return RpcFatal(f"HTTP {http_status} ({where})", method=method, code=code, hint=hint)
    # -32603 internal error, -32000 generic server errors, unknown codes: the node may recover
    return RpcServerError(f"node error {code} ({where})", method=method, code=code, retry_after=retry_after)


def _result(method: str, reply: Any) -> Any:
    """The `result` of one JSON-RPC reply, or the classified error it carries."""
    if not isinstance(reply, dict):
        raise RpcGarbage(f"{method}: reply is not a JSON-RPC object", method=method)
    if "error" in reply:
        raise _error_from_reply(method, reply)
    if "result" not in reply:
        raise RpcGarbage(f"{method}: reply without result", method=method)
    return reply["result"]


def _error_from_reply(method: str, reply: dict) -> RpcError:
    err = reply.get("error")
    if not isinstance(err, dict):
        return RpcGarbage(f"{method}: malformed error object {str(err)[:200]}", method=method)
    return classify_error(method, err.get("code"), str(err.get("message", "")), err.get("data"))


class RpcStats:
    """Hook for metrics: called once per request with (method, outcome, seconds)."""

    def __init__(self, observe: Callable[[str, str, float], None] | None = None):
        self.observe = observe or (lambda method, outcome, seconds: None)


class WsRpc:
    """A JSON-RPC 2.0 client over one WebSocket connection."""

    def __init__(self, url: str, *, timeout: float = 30.0, stats: RpcStats | None = None,
                 max_message_bytes: int = 512 * 1024 * 1024, display_url: str | None = None):
        self.url = url
        self.display_url = display_url or url
        self.timeout = timeout
        self.stats = stats or RpcStats()
        self.max_message_bytes = max_message_bytes
        self._ws = None
        self._reader: asyncio.Task | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future, str]] = {}
        self._subs: dict[str, Callable[[Any], None]] = {}
        self.closed = asyncio.Event()
        self.close_reason: str = ""

    async def connect(self) -> "WsRpc":
        try:
            self._ws = await asyncio.wait_for(
                websockets.connect(self.url, max_size=self.max_message_bytes, ping_interval=20, ping_timeout=20,
                                   open_timeout=self.timeout, close_timeout=2, compression=None),
                self.timeout)
        except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            raise RpcTransportError(f"cannot connect to {self.display_url}: {type(exc).__name__}: {exc}",
                                    hint="check chain.ws_url and that the node is running") from None
        self.closed.clear()
        self._reader = asyncio.create_task(self._read(), name="ws-reader")
        return self

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        self._fail_all(RpcTransportError(f"connection to {self.display_url} closed"))

    async def _read(self) -> None:
        reason = "closed"
        try:
            async for frame in self._ws:
                try:
                    msg = json.loads(frame)
                except ValueError:
                    # it cannot be matched to its request: fail what is pending now (retried at once on
                    # this connection) instead of letting each wait for its timeout
                    log.warning("garbled frame from %s (%d bytes): failing %d pending request(s) for retry",
                                self.display_url, len(frame), len(self._pending))
                    self._fail_all(RpcGarbage(f"garbled reply from {self.display_url}"))
                    continue
                if isinstance(msg, list):
                    self._resolve_batch(msg)
                elif isinstance(msg, dict):
                    if "id" in msg and msg.get("id") is not None:
                        self._resolve(msg)
                    elif "params" in msg:
                        self._notify(msg)
        except websockets.ConnectionClosed as exc:
            reason = f"closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
        except Exception as exc:  # a broken socket of any kind ends the connection, never the daemon
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            self.close_reason = reason
            self.closed.set()
            self._fail_all(RpcTransportError(f"connection to {self.display_url} lost: {reason}"))

    def _fail_all(self, exc: Exception) -> None:
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()

    def _resolve(self, msg: dict) -> None:
        entry = self._pending.pop(msg["id"], None)
        if entry and not entry[0].done():
            entry[0].set_result(msg)

    def _resolve_batch(self, msgs: list) -> None:
        for m in msgs:
            if isinstance(m, dict) and m.get("id") is not None:
                self._resolve(m)

    def _notify(self, msg: dict) -> None:
        params = msg.get("params") or {}
        sub = params.get("subscription")
        handler = self._subs.get(str(sub))
        if handler is not None:
            handler(params.get("result"))

    async def request(self, method: str, params: list | None = None, *, timeout: float | None = None) -> Any:
        if self._ws is None or self.closed.is_set():
            raise RpcTransportError(f"not connected to {self.display_url}")
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = (fut, method)
        t0 = time.perf_counter()
        outcome = "error"
        try:
            await self._ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or []}))
            reply = await asyncio.wait_for(fut, timeout or self.timeout)
            try:
                result = _result(method, reply)
            except RpcError as err:
                outcome = type(err).__name__
                raise
            outcome = "ok"
            return result
        except asyncio.TimeoutError:
            outcome = "timeout"
            raise RpcTransportError(f"{method}: no answer within {timeout or self.timeout:.0f}s from "
                                    f"{self.display_url}", method=method) from None
        except websockets.ConnectionClosed as exc:
            outcome = "disconnected"
            raise RpcTransportError(f"{method}: connection lost ({exc})", method=method) from None
        finally:
            self._pending.pop(rid, None)
            self.stats.observe(method, outcome, time.perf_counter() - t0)

    async def batch(self, calls: list[tuple[str, list]], *, timeout: float | None = None) -> list[Any]:
        """Several requests in one frame; returns results in order, raising the first error."""
        if not calls:
            return []
        if self._ws is None or self.closed.is_set():
            raise RpcTransportError(f"not connected to {self.display_url}")
        loop = asyncio.get_running_loop()
        ids, futs, payload = [], [], []
        for method, params in calls:
            rid = next(self._ids)
            fut = loop.create_future()
            self._pending[rid] = (fut, method)
            ids.append(rid)
            futs.append(fut)
            payload.append({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        t0 = time.perf_counter()
        outcome = "error"
        try:
            await self._ws.send(json.dumps(payload))
            replies = await asyncio.wait_for(asyncio.gather(*futs), timeout or self.timeout)
            try:
                out = [_result(method, reply) for (method, _), reply in zip(calls, replies)]
            except RpcError as err:
                outcome = type(err).__name__
                raise
            outcome = "ok"
            return out
        except asyncio.TimeoutError:
            outcome = "timeout"
            raise RpcTransportError(f"batch of {len(calls)} {calls[0][0]}: no answer within "
                                    f"{timeout or self.timeout:.0f}s", method=calls[0][0]) from None
        except websockets.ConnectionClosed as exc:
            outcome = "disconnected"
            raise RpcTransportError(f"batch: connection lost ({exc})", method=calls[0][0]) from None
        finally:
            for rid in ids:
                self._pending.pop(rid, None)
            for f in futs:
                if not f.done():
                    f.cancel()
            self.stats.observe(calls[0][0] + "_batch", outcome, time.perf_counter() - t0)

    async def subscribe(self, method: str, params: list, on_notification: Callable[[Any], None],
                        unsubscribe_method: str | None = None) -> str:
        sub_id = await self.request(method, params)
        self._subs[str(sub_id)] = on_notification
        return str(sub_id)


class HttpRpc:
    """JSON-RPC over HTTP(S) with keep-alive connections used from worker threads."""

    def __init__(self, url: str, *, timeout: float = 30.0, stats: RpcStats | None = None,
                 display_url: str | None = None, pool_size: int = 4):
        self.url = url
        self.display_url = display_url or url
        self.timeout = timeout
        self.stats = stats or RpcStats()
        parts = urllib.parse.urlsplit(url)
        self._scheme = parts.scheme
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if parts.username:
            import base64
            cred = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        self._pool: asyncio.Queue | None = None
        self._pool_size = pool_size
        self._ids = itertools.count(1)

    def _new_conn(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self.timeout)

    def _post(self, conn: http.client.HTTPConnection, body: bytes) -> tuple[int, dict, bytes]:
        for attempt in (0, 1):
            try:
                conn.request("POST", self._path, body=body, headers=self._headers)
                resp = conn.getresponse()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) if attempt == 0 else ():
                conn.close()  # a keep-alive connection the server closed: reconnect once
        raise AssertionError("unreachable")

    async def _call(self, method: str, payload: Any) -> Any:
        if self._pool is None:
            self._pool = asyncio.Queue()
            for _ in range(self._pool_size):
                self._pool.put_nowait(self._new_conn())
        conn = await self._pool.get()
        t0 = time.perf_counter()
        outcome = "error"
        reusable = True
        try:
            body = json.dumps(payload).encode()
            try:
                status, headers, raw = await asyncio.to_thread(self._post, conn, body)
            except asyncio.CancelledError:
                # the worker thread may still be using this connection: never hand it out again
                reusable = False
                raise
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                outcome = "transport"
                raise RpcTransportError(f"{method}: HTTP request to {self.display_url} failed: "
                                        f"{type(exc).__name__}: {exc}", method=method) from None
            if status != 200:
                retry_after = _retry_after(headers.get("retry-after"))
                message = raw[:300].decode("utf-8", "replace")
                err_code = None
                try:
                    parsed = json.loads(raw)
                    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                        message = str(parsed["error"].get("message", message))
                        err_code = parsed["error"].get("code")
                except ValueError:
                    pass
                err = classify_error(method, err_code, message, http_status=status, retry_after=retry_after)
                outcome = type(err).__name__
                raise err
            try:
                reply = json.loads(raw)
            except ValueError:
                outcome = "garbage"
                raise RpcGarbage(f"{method}: reply is not JSON ({raw[:80]!r})", method=method) from None
            outcome = "ok"
            return reply
        finally:
            self.stats.observe(method, outcome, time.perf_counter() - t0)
            self._pool.put_nowait(conn if reusable else self._new_conn())

    async def request(self, method: str, params: list | None = None, **_: Any) -> Any:
        rid = next(self._ids)
        reply = await self._call(method, {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or []})
        if isinstance(reply, dict) and reply.get("id") != rid:
            raise RpcGarbage(f"{method}: reply carries id {reply.get('id')!r}, request had {rid}", method=method)
        return _result(method, reply)

    async def batch(self, calls: list[tuple[str, list]], **_: Any) -> list[Any]:
        if not calls:
            return []
        payload = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
        replies = await self._call(calls[0][0] + "_batch", payload)
        if not isinstance(replies, list):
            if isinstance(replies, dict) and "error" in replies:
                raise _error_from_reply(calls[0][0], replies)
            raise RpcGarbage(f"batch of {calls[0][0]}: reply is not a list", method=calls[0][0])
        by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
        missing = [i for i in range(len(calls)) if i not in by_id]
        if missing:
            raise RpcGarbage(f"batch: no reply for {calls[missing[0]][0]} #{missing[0]}", method=calls[missing[0]][0])
        return [_result(method, by_id[i]) for i, (method, _) in enumerate(calls)]

    async def close(self) -> None:
        """Close idle connections. The next request (a new session) starts a fresh pool; connections still
        in use by a request of the old session go back to the discarded pool and are dropped with it."""
        pool, self._pool = self._pool, None
        if pool is not None:
            while not pool.empty():
                pool.get_nowait().close()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
