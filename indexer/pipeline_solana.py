"""Solana on the shared pipeline: the same cursor, reorg walk, retries, store and cap table as EVM.

Only the chain-specific hooks live here: the genesis check, the decoder and its per-mint context (kept in
token_state.metadata so a restart or a rollback rebuilds it from the database), and first-seen mint
metadata read with getAccountInfo. `confirmations` does not apply: the commitment level is Solana's own
depth rule (the pipeline's head is the newest slot at that commitment).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

from indexer.config import Config
from indexer.decoders.solana import SolanaDecoder
from indexer.errors import ConfigError, RpcError
from indexer.models import DecodedBlock, RawBlock
from indexer.pipeline import Pipeline
from indexer.sources.solana import SolanaFetcher
from indexer.store import Store
from indexer.worker import StoreWorker

log = logging.getLogger(__name__)

DESCRIBED_FIELDS = ("name", "symbol", "decimals")
# decoder context persisted by the store as `meta:<key>` token updates (token_state.metadata JSON)
PERSISTED_CONTEXT = ("permanent_delegate", "metadata_address")
# default bound of a history range, in slots (about as many blocks: clusters skip few slots)
RANGE_CAP_SLOTS = 400


def _parsed_info(value: dict | None) -> dict:
    """`data.parsed.info` of a jsonParsed getAccountInfo value ({} when absent or not parsed)."""
    data = value.get("data") if isinstance(value, dict) else None
    parsed = data.get("parsed") if isinstance(data, dict) else None
    info = parsed.get("info") if isinstance(parsed, dict) else None
    return info if isinstance(info, dict) else {}


def _extension(info: dict, name: str) -> dict:
    for ext in info.get("extensions") or ():
        if isinstance(ext, dict) and ext.get("extension") == name and isinstance(ext.get("state"), dict):
            return ext["state"]
    return {}


def mint_description(value: dict | None) -> dict[str, Any]:
    """decimals, and name/symbol from the TokenMetadata extension, of a jsonParsed mint account."""
    info = _parsed_info(value)
    out: dict[str, Any] = {}
    decimals = info.get("decimals")
    if isinstance(decimals, int) and not isinstance(decimals, bool) and 0 <= decimals <= 255:
        out["decimals"] = decimals
    out.update(_names(_extension(info, "tokenMetadata")))
    return out


def metadata_pointer(value: dict | None) -> str | None:
    """Where a mint's MetadataPointer says its TokenMetadata lives (None: no pointer)."""
    address = _extension(_parsed_info(value), "metadataPointer").get("metadataAddress")
    return address if isinstance(address, str) else None


def _names(state: dict) -> dict[str, str]:
    return {f: state[f] for f in ("name", "symbol") if isinstance(state.get(f), str)}


def _read_token_state(store: Store) -> dict[str, dict[str, Any]]:
    """token -> {name, symbol, decimals, metadata} for every token with a state row (store worker thread)."""
    rows = store.conn.execute("SELECT token, name, symbol, decimals, metadata FROM token_state WHERE chain=?",
                              (store.chain,)).fetchall()
    return {t: {"name": n, "symbol": s, "decimals": d, "metadata": m} for t, n, s, d, m in rows}


class SolanaPipeline(Pipeline):
    def __init__(self, cfg: Config, source, store: Store, worker: StoreWorker, metrics=None, **kw):
        if cfg.chain.confirmations:
            raise ConfigError(f"chain.confirmations = {cfg.chain.confirmations} does not apply to Solana: "
                              f"chain.commitment = {cfg.chain.commitment!r} sets how final indexed slots are",
                              hint="remove chain.confirmations (or set it to 0)")
        super().__init__(cfg, source, SolanaFetcher(source), store, worker, metrics, **kw)
        # every fetched block is a whole getBlock (MBs on mainnet), unlike a filtered eth_getLogs answer: unless
        # the config says otherwise, start at the target and never let a range exceed a few times it
        explicit = cfg.chain.model_fields_set
        target = self.fetcher.target_items
        if "initial_getlogs_range" not in explicit:
            self.range_size = target
        self.max_range = cfg.chain.max_getlogs_range if "max_getlogs_range" in explicit else RANGE_CAP_SLOTS
        self.mints = cfg.token_addresses()
        self.decoder = SolanaDecoder({m: {} for m in self.mints})
        # fields of each mint known to be set (database, or decoded in this process); mints already described
        self.known_fields: dict[str, set[str]] = {}
        self.described: set[str] = set()

    def _adapt_range(self, n_items: int, seconds: float, span: int) -> None:
        super()._adapt_range(n_items, seconds, span)
        self.range_size = min(self.range_size, self.max_range)

    async def check_chain(self) -> None:
        genesis = await self._request(self.source.genesis_hash)
        await self._db(self.store.check_genesis, genesis)

    async def load_extra_state(self) -> None:
        states = await self._db(_read_token_state, self.store)
        contexts: dict[str, dict[str, Any]] = {}
        self.known_fields = {}
        for mint in self.mints:
            state = states.get(mint)
            meta = json.loads(state["metadata"]) if state and state["metadata"] else {}
            contexts[mint] = {k: meta[k] for k in PERSISTED_CONTEXT if meta.get(k)}
            self.known_fields[mint] = {f for f in DESCRIBED_FIELDS if state and state[f] is not None}
        self.decoder = SolanaDecoder(contexts)
        self.described = {m for m in self.mints if m in states}

    def fetch_args(self) -> tuple:
        return ()

    async def decode(self, raws: list[RawBlock]) -> list[DecodedBlock]:
        out = []
        for raw in raws:
            self.heartbeat()
            decoded = self.decoder.decode(raw)
            fresh: list[str] = []
            for ev in decoded.events:
                update = ev.token_update or {}
                for key in PERSISTED_CONTEXT:
                    if f"meta:{key}" in update:
                        self.decoder.set_context(ev.token, key, update[f"meta:{key}"])
                known = self.known_fields.setdefault(ev.token, set())
                if ev.token not in self.described and ev.token not in fresh:
                    fresh.append(ev.token)
                known.update(f for f in DESCRIBED_FIELDS if update.get(f) is not None)
            infos = []
            for mint in fresh:
                self.described.add(mint)
                missing = [f for f in DESCRIBED_FIELDS if f not in self.known_fields[mint]]
                if not missing:
                    continue  # the block itself (initializeMint, metadata init) says everything
                info = {k: v for k, v in (await self._describe(mint)).items() if k in missing and v is not None}
                if info:
                    infos.append((mint, info))
                    self.known_fields[mint].update(info)
            out.append(replace(decoded, token_info=tuple(infos)) if infos else decoded)
        return out

    async def _describe(self, mint: str) -> dict[str, Any]:
        """decimals/name/symbol of a mint first seen after its creation. Solana has no historical account reads:
        this is the state now, at our commitment."""
        try:
            _, value = await self._request(self.source.account_parsed, mint)
            info = mint_description(value)
            pointer = metadata_pointer(value)
            if "name" not in info and pointer and pointer != mint:
                # TokenMetadata kept in another account (best effort: as a TLV extension or parsed fields)
                _, external = await self._request(self.source.account_parsed, pointer)
                parsed = _parsed_info(external)
                info.update(_names(_extension(parsed, "tokenMetadata") or parsed))
            return info
        except RpcError as exc:
            if exc.retryable:
                raise
            log.info("metadata of mint %s unavailable: %s", mint, exc)
            return {}
