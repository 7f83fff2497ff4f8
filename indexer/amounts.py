"""Exact number formats: uint256 as padded/plain decimal text, multipliers as exact decimals."""

from __future__ import annotations

from decimal import Decimal, localcontext
from functools import lru_cache

U256_MAX = (1 << 256) - 1
PAD = 78  # digits of 2**256 - 1


def pad_u256(value: int) -> str:
    """Fixed-width text so that SQLite's ORDER BY on the column is numeric."""
    if value < 0 or value > U256_MAX:
        raise ValueError(f"amount {value} is outside uint256")
    return str(value).zfill(PAD)


def unpad(text: str) -> int:
    return int(text)


def decimal_text(d: Decimal) -> str:
    """Plain (non-scientific) normalized decimal text: '7', '1.5', '0.001'."""
    if d == 0:
        return "0"
    s = format(d.normalize(), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def fixed18_to_text(value: int) -> str:
    """ERC-8056 / Backed multipliers are 1e18 fixed point."""
    with localcontext() as ctx:
        ctx.prec = 100
        return decimal_text(Decimal(value) / Decimal(10**18))


def float_to_text(value: float) -> str:
    """Token-2022 stores f64 multipliers; repr() is the shortest text that round-trips exactly."""
    return decimal_text(Decimal(repr(float(value))))


def multiplier_in_force(base: str, next_: str | None, effective_at: int | None, timestamp: int) -> str:
    if next_ is not None and effective_at is not None and timestamp >= effective_at:
        return next_
    return base


@lru_cache(maxsize=1024)
def _ratio(multiplier: str) -> tuple[int, int]:
    return Decimal(multiplier).as_integer_ratio()


def scale(amount: int, multiplier: str) -> int:
    """Split-adjusted amount in raw units, rounded down (ERC-8056's integer rule raw*m/1e18).
    Exact: the multiplier's decimal text is an exact ratio of integers."""
    num, den = _ratio(multiplier)
    return amount * num // den


def share(part: int, whole: int, places: int = 18) -> str:
    """part/whole as decimal text rounded half-even to `places` decimals, in integers (exact, and fast
    enough for 20,000 holders)."""
    if whole <= 0:
        return "0"
    q, r = divmod(part * 10**places, whole)
    if 2 * r > whole or (2 * r == whole and q % 2):
        q += 1
    if q == 0:
        return "0"
    digits = str(q).rjust(places + 1, "0")
    whole_part, frac = digits[:-places], digits[-places:].rstrip("0")
    return f"{whole_part}.{frac}" if frac else whole_part
