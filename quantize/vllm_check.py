"""Can vLLM load a variant, and can it run it on this machine? Decided from vLLM's own config resolution
and the platform's kernels, never from a crash at the first forward pass.

Runs in the serving environment (where vLLM lives): `python -m quantserve.quantize.vllm_check DIR...`
prints one JSON object per folder.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from quantserve.quantize.checkpoint import weight_bits


@dataclass
class VllmVerdict:
    path: str
    vllm_loadable: bool | None
    vllm_loadable_reason: str
    servable_here: bool
    servable_reason: str


def _platform_verdict(model_dir: Path, quant: str | None) -> tuple[bool, str]:
    import torch
    from vllm.platforms import current_platform

    if current_platform.is_cuda_alike():
        if quant is None:
            return True, "full-precision weights run on any vLLM GPU"
        from vllm.model_executor.layers.quantization import get_quantization_config

        need = get_quantization_config(quant).get_min_capability()
        cap = current_platform.get_device_capability()
        have = cap.to_int() if cap else 0
        if have < need:
            return False, f"{quant} needs GPU compute capability {need / 10:.1f}+, this GPU has {have / 10:.1f}"
        return True, f"{quant} kernels available on this GPU (capability {have / 10:.1f})"
    if not current_platform.is_cpu():
        return False, f"vLLM platform {current_platform.device_type!r} is not one quantserve serves on"
    if quant is None:
        return True, "full-precision weights run on vLLM's CPU backend"
    if quant == "compressed-tensors":
        bits, act_quant = weight_bits(model_dir)
        if bits == 8 and act_quant:
            return True, "W8A8 INT8 runs on vLLM's CPU backend (oneDNN int8 GEMM)"
        if bits == 4:
            current_platform.import_kernels()
            if hasattr(torch.ops._C, "cpu_gemm_wna16"):
                return True, "the 4-bit CPU kernel (cpu_gemm_wna16) is in this vLLM build; served in bfloat16"
            isa = "AVX-512" if torch.cpu._is_avx512_supported() else "AVX2"
            return False, (
                f"this CPU's vLLM kernel library ({isa}) has no 4-bit GEMM (cpu_gemm_wna16); INT4 needs an "
                "AVX-512 CPU or a CUDA GPU. Runs here: the source model and w8a8-int8"
            )
    return False, f"vLLM's CPU backend does not run {quant} checkpoints. Runs here: the source model and w8a8-int8"


def check(model_dir: Path) -> VllmVerdict:
    from vllm.engine.arg_utils import EngineArgs

    cfg = json.loads((model_dir / "config.json").read_text()).get("quantization_config") or {}
    method = cfg.get("quant_method")
    try:
        model_config = EngineArgs(model=str(model_dir), enforce_eager=True, max_model_len=2048).create_model_config()
    except Exception as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "quantization" in ln.lower()), lines[0] if lines else "")
        detail = detail.split(". Must be one of")[0]  # the list of every method vLLM knows helps nobody here
        reason = f"vLLM config resolution failed: {detail[:300]}"
        if method == "bitsandbytes":
            reason += " (bitsandbytes left vLLM core; the vllm-bnb-plugin package adds it back)"
        return VllmVerdict(str(model_dir), False, reason, False, reason)
    quant = model_config.quantization
    servable, why = _platform_verdict(model_dir, quant)
    return VllmVerdict(str(model_dir), True, f"vLLM resolves the config (quantization={quant})", servable, why)


def main(argv: list[str]) -> None:
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # With no arguments it serves paths from stdin, one per line, so a caller pays vLLM's import once.
    for arg in argv or (line.strip() for line in sys.stdin):
        if arg:
            print(json.dumps(asdict(check(Path(arg)))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
