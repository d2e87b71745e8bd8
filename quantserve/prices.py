"""The price table (prices.yaml beside this file): hardware $/hour for the report, token prices for billing.

In the core because two stages read it: eval prices a hardware-hour, serve's `usage` bills tokens.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ValidationError, model_validator

from quantserve.errors import UserError, first_validation_error

DEFAULT_PRICES = Path(__file__).resolve().parent / "prices.yaml"
HOURS_PER_MONTH = 730.0  # 365 * 24 / 12


class HardwareRow(BaseModel):
    name: str
    label: str
    vram_gb: float | None  # None for a CPU machine
    usd_per_hour: float
    kind: Literal["owned", "cloud"]
    source: str
    date: str
    watts: float | None = None
    purchase_usd: float | None = None
    amortization_months: float | None = None

    def owned_usd_per_hour(self, usd_per_kwh: float) -> float:
        """Electricity plus straight-line purchase amortization, for a GPU you own and run 24/7."""
        if self.kind != "owned" or self.watts is None:
            raise UserError(f"{self.name} is not an owned GPU with a power draw; use its usd_per_hour")
        power = self.watts / 1000.0 * usd_per_kwh
        amortization = 0.0
        if self.purchase_usd and self.amortization_months:
            amortization = self.purchase_usd / (self.amortization_months * HOURS_PER_MONTH)
        return power + amortization

    def effective_usd_per_hour(self, usd_per_kwh: float | None = None) -> float:
        if usd_per_kwh is not None and self.kind == "owned":
            return self.owned_usd_per_hour(usd_per_kwh)
        return self.usd_per_hour


class TokenPrice(BaseModel):
    model: str  # glob pattern over served model names
    input_usd_per_1m: float
    output_usd_per_1m: float

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_usd_per_1m + completion_tokens * self.output_usd_per_1m) / 1e6


class PriceTable(BaseModel):
    hardware_rows: list[HardwareRow]
    token_prices: list[TokenPrice]

    @model_validator(mode="after")
    def _check(self) -> PriceTable:
        names = [row.name for row in self.hardware_rows]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate hardware names in {names}")
        if not any(tp.model == "*" for tp in self.token_prices):
            raise ValueError('token_prices needs a "*" default row')
        return self

    def names(self) -> list[str]:
        return [row.name for row in self.hardware_rows]

    def hardware(self, name: str) -> HardwareRow:
        for row in self.hardware_rows:
            if row.name == name:
                return row
        raise UserError(f"unknown GPU/hardware '{name}'; known: {', '.join(self.names())} "
                        f"(add a row to {DEFAULT_PRICES})")

    def token_price(self, model: str) -> TokenPrice:
        for tp in self.token_prices:
            if fnmatch.fnmatchcase(model, tp.model):
                return tp
        raise AssertionError("unreachable: the '*' row matches every model")


def load_price_table(path: Path | None = None) -> PriceTable:
    path = path or DEFAULT_PRICES
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"price table not found: {path}") from None
    except yaml.YAMLError as err:
        raise UserError(f"price table {path} is not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise UserError(f"price table {path} must be a mapping with 'hardware' and 'token_prices'")
    try:
        return PriceTable(hardware_rows=raw.get("hardware") or [], token_prices=raw.get("token_prices") or [])
    except ValidationError as err:
        raise UserError(f"price table {path}: {first_validation_error(err)}") from None

