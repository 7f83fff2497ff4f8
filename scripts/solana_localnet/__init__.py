"""Local Solana JSON-RPC + WebSocket node on LiteSVM (real SPL Token, Token-2022 and ATA
programs) for the indexer's tests and demo. See README.md in this folder."""

from .chain import Chain, ChainConfig
from .node import Localnet, start_localnet
from .scenario import Scenario, ScenarioError

__all__ = ["Chain", "ChainConfig", "Localnet", "Scenario", "ScenarioError", "start_localnet"]
