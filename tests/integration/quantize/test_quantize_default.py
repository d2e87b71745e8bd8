"""The real libraries (llm-compressor, bitsandbytes, transformers, vLLM's config check) on the real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantserve.manifest import GRID_NOTE, Manifest, list_manifests
from quantserve.quantize.files import file_hashes
from tests.support.cli import run_cli
from tests.support.probe_fixtures import FORMAT_OF_VARIANT

VARIANTS = ["gptq-w4a16", "awq-w4a16", "autoround-w4a16", "mixed-w4a16-w8a8", "w8a8-int8", "sparse24-w8a8",
            "bnb-nf4", "bnb-int8"]
# served by llama.cpp and OpenVINO: the file each runtime loads
RUNTIME_VARIANTS = {"gguf-q8_0": "model.gguf", "gguf-q4_k_m": "model.gguf", "gguf-q4_0": "model.gguf",
                    "ov-int8": "openvino_model.xml", "ov-int4": "openvino_model.xml"}
PRUNED = {"sparse24-w8a8"}  # half its weights removed without retraining: far from the source on purpose


def _manifests(out: Path) -> dict[str, Manifest]:
    return {m.variant: m for _, m in list_manifests(out)}


def test_model_fetch_is_cached_and_answers_paris(default_model, cli):
    mark = default_model / ".quantserve-complete"
    before = mark.stat().st_mtime_ns
    proc = cli("model", "fetch")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == default_model
    assert mark.stat().st_mtime_ns == before  # a second fetch converts nothing
    assert "Paris" in mark.read_text()
    config = json.loads((default_model / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"


def test_every_variant_is_published_with_a_manifest(variants_dir):
    out, proc = variants_dir
    manifests = _manifests(out)
    assert sorted(manifests) == sorted([*VARIANTS, *RUNTIME_VARIANTS])
    for m in manifests.values():
        folder = out / m.name
        assert (folder / RUNTIME_VARIANTS.get(m.variant, "config.json")).is_file()
        assert m.runtime == {"gguf": "llama.cpp", "openvino": "openvino"}.get(m.format, "vllm")
        assert m.files == file_hashes(folder)  # hashes describe exactly what is on disk
        assert m.source.note == GRID_NOTE
        assert m.wall_time_s > 0 and m.peak_rss_bytes > 100 << 20
        assert m.versions["transformers"] and m.versions["torch"]
    assert "smollm2-135m-instruct-w8a8-int8" in proc.stdout  # the table is printed


def test_calibrated_variants_record_their_calibration_and_group_size(variants_dir):
    manifests = _manifests(variants_dir[0])
    for name in ("gptq-w4a16", "awq-w4a16", "autoround-w4a16", "mixed-w4a16-w8a8", "w8a8-int8", "sparse24-w8a8"):
        cal = manifests[name].calibration
        assert cal is not None and cal.samples == 8 and cal.seq_len == 128 and len(cal.sha256) == 64
    assert all(manifests[n].group_size == 64
               for n in ("gptq-w4a16", "awq-w4a16", "autoround-w4a16", "mixed-w4a16-w8a8"))
    assert manifests["bnb-nf4"].calibration is None


def test_sizes_and_quality_are_in_range(variants_dir):
    manifests = _manifests(variants_dir[0])
    for name in ("gptq-w4a16", "awq-w4a16", "autoround-w4a16", "mixed-w4a16-w8a8", "bnb-nf4", "gguf-q4_0",
                 "gguf-q4_k_m", "ov-int4"):
        assert manifests[name].size_ratio <= 0.45, name  # the 16-bit tied embedding is ~21% of the model
    for name in ("w8a8-int8", "sparse24-w8a8", "bnb-int8", "gguf-q8_0", "ov-int8"):
        assert 0.5 < manifests[name].size_ratio < 0.7, name
    for m in manifests.values():
        if m.variant in PRUNED:
            continue
        q = m.quality
        assert q is not None and q.tokens > 2000
        assert 0.9 < q.ppl_ratio < 2.0, (m.name, q.ppl_ratio)
        assert 0 <= q.kld_mean < 1.0 and q.kld_p95 >= q.kld_mean
        assert 0.6 < q.top1_agreement <= 1.0
    # 8-bit must be closer to the source than 4-bit
    assert manifests["w8a8-int8"].quality.kld_mean < manifests["gptq-w4a16"].quality.kld_mean
    assert manifests["bnb-int8"].quality.kld_mean < manifests["bnb-nf4"].quality.kld_mean
    assert manifests["gguf-q8_0"].quality.kld_mean < manifests["gguf-q4_k_m"].quality.kld_mean \
        < manifests["gguf-q4_0"].quality.kld_mean  # SmolLM2's Q4_K_M is mostly Q5_0 (rows of 576)
    assert manifests["ov-int8"].quality.kld_mean < manifests["ov-int4"].quality.kld_mean
    # AutoRound's tuned zero points reach the checkpoint (llm-compressor 0.14.0.1 drops them unpatched: KLD ~1.1)
    assert manifests["autoround-w4a16"].quality.kld_mean < 2 * manifests["gptq-w4a16"].quality.kld_mean
    # pruning costs quality on top of the same INT8 grid
    assert manifests["sparse24-w8a8"].quality.kld_mean > manifests["w8a8-int8"].quality.kld_mean


def test_mixed_variant_keeps_the_layers_it_measured_most_sensitive_at_8_bits(variants_dir):
    from safetensors import safe_open

    m = _manifests(variants_dir[0])["mixed-w4a16-w8a8"]
    mp = m.mixed_precision
    assert mp is not None and mp.promoted and mp.budget_ratio == 0.45
    assert mp.int4_ratio < mp.predicted_ratio <= 0.45 and m.size_ratio <= 0.45
    assert abs(m.size_ratio - mp.predicted_ratio) < 0.002  # the byte model matches the file written
    promoted = [name for unit in mp.promoted for name in unit.layers]
    # fused layers (q/k/v, gate/up) move together: vLLM needs one scheme per fused layer
    for unit in mp.promoted:
        leaves = {name.rsplit(".", 1)[1] for name in unit.layers}
        assert leaves in ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"}, {"o_proj"}, {"down_proj"})
    ratios = [u.kld / u.extra_bytes for u in mp.promoted]
    assert ratios == sorted(ratios, reverse=True)
    folder = variants_dir[0] / m.name
    groups = json.loads((folder / "config.json").read_text())["quantization_config"]["config_groups"]
    eight = [g for g in groups.values() if g["weights"]["num_bits"] == 8]
    assert len(eight) == 1 and sorted(eight[0]["targets"]) == sorted(promoted) and eight[0]["input_activations"]
    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    for name in promoted:  # int8 weights where promoted, packed INT4 everywhere else
        assert f"{name}.weight" in keys and f"{name}.weight_packed" not in keys
    assert "model.layers.0.self_attn.o_proj.weight_packed" in keys or "model.layers.0.self_attn.o_proj" in promoted


def test_sparse_variant_keeps_two_of_every_four_weights_zero(variants_dir):
    import torch
    from safetensors.torch import load_file

    folder = variants_dir[0] / "smollm2-135m-instruct-sparse24-w8a8"
    weights = {k: v for k, v in load_file(folder / "model.safetensors").items()
               if k.endswith(".weight") and v.dtype == torch.int8}
    assert len(weights) == 30 * 7  # every decoder Linear, stored as int8
    for name, w in weights.items():
        zeros_per_four = (w.reshape(-1, 4) == 0).sum(-1)
        assert bool((zeros_per_four >= 2).all()), name


def test_vllm_verdicts_follow_this_machines_probe(variants_dir, machine_probe):
    manifests = _manifests(variants_dir[0])
    for name, m in manifests.items():
        if name in RUNTIME_VARIANTS:  # not vLLM's to load; whether its own runtime runs here is the probe's word
            assert m.vllm_loadable is None and m.vllm_loadable_reason.startswith("served by ")
        else:
            assert m.vllm_loadable is True, m.vllm_loadable_reason  # bitsandbytes too, through vllm-bnb-plugin
        verdict = machine_probe["verdicts"][FORMAT_OF_VARIANT[name]]
        assert m.servable_here is verdict["runs"], (name, m.servable_reason)
        assert m.servable_reason.startswith(verdict["reason"]) and "[probed on " in m.servable_reason


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_loads_back_in_transformers_and_generates(variants_dir, variant):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = variants_dir[0] / f"smollm2-135m-instruct-{variant}"
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(text.strip()) > 0


def test_same_recipe_is_reused_by_hash(variants_dir):
    out, _ = variants_dir
    before = (out / "smollm2-135m-instruct-bnb-nf4" / "manifest.json").read_text()
    proc = run_cli("quantize", "--variants", "bnb-nf4", "--out", str(out), "--samples", "8", "--seq-len", "128")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reused" in proc.stderr
    assert (out / "smollm2-135m-instruct-bnb-nf4" / "manifest.json").read_text() == before


def test_quality_gate_fails_the_command_and_publishes_nothing(tmp_path, default_model):
    proc = run_cli("quantize", "--variants", "bnb-nf4", "--out", str(tmp_path), "--max-kld", "0.000001")
    assert proc.returncode != 0
    assert "quality gate failed" in proc.stderr and "--max-kld" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list_manifests(tmp_path) == []


def test_variants_list_shows_numbers_and_reasons(variants_dir, machine_probe):
    out, _ = variants_dir
    proc = run_cli("variants", "list", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"].removeprefix("smollm2-135m-instruct-"): r for r in json.loads(proc.stdout)}
    assert set(rows) == {*VARIANTS, *RUNTIME_VARIANTS}
    assert rows["gguf-q4_k_m"]["runtime"] == "llama.cpp" and rows["ov-int4"]["runtime"] == "openvino"
    nf4 = machine_probe["verdicts"]["bnb-nf4"]
    assert rows["bnb-nf4"]["servable_here"] is nf4["runs"] and nf4["reason"] in rows["bnb-nf4"]["servable_reason"]
    assert rows["w8a8-int8"]["kld_mean"] is not None


def test_gguf_files_carry_llama_cpp_types_and_the_tokenizer(variants_dir):
    from gguf import GGUFReader

    out = variants_dir[0]
    expected = (("gguf-q8_0", 7, "Q8_0"), ("gguf-q4_k_m", 15, "Q5_0"), ("gguf-q4_0", 2, "Q4_0"))
    for variant, file_type, main_type in expected:
        reader = GGUFReader(out / f"smollm2-135m-instruct-{variant}" / "model.gguf")
        assert int(reader.get_field("general.file_type").contents()) == file_type
        assert reader.get_field("tokenizer.chat_template") is not None  # llama.cpp applies it to chat requests
        types = [t.tensor_type.name for t in reader.tensors if t.name.startswith("blk.") and t.name.endswith(
            "attn_q.weight")]
        assert set(types) == {main_type}, (variant, set(types))  # Q4_K falls back to Q5_0 on rows of 576
