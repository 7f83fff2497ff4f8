"""sd_notify(3) without libsystemd: readiness, status, watchdog and stop notifications.

Protocol (from sd_notify(3) and systemd's src/libsystemd/sd-daemon/sd-daemon.c): systemd passes
an AF_UNIX datagram socket in $NOTIFY_SOCKET, either a filesystem path ("/run/systemd/notify") or
an abstract name written with a leading "@". Each notification is one datagram of
newline-separated VAR=VALUE assignments. With no $NOTIFY_SOCKET (not started by systemd, or
Type=simple) every call is a no-op, so the daemon runs the same in a terminal and in tests.

The watchdog contract: with WatchdogSec= set, systemd exports WATCHDOG_USEC (and WATCHDOG_PID)
and kills the service if no WATCHDOG=1 arrives within that interval. `Watchdog` pings from its
own thread, but only if the main loop called `progress()` since the last ping, so a hung loop
(deadlock, blocked I/O without timeout) stops the pings and systemd restarts the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def _socket_address(value: str) -> str | bytes:
    if value.startswith("@"):
        # Abstract namespace: leading NUL instead of "@", no trailing NUL (sd-daemon.c does the same).
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    raise ValueError(
        f"NOTIFY_SOCKET={value!r}: only AF_UNIX sockets (a /path or an @abstract name) are supported"
    )


class Notifier:
    """Sends sd_notify datagrams to $NOTIFY_SOCKET; does nothing when it is unset.

    Send errors are logged (once per kind) and reported as False, never raised: losing a status
    update must not stop the indexer. A missed WATCHDOG=1 is what systemd is there to notice.
    """

    def __init__(self, socket_path: str | None = None, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(raw) if raw else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._reported_errors: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send one datagram with the given "VAR=VALUE" lines. True if it was sent."""
        if self._address is None:
            return False
        for a in assignments:
            if "=" not in a or "\n" in a:
                raise ValueError(f"sd_notify assignment {a!r}: must be one VAR=VALUE line")
        payload = "\n".join(assignments).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self._address)
                return True
            except OSError as exc:
                kind = type(exc).__name__
                if kind not in self._reported_errors:
                    self._reported_errors.add(kind)
                    log.warning("sd_notify to NOTIFY_SOCKET failed: %s", exc)
                return False

    def ready(self, status: str | None = None) -> bool:
        """Startup finished (config loaded, database open): systemd marks the unit active."""
        lines = ["READY=1"] + ([f"STATUS={_one_line(status)}"] if status else [])
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by `systemctl status`."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown began; sent before draining so systemd shows 'deactivating'."""
        lines = ["STOPPING=1"] + ([f"STATUS={_one_line(status)}"] if status else [])
        return self.notify(*lines)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before the start/stop timeout fires (e.g. a long migration)."""
        if seconds <= 0:
            raise ValueError(f"extend_timeout seconds: must be > 0, got {seconds!r}")
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout in seconds that systemd expects pings within, or None if disabled.

    Like sd_watchdog_enabled(3): None unless WATCHDOG_USEC is set, and None when WATCHDOG_PID
    names another process (the variables were inherited, not meant for us). Ping at half of it.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    if not usec.isdigit() or int(usec) == 0:
        raise ValueError(f"WATCHDOG_USEC={usec!r}: must be a positive integer of microseconds")
    wpid = env.get("WATCHDOG_PID")
    if wpid:
        if not wpid.isdigit():
            raise ValueError(f"WATCHDOG_PID={wpid!r}: must be a process id")
        if int(wpid) != (os.getpid() if pid is None else pid):
            return None
    return int(usec) / 1_000_000


class Watchdog:
    """Pings WATCHDOG=1 every `period` seconds while the main loop keeps calling `progress()`.

    `period` defaults to half of `watchdog_interval()`. Without a watchdog (period None) `start()`
    does nothing, but `progress()` and `seconds_since_progress()` still work: /healthz uses them.
    """

    def __init__(
        self,
        notifier: Notifier,
        period: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if period is None:
            interval = watchdog_interval()
            period = interval / 2 if interval is not None else None
        if period is not None and period <= 0:
            raise ValueError(f"watchdog period: must be > 0 seconds, got {period!r}")
        self.notifier = notifier
        self.period = period
        self._clock = clock
        self._last_progress = clock()
        self._progressed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings_sent = 0

    @property
    def enabled(self) -> bool:
        return self.period is not None and self.notifier.enabled

    def progress(self) -> None:
        """Called by the main loop on every healthy iteration (cheap: two assignments)."""
        self._last_progress = self._clock()
        self._progressed = True

    def seconds_since_progress(self) -> float:
        return max(0.0, self._clock() - self._last_progress)

    def check_once(self) -> bool:
        """Send one WATCHDOG=1 if progress() was called since the last check. True if sent."""
        if not self._progressed:
            return False
        self._progressed = False
        sent = self.notifier.watchdog()
        if sent:
            self.pings_sent += 1
        return sent

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.period is not None
        while not self._stop.wait(self.period):
            self.check_once()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
