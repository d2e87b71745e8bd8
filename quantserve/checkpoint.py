"""Facts read off a checkpoint folder (no model load): which runtime runs it, its weight bits and its format.

A folder holding a `.gguf` file is llama.cpp's, one holding `openvino_model.xml` is OpenVINO's, any other is a
Hugging Face folder for vLLM. The format is what decides which kernels run a checkpoint, so it is the key of
the machine probe (`quantserve/probe.py`): a variant is served in the dtype the probe measured fastest for its
format, and not at all where its format did not run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

Runtime = Literal["vllm", "llama.cpp", "openvino"]
RUNTIMES: dict[Runtime, str] = {"vllm": "vLLM", "llama.cpp": "llama.cpp", "openvino": "OpenVINO GenAI"}
Format = Literal["full", "w8a8-int8", "w4a16-int4", "bnb-nf4", "bnb-int8", "gguf-q8_0", "gguf-q4_k_m",
                 "gguf-q4_0", "ov-int8", "ov-int4"]
# Probed in this order; the labels are what tables show.
FORMATS: dict[Format, str] = {
    "full": "full precision",
    "w8a8-int8": "W8A8 INT8",
    "w4a16-int4": "W4A16 INT4",
    "bnb-nf4": "bitsandbytes NF4",
    "bnb-int8": "bitsandbytes INT8",
    "gguf-q8_0": "GGUF Q8_0",
    "gguf-q4_k_m": "GGUF Q4_K_M",
    "gguf-q4_0": "GGUF Q4_0",
    "ov-int8": "OpenVINO INT8",
    "ov-int4": "OpenVINO INT4",
}
# The runtime each format is served by; what is not named here runs on vLLM.
FORMAT_RUNTIME: dict[str, Runtime] = {"gguf-q8_0": "llama.cpp", "gguf-q4_k_m": "llama.cpp", "gguf-q4_0": "llama.cpp",
                                      "ov-int8": "openvino", "ov-int4": "openvino"}
OPENVINO_MODEL = "openvino_model.xml"
OPENVINO_WEIGHTS = "quantserve_weights.json"  # what build_openvino applied: {"bits": 4, "group_size": 64, ...}
# llama.cpp's `general.file_type` (enum llama_ftype) -> our format name
_GGUF_FILE_TYPES = {7: "gguf-q8_0", 15: "gguf-q4_k_m", 2: "gguf-q4_0", 14: "gguf-q4_k_s", 3: "gguf-q4_1",
                    1: "gguf-f16", 0: "gguf-f32", 32: "gguf-bf16"}


def runtime_of_format(fmt: str) -> Runtime:
    """The runtime of a format, `other:` ones included (an unmeasured GGUF type is still llama.cpp's)."""
    base = fmt.removeprefix("other:")
    if fmt in FORMAT_RUNTIME:
        return FORMAT_RUNTIME[fmt]
    return "llama.cpp" if base.startswith("gguf-") else "openvino" if base.startswith("openvino") else "vllm"


def gguf_file(model_dir: Path) -> Path | None:
    """The one .gguf file of a llama.cpp variant folder (or the file itself), else None."""
    path = Path(model_dir)
    if path.is_file() and path.suffix == ".gguf":
        return path
    found = sorted(path.glob("*.gguf")) if path.is_dir() else []
    return found[0] if found else None


def checkpoint_runtime(model_dir: Path) -> Runtime:
    if gguf_file(model_dir) is not None:
        return "llama.cpp"
    if (Path(model_dir) / OPENVINO_MODEL).is_file():
        return "openvino"
    return "vllm"


def _gguf_format(path: Path) -> str:
    from gguf import GGUFReader  # in both environments (transformers reads GGUF with it)

    field = GGUFReader(path).get_field("general.file_type")
    code = int(field.contents()) if field is not None else -1
    return _GGUF_FILE_TYPES.get(code, f"other:gguf-ftype-{code}")


def _openvino_format(model_dir: Path) -> str:
    """optimum-intel's openvino_config.json does not say which weight compression was applied (data-free
    exports leave it empty), so quantize/build_openvino.py writes it to OPENVINO_WEIGHTS."""
    marker = Path(model_dir) / OPENVINO_WEIGHTS
    bits = json.loads(marker.read_text()).get("bits") if marker.is_file() else None
    return {4: "ov-int4", 8: "ov-int8"}.get(bits, f"other:openvino-{bits or 'unknown'}")


def _quantization_config(model_dir: Path) -> dict | None:
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        return None
    return json.loads(config_file.read_text()).get("quantization_config") or {}


def _groups(model_dir: Path) -> list[dict]:
    return list(((_quantization_config(model_dir) or {}).get("config_groups") or {}).values())


def weight_bits(model_dir: Path) -> tuple[int | None, bool]:
    """(weight bits, activations quantized) of a compressed-tensors checkpoint; (None, False) otherwise.

    A mixed checkpoint is described by the group that targets every Linear (the named 8-bit layers are the
    exception); compressed-tensors does not keep the groups in the order they were written."""
    groups = _groups(model_dir)
    group = next((g for g in groups if "Linear" in (g.get("targets") or [])), groups[0] if groups else None)
    if group is None:
        return None, False
    return (group.get("weights") or {}).get("num_bits"), bool(group.get("input_activations"))


def activation_quantized_targets(model_dir: Path) -> set[str]:
    """The targets (the class "Linear", or module names) whose inputs run quantized; empty when none do."""
    return {t for g in _groups(model_dir) if g.get("input_activations") for t in g.get("targets") or []}


def checkpoint_format(model_dir: Path) -> Format | str:
    """One of FORMATS, or `other:<method>` for a quantization the probe does not measure.

    A folder without config.json (a hub id not yet downloaded) counts as full precision: that is what a hub
    id names unless its config says otherwise, and the engine's smoke test catches the rest."""
    if (gguf := gguf_file(model_dir)) is not None:
        return _gguf_format(gguf)
    if (Path(model_dir) / OPENVINO_MODEL).is_file():
        return _openvino_format(Path(model_dir))
    cfg = _quantization_config(model_dir)
    if not cfg:
        return "full"
    method = str(cfg.get("quant_method", "unknown"))
    if method == "compressed-tensors":
        bits, act_quant = weight_bits(model_dir)
        if bits == 8 and act_quant:
            return "w8a8-int8"
        if bits == 4 and not act_quant:
            return "w4a16-int4"
        return f"other:compressed-tensors-w{bits}{'a' if act_quant else ''}"
    if method == "bitsandbytes":
        if cfg.get("load_in_8bit"):
            return "bnb-int8"
        if cfg.get("load_in_4bit"):
            return "bnb-nf4"  # fp4 runs through the same kernels
    return f"other:{method}"
