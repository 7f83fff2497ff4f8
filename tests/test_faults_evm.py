"""Never wrong under faults, on a real anvil and the real daemon process: reorgs at depths 1..limit
with balance changes on the new branch, a reorg deeper than the limit, and repeated kill -9.
Each ends with a database equal (table by table) to a fault-free backfill of the same chain."""

from __future__ import annotations

import json
import random
import threading
import time


import devchain
from helpers import (Daemon, Load, assert_same_db, cli, dump, free_port, metric_value, sample_tokens,
                     scrape, write_config)

MAX_DEPTH = 8


def backfill_equals(anvil, w3, db, tmp_path, name="ref"):
    head = w3.eth.block_number
    ref = write_config(tmp_path / f"{name}.toml", ws_url=anvil.ws_url, http_url=anvil.http_url, tokens=sample_tokens(),
                       db=tmp_path / f"{name}.db")
    cli(ref, "backfill", "--from", "0", "--to", str(head))
    assert_same_db(db, tmp_path / f"{name}.db")
    result = json.loads(cli(ref, "verify", "--format", "json").stdout)
    assert result["mismatches"] == [] and result["holders_checked"] >= 50


def test_reorgs_up_to_the_limit_are_rolled_back_exactly(funded_chain, tmp_path):
    anvil, w3, d = funded_chain
    load = Load(w3, d, seed=1)
    port = free_port()
    cfg = write_config(tmp_path / "run.toml", ws_url=anvil.ws_url, http_url=anvil.http_url, tokens=sample_tokens(),
                       db=tmp_path / "run.db", chain={"max_reorg_depth": MAX_DEPTH},
                       metrics_listen=f"127.0.0.1:{port}")
    depths = [1, 2, 3, 5, MAX_DEPTH, 1]
    with Daemon(cfg, tmp_path / "daemon.log") as daemon:
        daemon.wait_for_block(w3.eth.block_number)
        for depth in depths:
            load.blocks(max(depth, 3), per_block=8)
            daemon.wait_for_block(w3.eth.block_number)
            load.reorg(depth, txs=4)
            load.blocks(2, per_block=4)
            head = w3.eth.get_block("latest")
            daemon.wait_for_block(head.number)
            # caught up on the *new* branch: the cursor hash is the node's
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if dump(tmp_path / "run.db")["cursor"][0][2] == head.hash.to_0x_hex():
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"daemon not on the new branch after a reorg of depth {depth}:\n{daemon.log_tail()}")
        text = scrape(f"http://127.0.0.1:{port}/metrics")
        assert metric_value(text, "indexer_reorgs_total") == len(depths)
        assert daemon.terminate() == 0
        log = daemon.log_path.read_text()
    reorg_lines = [json.loads(line) for line in log.splitlines() if '"reorg: rolling back' in line]
    assert len(reorg_lines) == len(depths)
    assert sorted(line["depth"] for line in reorg_lines) == sorted(depths)
    # each names the old block and what the node has at its height now (a new hash, or nothing yet while
    # anvil is still building the new branch)
    assert all("old block" in line["msg"] and ("node now has 0x" in line["msg"] or "node now has nothing" in line["msg"])
               for line in reorg_lines)
    backfill_equals(anvil, w3, tmp_path / "run.db", tmp_path)


def test_reorg_deeper_than_the_limit_stops_the_daemon_without_writing(funded_chain, tmp_path):
    anvil, w3, d = funded_chain
    load = Load(w3, d, seed=2)
    cfg = write_config(tmp_path / "run.toml", ws_url=anvil.ws_url, http_url=anvil.http_url, tokens=sample_tokens(),
                       db=tmp_path / "run.db", chain={"max_reorg_depth": 4})
    with Daemon(cfg, tmp_path / "daemon.log") as daemon:
        load.blocks(6, per_block=5)
        daemon.wait_for_block(w3.eth.block_number)
        time.sleep(0.3)
        before = dump(tmp_path / "run.db")
        load.reorg(6, txs=3)
        daemon.proc.wait(timeout=30)
        assert daemon.proc.returncode == 4, daemon.log_tail()
        out = daemon.log_tail()
    assert "deeper than max_reorg_depth=4" in out
    assert dump(tmp_path / "run.db") == before  # nothing written from the other branch
    # a restart refuses again rather than index the new branch on top of the old one
    with Daemon(cfg, tmp_path / "daemon2.log") as again:
        again.proc.wait(timeout=30)
        assert again.proc.returncode == 4


def test_repeated_kill9_ends_in_the_same_database(funded_chain, tmp_path):
    anvil, w3, d = funded_chain
    load = Load(w3, d, seed=3)
    load.blocks(150, per_block=20)  # history to catch up on while being killed
    cfg = write_config(tmp_path / "run.toml", ws_url=anvil.ws_url, http_url=anvil.http_url, tokens=sample_tokens(),
                       db=tmp_path / "run.db", chain={"initial_getlogs_range": 16, "max_getlogs_range": 64},
                       extra="")
    # small ranges and one block per transaction near the head: many commits to land a kill in
    cfg.write_text(cfg.read_text().replace("[database]", "[database]\nbatch_blocks = 4"))
    rng = random.Random(11)
    stop_load = threading.Event()

    def background_load():
        live = Load(w3, d, seed=4)
        while not stop_load.is_set():
            live.blocks(1, per_block=6)
            time.sleep(0.05)

    kills = 0
    loader = threading.Thread(target=background_load, daemon=True)
    loader.start()
    try:
        for i in range(8):
            with Daemon(cfg, tmp_path / f"daemon{i}.log") as daemon:
                time.sleep(rng.uniform(0.3, 1.2))
                daemon.kill9()
                kills += 1
    finally:
        stop_load.set()
        loader.join(30)
    with Daemon(cfg, tmp_path / "final.log") as daemon:
        daemon.wait_for_block(w3.eth.block_number, timeout=90)
        assert daemon.terminate() == 0
    assert kills == 8
    check = json.loads(cli(cfg, "db", "check").stdout)
    assert check["ok"], check
    backfill_equals(anvil, w3, tmp_path / "run.db", tmp_path)
