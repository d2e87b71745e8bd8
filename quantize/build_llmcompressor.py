"""GPTQ, AWQ, AutoRound, SmoothQuant W8A8 and SparseGPT through llm-compressor, saved in compressed-tensors
format."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from quantserve.quantize.recipes import (
    AutoRoundRecipe,
    AWQRecipe,
    GPTQRecipe,
    MixedRecipe,
    SparseW8A8Recipe,
    W8A8Recipe,
)

LlmCompressorRecipe = GPTQRecipe | AWQRecipe | AutoRoundRecipe | MixedRecipe | W8A8Recipe | SparseW8A8Recipe
PROMOTED_TO = "W8A8 int8 (per-channel weights, dynamic per-token activations)"


def _no_pinning_without_accelerator() -> None:
    """llm-compressor's AWQ pins cached activations for fast host-to-device copies; CPU-only torch raises
    'Cannot access accelerator device when none is available'. Pinning buys nothing without a device."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.accelerator.is_available():
        IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None


def w4_scheme(recipe: GPTQRecipe | AWQRecipe | AutoRoundRecipe | MixedRecipe, group_size: int,
              actorder: str | None):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(
        num_bits=recipe.bits, type="int", symmetric=recipe.symmetric, strategy="group",
        group_size=group_size, actorder=actorder,
    )
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}


def _autoround_keeps_its_zero_points() -> None:
    """llm-compressor 0.14.0.1's AutoRoundModifier copies AutoRound's tuned `scale` into `weight_scale` but drops
    its `zp`: every asymmetric layer keeps the all-zero placeholder zero point, and compression re-quantizes the
    tuned weights into [-8, 7], clipping half of each group's range (mean KLD 1.09 instead of 0.10 on the
    default). AutoRound's zero points are unsigned levels (0..2^b-1), compressed-tensors' are signed, hence the
    shift. Where a later release copies `zp` itself, no module has one left by then and this does nothing."""
    import torch
    from llmcompressor.modifiers.autoround.base import AutoRoundModifier

    if getattr(AutoRoundModifier._postprocess_qparams, "_keeps_zero_points", False):
        return
    original = AutoRoundModifier._postprocess_qparams

    def postprocess(self, model, llmc_registered_qparams):
        for name, module in model.named_modules():
            zp = getattr(module, "zp", None)
            placeholder = llmc_registered_qparams.get(name, {}).get("weight_zero_point")
            if isinstance(zp, torch.Tensor) and placeholder is not None and zp.numel() == placeholder.numel():
                half = 2 ** (module.quantization_scheme.weights.num_bits - 1)
                signed = zp.float().round() - half
                if signed.min() < -half or signed.max() > half - 1:
                    raise RuntimeError(f"AutoRound zero point of {name} outside the signed {2 * half}-level range")
                delattr(module, "zp")
                module.register_parameter("weight_zero_point", torch.nn.Parameter(
                    signed.to(placeholder.dtype).to(placeholder.device).reshape(placeholder.shape),
                    requires_grad=False))
        original(self, model, llmc_registered_qparams)

    postprocess._keeps_zero_points = True
    AutoRoundModifier._postprocess_qparams = postprocess


def _announce_layers(model) -> None:
    """A line as calibration reaches each decoder layer: llm-compressor's sequential pipeline runs the model one
    layer at a time, so the first call of a layer is where the work on it starts."""
    from quantserve.progress import say

    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        return
    started: set[int] = set()

    def hook(index: int):
        def announce(module, args):
            if index not in started:
                started.add(index)
                say(f"  layer {index + 1}/{len(layers)}")
        return announce

    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(hook(i))


