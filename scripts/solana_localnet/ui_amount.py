"""UiTokenAmount formatting exactly as agave's account decoder does it.

Sources: agave account-decoder parse_token.rs (`real_number_string_trimmed`,
`token_amount_to_ui_amount_v3`) and the token-2022 interface ScaledUiAmountConfig
(`amount_to_ui_amount`: format the f64 with `decimals` places, then trim zeros).
"""

from __future__ import annotations

from decimal import Decimal

from .token_state import ScaledUiAmountConfig


def real_number_string_trimmed(amount: int, decimals: int) -> str:
    if decimals == 0:
        return str(amount)
    text = str(amount).rjust(decimals + 1, "0")
    text = text[:-decimals] + "." + text[-decimals:]
    return text.rstrip("0").rstrip(".")


def _trim(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text


def token_amount(amount: int, decimals: int) -> dict:
    """UiTokenAmount from decimals only (SplTokenAdditionalDataV2::with_decimals).

    This is what transactions use: ledger token balances and instruction `tokenAmount`
    never apply a ScaledUiAmount multiplier ("ledger data always uses the raw token amount").
    """
    ui_amount = amount / 10**decimals if decimals <= 19 else None  # 10_usize.checked_pow
    return {
        "amount": str(amount),
        "decimals": decimals,
        "uiAmount": ui_amount,
        "uiAmountString": real_number_string_trimmed(amount, decimals),
    }


def ledger_token_amount(amount: int, decimals: int) -> dict:
    """Token balances read back from the blockstore: a zero uiAmount is stored as null.

    agave storage-proto converts `ui_amount == 0.0` to None; the recorded devnet
    response (amount "0") shows `"uiAmount": null`.
    """
    out = token_amount(amount, decimals)
    if not out["uiAmount"]:
        out["uiAmount"] = None
    return out


def scaled_token_amount(
    amount: int, decimals: int, config: ScaledUiAmountConfig, unix_timestamp: int
) -> dict:
    """Account-decoder UiTokenAmount for a ScaledUiAmount mint (getAccountInfo & co)."""
    multiplier = config.multiplier_at(unix_timestamp)
    value = float(amount) * multiplier / float(10**decimals)
    text = _trim(f"{value:.{decimals}f}")
    return {
        "amount": str(amount),
        "decimals": decimals,
        "uiAmount": float(text),
        "uiAmountString": text,
    }


def rust_f64_to_string(value: float) -> str:
    """Rust `f64::to_string`: shortest round-trip digits, never an exponent, no `.0`."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    text = format(Decimal(repr(value)), "f")
    return _trim(text) if "." in text else text
