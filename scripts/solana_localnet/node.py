"""The runnable node: Chain + HTTP JSON-RPC + WebSocket PubSub on one asyncio loop in a
background thread. `start_localnet()` is the in-process entry point for tests."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from .chain import Chain, ChainConfig
from .control import ControlMethods
from .http_server import HttpRpcServer
from .rpc_methods import RpcMethods
from .scenario import Scenario
from .ws_server import PubSubServer

log = logging.getLogger(__name__)
HOST = "127.0.0.1"  # local test node: never listen beyond loopback


class Localnet:
    def __init__(self, chain: Chain | None = None, *, http_port: int = 0, ws_port: int = 0):
        self.chain = chain or Chain()
        self.rpc = RpcMethods(self.chain)
        self.control = ControlMethods(self)
        self.http = HttpRpcServer(self.dispatch, lambda name: name.startswith("localnet_"))
        self.ws = PubSubServer(self.chain)
        self._requested_ports = (http_port, ws_port)
        self.http_port = self.ws_port = 0
        self.pid = os.getpid()
        self.auto_produce_ms: int | None = None
        self._scenario: Scenario | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._auto_task: asyncio.Task | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # ---- public ------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.ws_port}"

    @property
    def scenario(self) -> Scenario:
        if self._scenario is None:
            self._scenario = Scenario(self.chain)
        return self._scenario

    def dispatch(self, method: str, params: object) -> object:
        if method.startswith("localnet_"):
            return self.control.dispatch(method, params)
        return self.rpc.dispatch(method, params)

    def start(self, timeout: float = 10.0) -> Localnet:
        self._thread = threading.Thread(target=self._run, name="solana-localnet", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"localnet did not start within {timeout}s")
        if self._startup_error is not None:
            raise RuntimeError("localnet failed to start") from self._startup_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"localnet did not stop within {timeout}s")

    def __enter__(self) -> Localnet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_auto_produce(self, interval_ms: int) -> None:
        self._call_in_loop(self._start_auto, interval_ms)

    def stop_auto_produce(self) -> None:
        self._call_in_loop(self._stop_auto)

    def drop_websockets(self, abort: bool = True) -> int:
        if self._loop is None:
            return 0
        future = asyncio.run_coroutine_threadsafe(self._drop(abort), self._loop)
        return future.result(timeout=5)

    # ---- loop thread -------------------------------------------------------------------

    def _call_in_loop(self, fn, *args) -> None:
        if self._loop is None:
            raise RuntimeError("localnet is not running")
        if threading.current_thread() is self._thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    async def _drop(self, abort: bool) -> int:
        return self.ws.drop_all(abort)

    def _start_auto(self, interval_ms: int) -> None:
        self._stop_auto()
        self.auto_produce_ms = interval_ms
        self._auto_task = asyncio.ensure_future(self._auto_produce(interval_ms))

    def _stop_auto(self) -> None:
        if self._auto_task is not None:
            self._auto_task.cancel()
            self._auto_task = None
        self.auto_produce_ms = None

    async def _auto_produce(self, interval_ms: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval_ms / 1000)
            await loop.run_in_executor(None, self.chain.produce_block)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # surface startup failures to start()
            self._startup_error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        http_port, ws_port = self._requested_ports
        self.http_port = await self.http.start(HOST, http_port)
        self.ws_port = await self.ws.start(HOST, ws_port)
        self._ready.set()
        await self._stop.wait()
        self._stop_auto()
        await self.ws.stop()
        await self.http.stop()


def start_localnet(*, http_port: int = 0, ws_port: int = 0, config: ChainConfig | None = None,
                   auto_produce_ms: int | None = None, timeout: float = 10.0) -> Localnet:
    """Start a node in this process; returns it with `http_url`, `ws_url`, `chain`,
    `scenario` and `stop()`. Ports 0 pick free ports on 127.0.0.1."""
    node = Localnet(Chain(config), http_port=http_port, ws_port=ws_port).start(timeout)
    if auto_produce_ms:
        node.start_auto_produce(auto_produce_ms)
    return node
