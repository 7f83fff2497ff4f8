"""JSON-RPC errors with agave's codes and messages (rpc-client-api `custom_error.rs`,
jsonrpc-core standard codes)."""

from __future__ import annotations


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: object = None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def to_json(self) -> dict:
        out: dict = {"code": self.code, "message": self.message}
        if self.data is not None:  # jsonrpc-core skips a None `data`
            out["data"] = self.data
        return out


PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


def invalid_params(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, message)


def method_not_found() -> RpcError:
    return RpcError(METHOD_NOT_FOUND, "Method not found")


def block_cleaned_up(slot: int, first_available: int) -> RpcError:
    return RpcError(-32001, f"Block {slot} cleaned up, does not exist on node. "
                            f"First available block: {first_available}")


def blockhash_not_found() -> RpcError:
    return RpcError(-32002, "Transaction simulation failed: Blockhash not found",
                    {"err": "BlockhashNotFound", "logs": [], "accounts": None, "unitsConsumed": 0,
                     "returnData": None, "innerInstructions": None})


def block_not_available(slot: int) -> RpcError:
    return RpcError(-32004, f"Block not available for slot {slot}")


def slot_skipped(slot: int) -> RpcError:
    return RpcError(-32007, f"Slot {slot} was skipped, or missing due to ledger jump to recent snapshot")


def unsupported_transaction_version(version: int) -> RpcError:
    return RpcError(-32015, f"Transaction version ({version}) is not supported by the requesting client. "
                            f"Please try the request again with the following configuration parameter: "
                            f"\"maxSupportedTransactionVersion\": {version}")


def min_context_slot_not_reached(context_slot: int) -> RpcError:
    return RpcError(-32016, "Minimum context slot has not been reached", {"contextSlot": context_slot})


def commitment_below_confirmed() -> RpcError:
    return invalid_params("Method does not support commitment below `confirmed`")
