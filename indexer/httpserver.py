"""The operations HTTP endpoint: /metrics, /healthz, /readyz (stdlib only, its own threads).

- /metrics: the Prometheus registry in text exposition format (OpenMetrics if the scraper asks).
- /healthz: liveness. 200 "ok" while `health()` says so, 503 with its reason otherwise. Meant as
  "the main loop ticked recently" (see `loop_health`), so an orchestrator restarts a hung daemon.
- /readyz: readiness. 200/503 from `ready()` with its reason, e.g. "lag 12 blocks > max 5".

It serves from threads, so a stuck asyncio loop can't stop /healthz from reporting it.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

Check = Callable[[], "tuple[bool, str]"]
_TEXT = "text/plain; charset=utf-8"


def parse_listen(listen: str | tuple[str, int]) -> tuple[str, int]:
    """"127.0.0.1:9108", "[::1]:9108" or ("127.0.0.1", 9108) -> (host, port). Port 0 = any free port."""
    if isinstance(listen, tuple):
        host, port = listen
    else:
        host, sep, port_text = listen.rpartition(":")
        if not sep or not host or not port_text.isdigit():
            raise ValueError(f"metrics listen address {listen!r}: must be HOST:PORT, e.g. 127.0.0.1:9108")
        port = int(port_text)
    host = host.strip("[]")
    if not host or not 0 <= port <= 65535:
        raise ValueError(f"metrics listen address {listen!r}: must be HOST:PORT with a port in 0..65535")
    return host, port


def loop_health(seconds_since_progress: Callable[[], float], max_silence: float) -> Check:
    """A /healthz check: healthy while the main loop reported progress within `max_silence` s.

    Pass `Watchdog.seconds_since_progress` from indexer.systemd.
    """

    def check() -> tuple[bool, str]:
        silent = seconds_since_progress()
        if silent > max_silence:
            return False, f"main loop silent for {silent:.0f}s > max {max_silence:g}s"
        return True, "ok"

    return check


def _always_ok() -> tuple[bool, str]:
    return True, "ok"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Fail instead of silently sharing the port with a second indexer instance.
    allow_reuse_address = False


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves /metrics, /healthz and /readyz on `listen` until `stop()`.

    `start()` binds (raising OSError if the port is taken) and returns self; `port` is then the
    actual bound port, which matters when `listen` asks for port 0.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        listen: str | tuple[str, int] = "127.0.0.1:9108",
        health: Check | None = None,
        ready: Check | None = None,
    ) -> None:
        self.registry = registry
        self.host, self._requested_port = parse_listen(listen)
        self.health = health or _always_ok
        self.ready = ready or _always_ok
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("MetricsServer.port: server not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "MetricsServer":
        if self._httpd is not None:
            return self
        server_cls = _Server6 if ":" in self.host else _Server
        self._httpd = server_cls((self.host, self._requested_port), _make_handler(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics-http", daemon=True
        )
        self._thread.start()
        log.info("serving /metrics, /healthz, /readyz on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> "MetricsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _run_check(check: Check, what: str) -> tuple[bool, str]:
    try:
        ok, reason = check()
        return bool(ok), str(reason)
    except Exception as exc:  # a broken check must answer 503, not kill the handler thread
        log.exception("%s check raised", what)
        return False, f"{what} check raised {type(exc).__name__}: {exc}"


def _make_handler(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Bounds a slow or silent client so it can't pin a thread forever.
        timeout = 10
        server_version = "indexer"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            self._respond(send_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._respond(send_body=False)

        def _respond(self, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                status, body = 200, encoder(server.registry)
            elif path in ("/healthz", "/readyz"):
                check = server.health if path == "/healthz" else server.ready
                ok, reason = _run_check(check, path[1:])
                status, body, content_type = (200 if ok else 503), (reason + "\n").encode(), _TEXT
            else:
                status, body, content_type = 404, b"not found: try /metrics, /healthz or /readyz\n", _TEXT
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
            # Scrapes every few seconds would flood stderr; keep them at DEBUG.
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
