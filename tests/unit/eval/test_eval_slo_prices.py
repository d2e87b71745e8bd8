"""SLO strings, the price table and its cost arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantserve.errors import UserError
from quantserve.eval.slo import load_default_slo, parse_slo, slo_from_dict, slo_to_dict
from quantserve.eval.token_cost import token_cost
from quantserve.prices import load_price_table


def test_parse_slo_units_and_aliases():
    slo = parse_slo("ttft_p99=200ms, itl_p99=0.05s,e2el_p50=1500")
    assert [(o.key, o.threshold_ms) for o in slo] == [
        ("ttft_p99", 200.0), ("itl_p99", 50.0), ("e2e_p50", 1500.0)]
    assert slo_from_dict(slo_to_dict(slo)) == slo
    assert parse_slo("") == () and parse_slo(None) == ()
    assert load_default_slo()  # the shipped slo.yaml parses


@pytest.mark.parametrize(("text", "message"), [
    ("ttft_p99=abc", "ttft_p99='abc' is not a duration"),
    ("ttft_p99", "malformed SLO 'ttft_p99'"),
    ("ttfb_p99=200ms", "unknown SLO key 'ttfb_p99'"),
    ("ttft_p42=200ms", "unknown SLO key"),
    ("ttft_p99=0ms", "must be greater than zero"),
    ("ttft_p99=-5ms", "is not a duration"),
])
def test_malformed_slo_is_a_user_error(text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_slo(text)


def test_shipped_price_table():
    table = load_price_table()
    for name in ("rtx-3090", "rtx-4090", "rtx-4060-ti-16gb", "l4", "a10", "a100-80gb", "h100", "cpu-2core"):
        row = table.hardware(name)
        assert row.usd_per_hour > 0 and row.source and row.date
        if row.kind == "owned":
            assert row.watts and row.purchase_usd and row.amortization_months
    assert table.hardware("cpu-2core").vram_gb is None


def test_unknown_gpu_lists_known_names():
    with pytest.raises(UserError, match=r"unknown GPU/hardware 'rtx-9090'; known: rtx-3090, .*cpu-2core"):
        load_price_table().hardware("rtx-9090")


def test_token_price_first_glob_match_and_cost(tmp_path: Path):
    path = tmp_path / "prices.yaml"
    path.write_text("""
hardware: []
token_prices:
  - {model: "*-gptq-*", input_usd_per_1m: 0.5, output_usd_per_1m: 1.5}
  - {model: "*-gptq-w4a16", input_usd_per_1m: 9, output_usd_per_1m: 9}
  - {model: "*", input_usd_per_1m: 1, output_usd_per_1m: 2}
""")
    table = load_price_table(path)
    price = table.token_price("smol-gptq-w4a16")
    assert (price.input_usd_per_1m, price.output_usd_per_1m) == (0.5, 1.5)  # first match wins
    assert price.cost_usd(2_000_000, 1_000_000) == pytest.approx(1.0 + 1.5)
    assert table.token_price("anything").cost_usd(1000, 500) == pytest.approx(0.001 + 0.001)


def test_price_table_without_default_token_row_is_rejected(tmp_path: Path):
    path = tmp_path / "prices.yaml"
    path.write_text("hardware: []\ntoken_prices:\n"
                    "  - {model: a, input_usd_per_1m: 1, output_usd_per_1m: 1}\n")
    with pytest.raises(UserError, match='needs a "\\*" default row'):
        load_price_table(path)


def test_dollars_per_million_tokens():
    row = load_price_table().hardware("l4")  # cloud, $/hour as listed
    cost = token_cost(100.0, row)  # 360k tokens per hour
    assert cost.usd_per_1m_output_tokens == pytest.approx(row.usd_per_hour / 0.36)
    assert cost.tokens_per_usd == pytest.approx(360_000 / row.usd_per_hour)
    assert cost.price_row == "l4"
    assert token_cost(0.0, row) is None


def test_owned_gpu_cost_from_power_and_amortization():
    row = load_price_table().hardware("rtx-4090").model_copy(
        update={"watts": 400, "purchase_usd": 1752, "amortization_months": 24})
    # 0.4 kW * $0.25 = $0.10/h; $1752 / (24 * 730 h) = $0.10/h
    assert row.owned_usd_per_hour(0.25) == pytest.approx(0.20)
    cost = token_cost(1000 / 36, row, usd_per_kwh=0.25)  # 100k tokens per hour
    assert cost.usd_per_1m_output_tokens == pytest.approx(2.0)
    assert token_cost(1000 / 36, row).usd_per_hour == row.usd_per_hour  # no kWh price: listed rate
