"""Small checkpoints of each format for the machine probe, in the quantization environment:
`python -m quantserve.quantize.probe_checkpoints SOURCE ROOT FORMAT...` writes ROOT/FORMAT for each.

The probe measures kernels, not quality, so the compressed-tensors ones are round-to-nearest (data-free,
seconds) in the same scheme as the variants of variants.yaml: same layout, same vLLM kernels. The GGUF and
OpenVINO ones are built by the variants' own builders, which are data-free already. Each is built
in a temp folder and renamed into place, so a killed build leaves nothing the probe would load.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from quantserve.atomic import replace_dir, temp_path_for
from quantserve.progress import step
from quantserve.quantize.recipes import BnbRecipe, GgufRecipe, OpenVinoRecipe, load_variants

# The variants.yaml recipe whose checkpoint layout each probed format copies.
RECIPE_OF_FORMAT = {"w8a8-int8": "w8a8-int8", "w4a16-int4": "gptq-w4a16", "bnb-nf4": "bnb-nf4",
                    "bnb-int8": "bnb-int8", "gguf-q8_0": "gguf-q8_0", "gguf-q4_k_m": "gguf-q4_k_m",
                    "gguf-q4_0": "gguf-q4_0", "ov-int8": "ov-int8", "ov-int4": "ov-int4"}


def _rtn(fmt: str, source: Path, out: Path) -> None:
    import torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantserve.group_size import choose_group_size, quantized_in_features
    from quantserve.quantize.build_llmcompressor import w4_scheme

    recipe = load_variants()[RECIPE_OF_FORMAT[fmt]]
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    if fmt == "w4a16-int4":
        group = choose_group_size(quantized_in_features(json.loads((source / "config.json").read_text())),
                                  recipe.group_size)
        modifier = QuantizationModifier(config_groups=w4_scheme(recipe, group, None), ignore=recipe.ignore)
    else:
        modifier = QuantizationModifier(scheme=recipe.scheme, targets=["Linear"], ignore=recipe.ignore)
    oneshot(model=model, recipe=[modifier])
    model.save_pretrained(out, save_compressed=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)


def build(fmt: str, source: Path, root: Path) -> None:
    target = root / fmt
    tmp = temp_path_for(target)
    shutil.rmtree(tmp, ignore_errors=True)
    with step(f"probe checkpoint {fmt}"):
        recipe = load_variants()[RECIPE_OF_FORMAT[fmt]]
        if isinstance(recipe, BnbRecipe):
            from quantserve.quantize import build_bnb

            build_bnb.build(recipe, source, tmp)
        elif isinstance(recipe, GgufRecipe):
            from quantserve.quantize import build_gguf

            build_gguf.build(recipe, source, tmp, threads=len(os.sched_getaffinity(0)))
        elif isinstance(recipe, OpenVinoRecipe):
            from quantserve.group_size import choose_group_size, quantized_in_features
            from quantserve.quantize import build_openvino

            group = choose_group_size(quantized_in_features(json.loads((source / "config.json").read_text())),
                                      recipe.group_size) if recipe.group_size is not None else None
            build_openvino.build(recipe, source, tmp, group)
        else:
            _rtn(fmt, source, tmp)
    replace_dir(tmp, target)


def main(argv: list[str]) -> None:
    from quantserve.quantize.worker import quiet_libraries

    quiet_libraries()
    source, root = Path(argv[0]), Path(argv[1])
    root.mkdir(parents=True, exist_ok=True)
    for fmt in argv[2:]:
        build(fmt, source, root)


if __name__ == "__main__":
    main(sys.argv[1:])
