"""What an output token costs on a row of the price table, at the throughput the eval measured."""

from __future__ import annotations

from dataclasses import dataclass

from quantserve.prices import HardwareRow


@dataclass(frozen=True)
class TokenCost:
    usd_per_1m_output_tokens: float
    tokens_per_usd: float
    usd_per_hour: float
    price_row: str


def token_cost(output_tok_s: float, row: HardwareRow, usd_per_kwh: float | None = None) -> TokenCost | None:
    """What an output token costs when the hardware-hour is spent at this throughput; None at 0 tok/s."""
    if output_tok_s <= 0:
        return None
    usd_per_hour = row.effective_usd_per_hour(usd_per_kwh)
    tokens_per_hour = output_tok_s * 3600.0
    return TokenCost(
        usd_per_1m_output_tokens=usd_per_hour / tokens_per_hour * 1e6,
        tokens_per_usd=tokens_per_hour / usd_per_hour if usd_per_hour > 0 else float("inf"),
        usd_per_hour=usd_per_hour,
        price_row=row.name,
    )
