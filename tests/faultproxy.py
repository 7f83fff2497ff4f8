#!/usr/bin/env python3
"""A fault-injection proxy between the indexer and a real EVM node (anvil), for the fault tests.

One listening port on 127.0.0.1 speaks both transports, like anvil itself: a request carrying
``Upgrade: websocket`` becomes a WebSocket relay (one upstream WebSocket per client connection),
anything else is HTTP/1.1 JSON-RPC (keep-alive POSTs, single and batch) forwarded upstream.

The test process drives the faults at runtime through thread-safe methods (the proxy runs its own
event loop in a background thread)::

    with FaultProxy(anvil.http_url, anvil.ws_url, seed=7) as proxy:
        # daemon config: http_url = proxy.http_url, ws_url = proxy.ws_url
        rule = proxy.inject("limit_exceeded", method="eth_getLogs", count=3)
        proxy.stall(True); ...; proxy.stall(False)
        proxy.drop_connections()
        assert rule.fired == 3 and proxy.counters()["limit_exceeded"] == 3

Runnable too (prints one JSON line with its URLs once listening; stop it with SIGTERM by PID)::

    python tests/faultproxy.py --upstream-http URL --upstream-ws URL --port P [--seed N]

and then controlled over HTTP: ``POST /_faultproxy`` with ``{"op": "inject", "args": {...}}``
(see ``RemoteFaultProxy``).

Determinism: one ``random.Random(seed)`` makes every random choice (rule rates, drops, delays) in
the order requests reach the proxy; the same traffic in the same order gets the same faults.

Design: the WebSocket side uses websockets' sans-I/O ``ServerProtocol`` on our own asyncio streams,
so the proxy decides exactly what reaches the wire (abort without a close frame, swallowed
notifications, garbage frames). The upstream side uses websockets' asyncio client. JSON-RPC ids are
rewritten to proxy-unique ids on the way up, so replies are matched exactly, batches can be answered
partly by injected errors, and a reply leaves in the upstream reader's order (an ``eth_subscribe``
reply can never be overtaken by its first notification).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import inspect
import itertools
import json
import os
import random
import signal
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidState
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

CONTROL_PATH = "/_faultproxy"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
UPSTREAM_TIMEOUT_S = 30.0
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024

# --------------------------------------------------------------------------- fault kinds
#
# Each kind reproduces what a real provider sends; the comment says where the format comes from.

RATE_LIMITED = "rate_limited"  # HTTP 429 + Retry-After; over WS a JSON-RPC error with code 429
UNAVAILABLE = "unavailable"  # HTTP 503 with a load balancer's HTML page; over WS a close frame 1013
LIMIT_EXCEEDED = "limit_exceeded"  # Infura -32005 "query returned more than 10000 results ..."
RANGE_ERROR = "range_error"  # Alchemy -32602 "Log response size exceeded ... [0x.., 0x..]"
HEADER_NOT_FOUND = "header_not_found"  # geth / Infura -32000 "header not found"
TIMEOUT = "timeout"  # hold the request unanswered for `seconds`, then drop the connection
INVALID_JSON = "invalid_json"  # a non-JSON body (an edge's HTML error page served with 200)
TRUNCATED_JSON = "truncated_json"  # the real reply cut in half
WRONG_ID = "wrong_id"  # the real reply carrying another id
FOREIGN_BLOCK_HASH = "foreign_block_hash"  # eth_getLogs reply whose logs claim another blockHash

KINDS = (RATE_LIMITED, UNAVAILABLE, LIMIT_EXCEEDED, RANGE_ERROR, HEADER_NOT_FOUND, TIMEOUT,
         INVALID_JSON, TRUNCATED_JSON, WRONG_ID, FOREIGN_BLOCK_HASH)
TRANSPORTS = ("both", "http", "ws")

# Kinds that replace the whole HTTP response / WS reply (a batch gets them once, as a whole).
_WHOLE_HTTP = frozenset({RATE_LIMITED, UNAVAILABLE, TIMEOUT, INVALID_JSON, TRUNCATED_JSON})
_WHOLE_WS = frozenset({UNAVAILABLE, TIMEOUT, INVALID_JSON, TRUNCATED_JSON})
# Kinds decided when the request arrives; FOREIGN_BLOCK_HASH is decided on the reply (it only
# counts when there is at least one log to rewrite, so tests never see a no-op "injection").
_REQUEST_KINDS = frozenset(KINDS) - {FOREIGN_BLOCK_HASH}

# Alchemy's rate-limit error, over HTTP (with status 429) and over WS alike. Text copied from real
# replies quoted in conduitxyz/node#36 and gitcoinco/grants-stack-indexer#156.
ALCHEMY_429_MESSAGE = ("Your app has exceeded its compute units per second capacity. If you have retries "
                       "enabled, you can safely ignore this message. If not, check out "
                       "https://docs.alchemy.com/reference/throughput")
# nginx's stock 503 page (what a load balancer in front of a node pool answers when no backend is up).
NGINX_503_PAGE = (b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
                  b"<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n"
                  b"</body>\r\n</html>\r\n")
# A Cloudflare-style error page: what a misbehaving edge hands out with status 200 instead of JSON.
GARBAGE_PAGE = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
                b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
                b"</body>\r\n</html>\r\n")
# RFC 6455 leaves 1012/1013 to IANA: 1013 is "Try Again Later". No provider documents a WebSocket
# equivalent of 503; servers behind a drained load balancer close like this (or abort: see drops).
WS_TRY_AGAIN_LATER = 1013
WS_GOING_AWAY = 1001


def limit_exceeded_error(first: int, last: int, limit: int = 10000) -> dict:
    """Infura's eth_getLogs result-count error, byte for byte as quoted in ethers-io/ethers.js#4703:
    {"code":-32005,"data":{"from":"0xBDE5F8","limit":10000,"to":"0x102DBCC"},
     "message":"query returned more than 10000 results. Try with this block range [0xBDE5F8, 0x102DBCC]."}
    (upper-case hex digits, a trailing period)."""
    lo, hi = f"0x{first:X}", f"0x{last:X}"
    return {"code": -32005, "data": {"from": lo, "limit": limit, "to": hi},
            "message": f"query returned more than {limit} results. Try with this block range [{lo}, {hi}]."}


def range_error(first: int, last: int) -> dict:
    """Alchemy's eth_getLogs size error as quoted in ethereum/go-ethereum#25343 (code -32602, the hint
    only in the message text, lower-case hex)."""
    return {"code": -32602, "message": (
        "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range and no limit "
        "on the response size, or you can request any block range with a cap of 10K logs in the response. "
        f"Based on your parameters and the response size limit, this block range should work: [{first:#x}, {last:#x}]")}


def header_not_found_error() -> dict:
    """geth's error for a block it does not have; Infura's load balancer returns it intermittently
    (MetaMask/metamask-extension#7234, gakonst/ethers-rs#1706)."""
    return {"code": -32000, "message": "header not found"}


def rate_limited_error() -> dict:
    return {"code": 429, "message": ALCHEMY_429_MESSAGE}


# --------------------------------------------------------------------------- rules


@dataclass
class Rule:
    """One injection: fires on requests of `method` (None = any) over `transport`, with probability
    `rate` each, at most `count` times (None = no limit). `fired` counts the times it really fired."""

    id: int
    kind: str
    method: str | None = None
    rate: float = 1.0
    count: int | None = None
    transport: str = "both"
    params: dict = field(default_factory=dict)
    fired: int = 0

    def applies(self, method: str | None, transport: str) -> bool:
        return ((self.method is None or self.method == method)
                and self.transport in ("both", transport)
                and (self.count is None or self.fired < self.count))


def _validate_rule_args(kind: str, method: str | None, rate: float, count: int | None, transport: str,
                        params: dict) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind: unknown fault kind {kind!r}; one of {', '.join(KINDS)}")
    if method is not None and not isinstance(method, str):
        raise ValueError(f"method: expected a JSON-RPC method name or None, got {method!r}")
    if not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate: expected a probability in [0, 1], got {rate!r}")
    if count is not None and (not isinstance(count, int) or count < 0):
        raise ValueError(f"count: expected a non-negative integer or None, got {count!r}")
    if transport not in TRANSPORTS:
        raise ValueError(f"transport: expected one of {TRANSPORTS}, got {transport!r}")
    allowed = {RATE_LIMITED: {"retry_after"}, TIMEOUT: {"seconds"}, LIMIT_EXCEEDED: {"limit", "hint_blocks"},
               RANGE_ERROR: {"hint_blocks"}, FOREIGN_BLOCK_HASH: {"block_hash"},
               INVALID_JSON: {"body"}}.get(kind, set())
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: not a parameter of {kind!r} (allowed: {sorted(allowed) or 'none'})")


# --------------------------------------------------------------------------- one request in flight


class _Exchange:
    """A client's JSON-RPC payload (one request or a batch) on its way through the proxy: which
    elements were answered by injected errors, which go upstream under proxy ids, how to rebuild
    the reply the client sees."""

    def __init__(self, proxy: FaultProxy, payload: Any, transport: str) -> None:
        self.proxy = proxy
        self.transport = transport
        self.is_batch = isinstance(payload, list)
        self.elements: list[dict] = payload if self.is_batch else [payload]
        self.local: dict[int, dict] = {}  # element index -> injected reply
        self.wrong_id: set[int] = set()
        self.whole: Rule | None = None
        self.proxy_ids: dict[int, int] = {}  # proxy id -> element index

    def upstream_payload(self) -> Any | None:
        """What to send upstream (ids rewritten), or None when every element is answered locally."""
        out = []
        for index, element in enumerate(self.elements):
            if index in self.local:
                continue
            if "id" in element:  # a request; elements without an id are notifications: no reply
                pid = next(self.proxy._ids)
                self.proxy_ids[pid] = index
                element = {**element, "id": pid}
            out.append(element)
        if not out:
            return None
        return out if self.is_batch else out[0]

    def finish(self, upstream_reply: Any) -> Any:
        """The reply the client gets: upstream replies mapped back to the client's ids and
        post-processed, merged in request order with the injected ones."""
        by_index: dict[int, dict] = dict(self.local)
        stray = []
        replies = upstream_reply if isinstance(upstream_reply, list) else (
            [upstream_reply] if upstream_reply is not None else [])
        for reply in replies:
            index = self.proxy_ids.get(reply.get("id")) if isinstance(reply, dict) else None
            if index is None:
                stray.append(reply)  # e.g. a parse error with id null: pass it on untouched
                continue
            element = self.elements[index]
            reply = {**reply, "id": element["id"]}
            if index in self.wrong_id:
                reply["id"] = _other_id(element["id"])
            if element.get("method") == "eth_getLogs":
                reply = self.proxy._maybe_foreign_hash(reply, self.transport)
            by_index[index] = reply
        ordered = [by_index[i] for i in sorted(by_index)] + stray
        if self.is_batch:
            return ordered
        return ordered[0] if ordered else None


def _other_id(value: Any) -> Any:
    """An id the client never used for this request (same JSON type where possible)."""
    if isinstance(value, bool) or value is None:
        return 424242
    if isinstance(value, int):
        return value + 1_000_003
    return f"{value}-not-yours"


def _is_rpc_payload(payload: Any) -> bool:
    def is_request(x: Any) -> bool:
        return isinstance(x, dict) and isinstance(x.get("method"), str)
    if isinstance(payload, list):
        return bool(payload) and all(is_request(x) for x in payload)
    return is_request(payload)


def _is_notification(message: Any) -> bool:
    """A server-to-client JSON-RPC notification (eth_subscription frames): a method and no id."""
    return isinstance(message, dict) and "method" in message and "id" not in message


def _error_reply(element: dict, error: dict) -> dict:
    return {"jsonrpc": "2.0", "id": element.get("id"), "error": error}


# --------------------------------------------------------------------------- HTTP plumbing


@dataclass
class _HttpRequest:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes = b""


class _HttpError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def _parse_head(head: bytes) -> _HttpRequest:
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise _HttpError(400, f"bad request line {lines[0][:100]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _HttpError(400, f"bad header line {line[:100]!r}")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return _HttpRequest(method.upper(), target, version.upper(), headers)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks, total = [], 0
        while True:
            size_line = await reader.readline()
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise _HttpError(413, "body too large")
            chunks.append(await reader.readexactly(size))
            await reader.readline()
    length = headers.get("content-length")
    if length is None:
        return b""
    try:
        n = int(length)
    except ValueError:
        raise _HttpError(400, f"bad Content-Length {length!r}") from None
    if n < 0 or n > MAX_BODY_BYTES:
        raise _HttpError(413, "body too large")
    return await reader.readexactly(n)


def _http_response(status: int, body: bytes, *, content_type: str = "application/json",
                   close: bool = False, extra: dict[str, str] | None = None) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    headers = {"Content-Type": content_type, "Content-Length": str(len(body)), **(extra or {})}
    if close:
        headers["Connection"] = "close"
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("latin-1") + body


class _UpstreamHttp:
    """One keep-alive HTTP/1.1 connection to the node (one per client connection, as a real
    load balancer would pin it). Reconnects once when a reused connection turns out stale."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"upstream_http: expected an http(s):// URL, got {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.tls else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.host_header = parts.netloc.rpartition("@")[2]
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return await asyncio.wait_for(self._post(body), UPSTREAM_TIMEOUT_S)

    async def _post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        request = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host_header}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n").encode("latin-1") + body
        for attempt in (0, 1):
            fresh = self._writer is None
            if fresh:
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port, ssl=ssl.create_default_context() if self.tls else None,
                    limit=MAX_HEAD_BYTES)
            try:
                self._writer.write(request)
                await self._writer.drain()
                status_line = await self._reader.readline()
                if not status_line:
                    raise ConnectionResetError("upstream closed the connection")
            except (OSError, asyncio.IncompleteReadError):
                self.close()
                if fresh or attempt:
                    raise
                continue  # a stale keep-alive connection: the request never reached the node
            return await self._read_response(status_line)
        raise AssertionError("unreachable")

    async def _read_response(self, status_line: bytes) -> tuple[int, dict[str, str], bytes]:
        try:
            status = int(status_line.split()[1])
        except (IndexError, ValueError):
            self.close()
            raise ConnectionError(f"upstream sent a bad status line {status_line[:100]!r}") from None
        lines = []
        while (line := await self._reader.readline()) not in (b"\r\n", b"\n", b""):
            lines.append(line)
        headers = _parse_head(b"X / HTTP/1.1\r\n" + b"".join(lines)).headers
        if "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_body(self._reader, headers)
        else:
            body = await self._reader.read()  # delimited by the end of the connection
            headers["connection"] = "close"
        if "close" in headers.get("connection", "").lower():
            self.close()
        return status, headers, body

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass(eq=False)
class _HttpConn:
    writer: asyncio.StreamWriter
    idle: bool = True
    close_after: bool = False


# --------------------------------------------------------------------------- WebSocket relay


class _WsSession:
    """One client WebSocket (sans-I/O protocol on our own streams) paired with one upstream
    WebSocket to the node."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = ServerProtocol(max_size=None)
        self.upstream: Any = None
        self.pending: dict[int, _Exchange] = {}  # proxy id -> exchange awaiting its upstream reply
        self.tasks: set[asyncio.Task] = set()

    @property
    def open(self) -> bool:
        return self.protocol.state is State.OPEN and not self.writer.transport.is_closing()

    def flush(self) -> None:
        for data in self.protocol.data_to_send():
            if self.writer.transport.is_closing():
                return
            if data:
                self.writer.write(data)
            elif self.writer.can_write_eof():
                self.writer.write_eof()  # websockets' SEND_EOF: half-close after the closing handshake

    def send(self, data: str | bytes, binary: bool = False) -> None:
        if not self.open:
            return
        payload = data.encode() if isinstance(data, str) else data
        try:
            (self.protocol.send_binary if binary else self.protocol.send_text)(payload)
        except InvalidState:
            return
        self.flush()

    def abort(self) -> None:
        """Kill the TCP connection: no close frame, the client sees an abnormal closure (1006)."""
        self.writer.transport.abort()

    def close(self, code: int, reason: str) -> None:
        """A proper closing handshake started by us; the TCP close follows the client's answer
        (or a grace period, see _WsSession runner)."""
        if self.open:
            self.protocol.send_close(code, reason)
            self.flush()
            self.spawn(self._close_later(1.0))

    async def _close_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.writer.transport.abort()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


# --------------------------------------------------------------------------- the proxy


class FaultProxy:
    """Fault-injection proxy for EVM JSON-RPC over HTTP and WebSocket; see the module docstring.

    All public methods are thread-safe and meant to be called from the test's thread while the
    proxy serves from its own thread. Counters (``counters()``), all monotonic until reset_counters():

    - one per fault kind (``KINDS``): times an injection rule fired;
    - ``random_drop``: connections killed by set_drop_rate();
    - ``dropped_ws`` / ``dropped_http``: connections closed by drop_connections();
    - ``stalled_notifications``: notifications swallowed while stalled;
    - ``delayed``: messages/requests delayed by set_delay();
    - traffic: ``http_requests`` (JSON-RPC POSTs), ``ws_connections`` (accepted WebSockets),
      ``ws_requests`` (client messages), ``notifications`` (notifications forwarded to clients).
    """

    def __init__(self, upstream_http: str, upstream_ws: str, *, seed: int = 0, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        _UpstreamHttp(upstream_http)  # validates the URL now, with a clear error
        if urlsplit(upstream_ws).scheme not in ("ws", "wss"):
            raise ValueError(f"upstream_ws: expected a ws:// or wss:// URL, got {upstream_ws!r}")
        self.upstream_http = upstream_http
        self.upstream_ws = upstream_ws
        self.host = host
        self.seed = seed
        self._requested_port = port
        self.port: int | None = None

        self._lock = threading.Lock()  # guards everything below that the test thread may touch
        self._rng = random.Random(seed)
        self._rules: list[Rule] = []
        self._rule_ids = itertools.count(1)
        self._delay_ms = (0.0, 0.0)
        self._drop_rate = 0.0
        self._stalled = False
        self._counters: Counter[str] = Counter()

        # Proxy-side JSON-RPC ids (loop thread only), far from the small ids clients use.
        self._ids = itertools.count(1_000_000_000)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._sessions: set[_WsSession] = set()
        self._http_conns: set[_HttpConn] = set()
        self._head_client: _UpstreamHttp | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self._bound_port()}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self._bound_port()}"

    @property
    def control_url(self) -> str:
        return f"{self.http_url}{CONTROL_PATH}"

    def _bound_port(self) -> int:
        if self.port is None:
            raise RuntimeError("FaultProxy is not started: call start() or use it as a context manager")
        return self.port

    def start(self, timeout: float = START_TIMEOUT_S) -> FaultProxy:
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        self._thread = threading.Thread(target=self._thread_main, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"FaultProxy did not start listening within {timeout}s")
        if self._start_error is not None:
            self._thread.join(timeout)
            self._thread = None
            raise RuntimeError(f"FaultProxy could not listen on {self.host}:{self._requested_port}: "
                               f"{self._start_error}") from self._start_error
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Close the listener and every connection, then join the thread (bounded). Safe twice."""
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None and self._stop_event is not None:
            try:
                loop.call_soon_threadsafe(self._stop_event.set)
            except RuntimeError:
                pass  # loop already closed
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"FaultProxy thread did not stop within {timeout}s")
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start(); the thread must not die silently
            if not self._ready.is_set():
                self._start_error = exc
                self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(self._on_connection, self.host, self._requested_port,
                                            limit=MAX_HEAD_BYTES)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            for session in list(self._sessions):
                session.abort()
            for conn in list(self._http_conns):
                conn.writer.transport.abort()
            current = asyncio.current_task()
            others = [t for t in asyncio.all_tasks() if t is not current]
            for task in others:
                task.cancel()
            if others:
                await asyncio.wait(others, timeout=2.0)
            if self._head_client is not None:
                self._head_client.close()

    # ------------------------------------------------------------------ test-facing controls

    def inject(self, kind: str, *, method: str | None = None, rate: float = 1.0, count: int | None = None,
               transport: str = "both", **params: Any) -> Rule:
        """Add an injection rule (checked in insertion order; the first that fires wins).

        Parameters by kind: rate_limited ``retry_after`` (seconds, default 1); timeout ``seconds``
        (default 5); limit_exceeded ``limit`` (default 10000) and ``hint_blocks``; range_error
        ``hint_blocks`` (the suggested range's length; default half the requested range);
        foreign_block_hash ``block_hash`` (default: derived from the real one); invalid_json ``body``.
        """
        _validate_rule_args(kind, method, rate, count, transport, params)
        with self._lock:
            rule = Rule(next(self._rule_ids), kind, method, float(rate), count, transport, dict(params))
            self._rules.append(rule)
        return rule

    def remove(self, rule: Rule | int) -> None:
        rule_id = rule.id if isinstance(rule, Rule) else rule
        with self._lock:
            self._rules = [r for r in self._rules if r.id != rule_id]

    def clear_injections(self) -> None:
        with self._lock:
            self._rules = []

    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    def set_delay(self, min_ms: float, max_ms: float | None = None) -> None:
        """Delay every forwarded request/frame by a uniform random [min_ms, max_ms]; 0 disables."""
        max_ms = min_ms if max_ms is None else max_ms
        if min_ms < 0 or max_ms < min_ms:
            raise ValueError(f"set_delay: need 0 <= min_ms <= max_ms, got {min_ms}, {max_ms}")
        with self._lock:
            self._delay_ms = (float(min_ms), float(max_ms))

    def set_drop_rate(self, p: float) -> None:
        """Kill the connection (no close frame / no HTTP response) with probability p per message."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"set_drop_rate: p must be in [0, 1], got {p}")
        with self._lock:
            self._drop_rate = float(p)

    def stall(self, on: bool = True) -> None:
        """While stalled, WebSocket notifications (eth_subscription frames) are swallowed; requests
        are still answered. The swallowed notifications are lost, as with a stalled provider."""
        with self._lock:
            self._stalled = bool(on)

    def reset(self) -> None:
        """Back to a transparent proxy: no rules, no delay, no drops, not stalled (counters kept)."""
        with self._lock:
            self._rules = []
            self._delay_ms = (0.0, 0.0)
            self._drop_rate = 0.0
            self._stalled = False

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def reset_counters(self) -> None:
        with self._lock:
            self._counters.clear()

    @property
    def open_ws_connections(self) -> int:
        return len(self._sessions)

    def wait_counter(self, name: str, at_least: int = 1, timeout: float = 10.0) -> int:
        """Block until counters()[name] >= at_least; return it, or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.counters().get(name, 0)
            if value >= at_least:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"counter {name!r} is {value} after {timeout}s, wanted >= {at_least}")
            time.sleep(0.01)

    def drop_connections(self, close_frame: bool = False, code: int = WS_GOING_AWAY, *, ws: bool = True,
                         http: bool = True, timeout: float = STOP_TIMEOUT_S) -> int:
        """Close every client WebSocket now (unless ws=False): abruptly (TCP abort, no close frame) by
        default, or with a close frame (`code`, default 1001 going away); each one's upstream WebSocket
        (and so its node-side subscriptions) goes too. Unless http=False, idle HTTP keep-alive
        connections are closed and busy ones close after their current response.
        Returns the number of connections closed now."""
        if self._loop is None or self._thread is None:
            raise RuntimeError("FaultProxy is not running")
        if threading.current_thread() is self._thread:
            raise RuntimeError("drop_connections() is for other threads; the loop uses _drop_all()")
        future = asyncio.run_coroutine_threadsafe(self._drop_all(close_frame, code, ws, http), self._loop)
        return future.result(timeout)

    async def _drop_all(self, close_frame: bool, code: int = WS_GOING_AWAY, ws: bool = True,
                        http: bool = True) -> int:
        dropped = 0
        for session in list(self._sessions) if ws else ():
            if close_frame:
                session.close(code, "going away")
            else:
                session.abort()
            dropped += 1
            self._count("dropped_ws")
        for conn in list(self._http_conns) if http else ():
            if conn.idle:
                conn.writer.close()  # an orderly FIN, like a server's keep-alive timeout
                dropped += 1
                self._count("dropped_http")
            else:
                conn.close_after = True
        await asyncio.sleep(0)
        return dropped

    # ------------------------------------------------------------------ decisions (locked, seeded)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def _pick(self, method: str | None, transport: str, kinds: frozenset[str] | set[str]) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.kind in kinds and rule.applies(method, transport):
                    if rule.rate < 1.0 and self._rng.random() >= rule.rate:
                        continue
                    rule.fired += 1
                    self._counters[rule.kind] += 1
                    return rule
        return None

    def _roll_drop(self) -> bool:
        with self._lock:
            if self._drop_rate > 0.0 and self._rng.random() < self._drop_rate:
                self._counters["random_drop"] += 1
                return True
        return False

    async def _maybe_delay(self) -> None:
        with self._lock:
            lo, hi = self._delay_ms
            delay = self._rng.uniform(lo, hi) / 1000.0 if hi > 0 else 0.0
            if delay > 0:
                self._counters["delayed"] += 1
        if delay > 0:
            await asyncio.sleep(delay)

    def _is_stalled(self) -> bool:
        with self._lock:
            return self._stalled

    async def _plan(self, payload: Any, transport: str) -> _Exchange:
        """Decide the faults for each element of a request or batch."""
        ex = _Exchange(self, payload, transport)
        whole_kinds = _WHOLE_HTTP if transport == "http" else _WHOLE_WS
        for index, element in enumerate(ex.elements):
            kinds = _REQUEST_KINDS - whole_kinds if ex.whole is not None else _REQUEST_KINDS
            rule = self._pick(element.get("method"), transport, kinds)
            if rule is None:
                continue
            if rule.kind in whole_kinds:
                ex.whole = rule
            elif rule.kind == WRONG_ID:
                ex.wrong_id.add(index)
            else:
                ex.local[index] = _error_reply(element, await self._error_for(rule, element))
        return ex

    async def _error_for(self, rule: Rule, element: dict) -> dict:
        if rule.kind == RATE_LIMITED:
            return rate_limited_error()
        if rule.kind == HEADER_NOT_FOUND:
            return header_not_found_error()
        first, last = await self._hint_range(element, rule.params.get("hint_blocks"))
        if rule.kind == LIMIT_EXCEEDED:
            return limit_exceeded_error(first, last, rule.params.get("limit", 10000))
        return range_error(first, last)

    async def _hint_range(self, element: dict, hint_blocks: int | None) -> tuple[int, int]:
        """A smaller range starting at the request's fromBlock, as Infura/Alchemy suggest: half of
        the requested range by default (at least one block)."""
        params = element.get("params")
        flt = params[0] if isinstance(params, list) and params and isinstance(params[0], dict) else {}
        # eth_getLogs defaults both bounds to "latest" (execution-apis spec).
        first = await self._block_number(flt.get("fromBlock", "latest"))
        last = max(first, await self._block_number(flt.get("toBlock", "latest")))
        span = hint_blocks if hint_blocks else max(1, (last - first + 1) // 2)
        return first, min(last, first + span - 1)

    async def _block_number(self, tag: Any) -> int:
        if isinstance(tag, int):
            return tag
        if tag == "earliest":
            return 0
        if isinstance(tag, str) and tag.startswith("0x"):
            try:
                return int(tag, 16)
            except ValueError:
                return 0
        try:  # latest / safe / finalized / pending / missing: ask the node
            if self._head_client is None:
                self._head_client = _UpstreamHttp(self.upstream_http)
            body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}).encode()
            _, _, reply = await self._head_client.post(body)
            return int(json.loads(reply)["result"], 16)
        except (OSError, asyncio.TimeoutError, ValueError, KeyError, TypeError):
            return 0

    def _maybe_foreign_hash(self, reply: dict, transport: str) -> dict:
        logs = reply.get("result")
        if not isinstance(logs, list) or not logs or not all(isinstance(x, dict) for x in logs):
            return reply
        rule = self._pick("eth_getLogs", transport, {FOREIGN_BLOCK_HASH})
        if rule is None:
            return reply
        forced = rule.params.get("block_hash")

        def other(h: Any) -> str:
            return forced or "0x" + hashlib.sha256(f"foreign:{h}".encode()).hexdigest()
        return {**reply, "result": [{**log, "blockHash": other(log.get("blockHash"))} for log in logs]}

    # ------------------------------------------------------------------ connections

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve_connection(reader, writer)
        except asyncio.CancelledError:
            # Only stop() cancels us. Ending normally keeps Python 3.11's start_server callback from
            # calling task.exception() on a cancelled task and logging a spurious traceback.
            pass

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _HttpConn(writer)
        self._http_conns.add(conn)
        upstream: _UpstreamHttp | None = None
        try:
            while True:
                conn.idle = True
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    writer.write(_http_response(431, b"request head too large", content_type="text/plain", close=True))
                    return
                conn.idle = False
                try:
                    request = _parse_head(head)
                    if request.headers.get("upgrade", "").lower() == "websocket":
                        self._http_conns.discard(conn)
                        await self._run_ws_session(reader, writer, head)
                        return
                    if request.headers.get("expect", "").lower() == "100-continue":
                        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    request.body = await _read_body(reader, request.headers)
                except _HttpError as exc:
                    writer.write(_http_response(exc.status, str(exc).encode(), content_type="text/plain", close=True))
                    return
                keep_alive = (request.version == "HTTP/1.1"
                              and "close" not in request.headers.get("connection", "").lower()) or (
                              "keep-alive" in request.headers.get("connection", "").lower())
                if request.target.startswith(CONTROL_PATH):
                    status, body = await self._control(request)
                    writer.write(_http_response(status, body, close=not keep_alive))
                elif request.method != "POST":
                    writer.write(_http_response(405, b'{"error":"JSON-RPC needs POST"}', close=not keep_alive,
                                                extra={"Allow": "POST"}))
                else:
                    if upstream is None:
                        upstream = _UpstreamHttp(self.upstream_http)
                    if not await self._serve_http(request, writer, upstream, keep_alive, conn):
                        return
                await writer.drain()
                if not keep_alive or conn.close_after:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._http_conns.discard(conn)
            if upstream is not None:
                upstream.close()
            if not writer.transport.is_closing():
                writer.close()

    async def _serve_http(self, request: _HttpRequest, writer: asyncio.StreamWriter, upstream: _UpstreamHttp,
                          keep_alive: bool, conn: _HttpConn) -> bool:
        """Answer one JSON-RPC POST; False when the connection was killed on purpose."""
        self._count("http_requests")
        if self._roll_drop():
            writer.transport.abort()
            return False
        await self._maybe_delay()

        def respond(status: int, body: bytes, **kw: Any) -> None:
            writer.write(_http_response(status, body, close=not keep_alive or conn.close_after, **kw))

        try:
            payload = json.loads(request.body)
        except ValueError:
            payload = None
        if not _is_rpc_payload(payload):  # not ours to judge: the node answers (e.g. a parse error)
            status, headers, body = await self._forward_raw(upstream, request.body)
            respond(status, body, content_type=headers.get("content-type", "application/json"))
            return True

        ex = await self._plan(payload, "http")
        whole = ex.whole.kind if ex.whole else None
        if whole == TIMEOUT:
            await asyncio.sleep(float(ex.whole.params.get("seconds", 5.0)))
            writer.transport.abort()
            return False
        if whole == UNAVAILABLE:
            respond(503, NGINX_503_PAGE, content_type="text/html")
            return True
        if whole == RATE_LIMITED:
            # Alchemy answers 429 with a JSON-RPC error body; Retry-After is RFC 6585's hint.
            errors = [_error_reply(e, rate_limited_error()) for e in ex.elements]
            body = json.dumps(errors if ex.is_batch else errors[0]).encode()
            respond(429, body, extra={"Retry-After": str(ex.whole.params.get("retry_after", 1))})
            return True
        if whole == INVALID_JSON:
            body = ex.whole.params.get("body", GARBAGE_PAGE)
            respond(200, body.encode() if isinstance(body, str) else body, content_type="text/html")
            return True

        outgoing = ex.upstream_payload()
        reply = None
        if outgoing is not None:
            status, headers, body = await self._forward_raw(upstream, json.dumps(outgoing).encode())
            try:
                reply = json.loads(body)
            except ValueError:
                reply = None
            if status != 200 or reply is None:  # the node's own failure: pass it through untouched
                respond(status, body, content_type=headers.get("content-type", "application/json"))
                return True
        body = json.dumps(ex.finish(reply)).encode()
        if whole == TRUNCATED_JSON:
            body = body[: len(body) // 2]
        respond(200, body)
        return True

    async def _forward_raw(self, upstream: _UpstreamHttp, body: bytes) -> tuple[int, dict[str, str], bytes]:
        try:
            return await upstream.post(body)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            # What a gateway answers when its backend is gone.
            return 502, {"content-type": "text/plain"}, f"upstream {self.upstream_http}: {exc!r}".encode()

    # ------------------------------------------------------------------ WebSocket sessions

    async def _run_ws_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        session = _WsSession(reader, writer)
        protocol = session.protocol
        protocol.receive_data(head)
        events = protocol.events_received()
        if not events:  # unparseable handshake: the protocol already queued its answer / EOF
            session.flush()
            return
        kwargs: dict[str, Any] = {"max_size": None, "compression": None, "open_timeout": 10}
        if "proxy" in inspect.signature(ws_connect.__init__).parameters:
            kwargs["proxy"] = None  # websockets >= 15 reads *_PROXY env vars; the node is local
        try:
            session.upstream = await ws_connect(self.upstream_ws, **kwargs)
        except (OSError, asyncio.TimeoutError, Exception) as exc:  # noqa: BLE001 - any upstream failure is a 502
            protocol.send_response(protocol.reject(502, f"upstream WebSocket {self.upstream_ws} failed: {exc!r}\n"))
            session.flush()
            return
        response = protocol.accept(events[0])
        protocol.send_response(response)
        session.flush()
        if response.status_code != 101:
            await session.upstream.close()
            return
        self._sessions.add(session)
        self._count("ws_connections")
        client_task = asyncio.create_task(self._ws_client_loop(session))
        upstream_task = asyncio.create_task(self._ws_upstream_loop(session))
        try:
            done, _ = await asyncio.wait({client_task, upstream_task}, return_when=asyncio.FIRST_COMPLETED)
            if upstream_task in done and not client_task.done():
                # We sent a close frame: give the client a moment to answer it.
                await asyncio.wait({client_task}, timeout=1.0)
        finally:
            self._sessions.discard(session)
            for task in (client_task, upstream_task, *session.tasks):
                task.cancel()
            if session.protocol.state is State.OPEN:
                writer.transport.abort()  # killed mid-stream: no closing handshake happened
            else:
                writer.close()
            try:
                await asyncio.wait_for(session.upstream.close(), 2.0)
            except (asyncio.TimeoutError, OSError, ConnectionClosed):
                pass
            finally:
                session.upstream.transport.abort()  # no-op once closed; frees the socket if stop() cancelled us

    async def _ws_client_loop(self, session: _WsSession) -> None:
        parts: list[bytes] = []
        binary = False
        while True:
            try:
                data = await session.reader.read(65536)
            except ConnectionError:
                return
            if not data:
                session.protocol.receive_eof()
                session.flush()
                return
            session.protocol.receive_data(data)
            session.flush()  # pongs and close replies
            for frame in session.protocol.events_received():
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                    parts, binary = [frame.data], frame.opcode is Opcode.BINARY
                elif frame.opcode is Opcode.CONT:
                    parts.append(frame.data)
                else:
                    continue  # ping / pong / close: the protocol handled them
                if frame.fin:
                    message = b"".join(parts)
                    parts = []
                    try:
                        await self._on_client_message(session, message, binary)
                    except ConnectionClosed:
                        return
            if session.protocol.state is State.CLOSED or session.protocol.close_rcvd is not None:
                return
            if session.protocol.parser_exc is not None:
                return

    async def _on_client_message(self, session: _WsSession, message: bytes, binary: bool) -> None:
        self._count("ws_requests")
        if self._roll_drop():
            session.abort()
            return
        await self._maybe_delay()
        raw: str | bytes = message if binary else message.decode("utf-8", "replace")
        try:
            payload = json.loads(message)
        except ValueError:
            payload = None
        if not _is_rpc_payload(payload):
            await session.upstream.send(raw)
            return
        ex = await self._plan(payload, "ws")
        whole = ex.whole.kind if ex.whole else None
        if whole == TIMEOUT:
            session.spawn(self._abort_after(session, float(ex.whole.params.get("seconds", 5.0))))
            return
        if whole == UNAVAILABLE:
            session.close(WS_TRY_AGAIN_LATER, "Try Again Later")
            return
        if whole == INVALID_JSON:
            body = ex.whole.params.get("body", GARBAGE_PAGE)
            session.send(body if isinstance(body, str) else body.decode("utf-8", "replace"))
            return
        outgoing = ex.upstream_payload()
        if outgoing is None:
            session.send(self._serialize(ex, ex.finish(None)))
            return
        for pid in ex.proxy_ids:
            session.pending[pid] = ex
        await session.upstream.send(json.dumps(outgoing))

    async def _abort_after(self, session: _WsSession, seconds: float) -> None:
        await asyncio.sleep(seconds)
        session.abort()

    @staticmethod
    def _serialize(ex: _Exchange, reply: Any) -> str:
        text = json.dumps(reply)
        if ex.whole is not None and ex.whole.kind == TRUNCATED_JSON:
            text = text[: len(text) // 2]
        return text

    async def _ws_upstream_loop(self, session: _WsSession) -> None:
        try:
            async for message in session.upstream:
                await self._on_upstream_message(session, message)
                if not session.open:
                    return
        except ConnectionClosed:
            session.abort()  # the node vanished without a closing handshake: so do we
            return
        session.close(WS_GOING_AWAY, "upstream closed")

    async def _on_upstream_message(self, session: _WsSession, message: str | bytes) -> None:
        if self._roll_drop():
            session.abort()
            return
        await self._maybe_delay()
        try:
            reply = json.loads(message)
        except ValueError:
            session.send(message, binary=isinstance(message, bytes))
            return
        ex = self._pending_exchange(session, reply)
        if ex is not None:
            for pid in ex.proxy_ids:
                session.pending.pop(pid, None)
            session.send(self._serialize(ex, ex.finish(reply)))
            return
        if _is_notification(reply):
            if self._is_stalled():
                self._count("stalled_notifications")
                return
            self._count("notifications")
        session.send(message, binary=isinstance(message, bytes))

    @staticmethod
    def _pending_exchange(session: _WsSession, reply: Any) -> _Exchange | None:
        for item in reply if isinstance(reply, list) else [reply]:
            if isinstance(item, dict) and isinstance(item.get("id"), int) and item["id"] in session.pending:
                return session.pending[item["id"]]
        return None

    # ------------------------------------------------------------------ control endpoint

    _CONTROL_OPS = ("inject", "remove", "clear_injections", "rules", "set_delay", "set_drop_rate", "stall",
                    "reset", "counters", "reset_counters", "drop_connections")

    async def _control(self, request: _HttpRequest) -> tuple[int, bytes]:
        """POST /_faultproxy {"op": name, "args": {...}} -> {"result": ...}; GET /_faultproxy -> counters."""
        try:
            if request.method == "GET":
                return 200, json.dumps({"result": self.counters()}).encode()
            command = json.loads(request.body or b"{}")
            op, args = command.get("op"), command.get("args") or {}
            if op not in self._CONTROL_OPS:
                raise ValueError(f"op: unknown operation {op!r}; one of {', '.join(self._CONTROL_OPS)}")
            if op == "drop_connections":
                result: Any = await self._drop_all(bool(args.get("close_frame", False)),
                                                   int(args.get("code", WS_GOING_AWAY)),
                                                   bool(args.get("ws", True)), bool(args.get("http", True)))
            else:
                result = getattr(self, op)(**args)
            if isinstance(result, Rule):
                result = asdict(result)
            elif op == "rules":
                result = [asdict(r) for r in result]
            return 200, json.dumps({"result": result}).encode()
        except (ValueError, TypeError, AttributeError) as exc:
            return 400, json.dumps({"error": str(exc)}).encode()


class RemoteFaultProxy:
    """Drive a proxy started as a subprocess through its control endpoint, with the same method
    names as FaultProxy (``inject`` returns the rule as a dict; pass its ``id`` to ``remove``)."""

    def __init__(self, control_url: str, timeout: float = 10.0) -> None:
        self.control_url = control_url
        self.timeout = timeout

    def call(self, op: str, **args: Any) -> Any:
        body = json.dumps({"op": op, "args": args}).encode()
        req = urllib.request.Request(self.control_url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())["result"]
        except urllib.error.HTTPError as exc:
            raise ValueError(json.loads(exc.read()).get("error", str(exc))) from None

    def __getattr__(self, op: str) -> Callable[..., Any]:
        if op in FaultProxy._CONTROL_OPS:
            return functools.partial(self.call, op)
        raise AttributeError(op)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream-http", required=True, help="the node's HTTP JSON-RPC URL")
    parser.add_argument("--upstream-ws", required=True, help="the node's WebSocket URL")
    parser.add_argument("--port", type=int, default=0, help="listening port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random decision")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        proxy = FaultProxy(args.upstream_http, args.upstream_ws, seed=args.seed, port=args.port).start()
    except (ValueError, RuntimeError) as exc:
        print(f"faultproxy: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"http_url": proxy.http_url, "ws_url": proxy.ws_url, "control_url": proxy.control_url,
                      "port": proxy.port, "pid": os.getpid()}), flush=True)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
