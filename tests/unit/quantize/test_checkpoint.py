from __future__ import annotations

import json

from quantserve.quantize.checkpoint import cpu_serving_dtype, weight_bits


def _write(folder, quantization_config=None):
    cfg = {"model_type": "llama"}
    if quantization_config:
        cfg["quantization_config"] = quantization_config
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_w4a16_checkpoints_are_served_in_bf16_on_cpu(tmp_path):
    folder = _write(tmp_path, {"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"weights": {"num_bits": 4, "group_size": 64}, "input_activations": None}}})
    assert weight_bits(folder) == (4, False)
    assert cpu_serving_dtype(folder) == "bfloat16"


def test_w8a8_and_full_precision_stay_in_fp32(tmp_path):
    w8a8 = _write(tmp_path, {"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"weights": {"num_bits": 8}, "input_activations": {"num_bits": 8, "dynamic": True}}}})
    assert weight_bits(w8a8) == (8, True)
    assert cpu_serving_dtype(w8a8) == "float32"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert weight_bits(_write(plain)) == (None, False)
    assert cpu_serving_dtype(plain) == "float32"
