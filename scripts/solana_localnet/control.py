"""`localnet_*` control methods (in the spirit of anvil_*), served on the same HTTP port.

Every method takes one optional object parameter (bare values accepted where noted):

  localnet_produceBlock      [{"count": 1}]                      -> {"slots": [...], "rejected": [...]}
  localnet_skipSlots         [{"count": n}] or [n]               -> {"currentSlot": s}
  localnet_startAutoProduce  [{"intervalMs": 400}]               -> true
  localnet_stopAutoProduce   []                                  -> true
  localnet_rollback          [{"count": k, "reuseSlots": false, "reinclude": false}]
                                                                 -> {"droppedSlots": [...], "tip": s}
  localnet_dropWebsockets    [{"mode": "abort"|"close"}]         -> {"dropped": n}
  localnet_failNextRequests  [{"count": n, "mode": "429"|"blockNotAvailable", "retryAfter": 1}] -> true
  localnet_setClock          [{"unixTimestamp": t}]              -> {"nextBlockTime": t}
  localnet_setCommitmentLags [{"confirmed": 1, "finalized": 2}]  -> true
  localnet_status            []                                  -> slots per commitment, times
  localnet_scenario          [step, {args}]                      -> the step's result (see scenario.py)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import rpc_errors as E
from .scenario import ScenarioError

if TYPE_CHECKING:
    from .node import Localnet


def _options(params: list) -> dict:
    if not params or params[0] is None:
        return {}
    if not isinstance(params[0], dict):
        raise E.invalid_params("Invalid params: expected an options object")
    return {k: v for k, v in params[0].items() if v is not None}


def _int(options: dict, name: str, default: int | None = None, minimum: int = 0) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise E.invalid_params(f"Invalid params: {name} must be an integer >= {minimum}, got {value!r}")
    return value


METHODS = frozenset({"produceBlock", "skipSlots", "startAutoProduce", "stopAutoProduce", "rollback",
                     "dropWebsockets", "failNextRequests", "setClock", "setCommitmentLags", "status", "scenario"})


class ControlMethods:
    def __init__(self, node: Localnet):
        self.node = node

    def dispatch(self, method: str, params: object) -> object:
        params = params if isinstance(params, list) else []
        name = method.removeprefix("localnet_")
        if name not in METHODS:
            raise E.method_not_found()
        handler = getattr(self, name)
        try:
            return handler(params)
        except (ScenarioError, ValueError) as exc:
            raise E.invalid_params(str(exc)) from None

    def produceBlock(self, params: list) -> dict:
        count = _int(_options(params), "count", 1, minimum=1)
        slots, rejected = [], []
        for _ in range(count):
            produced = self.node.chain.produce_block()
            slots.append(produced.block.slot)
            rejected += [{"signature": r.signature, "err": r.err} for r in produced.rejected]
        return {"slots": slots, "rejected": rejected}

    def skipSlots(self, params: list) -> dict:
        options = {"count": params[0]} if params and isinstance(params[0], int) else _options(params)
        return {"currentSlot": self.node.chain.skip_slots(_int(options, "count", minimum=1))}

    def startAutoProduce(self, params: list) -> bool:
        self.node.start_auto_produce(_int(_options(params), "intervalMs", 400, minimum=10))
        return True

    def stopAutoProduce(self, params: list) -> bool:
        self.node.stop_auto_produce()
        return True

    def rollback(self, params: list) -> dict:
        options = _options(params)
        return self.node.chain.rollback(_int(options, "count", minimum=1),
                                        reuse_slots=bool(options.get("reuseSlots", False)),
                                        reinclude=bool(options.get("reinclude", False)))

    def dropWebsockets(self, params: list) -> dict:
        mode = _options(params).get("mode", "abort")
        if mode not in ("abort", "close"):
            raise E.invalid_params("Invalid params: mode must be \"abort\" or \"close\"")
        return {"dropped": self.node.drop_websockets(abort=mode == "abort")}

    def failNextRequests(self, params: list) -> bool:
        options = _options(params)
        count = _int(options, "count", minimum=0)
        mode = options.get("mode", "429")
        if mode == "429":
            self.node.http.rate_limit(count, _int(options, "retryAfter", 1))
        elif mode == "blockNotAvailable":
            self.node.rpc.fail_block_not_available = count
        else:
            raise E.invalid_params("Invalid params: mode must be \"429\" or \"blockNotAvailable\"")
        return True

    def setClock(self, params: list) -> dict:
        timestamp = _int(_options(params), "unixTimestamp")
        self.node.chain.set_time(timestamp)
        return {"nextBlockTime": timestamp}

    def setCommitmentLags(self, params: list) -> bool:
        options = _options(params)
        chain = self.node.chain
        chain.set_commitment_lags(_int(options, "confirmed", chain.config.confirm_lag),
                                  _int(options, "finalized", chain.config.finalize_lag))
        return True

    def status(self, params: list) -> dict:
        chain = self.node.chain
        with chain.lock:
            return {
                "processed": chain.slot_for("processed"),
                "confirmed": chain.slot_for("confirmed"),
                "finalized": chain.slot_for("finalized"),
                "currentSlot": chain.current_slot,
                "blockHeight": chain.tip.block_height,
                "tipBlockTime": chain.tip.block_time,
                "autoProduceMs": self.node.auto_produce_ms,
            }

    def scenario(self, params: list) -> object:
        if not params or not isinstance(params[0], str):
            raise E.invalid_params("Invalid params: expected [step, {args}]")
        args = params[1] if len(params) > 1 and params[1] is not None else {}
        with self.node.chain.lock:  # a step's blocks are produced back to back
            return self.node.scenario.run(params[0], args)
