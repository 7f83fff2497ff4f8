import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT / "scripts", ROOT / "tests", ROOT):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


@pytest.fixture
def funded_chain():
    """anvil with the sample token deployed, investors registered and issued to: (anvil, w3, deployment)."""
    import devchain
    from helpers import funded_sample
    with devchain.Anvil() as anvil:
        w3 = devchain.connect(anvil.http_url)
        yield anvil, w3, funded_sample(w3)
