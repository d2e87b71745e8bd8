"""OpenVINO variants: optimum-intel exports the source to OpenVINO IR (stateful, KV cache inside) with NNCF weight
compression, data-free; openvino-tokenizers adds the tokenizer and detokenizer IRs openvino-genai serves with.

Runs in the OpenVINO environment (.venv-ov): optimum-intel 2.2 pins transformers below 5.6, which neither vLLM's
nor llm-compressor's environment can take.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

from quantserve.checkpoint import OPENVINO_WEIGHTS
from quantserve.quantize.recipes import OpenVinoRecipe


def build(recipe: OpenVinoRecipe, source: Path, out: Path, group_size: int | None) -> None:
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig
    from transformers import AutoTokenizer

    if os.environ.get("QUANTSERVE_VERBOSE") != "1":
        import nncf

        nncf.set_log_level(logging.ERROR)  # its bit-width table; set after import (nncf resets it when imported)
        warnings.filterwarnings("ignore")  # torch.jit tracer warnings on every traced branch of the export
    if recipe.weight_format == "int4":
        config = OVWeightQuantizationConfig(bits=4, sym=recipe.symmetric, group_size=group_size or -1,
                                            ratio=recipe.ratio)
    else:
        config = OVWeightQuantizationConfig(bits=8, sym=recipe.symmetric)  # per output channel
    model = OVModelForCausalLM.from_pretrained(source, export=True, quantization_config=config, compile=False,
                                               use_cache=True)
    model.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.save_pretrained(out)
    # from_pretrained(export=True) writes no tokenizer IRs (optimum-cli does); openvino-genai needs both
    ov_tokenizer, ov_detokenizer = convert_tokenizer(tokenizer, with_detokenizer=True, skip_special_tokens=True)
    ov.save_model(ov_tokenizer, out / "openvino_tokenizer.xml")
    ov.save_model(ov_detokenizer, out / "openvino_detokenizer.xml")
    applied = {"bits": 4 if recipe.weight_format == "int4" else 8, "symmetric": recipe.symmetric,
               "group_size": group_size if recipe.weight_format == "int4" else None,
               "ratio": recipe.ratio if recipe.weight_format == "int4" else 1.0, "library": "nncf", "data_free": True}
    (out / OPENVINO_WEIGHTS).write_text(json.dumps(applied, indent=2) + "\n")


class _Logits:
    def __init__(self, logits) -> None:
        self.logits = logits


def load_for_quality(folder: Path):
    """The IR as a callable `model(ids).logits`, in f32 so the check measures the weights' error (as the other
    variants' checks do), not a bf16 inference precision on top."""
    import torch
    from optimum.intel import OVModelForCausalLM

    model = OVModelForCausalLM.from_pretrained(folder, ov_config={"INFERENCE_PRECISION_HINT": "f32"})

    def forward(ids: torch.Tensor) -> _Logits:
        # no past: a full prefill from an empty state, every position's logits
        return _Logits(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits)

    return forward
