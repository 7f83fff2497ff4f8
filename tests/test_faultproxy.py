"""The fault-injection proxy (tests/faultproxy.py) against a real anvil node, with plain clients:
transparent forwarding over HTTP and WebSocket, every injected fault's exact shape, drops, stall,
delays, seeded determinism, counters, bounded stop, and the command-line / control-endpoint mode."""

from __future__ import annotations

import http.client
import json
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.sync.client import connect as ws_connect

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT / "scripts", ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from devchain import Anvil, rpc_call  # noqa: E402
from faultproxy import (  # noqa: E402
    ALCHEMY_429_MESSAGE,
    NGINX_503_PAGE,
    FaultProxy,
    RemoteFaultProxy,
)

# Constructor code that emits LOG1(topic 0x2a, no data) and deploys nothing:
# PUSH1 0x2a, PUSH1 0 (size), PUSH1 0 (offset), LOG1, STOP.
LOG_EMITTER_INITCODE = "0x602a60006000a100"


@pytest.fixture(scope="module")
def anvil():
    with Anvil(extra_args=["--silent"]) as node:
        yield node


@pytest.fixture(scope="module")
def log_block(anvil):
    """(hash, number) of a block with exactly one log."""
    sender = rpc_call(anvil.http_url, "eth_accounts")[0]
    tx = rpc_call(anvil.http_url, "eth_sendTransaction", [{"from": sender, "data": LOG_EMITTER_INITCODE}])
    deadline = time.monotonic() + 10
    while (receipt := rpc_call(anvil.http_url, "eth_getTransactionReceipt", [tx])) is None:
        assert time.monotonic() < deadline, "anvil did not mine the log emitter within 10 s"
        time.sleep(0.02)  # automine answers eth_sendTransaction before the block is stored
    assert len(receipt["logs"]) == 1
    return receipt["blockHash"], int(receipt["blockNumber"], 16)


@pytest.fixture
def proxy(anvil):
    with FaultProxy(anvil.http_url, anvil.ws_url, seed=1234) as p:
        yield p


def req(method, params=None, id_=1):
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": params or []}


class Http:
    """A keep-alive HTTP/1.1 client (http.client) that also shows status and headers; every
    instance is closed after its test (close_http_clients)."""

    opened: list[Http] = []

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        Http.opened.append(self)

    def post(self, payload) -> tuple[int, dict, bytes]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()

    def call(self, payload):
        status, _, body = self.post(payload)
        assert status == 200, body
        return json.loads(body)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(autouse=True)
def close_http_clients():
    yield
    while Http.opened:
        Http.opened.pop().close()


def ws_call(ws, payload, timeout: float = 5.0):
    ws.send(json.dumps(payload))
    return json.loads(ws.recv(timeout=timeout))


def mine(anvil, n: int = 1) -> None:
    for _ in range(n):
        rpc_call(anvil.http_url, "evm_mine")


# --------------------------------------------------------------------------- transparent forwarding


def test_http_forwards_single_batch_and_errors_over_one_keep_alive_connection(proxy, anvil):
    client = Http(proxy.http_url)
    assert client.call(req("eth_chainId", id_=7)) == {"jsonrpc": "2.0", "id": 7, "result": "0x7a69"}
    first_socket = client.conn.sock
    batch = client.call([req("eth_chainId", id_="a"), req("eth_blockNumber", id_=2)])
    assert [r["id"] for r in batch] == ["a", 2]
    assert batch[1]["result"] == rpc_call(anvil.http_url, "eth_blockNumber")
    # The node's own error passes through untouched (apart from our id mapping).
    unknown = client.call(req("eth_noSuchMethod", id_=9))
    assert unknown["id"] == 9 and unknown["error"]["code"] == -32601
    assert client.conn.sock is first_socket  # all three on the same keep-alive connection
    client.close()
    assert proxy.counters()["http_requests"] == 3


