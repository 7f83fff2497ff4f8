"""JSON-RPC 2.0 envelope handling (single and batch requests), as jsonrpc-core does it.

Serialisation detail: agave's results pass through serde_json::Value (a BTreeMap), so every
object inside `result` comes out with alphabetically sorted keys; the envelope itself is
`{"jsonrpc","result"|"error","id"}` in that order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from .rpc_errors import INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR, RpcError

log = logging.getLogger(__name__)
Dispatch = Callable[[str, object], object]


def dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _envelope(body_key: str, body: object, request_id: object) -> str:
    return f'{{"jsonrpc":"2.0","{body_key}":{dumps(body)},"id":{dumps(request_id)}}}'


def error_response(error: RpcError, request_id: object = None) -> str:
    return _envelope("error", error.to_json(), request_id)


def handle_one(request: object, dispatch: Dispatch) -> str | None:
    if not isinstance(request, dict):
        return error_response(RpcError(INVALID_REQUEST, "Invalid request"))
    request_id = request.get("id")
    if request.get("jsonrpc") != "2.0" or not isinstance(request.get("method"), str):
        return error_response(RpcError(INVALID_REQUEST, "Invalid request"), request_id)
    try:
        result = dispatch(request["method"], request.get("params"))
    except RpcError as err:
        return error_response(err, request_id) if "id" in request else None
    except Exception:  # a bug in the node must not kill the connection
        log.exception("internal error in %s", request["method"])
        return error_response(RpcError(INTERNAL_ERROR, "Internal error"), request_id)
    if "id" not in request:
        return None  # a notification gets no response
    return _envelope("result", result, request_id)


def handle_text(text: str | bytes, dispatch: Dispatch) -> str | None:
    try:
        payload = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return error_response(RpcError(PARSE_ERROR, "Parse error"))
    if isinstance(payload, list):
        if not payload:
            return error_response(RpcError(INVALID_REQUEST, "Invalid request"))
        parts = [r for r in (handle_one(p, dispatch) for p in payload) if r is not None]
        return "[" + ",".join(parts) + "]" if parts else None
    return handle_one(payload, dispatch)


def method_names(text: str | bytes) -> list[str]:
    """Method names in a request body (for fault injection that spares control calls)."""
    try:
        payload = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return []
    items = payload if isinstance(payload, list) else [payload]
    return [i.get("method") for i in items if isinstance(i, dict) and isinstance(i.get("method"), str)]
