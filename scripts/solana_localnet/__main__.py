"""Entry point for `python -m solana_localnet` and `python scripts/solana_localnet`."""

import sys

if __package__ in (None, ""):
    # Run as a directory (`python scripts/solana_localnet`): make the package importable.
    import os

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from solana_localnet.cli import main
else:
    from .cli import main

sys.exit(main())