def test_ws_forwards_requests_batches_and_subscriptions(proxy, anvil):
    with ws_connect(proxy.ws_url, open_timeout=5, close_timeout=1) as ws:
        sub = ws_call(ws, req("eth_subscribe", ["newHeads"], id_=1))
        assert sub["id"] == 1 and sub["result"].startswith("0x")
        head = int(rpc_call(anvil.http_url, "eth_blockNumber"), 16)
        mine(anvil, 2)
        heads = [json.loads(ws.recv(timeout=5)) for _ in range(2)]
        assert all(h["method"] == "eth_subscription" and h["params"]["subscription"] == sub["result"] for h in heads)
        assert [int(h["params"]["result"]["number"], 16) for h in heads] == [head + 1, head + 2]
        batch = ws_call(ws, [req("eth_chainId", id_=10), req("eth_blockNumber", id_=11)])
        assert [(r["id"], r["result"]) for r in batch] == [(10, "0x7a69"), (11, hex(head + 2))]
        assert ws_call(ws, req("eth_unsubscribe", [sub["result"]], id_=12)) == {
            "jsonrpc": "2.0", "id": 12, "result": True}
    counters = proxy.counters()
    assert counters["ws_connections"] == 1 and counters["notifications"] == 2 and counters["ws_requests"] == 3


# --------------------------------------------------------------------------- injected errors


def test_http_429_and_503_have_the_providers_shape(proxy):
    rule = proxy.inject("rate_limited", count=1, retry_after=3)
    proxy.inject("unavailable", method="eth_blockNumber", count=1)
    client = Http(proxy.http_url)
    status, headers, body = client.post(req("eth_chainId", id_=5))
    assert status == 429 and headers["retry-after"] == "3"
    assert json.loads(body) == {"jsonrpc": "2.0", "id": 5, "error": {"code": 429, "message": ALCHEMY_429_MESSAGE}}
    assert client.call(req("eth_chainId"))["result"] == "0x7a69"  # count=1: spent
    status, headers, body = client.post(req("eth_blockNumber"))
    assert status == 503 and headers["content-type"] == "text/html" and body == NGINX_503_PAGE
    assert rule.fired == 1
    counters = proxy.counters()
    assert counters["rate_limited"] == 1 and counters["unavailable"] == 1


def test_log_range_errors_carry_a_hint_from_the_requests_from_block(proxy, anvil):
    proxy.inject("limit_exceeded", method="eth_getLogs", count=2)
    proxy.inject("range_error", method="eth_getLogs", count=1, hint_blocks=5)
    client = Http(proxy.http_url)
    flt = {"fromBlock": "0x10", "toBlock": "0x30"}
    error = client.call(req("eth_getLogs", [flt], id_=3))["error"]
    # Infura's shape: hint = the first half of the requested range, upper-case hex, trailing period.
    assert error == {"code": -32005, "data": {"from": "0x10", "limit": 10000, "to": "0x1F"},
                     "message": "query returned more than 10000 results. Try with this block range [0x10, 0x1F]."}
    # A missing toBlock means "latest": the hint ends inside [fromBlock, head].
    mine(anvil, 3)
    head = int(rpc_call(anvil.http_url, "eth_blockNumber"), 16)
    error = client.call(req("eth_getLogs", [{"fromBlock": "0x0"}]))["error"]
    assert error["data"]["from"] == "0x0" and int(error["data"]["to"], 16) == (head + 1) // 2 - 1
    # Alchemy's shape: -32602, hint only in the message, lower-case hex.
    error = client.call(req("eth_getLogs", [flt]))["error"]
    assert error["code"] == -32602 and error["message"].startswith("Log response size exceeded.")
    assert error["message"].endswith("this block range should work: [0x10, 0x14]")
    assert client.call(req("eth_getLogs", [{"fromBlock": "0x0", "toBlock": "0x1"}]))["result"] == []  # both spent
    assert client.call(req("eth_chainId"))["result"] == "0x7a69"  # other methods never matched
    counters = proxy.counters()
    assert counters["limit_exceeded"] == 2 and counters["range_error"] == 1


def test_a_batch_gets_per_element_errors(proxy):
    proxy.inject("header_not_found", method="eth_getBlockByNumber")
    batch = Http(proxy.http_url).call([
        req("eth_chainId", id_=1), req("eth_getBlockByNumber", ["latest", False], id_=2),
        req("eth_blockNumber", id_=3)])
    assert [r["id"] for r in batch] == [1, 2, 3]
    assert batch[0]["result"] == "0x7a69" and "result" in batch[2]
    assert batch[1] == {"jsonrpc": "2.0", "id": 2, "error": {"code": -32000, "message": "header not found"}}
    assert proxy.counters()["header_not_found"] == 1


