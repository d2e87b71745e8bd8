"""bitsandbytes NF4 / LLM.int8 through transformers, saved pre-quantized."""

from __future__ import annotations

from pathlib import Path

from quantserve.quantize.recipes import BnbRecipe


def quantization_config(recipe: BnbRecipe):
    import torch
    from transformers import BitsAndBytesConfig

    if recipe.quant_type == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=recipe.llm_int8_threshold)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=recipe.quant_type,
        bnb_4bit_use_double_quant=recipe.double_quant, bnb_4bit_compute_dtype=getattr(torch, recipe.compute_dtype),
    )


def build(recipe: BnbRecipe, source: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=torch.bfloat16, quantization_config=quantization_config(recipe), device_map="cpu"
    )
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
