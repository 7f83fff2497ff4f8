"""indexer: an exact, crash-safe cap table of tokenized securities from EVM and Solana chains."""

__version__ = "0.1.0"