def test_http_garbage_replies(proxy):
    client = Http(proxy.http_url)
    proxy.inject("invalid_json", count=1)
    status, _, body = client.post(req("eth_chainId"))
    assert status == 200 and body.startswith(b"<html>")
    with pytest.raises(ValueError):
        json.loads(body)
    proxy.inject("truncated_json", count=1)
    status, _, truncated = client.post(req("eth_getBlockByNumber", ["0x0", False]))
    full = json.dumps(client.call(req("eth_getBlockByNumber", ["0x0", False]))).encode()
    assert status == 200 and full.startswith(truncated) and 0 < len(truncated) < len(full)
    with pytest.raises(ValueError):
        json.loads(truncated)
    proxy.inject("wrong_id", count=1)
    reply = client.call(req("eth_chainId", id_=41))
    assert reply["id"] != 41 and reply["result"] == "0x7a69"
    counters = proxy.counters()
    assert (counters["invalid_json"], counters["truncated_json"], counters["wrong_id"]) == (1, 1, 1)


def test_ws_injections(proxy):
    proxy.inject("header_not_found", method="eth_getBlockByNumber", transport="ws", count=1)
    proxy.inject("rate_limited", method="eth_blockNumber", transport="ws", count=1)
    proxy.inject("limit_exceeded", method="eth_getLogs", transport="ws", count=1)
    proxy.inject("wrong_id", method="eth_chainId", transport="ws", count=1)
    # transport="ws": HTTP clients are not affected.
    assert "result" in Http(proxy.http_url).call(req("eth_getBlockByNumber", ["latest", False]))
    with ws_connect(proxy.ws_url, open_timeout=5, close_timeout=1) as ws:
        assert ws_call(ws, req("eth_getBlockByNumber", ["latest", False], id_=1))["error"] == {
            "code": -32000, "message": "header not found"}
        assert ws_call(ws, req("eth_blockNumber", id_=2))["error"] == {"code": 429, "message": ALCHEMY_429_MESSAGE}
        error = ws_call(ws, req("eth_getLogs", [{"fromBlock": "0x2", "toBlock": "0x3"}], id_=3))["error"]
        assert error["code"] == -32005 and error["data"] == {"from": "0x2", "limit": 10000, "to": "0x2"}
        reply = ws_call(ws, req("eth_chainId", id_=4))
        assert reply["id"] != 4 and reply["result"] == "0x7a69"
        proxy.inject("truncated_json", transport="ws", count=1)
        ws.send(json.dumps(req("eth_chainId", id_=5)))
        text = ws.recv(timeout=5)
        assert text.startswith('{"jsonrpc"') and len(text) < len('{"jsonrpc": "2.0", "id": 5, "result": "0x7a69"}')
        proxy.inject("invalid_json", transport="ws", count=1)
        ws.send(json.dumps(req("eth_chainId", id_=6)))
        assert ws.recv(timeout=5).startswith("<html>")
        assert ws_call(ws, req("eth_chainId", id_=7)) == {"jsonrpc": "2.0", "id": 7, "result": "0x7a69"}
        proxy.inject("unavailable", transport="ws", count=1)
        ws.send(json.dumps(req("eth_chainId", id_=8)))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd.code == 1013  # "Try Again Later"
    counters = proxy.counters()
    for kind in ("header_not_found", "rate_limited", "limit_exceeded", "wrong_id", "truncated_json",
                 "invalid_json", "unavailable"):
        assert counters[kind] == 1, kind


