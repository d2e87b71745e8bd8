from __future__ import annotations

import json
from pathlib import Path

from quantserve.checkpoint import activation_quantized_targets, checkpoint_format, weight_bits


def _write(folder, quantization_config=None):
    folder.mkdir(exist_ok=True)
    cfg = {"model_type": "llama"}
    if quantization_config:
        cfg["quantization_config"] = quantization_config
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_compressed_tensors_formats_come_from_bits_and_activations(tmp_path):
    w4 = _write(tmp_path / "w4", {"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"weights": {"num_bits": 4, "group_size": 64}, "input_activations": None}}})
    assert weight_bits(w4) == (4, False)
    assert checkpoint_format(w4) == "w4a16-int4"
    w8a8 = _write(tmp_path / "w8a8", {"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"weights": {"num_bits": 8}, "input_activations": {"num_bits": 8, "dynamic": True}}}})
    assert weight_bits(w8a8) == (8, True)
    assert checkpoint_format(w8a8) == "w8a8-int8"
    w8a16 = _write(tmp_path / "w8a16", {"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"weights": {"num_bits": 8}, "input_activations": None}}})
    assert checkpoint_format(w8a16) == "other:compressed-tensors-w8"


def test_a_mixed_checkpoint_is_its_linear_group_whatever_order_the_groups_are_saved_in(tmp_path):
    promoted = ["model.layers.11.mlp.down_proj"]
    mixed = _write(tmp_path / "mixed", {"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"targets": promoted, "weights": {"num_bits": 8},
                    "input_activations": {"num_bits": 8, "dynamic": True}},
        "group_1": {"targets": ["Linear"], "weights": {"num_bits": 4, "group_size": 64},
                    "input_activations": None}}})
    assert weight_bits(mixed) == (4, False) and checkpoint_format(mixed) == "w4a16-int4"
    # only the promoted layers run with INT8 inputs: the quality check emulates those and no others
    assert activation_quantized_targets(mixed) == set(promoted)
    w8a8 = _write(tmp_path / "w8a8", {"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"targets": ["Linear"], "weights": {"num_bits": 8}, "input_activations": {"num_bits": 8}}}})
    assert activation_quantized_targets(w8a8) == {"Linear"}
    assert activation_quantized_targets(_write(tmp_path / "plain")) == set()


def test_full_precision_bitsandbytes_and_unknown_methods(tmp_path):
    plain = _write(tmp_path / "plain")
    assert weight_bits(plain) == (None, False)
    assert checkpoint_format(plain) == "full"
    assert checkpoint_format(tmp_path / "no-such-folder") == "full"
    assert checkpoint_format(_write(tmp_path / "nf4", {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                                       "bnb_4bit_quant_type": "nf4"})) == "bnb-nf4"
    assert checkpoint_format(_write(tmp_path / "i8", {"quant_method": "bitsandbytes",
                                                      "load_in_8bit": True})) == "bnb-int8"
    assert checkpoint_format(_write(tmp_path / "fp8", {"quant_method": "fp8"})) == "other:fp8"


def _gguf(path: Path, file_type: int) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    path.mkdir(parents=True)
    writer = GGUFWriter(path / "model.gguf", arch="llama")
    writer.add_file_type(file_type)
    writer.add_tensor("output_norm.weight", np.ones(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_and_openvino_folders_name_their_runtime_and_format(tmp_path):
    from quantserve.checkpoint import FORMAT_RUNTIME, OPENVINO_WEIGHTS, checkpoint_runtime, runtime_of_format

    q8, q4km = _gguf(tmp_path / "q8", 7), _gguf(tmp_path / "q4km", 15)
    assert (checkpoint_format(q8), checkpoint_format(q4km)) == ("gguf-q8_0", "gguf-q4_k_m")
    assert checkpoint_format(_gguf(tmp_path / "q5", 8)) == "other:gguf-ftype-8"
    assert checkpoint_runtime(q8) == "llama.cpp" and checkpoint_runtime(q8 / "model.gguf") == "llama.cpp"
    ov = tmp_path / "ov"
    ov.mkdir()
    (ov / "openvino_model.xml").write_text("<net/>")
    (ov / "config.json").write_text('{"model_type": "llama"}')  # optimum keeps the HF config beside the IR
    assert checkpoint_format(ov) == "other:openvino-unknown"
    (ov / OPENVINO_WEIGHTS).write_text('{"bits": 4, "group_size": 64}')
    assert checkpoint_format(ov) == "ov-int4" and checkpoint_runtime(ov) == "openvino"
    assert checkpoint_runtime(_write(tmp_path / "hf", None)) == "vllm"
    assert all(runtime_of_format(f) == r for f, r in FORMAT_RUNTIME.items())
    assert runtime_of_format("w4a16-int4") == "vllm" and runtime_of_format("other:gguf-ftype-8") == "llama.cpp"
