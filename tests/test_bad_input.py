"""Bad environments give a clear error, the documented exit code, and never a partial block:
a full disk (a real 1 MiB tmpfs), a read-only filesystem, a corrupt database file, a second daemon on
the same database, an unreachable node."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import devchain
from helpers import Daemon, Load, assert_same_db, cli, db_cursor, funded_sample, sample_tokens, write_config


@pytest.fixture
def small_fs(tmp_path):
    """A real, tiny filesystem (tmpfs) that can be filled and remounted read-only. Needs root, as CI is."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, f"mounting a tmpfs needs root (CI runs as root): {r.stderr}"
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture(scope="module")
def busy_chain():
    with devchain.Anvil() as anvil:
        w3 = devchain.connect(anvil.http_url)
        d = funded_sample(w3)
        Load(w3, d, seed=9).blocks(120, per_block=25)  # ~3,000 events: several MiB of database
        yield anvil, w3


def test_full_disk_stops_cleanly_and_resumes_when_space_is_back(busy_chain, small_fs, tmp_path):
    anvil, w3 = busy_chain
    head = w3.eth.block_number
    cfg = write_config(tmp_path / "c.toml", ws_url=anvil.ws_url, http_url=anvil.http_url, tokens=sample_tokens(),
                       db=small_fs / "idx.db", chain={"initial_getlogs_range": 4, "max_getlogs_range": 8})
    cfg.write_text(cfg.read_text().replace("[database]", "[database]\nbatch_blocks = 2"))
    full = cli(cfg, "backfill", "--from", "0", "--to", str(head), check=False)
    assert full.returncode == 3, full.stderr
    assert "disk full" in full.stderr and "hint:" in full.stderr
    cursor = db_cursor(small_fs / "idx.db")
    assert cursor is not None and cursor < head
    # what is there is whole blocks: equal to a backfill that stopped at the same block
    ref = write_config(tmp_path / "ref.toml", ws_url=anvil.ws_url, http_url=anvil.http_url, tokens=sample_tokens(),
                       db=tmp_path / "ref.db")
    cli(ref, "backfill", "--from", "0", "--to", str(cursor))
    assert_same_db(small_fs / "idx.db", tmp_path / "ref.db")
    # space back: it resumes where it stopped and ends where an uninterrupted run ends
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    cli(cfg, "backfill", "--from", str(cursor + 1), "--to", str(head))
    cli(ref, "backfill", "--from", str(cursor + 1), "--to", str(head))
    assert_same_db(small_fs / "idx.db", tmp_path / "ref.db")


def test_read_only_filesystem_is_a_clear_error(busy_chain, small_fs, tmp_path):
    anvil, w3 = busy_chain
    cfg = write_config(tmp_path / "c.toml", ws_url=anvil.ws_url, http_url=anvil.http_url, tokens=sample_tokens(),
                       db=small_fs / "sub" / "idx.db")
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    for args in (["run"], ["backfill", "--from", "0", "--to", "5"], ["db", "migrate"]):
        r = cli(cfg, *args, check=False, timeout=60)
        assert r.returncode == 3, (args, r.stderr)
        assert "cannot write" in r.stderr and "Read-only file system" in r.stderr and "hint:" in r.stderr
        assert "Traceback" not in r.stderr


def test_corrupt_database_is_a_clear_error(busy_chain, tmp_path):
    anvil, w3 = busy_chain
    db = tmp_path / "idx.db"
    db.write_bytes(os.urandom(64 * 1024))
    cfg = write_config(tmp_path / "c.toml", ws_url=anvil.ws_url, http_url=anvil.http_url, tokens=sample_tokens(), db=db)
    for args in (["run"], ["status", "--no-node"], ["captable", "--token", devchain.SAMPLE_TOKEN_ADDRESS]):
        r = cli(cfg, *args, check=False, timeout=60)
        assert r.returncode == 3, (args, r.stdout, r.stderr)
        assert "corrupt" in r.stderr and "indexer db backup" in r.stderr and "Traceback" not in r.stderr
    # a real database with damaged pages: `db check` names the damage
    good = tmp_path / "good.db"
    gcfg = write_config(tmp_path / "g.toml", ws_url=anvil.ws_url, http_url=anvil.http_url, tokens=sample_tokens(),
                        db=good)
    cli(gcfg, "backfill", "--from", "0", "--to", str(w3.eth.block_number))
    data = bytearray(good.read_bytes())
    page = 4096
    for offset in range(10 * page, min(len(data), 30 * page), page):
        data[offset + 100:offset + 400] = os.urandom(300)
    good.write_bytes(bytes(data))
    r = cli(gcfg, "db", "check", check=False)
    assert r.returncode in (1, 3), r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_second_daemon_on_the_same_database_refuses(busy_chain, tmp_path):
    anvil, w3 = busy_chain
    cfg = write_config(tmp_path / "c.toml", ws_url=anvil.ws_url, http_url=anvil.http_url, tokens=sample_tokens(),
                       db=tmp_path / "idx.db")
    with Daemon(cfg, tmp_path / "a.log") as first:
        first.wait_for_block(w3.eth.block_number, timeout=60)
        second = cli(cfg, "run", check=False, timeout=30)
        assert second.returncode == 3
        assert f"another indexer process (pid {first.pid})" in second.stderr
        backfill = cli(cfg, "backfill", "--from", "0", "--to", "3", check=False, timeout=30)
        assert backfill.returncode == 3
        # readers are never blocked by the writer
        cli(cfg, "captable", "--token", devchain.SAMPLE_TOKEN_ADDRESS, "--format", "json")
        assert first.terminate() == 0


def test_unreachable_node_is_a_clear_error_for_one_shot_commands(tmp_path):
    cfg = write_config(tmp_path / "c.toml", ws_url="ws://127.0.0.1:9", http_url="http://127.0.0.1:9",
                       tokens=sample_tokens(), db=tmp_path / "idx.db")
    r = cli(cfg, "backfill", "--from", "0", "--to", "10", check=False, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "cannot connect to ws://127.0.0.1:9" in r.stderr and "hint:" in r.stderr
    status = json.loads(cli(cfg, "status", "--format", "json").stdout)
    assert status["head"] is None and "cannot connect" in status["node_error"]