def promoted_scheme(layers: Sequence[str]):
    """The 8-bit group of a mixed variant. Exact module names outrank the class target "Linear" in
    compressed-tensors and in vLLM alike, so these take it and every other Linear stays INT4."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    return QuantizationScheme(
        targets=list(layers),
        weights=QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel"),
        input_activations=QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True),
    )


def modifiers(recipe: LlmCompressorRecipe, group_size: int | None, promoted: Sequence[str] = ()) -> list:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier, SmoothQuantModifier

    if isinstance(recipe, GPTQRecipe):
        actorder = None if recipe.actorder == "none" else recipe.actorder
        return [GPTQModifier(config_groups=w4_scheme(recipe, group_size, actorder), ignore=recipe.ignore,
                             dampening_frac=recipe.dampening_frac, actorder=actorder)]
    if isinstance(recipe, AWQRecipe):
        if recipe.quantizer == "gptq":
            quantizer = GPTQModifier(config_groups=w4_scheme(recipe, group_size, "weight"), ignore=recipe.ignore,
                                     dampening_frac=recipe.dampening_frac, actorder="weight")
        else:
            quantizer = QuantizationModifier(config_groups=w4_scheme(recipe, group_size, None),
                                             ignore=recipe.ignore)
        return [AWQModifier(duo_scaling=recipe.duo_scaling, n_grid=recipe.n_grid), quantizer]
    if isinstance(recipe, MixedRecipe):
        groups = w4_scheme(recipe, group_size, "weight")
        if promoted:
            groups["group_1"] = promoted_scheme(promoted)
        # AWQ reads each layer's own scheme, so the promoted layers are scaled for 8 bits, the rest for 4.
        return [AWQModifier(duo_scaling=recipe.duo_scaling, n_grid=recipe.n_grid),
                GPTQModifier(config_groups=groups, ignore=recipe.ignore, dampening_frac=recipe.dampening_frac,
                             actorder="weight")]
    if isinstance(recipe, AutoRoundRecipe):
        from llmcompressor.modifiers.autoround import AutoRoundModifier

        _autoround_keeps_its_zero_points()
        # torch.compile is off: on CPU its first compile of each block costs more than it saves at these sizes.
        return [AutoRoundModifier(config_groups=w4_scheme(recipe, group_size, None), ignore=recipe.ignore,
                                  iters=recipe.iters, batch_size=recipe.batch_size, lr=recipe.lr,
                                  enable_torch_compile=False)]
    if isinstance(recipe, SparseW8A8Recipe):
        from llmcompressor.modifiers.pruning import SparseGPTModifier

        # Smoothing first, so the pruning decisions are taken on the weights that get quantized.
        return [SmoothQuantModifier(smoothing_strength=recipe.smoothing_strength),
                SparseGPTModifier(sparsity=recipe.sparsity, mask_structure=recipe.mask_structure,
                                  targets=["Linear"], ignore=recipe.ignore, dampening_frac=recipe.dampening_frac),
                QuantizationModifier(scheme="W8A8", targets=["Linear"], ignore=recipe.ignore)]
    if recipe.weight_quantizer == "gptq":
        weights = GPTQModifier(scheme="W8A8", targets=["Linear"], ignore=recipe.ignore,
                               dampening_frac=recipe.dampening_frac)
    else:
        weights = QuantizationModifier(scheme="W8A8", targets=["Linear"], ignore=recipe.ignore)
    return [SmoothQuantModifier(smoothing_strength=recipe.smoothing_strength), weights]


def plan_promotions(recipe: MixedRecipe, source: Path, calib: list[list[int]], group_size: int):
    """Which layers a mixed variant keeps at 8 bits: measured on the source in fp32 (faster than bf16 for these
    many short passes on CPU), on the first calibration windows."""
    import torch
    from transformers import AutoModelForCausalLM

    from quantserve.quantize import sensitivity
    from quantserve.quantize.files import weight_bytes

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    return sensitivity.plan(model, calib[: recipe.sensitivity_samples],
                            sensitivity.Int4Probe(bits=recipe.bits, group_size=group_size,
                                                  symmetric=recipe.symmetric),
                            recipe.size_budget, weight_bytes(source))


def build(recipe: LlmCompressorRecipe, source: Path, out: Path,
          calib: list[list[int]], group_size: int | None):
    """Returns the manifest's MixedPrecision record for a mixed recipe, else None."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantserve.progress import say

    _no_pinning_without_accelerator()
    record, promoted = None, []
    if isinstance(recipe, MixedRecipe):
        planned = plan_promotions(recipe, source, calib, group_size)
        record, promoted = planned.record(PROMOTED_TO), planned.promotion.layers
        say(f"  {len(promoted)} layers kept at 8 bits (predicted size ratio {record.predicted_ratio:.4f} of "
            f"{recipe.size_budget:g})")
    tokenizer = AutoTokenizer.from_pretrained(source)
    # Calibrate in the source's bf16. Measured on the default (64x256 tokens, AVX512-BF16 CPU): fp32 gave the
    # same quality (AWQ+GPTQ mean KLD 0.101 vs 0.099 in bf16) at 2.8x the time (470 s vs 167 s).
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    _announce_layers(model)
    data = Dataset.from_dict({"input_ids": calib, "attention_mask": [[1] * len(s) for s in calib]})
    oneshot(
        model=model, tokenizer=tokenizer, dataset=data, recipe=modifiers(recipe, group_size, promoted),
        num_calibration_samples=len(calib), max_seq_length=max(len(s) for s in calib),
        shuffle_calibration_samples=False,
    )
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    return record
