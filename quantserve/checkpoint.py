"""Facts read off a checkpoint's config.json (no model load): its weight bits and its kernel format.

The format is what decides which vLLM kernels run a checkpoint, so it is the key of the machine probe
(`quantserve/probe.py`): a variant is served in the dtype the probe measured fastest for its format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

Format = Literal["full", "w8a8-int8", "w4a16-int4", "bnb-nf4", "bnb-int8"]
# Probed in this order; the labels are what tables show.
FORMATS: dict[Format, str] = {
    "full": "full precision",
    "w8a8-int8": "W8A8 INT8",
    "w4a16-int4": "W4A16 INT4",
    "bnb-nf4": "bitsandbytes NF4",
    "bnb-int8": "bitsandbytes INT8",
}


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