def test_foreign_block_hash_rewrites_logs_and_only_counts_real_rewrites(proxy, anvil, log_block):
    block_hash, _ = log_block
    genesis_hash = rpc_call(anvil.http_url, "eth_getBlockByNumber", ["0x0", False])["hash"]
    rule = proxy.inject("foreign_block_hash", method="eth_getLogs", count=2)
    client = Http(proxy.http_url)
    assert client.call(req("eth_getLogs", [{"blockHash": genesis_hash}]))["result"] == []
    assert rule.fired == 0  # nothing to rewrite: not spent, not counted
    logs = client.call(req("eth_getLogs", [{"blockHash": block_hash}]))["result"]
    assert len(logs) == 1 and logs[0]["blockHash"] != block_hash and len(logs[0]["blockHash"]) == 66
    with ws_connect(proxy.ws_url, open_timeout=5, close_timeout=1) as ws:
        logs = ws_call(ws, req("eth_getLogs", [{"blockHash": block_hash}]))["result"]
        assert len(logs) == 1 and logs[0]["blockHash"] != block_hash
        logs = ws_call(ws, req("eth_getLogs", [{"blockHash": block_hash}]))["result"]
        assert logs[0]["blockHash"] == block_hash  # count=2 spent
    assert rule.fired == 2 and proxy.counters()["foreign_block_hash"] == 2


def test_timeout_holds_the_request_then_drops_the_connection(proxy):
    proxy.inject("timeout", method="eth_chainId", seconds=0.5)
    client = Http(proxy.http_url)
    start = time.monotonic()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        client.post(req("eth_chainId"))
    assert 0.45 <= time.monotonic() - start < 3
    with ws_connect(proxy.ws_url, open_timeout=5, close_timeout=1) as ws:
        assert "result" in ws_call(ws, req("eth_blockNumber", id_=1))
        ws.send(json.dumps(req("eth_chainId", id_=2)))
        start = time.monotonic()
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=3)
        assert 0.45 <= time.monotonic() - start < 3
        assert closed.value.rcvd is None  # dropped, no close frame
    assert proxy.counters()["timeout"] == 2


# --------------------------------------------------------------------------- connection faults


def test_drop_connections_closes_subscribed_websockets_and_idle_keep_alive(proxy, anvil):
    with ws_connect(proxy.ws_url, open_timeout=5, close_timeout=1) as ws:
        ws_call(ws, req("eth_subscribe", ["newHeads"]))
        idle = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        body = json.dumps(req("eth_chainId")).encode()
        idle.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert b"0x7a69" in idle.recv(65536)
        time.sleep(0.05)  # let the proxy mark the connection idle again
        assert proxy.drop_connections() == 2
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is None  # abrupt: no close frame
        assert idle.recv(65536) == b""  # the keep-alive connection was closed
        idle.close()
    with ws_connect(proxy.ws_url, open_timeout=5, close_timeout=1) as ws:  # new connections still work
        ws_call(ws, req("eth_subscribe", ["newHeads"]))
        client = Http(proxy.http_url)
        client.call(req("eth_chainId"))
        assert proxy.drop_connections(close_frame=True, http=False) == 1  # the idle HTTP one survives
        assert client.call(req("eth_chainId"))["result"] == "0x7a69"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd.code == 1001
    counters = proxy.counters()
    assert counters["dropped_ws"] == 2 and counters["dropped_http"] == 1


def test_stall_swallows_notifications_but_answers_requests(proxy, anvil):
    with ws_connect(proxy.ws_url, open_timeout=5, close_timeout=1) as ws:
        ws_call(ws, req("eth_subscribe", ["newHeads"], id_=1))
        proxy.stall(True)
        mine(anvil, 2)
        proxy.wait_counter("stalled_notifications", 2, timeout=5)
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)
        head = rpc_call(anvil.http_url, "eth_blockNumber")
        assert ws_call(ws, req("eth_blockNumber", id_=2)) == {"jsonrpc": "2.0", "id": 2, "result": head}
        proxy.stall(False)
        mine(anvil)
        note = json.loads(ws.recv(timeout=5))
        assert int(note["params"]["result"]["number"], 16) == int(head, 16) + 1
    counters = proxy.counters()
    assert counters["stalled_notifications"] == 2 and counters["notifications"] == 1


def test_random_drops_kill_connections(proxy):
    proxy.set_drop_rate(1.0)
    with ws_connect(proxy.ws_url, open_timeout=5, close_timeout=1) as ws:
        ws.send(json.dumps(req("eth_chainId")))
        with pytest.raises(ConnectionClosedError):
            ws.recv(timeout=5)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        Http(proxy.http_url).post(req("eth_chainId"))
    assert proxy.counters()["random_drop"] == 2
    proxy.set_drop_rate(0.0)
    assert Http(proxy.http_url).call(req("eth_chainId"))["result"] == "0x7a69"


