"""Mixed precision's choice of layers: the sensitivity probe on a tiny real Llama, and the greedy pick."""

from __future__ import annotations

import pytest

from quantserve.quantize.sensitivity import (
    Int4Probe,
    LayerSensitivity,
    Unit,
    extra_bytes_for_8bit,
    fake_quantize,
    int4_layer_bytes,
    int8_layer_bytes,
    measure_sensitivity,
    pick_promotions,
    plan,
    promotion_units,
)


def _layer(name: str, out_f: int, in_f: int, kld: float) -> LayerSensitivity:
    return LayerSensitivity(name, in_f, out_f, kld)


LAYERS = [_layer("model.layers.0.self_attn.q_proj", 576, 576, .001),
          _layer("model.layers.0.self_attn.k_proj", 192, 576, .002),
          _layer("model.layers.0.self_attn.v_proj", 192, 576, .003),
          _layer("model.layers.0.mlp.down_proj", 576, 1536, .004),
          _layer("model.layers.0.mlp.gate_proj", 1536, 576, .0005),
          _layer("model.layers.0.mlp.up_proj", 1536, 576, .0005)]


def test_layers_vllm_fuses_are_promoted_together():
    units = promotion_units(LAYERS)
    assert [u.names for u in units] == [tuple(n.name for n in LAYERS[:3]), ("model.layers.0.mlp.down_proj",),
                                       ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj")]
    assert units[0].kld == pytest.approx(.006)


def test_layer_bytes_follow_the_checkpoint_layout():
    # packed INT4 + a bf16 scale and a packed 4-bit zero point per group of 64 + the weight_shape tensor
    assert int4_layer_bytes(1536, 576) == 1536 * 576 // 2 + 1536 * 9 * 2 + 192 * 9 * 4 + 16
    assert int8_layer_bytes(1536, 576) == 1536 * 576 + 1536 * 2
    assert extra_bytes_for_8bit(1536, 576) == int8_layer_bytes(1536, 576) - int4_layer_bytes(1536, 576) > 0


def test_the_pick_takes_most_kld_per_byte_first_and_stops_at_the_budget():
    qkv, down, gate_up = promotion_units(LAYERS)
    budget = 1000 + qkv.extra_bytes + down.extra_bytes
    p = pick_promotions([gate_up, down, qkv], int4_bytes=1000, source_bytes=10_000_000, budget_ratio=budget / 1e7)
    assert p.picked == [qkv, down] and p.skipped == [gate_up] and p.predicted_bytes == budget
    assert p.layers == [*qkv.names, *down.names]
    # a large unit that does not fit is skipped; a smaller one after it is still taken
    big, small = Unit(("a",), 0.010, 1000), Unit(("b",), 0.001, 200)
    p = pick_promotions([big, small], 0, 100_000, 500 / 100_000)
    assert p.picked == [small] and p.skipped == [big] and p.predicted_bytes == 200
    # no room: nothing is picked and the checkpoint stays all INT4
    p = pick_promotions([qkv, down], 1000, 10_000_000, 1e-4)
    assert p.picked == [] and p.predicted_bytes == 1000


@pytest.fixture(scope="module")
def tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def test_sensitivity_measures_each_linear_alone_and_leaves_the_model_untouched(tiny_llama):
    import torch

    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    seqs = [list(range(i, i + 32)) for i in (0, 50)]
    probe = Int4Probe(group_size=64)
    # one layer already on the INT4 grid: quantizing it again changes nothing, so it cannot hurt
    on_grid = tiny_llama.model.layers[1].mlp.down_proj
    on_grid.weight.data = fake_quantize(on_grid.weight.data, probe)
    before["model.layers.1.mlp.down_proj.weight"] = on_grid.weight.data.clone()
    layers = measure_sensitivity(tiny_llama, seqs, probe)
    assert len(layers) == 2 * 7 and all(layer.kld >= 0 for layer in layers)
    by_name = {layer.name: layer.kld for layer in layers}
    assert by_name["model.layers.1.mlp.down_proj"] < 1e-6
    assert max(by_name.values()) > 1e-4  # a random layer rounded to 16 levels moves the output
    after = tiny_llama.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_plan_fills_the_budget_and_says_why_for_the_manifest(tiny_llama):
    seqs = [list(range(0, 32))]
    probe = Int4Probe(group_size=64)
    source_bytes = sum(p.numel() * 2 for p in tiny_llama.parameters())
    planned = plan(tiny_llama, seqs, probe, budget_ratio=0.6, source_bytes=source_bytes)
    record = planned.record("W8A8")
    assert record.int4_ratio < record.predicted_ratio <= 0.6
    assert record.promoted and record.sensitivity_tokens == 32 and len(record.most_sensitive) == 10
    assert [name for unit in record.promoted for name in unit.layers] == planned.promotion.layers
    first = record.promoted[0]
    assert first.kld / first.extra_bytes == max(u.kld / u.extra_bytes for u in record.promoted)
