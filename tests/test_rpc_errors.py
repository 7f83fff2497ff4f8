"""classify_error: what an error answer from a node or provider means for the caller.

Messages are the providers' real texts, as quoted in public issue threads (source named per case).
"""

from __future__ import annotations

import pytest

from indexer.errors import (BlockNotAvailable, RpcError, RpcFatal, RpcRangeTooLarge, RpcRateLimited, RpcServerError)
from indexer.rpc import _error_from_reply, classify_error

ALCHEMY_LOG_SIZE = ("Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range and no "
                    "limit on the response size, or you can request any block range with a cap of 10K logs in the "
                    "response. Based on your parameters and the response size limit, this block range should work: "
                    "[0x7d0, 0x1194]")


def test_http_429_is_rate_limited_with_retry_after():
    e = classify_error("eth_getLogs", None, "Too Many Requests", http_status=429, retry_after=7.5)
    assert isinstance(e, RpcRateLimited) and e.retryable and e.retry_after == 7.5
    assert not isinstance(e, RpcRangeTooLarge)  # never shrink the range for a rate limit


@pytest.mark.parametrize(("code", "message"), [
    (429, "Your app has exceeded its compute units per second capacity."),  # Alchemy
    (-32005, "daily request count exceeded, request rate limited"),        # Infura
    (-32005, "project ID request rate exceeded"),                          # Infura
    (-32000, "rate limit exceeded"),
])
def test_provider_rate_limits(code, message):
    e = classify_error("eth_getLogs", code, message)
    assert isinstance(e, RpcRateLimited) and e.retryable


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_http_5xx_is_a_retryable_server_error(status):
    e = classify_error("eth_blockNumber", None, "Bad Gateway", http_status=status, retry_after=3)
    assert isinstance(e, RpcServerError) and e.retryable and e.retry_after == 3
    assert str(status) in str(e)


def test_infura_result_count_with_range_hint():
    msg = "query returned more than 10000 results. Try with this block range [0x1, 0x2]."
    e = classify_error("eth_getLogs", -32005, msg)
    assert isinstance(e, RpcRangeTooLarge) and e.retryable
    assert e.suggested_to == 2 and e.code == -32005 and e.method == "eth_getLogs"


def test_infura_result_count_without_hint():
    e = classify_error("eth_getLogs", -32005, "query returned more than 10000 results")
    assert isinstance(e, RpcRangeTooLarge) and e.suggested_to is None


def test_alchemy_log_response_size_with_hint():
    e = classify_error("eth_getLogs", -32602, ALCHEMY_LOG_SIZE)
    assert isinstance(e, RpcRangeTooLarge)
    assert e.suggested_to == 0x1194 == 4500


def test_decimal_range_hint():
    e = classify_error("eth_getLogs", -32602, "block range too large, try [100, 2099]")
    assert isinstance(e, RpcRangeTooLarge) and e.suggested_to == 2099


@pytest.mark.parametrize(("code", "message"), [
    (-32614, "eth_getLogs is limited to a 10,000 range"),                                   # QuickNode
    (-32600, "block range too high"),                                                       # Candle
    (-32000, "block range is larger than max block range, block range = 5120, max block range = 5000"),  # Morph
    (-32005, "block range too large, max range: 1000"),                                     # cdk-erigon
    (-32000, "exceed maximum block range: 50000"),                                          # geth-based L2s
    (-32602, "query exceeds max block range 100000"),
])
def test_other_range_limits(code, message):
    assert isinstance(classify_error("eth_getLogs", code, message), RpcRangeTooLarge)


def test_infura_block_range_limit_is_a_range_error():
    # INFURA/infura#237: the live API rejects wide eth_getLogs ranges with -32602 and this text
    e = classify_error("eth_getLogs", -32602, "range 1000000 exceeds limit of 10000")
    assert isinstance(e, RpcRangeTooLarge), type(e)


def test_range_limit_given_in_the_error_data_is_a_range_error():
    # bobanetwork/boba_legacy#827 (Tenderly): the reason is only in error.data.payload
    reply = {"jsonrpc": "2.0", "id": 3041, "error": {
        "code": -32602, "message": "invalid params",
        "data": {"error_id": "4ed94073-0317-4648-a167-107fba5f44b3",
                 "payload": "range 9009594 is bigger than range limit 2000"}}}
    assert isinstance(_error_from_reply("eth_getLogs", reply), RpcRangeTooLarge)


@pytest.mark.parametrize("message", [
    "invalid argument 0: hex string without 0x prefix",
    "invalid params",
    "invalid argument 0: json: cannot unmarshal non-string into Go struct field FilterCriteria.topics of type "
    "common.Hash",
])
def test_plain_invalid_params_are_fatal(message):
    e = classify_error("eth_getLogs", -32602, message)
    assert isinstance(e, RpcFatal) and not e.retryable
    assert not isinstance(e, RpcRangeTooLarge)


def test_invalid_params_outside_get_logs_are_fatal():
    e = classify_error("eth_call", -32602, "invalid argument 1: hex number with leading zero digits")
    assert isinstance(e, RpcFatal) and not e.retryable


def test_method_not_found_is_fatal_with_hint():
    # geth's canonical -32601 text (rpc/errors.go) contains "is not available": the code must win over the words
    e = classify_error("eth_getBlockReceipts", -32601, "the method eth_getBlockReceipts does not exist/is not available")
    assert isinstance(e, RpcFatal) and not e.retryable
    assert e.hint and "method" in str(e)


@pytest.mark.parametrize(("method", "code", "message"), [
    ("eth_getBlockByNumber", -32000, "header not found"),
    ("eth_call", -32000, "header not found"),
    ("eth_getLogs", -32000, "unknown block"),
    ("getBlock", -32004, "Block not available for slot 123"),
    ("getBlock", -32014, "Block status not yet available for slot 123"),
])
def test_block_not_available_is_retryable(method, code, message):
    e = classify_error(method, code, message)
    assert isinstance(e, BlockNotAvailable) and e.retryable


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_fatal_with_an_api_key_hint(status):
    e = classify_error("eth_blockNumber", None, "invalid project id", http_status=status)
    assert isinstance(e, RpcFatal) and not e.retryable
    assert "API key" in e.hint and str(status) in str(e)


@pytest.mark.parametrize("status", [408, 425])
def test_request_timeout_statuses_are_retried(status):
    e = classify_error("eth_blockNumber", None, "", http_status=status)
    assert e.retryable and not isinstance(e, RpcFatal)


@pytest.mark.parametrize(("code", "message"), [(-32603, "internal error"), (-32000, "execution aborted (timeout = 5s)"),
                                               (None, ""), (12345, "something new")])
def test_unknown_errors_are_retryable_server_errors(code, message):
    e = classify_error("eth_getLogs" if code != -32000 else "eth_call", code, message)
    assert isinstance(e, RpcServerError) and e.retryable


def test_malformed_error_object_is_garbage():
    e = _error_from_reply("eth_blockNumber", {"jsonrpc": "2.0", "id": 1, "error": "boom"})
    assert isinstance(e, RpcError) and e.retryable and "malformed error object" in str(e)