def test_delays_apply_to_requests_and_frames(proxy):
    proxy.set_delay(150, 200)
    start = time.monotonic()
    Http(proxy.http_url).call(req("eth_chainId"))
    assert time.monotonic() - start >= 0.15
    with ws_connect(proxy.ws_url, open_timeout=5, close_timeout=1) as ws:
        start = time.monotonic()
        ws_call(ws, req("eth_chainId"))
        assert time.monotonic() - start >= 0.3  # delayed on the way up and on the way back
    assert proxy.counters()["delayed"] == 3
    proxy.reset()
    Http(proxy.http_url).call(req("eth_chainId"))
    assert proxy.counters()["delayed"] == 3  # reset() removed the delay


def test_rates_are_seeded_and_counts_are_exact(anvil):
    def run(seed: int) -> tuple[list[bool], int, int]:
        with FaultProxy(anvil.http_url, anvil.ws_url, seed=seed) as p:
            rule = p.inject("header_not_found", method="eth_chainId", rate=0.5)
            client = Http(p.http_url)
            pattern = ["error" in client.call(req("eth_chainId")) for _ in range(30)]
            return pattern, rule.fired, p.counters()["header_not_found"]

    first, second = run(99), run(99)
    assert first == second  # same seed, same faults
    pattern, fired, counted = first
    assert 5 < sum(pattern) < 25 and fired == counted == sum(pattern)
    assert run(100)[0] != pattern


def test_stop_is_bounded_and_closes_everything(anvil):
    p = FaultProxy(anvil.http_url, anvil.ws_url).start()
    with ws_connect(p.ws_url, open_timeout=5, close_timeout=1) as ws, \
            socket.create_connection(("127.0.0.1", p.port), timeout=5) as pending:
        ws_call(ws, req("eth_subscribe", ["newHeads"]))
        p.inject("timeout", seconds=30)
        body = json.dumps(req("eth_chainId")).encode()
        pending.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        p.wait_counter("timeout")
        start = time.monotonic()
        p.stop()
        assert time.monotonic() - start < 3
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert pending.recv(100) == b""
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.port), timeout=1)
    p.stop()  # idempotent


def test_bad_arguments_name_the_field(proxy):
    with pytest.raises(ValueError, match="kind"):
        proxy.inject("explode")
    with pytest.raises(ValueError, match="rate"):
        proxy.inject("timeout", rate=2)
    with pytest.raises(ValueError, match="retry_after"):
        proxy.inject("timeout", retry_after=3)
    with pytest.raises(ValueError, match="transport"):
        proxy.inject("timeout", transport="carrier-pigeon")
    with pytest.raises(ValueError, match="upstream_http"):
        FaultProxy("ftp://127.0.0.1:1", "ws://127.0.0.1:1")


# --------------------------------------------------------------------------- command line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_prints_its_urls_and_obeys_the_control_endpoint(anvil):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "faultproxy.py"), "--upstream-http", anvil.http_url,
         "--upstream-ws", anvil.ws_url, "--port", str(port), "--seed", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "faultproxy printed nothing within 15 s"
        info = json.loads(proc.stdout.readline())
        assert info["port"] == port and info["http_url"] == f"http://127.0.0.1:{port}"
        assert info["ws_url"] == f"ws://127.0.0.1:{port}" and info["pid"] == proc.pid
        remote = RemoteFaultProxy(info["control_url"])
        rule = remote.inject(kind="header_not_found", method="eth_chainId", count=1)
        assert rule["kind"] == "header_not_found" and rule["fired"] == 0
        client = Http(info["http_url"])
        assert client.call(req("eth_chainId"))["error"]["message"] == "header not found"
        assert client.call(req("eth_chainId"))["result"] == "0x7a69"
        assert remote.counters()["header_not_found"] == 1
        assert remote.rules()[0]["fired"] == 1
        with ws_connect(info["ws_url"], open_timeout=5, close_timeout=1) as ws:
            ws_call(ws, req("eth_subscribe", ["newHeads"]))
            assert remote.drop_connections() == 2  # the WebSocket and `client`'s idle keep-alive
            with pytest.raises(ConnectionClosedError):
                ws.recv(timeout=5)
        with pytest.raises(ValueError, match="op"):
            remote.call("format_disk")
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
