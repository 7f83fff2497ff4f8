"""Minimal HTTP/1.1 JSON-RPC server on asyncio streams (keep-alive, batches, /health).

Fault injection: `rate_limit(n, retry_after)` answers the next n non-control requests with
HTTP 429 + Retry-After, as public RPC providers do when throttling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .jsonrpc import Dispatch, handle_text, method_names

log = logging.getLogger(__name__)
MAX_REQUEST_BODY_SIZE = 50 * 1024  # agave rpc.rs MAX_REQUEST_BODY_SIZE
RATE_LIMIT_BODY = ('{"jsonrpc":"2.0","error":{"code":429,"message":"Too many requests for a specific RPC call"},'
                   '"id":null}')
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
           429: "Too Many Requests"}


class HttpRpcServer:
    def __init__(self, dispatch: Dispatch, is_control: Callable[[str], bool]):
        self._dispatch = dispatch
        self._is_control = is_control
        self._server: asyncio.base_events.Server | None = None
        self._rate_limited = 0
        self._retry_after = 1

    def rate_limit(self, count: int, retry_after: int) -> None:
        self._rate_limited, self._retry_after = count, retry_after

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._client, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    break
                parts = request_line.decode("latin-1").split()
                if len(parts) != 3:
                    await self._respond(writer, 400, "bad request line", "text/plain", {}, False)
                    break
                method, path, version = parts
                headers = await self._read_headers(reader)
                keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                length = int(headers.get("content-length", "0") or 0)
                if length > MAX_REQUEST_BODY_SIZE:
                    await self._respond(writer, 413, "request too large", "text/plain", {}, False)
                    break
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await reader.readexactly(length) if length else b""
                status, ctype, extra, text = await self._route(method, path, body)
                await self._respond(writer, status, text, ctype, extra, keep_alive)
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
        headers: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                return headers
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()

    async def _route(self, method: str, path: str, body: bytes) -> tuple[int, str, dict, str]:
        if method == "GET" and path.split("?")[0] == "/health":
            return 200, "text/plain", {}, "ok"
        if method != "POST":
            return 405, "text/plain", {}, "Used HTTP Method is not allowed. POST or OPTIONS is required"
        names = method_names(body)
        if self._rate_limited > 0 and not (names and all(self._is_control(n) for n in names)):
            self._rate_limited -= 1
            return 429, "application/json", {"Retry-After": str(self._retry_after)}, RATE_LIMIT_BODY
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(None, handle_text, body, self._dispatch)
        return 200, "application/json", {}, text or ""

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, text: str, ctype: str, extra: dict,
                       keep_alive: bool) -> None:
        payload = text.encode()
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}", f"Content-Type: {ctype}",
                f"Content-Length: {len(payload)}", f"Connection: {'keep-alive' if keep_alive else 'close'}"]
        head += [f"{k}: {v}" for k, v in extra.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
        await writer.drain()
