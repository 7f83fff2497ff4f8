"""PubSub WebSocket server: slotSubscribe, rootSubscribe, logsSubscribe and their unsubscribes,
after agave `rpc/src/rpc_pubsub.rs` and `rpc_subscriptions.rs`:

- subscribe returns an integer id (global counter); unsubscribe an unknown id on this
  connection -> -32602 "Invalid subscription id.";
- slotNotification `{parent, root, slot}` when a block is processed (skipped slots: none);
- rootNotification `<slot>` for each newly rooted block;
- logsNotification `{context:{slot}, value:{signature, err, logs}}` when a block reaches the
  subscription's commitment (default finalized); `mentions` takes exactly one address and
  matches the transaction's account keys.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field

from solders.pubkey import Pubkey
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from . import rpc_errors as E
from .chain import Chain
from .jsonrpc import dumps, handle_text
from .ledger import Block
from .rpc_methods import API_VERSION, FEATURE_SET

log = logging.getLogger(__name__)
_LEGACY_COMMITMENTS = {"recent": "processed", "single": "confirmed", "singleGossip": "confirmed",
                       "root": "finalized", "max": "finalized"}


@dataclass
class Subscription:
    id: int
    kind: str  # slot | root | logs
    commitment: str = "finalized"
    mentions: Pubkey | None = None


@dataclass(eq=False)  # identity semantics: clients live in a set
class Client:
    connection: ServerConnection
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    subscriptions: dict[int, Subscription] = field(default_factory=dict)


def _notification(method: str, result: object, subscription: int) -> str:
    params = f'{{"result":{dumps(result)},"subscription":{subscription}}}'
    return f'{{"jsonrpc":"2.0","method":"{method}","params":{params}}}'


class PubSubServer:
    def __init__(self, chain: Chain):
        self.chain = chain
        self._ids = itertools.count()
        self._clients: set[Client] = set()
        self._server = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, host: str, port: int) -> int:
        self._loop = asyncio.get_running_loop()
        self._server = await serve(self._handle, host, port, ping_interval=None)
        self.chain.add_listener(self._on_chain_event)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.chain.remove_listener(self._on_chain_event)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def drop_all(self, abort: bool = True) -> int:
        """Cut every connection (abort = TCP reset-like drop; otherwise close 1001 going away)."""
        clients = list(self._clients)
        for client in clients:
            if abort:
                client.connection.transport.abort()
            else:
                asyncio.ensure_future(client.connection.close(1001, "going away"))
        return len(clients)

    # ---- connections -------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        client = Client(connection)
        self._clients.add(client)
        sender = asyncio.create_task(self._pump(client))
        try:
            async for message in connection:
                reply = handle_text(message, lambda m, p: self._dispatch(client, m, p))
                if reply is not None:
                    client.queue.put_nowait(reply)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            sender.cancel()

    @staticmethod
    async def _pump(client: Client) -> None:
        """One writer per connection keeps responses and notifications in order."""
        try:
            while True:
                await client.connection.send(await client.queue.get())
        except (ConnectionClosed, asyncio.CancelledError):
            pass

    def _dispatch(self, client: Client, method: str, params: object) -> object:
        params = params if isinstance(params, list) else []
        if method == "slotSubscribe":
            return self._subscribe(client, Subscription(next(self._ids), "slot"))
        if method == "rootSubscribe":
            return self._subscribe(client, Subscription(next(self._ids), "root"))
        if method == "logsSubscribe":
            return self._subscribe(client, self._logs_subscription(params))
        if method in ("slotUnsubscribe", "rootUnsubscribe", "logsUnsubscribe"):
            sub_id = params[0] if params else None
            if not isinstance(sub_id, int) or client.subscriptions.pop(sub_id, None) is None:
                raise E.invalid_params("Invalid subscription id.")
            return True
        if method == "getVersion":
            return {"solana-core": API_VERSION, "feature-set": FEATURE_SET}
        raise E.method_not_found()

    @staticmethod
    def _subscribe(client: Client, subscription: Subscription) -> int:
        client.subscriptions[subscription.id] = subscription
        return subscription.id

    def _logs_subscription(self, params: list) -> Subscription:
        if not params:
            raise E.invalid_params("Invalid params: missing logs filter")
        log_filter = params[0]
        config = params[1] if len(params) > 1 and isinstance(params[1], dict) else {}
        commitment = config.get("commitment") or "finalized"
        commitment = _LEGACY_COMMITMENTS.get(commitment, commitment)
        if commitment not in ("processed", "confirmed", "finalized"):
            raise E.invalid_params(f"Invalid params: unknown variant `{commitment}`")
        if log_filter in ("all", "allWithVotes"):
            return Subscription(next(self._ids), "logs", commitment)
        if isinstance(log_filter, dict) and isinstance(log_filter.get("mentions"), list):
            keys = log_filter["mentions"]
            if len(keys) != 1:
                raise E.invalid_params("Invalid Request: Only 1 address supported")
            try:
                mention = Pubkey.from_string(keys[0])
            except (ValueError, TypeError):
                raise E.invalid_params("Invalid Request: Invalid mentions provided") from None
            return Subscription(next(self._ids), "logs", commitment, mention)
        raise E.invalid_params("Invalid params: unknown logs filter")

    # ---- chain events (called from whichever thread produced the block) -----------------

    def _on_chain_event(self, kind: str, payload: object) -> None:
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._deliver, kind, payload)
        except RuntimeError:  # loop closed while shutting down: nobody is listening
            pass

    def _deliver(self, kind: str, payload: object) -> None:
        for client in list(self._clients):
            for sub in list(client.subscriptions.values()):
                for message in self._messages_for(sub, kind, payload):
                    client.queue.put_nowait(message)

    @staticmethod
    def _messages_for(sub: Subscription, kind: str, payload: object) -> list[str]:
        if kind == "slot" and sub.kind == "slot":
            return [_notification("slotNotification", payload, sub.id)]
        if kind == "root" and sub.kind == "root":
            return [_notification("rootNotification", payload, sub.id)]
        if kind == "commitment" and sub.kind == "logs":
            level, block = payload
            if level != sub.commitment:
                return []
            return [_notification("logsNotification", {
                "context": {"slot": block.slot},
                "value": {"signature": r.signature, "err": r.err, "logs": r.log_messages}}, sub.id)
                for r in _matching(block, sub.mentions)]
        return []


def _matching(block: Block, mentions: Pubkey | None):
    return [r for r in block.transactions if mentions is None or mentions in r.account_keys]

