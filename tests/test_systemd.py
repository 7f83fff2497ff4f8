"""sd_notify over a real AF_UNIX datagram socket, the watchdog thread, and the unit files
(`systemd-analyze verify` clean, `systemd-analyze security --offline=yes` exposure <= 1.5)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexer.systemd import Notifier, Watchdog, watchdog_interval

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
UNITS = {"indexer.service": "indexer.service", "indexer@.service": "indexer@mainnet.service"}
MAX_EXPOSURE = 1.5


# --- sd_notify ----------------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A listening datagram socket standing in for systemd's /run/systemd/notify."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def _assert_nothing_pending(sock: socket.socket, wait: float = 0.2) -> None:
    sock.settimeout(wait)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return
    finally:
        sock.settimeout(5)
    raise AssertionError(f"unexpected datagram {data!r}")


def _drain(sock: socket.socket, quiet: float) -> list[str]:
    """Every datagram until none arrives for `quiet` seconds."""
    out = []
    sock.settimeout(quiet)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except TimeoutError:
        return out
    finally:
        sock.settimeout(5)


def test_notifier_sends_each_message_as_one_datagram(notify_socket) -> None:
    sock, path = notify_socket
    notifier = Notifier(env={"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready(status="indexing from block 100")
    assert _recv(sock) == "READY=1\nSTATUS=indexing from block 100"
    assert notifier.status("head 123\nlag 0")  # newlines would start a new assignment
    assert _recv(sock) == "STATUS=head 123 lag 0"
    assert notifier.watchdog()
    assert _recv(sock) == "WATCHDOG=1"
    assert notifier.extend_timeout(90.5)
    assert _recv(sock) == "EXTEND_TIMEOUT_USEC=90500000"
    assert notifier.stopping(status="draining")
    assert _recv(sock) == "STOPPING=1\nSTATUS=draining"
    notifier.close()


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"indexer-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        notifier = Notifier(env={"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert _recv(sock) == "READY=1"
        notifier.close()


def test_notifier_reads_notify_socket_from_the_process_environment(notify_socket, monkeypatch) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert Notifier().watchdog()
    assert _recv(sock) == "WATCHDOG=1"


def test_notifier_is_a_noop_without_notify_socket(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.watchdog() is False and notifier.stopping() is False


def test_notifier_reports_a_vanished_socket_without_raising(tmp_path: Path, caplog) -> None:
    notifier = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    warnings = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not on every ping


def test_notifier_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="NOTIFY_SOCKET='vsock:2:1234'"):
        Notifier(env={"NOTIFY_SOCKET": "vsock:2:1234"})
    notifier = Notifier(socket_path="/nonexistent/sock")
    with pytest.raises(ValueError, match="must be one VAR=VALUE line"):
        notifier.notify("READY")
    with pytest.raises(ValueError, match="extend_timeout seconds"):
        notifier.extend_timeout(0)


def test_watchdog_interval_follows_sd_watchdog_enabled_rules() -> None:
    pid = os.getpid()
    assert watchdog_interval(env={}) is None
    assert watchdog_interval(env={"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid)}) == 30.0
    # inherited from a parent that was the watched process: not ours
    assert watchdog_interval(env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid + 1)}) is None
    with pytest.raises(ValueError, match="WATCHDOG_USEC='30s'"):
        watchdog_interval(env={"WATCHDOG_USEC": "30s"})
    with pytest.raises(ValueError, match="WATCHDOG_PID='me'"):
        watchdog_interval(env={"WATCHDOG_USEC": "1", "WATCHDOG_PID": "me"})


def test_watchdog_period_defaults_to_half_the_interval(monkeypatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert Watchdog(Notifier(socket_path="/run/x")).period == 10.0
    monkeypatch.delenv("WATCHDOG_USEC")
    dog = Watchdog(Notifier(socket_path="/run/x"))
    assert dog.period is None and not dog.enabled
    dog.start()  # no watchdog configured: nothing to run
    assert dog._thread is None


def test_watchdog_pings_only_after_progress(notify_socket) -> None:
    sock, path = notify_socket
    dog = Watchdog(Notifier(socket_path=path), period=60)
    assert dog.check_once() is False  # no progress yet: a hung start-up must not be kept alive
    dog.progress()
    assert dog.check_once() is True
    assert _recv(sock) == "WATCHDOG=1"
    assert dog.check_once() is False  # one progress() buys one ping, not all future ones
    _assert_nothing_pending(sock)


def test_watchdog_thread_stops_pinging_when_the_loop_hangs(notify_socket) -> None:
    sock, path = notify_socket
    dog = Watchdog(Notifier(socket_path=path), period=0.05)
    dog.start()
    try:
        # a healthy loop: progress every 10 ms for 0.5 s -> about 10 pings
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            dog.progress()
            time.sleep(0.01)
        received = _drain(sock, quiet=0.3)  # includes the ping that consumes the last progress()
        assert len(received) >= 3 and set(received) == {"WATCHDOG=1"}
        assert dog.pings_sent == len(received)
        # the loop hangs: no more progress, so no more pings for several periods
        sent = dog.pings_sent
        _assert_nothing_pending(sock, wait=0.4)
        assert dog.pings_sent == sent
        assert dog.seconds_since_progress() >= 0.4
        # it recovers: pings resume
        dog.progress()
        assert _recv(sock) == "WATCHDOG=1"
    finally:
        dog.stop()
    assert dog._thread is None


# --- unit files ---------------------------------------------------------------------------------


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    # Not a skip: the unit files are shipped, so they must be checked. Debian: `apt-get install systemd`.
    assert path, "systemd-analyze not found: install the Debian package 'systemd' (see .ci/run)"
    return path


def _unit_root(tmp_path: Path, with_binary: bool = True) -> Path:
    """A throw-away filesystem root for `systemd-analyze verify --root`.

    verify resolves ExecStart= and the units we depend on (network-online.target,
    multi-user.target, ...) under the root, so the root gets a copy of the system's unit
    directory, our units under /etc/systemd/system, and an executable stand-in at
    /usr/local/bin/indexer where the install guide puts the real one. The shipped unit files
    are checked byte for byte; nothing on the host is touched.
    """
    root = tmp_path / "root"
    system_units = Path("/usr/lib/systemd/system")
    if not system_units.is_dir():
        system_units = Path("/lib/systemd/system")
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    etc_units = root / "etc/systemd/system"
    etc_units.mkdir(parents=True)
    for name in UNITS:
        shutil.copyfile(SCRIPTS / name, etc_units / name)
    if with_binary:
        binary = root / "usr/local/bin/indexer"
        binary.parent.mkdir(parents=True)
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o755)
    return root


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_file_verifies_cleanly(tmp_path: Path, unit: str) -> None:
    root = _unit_root(tmp_path)
    instance = UNITS[unit]
    proc = subprocess.run(
        [_systemd_analyze(), "verify", f"--root={root}", instance],
        capture_output=True, text=True, timeout=60,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_verify_in_the_temporary_root_really_checks_exec_start(tmp_path: Path) -> None:
    # Guards the check above against passing vacuously: without the binary, verify must fail.
    root = _unit_root(tmp_path, with_binary=False)
    proc = subprocess.run(
        [_systemd_analyze(), "verify", f"--root={root}", "indexer@mainnet.service"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "/usr/local/bin/indexer is not executable" in proc.stderr


def _exposure(unit_path: Path) -> tuple[float, str]:
    proc = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", "--no-pager", str(unit_path)],
        capture_output=True, text=True, timeout=60,
    )
    out = proc.stdout + proc.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert match, f"no 'Overall exposure level' line in:\n{out}"
    return float(match.group(1)), out


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_file_hardening_exposure_is_at_most_1_5(unit: str) -> None:
    score, out = _exposure(SCRIPTS / unit)
    assert score <= MAX_EXPOSURE, f"{unit}: exposure {score} > {MAX_EXPOSURE}\n{out}"


def test_exposure_parsing_sees_an_unhardened_unit(tmp_path: Path) -> None:
    # The score check above must be able to fail: a bare unit scores far worse.
    bare = tmp_path / "bare.service"
    bare.write_text("[Service]\nExecStart=/bin/true\n")
    score, _ = _exposure(bare)
    assert score > 5


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_file_has_the_promised_settings(unit: str) -> None:
    text = (SCRIPTS / unit).read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z][A-Za-z]+=", line)
    )
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert settings["Restart"] == "on-failure" and settings["WatchdogSec"] and settings["TimeoutStopSec"]
    assert settings["User"] == "indexer"
    assert settings["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX"  # RPC needs the network
    assert settings["ProtectSystem"] == "strict"  # writes only its StateDirectory
    if unit == "indexer@.service":
        assert settings["ExecStart"] == "/usr/local/bin/indexer --config /etc/indexer/%i.toml run"
        assert settings["EnvironmentFile"] == "-/etc/indexer/%i.env"
        assert settings["StateDirectory"] == "indexer/%i"
    else:
        assert settings["ExecStart"] == "/usr/local/bin/indexer --config /etc/indexer/config.toml run"
        assert settings["StateDirectory"] == "indexer"


def test_runtime_dependencies_work_without_writable_executable_memory() -> None:
    """The units set MemoryDenyWriteExecute=yes. Linux >= 6.3 offers the same rule per process
    (prctl PR_SET_MDWE); run the daemon's dependencies under it to show they don't need W+X."""
    script = textwrap.dedent(
        """
        import ctypes, mmap
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            raise SystemExit(f"prctl(PR_SET_MDWE) failed: errno {ctypes.get_errno()}")
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            raise SystemExit("W+X mapping was allowed: MDWE not in force")
        except PermissionError:
            pass
        import asyncio, ssl
        import apsw, click, prometheus_client, pydantic, tenacity, websockets
        from web3 import Web3
        from eth_abi import decode
        assert Web3.keccak(text="Transfer(address,address,uint256)").hex().startswith("ddf252ad")
        con = apsw.Connection(":memory:")
        con.execute("create table t(x integer) strict; insert into t values (1)")
        ssl.create_default_context()
        callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)  # libffi closure
        assert callback(1) == 2
        import indexer.logs, indexer.metrics, indexer.redact, indexer.systemd
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
