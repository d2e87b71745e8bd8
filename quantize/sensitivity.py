"""Per-layer INT4 sensitivity and the choice of layers to keep at 8 bits under a size budget.

A mixed-precision recipe quantizes most Linear layers to INT4 and keeps the few that hurt the model most at
8 bits. "Hurt" is measured, not guessed: for each quantizable Linear in the decoder layers, only that layer's
weights are fake-quantized (round-to-nearest, asymmetric, one scale and zero point per group of 64 inputs: the
INT4 grid the real build uses, without GPTQ's error compensation or AWQ's scaling, so it ranks layers rather
than predicting the built model's KLD) and the mean KL divergence of the next-token distribution against the
unquantized model is taken on a few calibration sequences. Then `pick_promotions` spends the bytes the budget
leaves on the layers with the most KLD per extra byte.

Cost: one forward pass from the probed layer's depth down per Linear (the layers above it are replayed from a
cache), fp32. On the default, 210 Linears x 4x256 calibration tokens took 372 s on 2 CPU cores alone
(1113 s with another job sharing them); 8x256 doubles that.

Runs in the quantization environment (torch, transformers), inside the build of a `mixed` recipe.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# vLLM fuses these projections into one layer and requires every shard of a fused layer to share one
# quantization scheme (compressed_tensors/utils.py: "vLLM requires all to use the same scheme"); worse, when only
# some shards are named in the 8-bit group, vLLM's target matching falls back to the class name and loads the
# shards with the 4-bit scheme. So layers are promoted per fused unit, never one shard alone.
FUSED_SHARDS: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Int4Probe:
    """The INT4 grid a layer is rounded to while its sensitivity is measured."""

    bits: int = 4
    group_size: int = 64
    symmetric: bool = False

    def describe(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        return f"RTN int{self.bits} {kind} group {self.group_size}, one Linear at a time"


@dataclass(frozen=True)
class LayerSensitivity:
    name: str  # module name as in the HF model and the compressed-tensors targets
    in_features: int
    out_features: int
    kld: float  # mean KLD vs the unquantized model with only this Linear at INT4

    @property
    def params(self) -> int:
        return self.in_features * self.out_features


@dataclass(frozen=True)
class Unit:
    """What can be promoted to 8 bits: one Linear, or all shards of a layer vLLM fuses."""

    names: tuple[str, ...]
    kld: float  # sum of the shards' single-layer KLDs (small perturbations add up about linearly)
    extra_bytes: int  # checkpoint bytes at 8 bits minus at INT4

    @property
    def kld_per_mb(self) -> float:
        return self.kld / (self.extra_bytes / 1e6) if self.extra_bytes > 0 else float("inf")


@dataclass(frozen=True)
class Promotion:
    picked: list[Unit]
    budget_ratio: float
    int4_bytes: int  # predicted checkpoint bytes with every decoder Linear at INT4
    predicted_bytes: int  # ... with the picked units at 8 bits
    source_bytes: int
    skipped: list[Unit] = field(default_factory=list)  # more KLD per byte than some picked, but did not fit

    @property
    def predicted_ratio(self) -> float:
        return self.predicted_bytes / self.source_bytes

    @property
    def layers(self) -> list[str]:
        return [name for unit in self.picked for name in unit.names]


# ---- checkpoint bytes per layer (compressed-tensors 0.19 on-disk layout, measured on the default) ----------

def int4_layer_bytes(out_features: int, in_features: int, group_size: int = 64) -> int:
    """pack-quantized asymmetric INT4: 8 weights per int32, a bf16 scale and a 4-bit zero point (packed 8 per
    int32 along the output dim) per group, plus the int64[2] weight_shape tensor."""
    groups = in_features // group_size
    return out_features * in_features // 2 + out_features * groups * 2 + -(-out_features // 8) * groups * 4 + 16


def int8_layer_bytes(out_features: int, in_features: int) -> int:
    """int-quantized W8A8: one int8 per weight and a bf16 scale per output channel (activations are quantized
    per token at run time, nothing stored)."""
    return out_features * in_features + out_features * 2


def extra_bytes_for_8bit(out_features: int, in_features: int, group_size: int = 64) -> int:
    return int8_layer_bytes(out_features, in_features) - int4_layer_bytes(out_features, in_features, group_size)


# ---- which Linears, and their units ---------------------------------------------------------------------

def quantizable_linears(model) -> list[tuple[str, torch.nn.Linear]]:
    """The Linear layers inside the decoder layers: the ones a W4A16 recipe quantizes (lm_head is ignored)."""
    import torch

    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and _LAYER_INDEX.search(name)]


def _unit_key(name: str) -> str:
    """`model.layers.3.self_attn.k_proj` -> `model.layers.3.self_attn.qkv_proj`; unfused names map to themselves."""
    parent, _, leaf = name.rpartition(".")
    for fused, shards in FUSED_SHARDS.items():
        if leaf in shards:
            return f"{parent}.{fused}"
    return name


def promotion_units(layers: Iterable[LayerSensitivity], group_size: int = 64) -> list[Unit]:
    grouped: dict[str, list[LayerSensitivity]] = {}
    for layer in layers:
        grouped.setdefault(_unit_key(layer.name), []).append(layer)
    return [
        Unit(names=tuple(s.name for s in shards), kld=sum(s.kld for s in shards),
             extra_bytes=sum(extra_bytes_for_8bit(s.out_features, s.in_features, group_size) for s in shards))
        for shards in grouped.values()
    ]


# ---- the greedy choice (pure) ---------------------------------------------------------------------------

def pick_promotions(units: Sequence[Unit], int4_bytes: int, source_bytes: int, budget_ratio: float) -> Promotion:
    """Greedy knapsack: units in order of KLD per extra byte, each taken while the checkpoint stays within
    `budget_ratio` of the source bytes. A unit that does not fit is skipped and smaller ones after it are still
    tried, so the leftover budget is not wasted on a large unit's account."""
    budget = int(budget_ratio * source_bytes)
    used = int4_bytes
    picked: list[Unit] = []
    skipped: list[Unit] = []
    for unit in sorted(units, key=lambda u: u.kld_per_mb, reverse=True):
        if unit.kld <= 0:
            break  # nothing to gain from the rest
        if used + unit.extra_bytes <= budget:
            picked.append(unit)
            used += unit.extra_bytes
        else:
            skipped.append(unit)
    return Promotion(picked=picked, budget_ratio=budget_ratio, int4_bytes=int4_bytes, predicted_bytes=used,
                     source_bytes=source_bytes, skipped=skipped[:5])


# The safetensors header (a JSON entry per tensor) is 112 bytes a tensor on the default (101,360 bytes for 902
# tensors): 0.04% of the source size, enough to push a budget-filling pick over 0.45. 120 keeps the estimate on
# the safe side for longer module names. Promotion shrinks it (2 tensors per W8A8 layer instead of 4): not counted.
HEADER_BYTES_PER_TENSOR = 120


def predicted_int4_bytes(model, group_size: int = 64) -> int:
    """Checkpoint bytes with every decoder Linear at INT4 and everything else (embeddings, norms) in bf16.
    Tied weights are stored once, so parameters are counted by storage, not by name."""
    linears = quantizable_linears(model)
    linear_weights = {id(m.weight) for _, m in linears}
    seen: set[int] = set()
    total = tensors = 0
    for param in model.parameters():
        if id(param) in seen or id(param) in linear_weights:
            continue
        seen.add(id(param))
        total += param.numel() * 2
        tensors += 1
    for _, module in linears:
        total += int4_layer_bytes(module.out_features, module.in_features, group_size)
        tensors += 4  # weight_packed, weight_scale, weight_zero_point, weight_shape
    return total + tensors * HEADER_BYTES_PER_TENSOR


# ---- the measurement ------------------------------------------------------------------------------------

def fake_quantize(weight: torch.Tensor, probe: Int4Probe) -> torch.Tensor:
    """Round to the probe's grid and back, in the weight's dtype. Min/max per group with zero inside the range,
    as compressed-tensors' min-max observer does, so zero stays exactly representable."""
    import torch

    out_f, in_f = weight.shape
    w = weight.float().reshape(out_f, in_f // probe.group_size, probe.group_size)
    qmax = 2**probe.bits - 1
    if probe.symmetric:
        half = 2 ** (probe.bits - 1)
        scale = (w.abs().amax(-1, keepdim=True) / (half - 0.5)).clamp_min(1e-8)  # same span as [-8, 7] asym
        q = torch.clamp(torch.round(w / scale), -half, half - 1)
        deq = q * scale
    else:
        lo = w.amin(-1, keepdim=True).clamp_max(0)
        hi = w.amax(-1, keepdim=True).clamp_min(0)
        scale = ((hi - lo) / qmax).clamp_min(1e-8)
        zero = torch.round(-lo / scale).clamp(0, qmax)
        q = torch.clamp(torch.round(w / scale) + zero, 0, qmax)
        deq = (q - zero) * scale
    return deq.reshape(out_f, in_f).to(weight.dtype)


@dataclass
class _Prefix:
    """What each decoder layer saw on the reference pass, so a probe of layer i runs only layers i.. onward:
    the layers before it are unchanged, and skipping them halves the work on average."""

    inputs: list[torch.Tensor]  # hidden states entering layer i
    kwargs: dict  # attention mask, rotary embeddings, positions: the same for every layer


def _decoder(model):
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(inner, "norm") or not hasattr(model, "lm_head"):
        raise ValueError("sensitivity needs a llama-like causal LM (model.model.layers, .norm, lm_head)")
    return inner, layers


def _reference(model, ids: torch.Tensor) -> tuple[_Prefix, torch.Tensor]:
    import torch

    _, layers = _decoder(model)
    inputs: list[torch.Tensor] = []
    kwargs: dict = {}

    def capture(module, args, kw):
        inputs.append(args[0] if args else kw["hidden_states"])
        kwargs.update({k: v for k, v in kw.items() if k != "hidden_states"})

    handles = [layer.register_forward_pre_hook(capture, with_kwargs=True) for layer in layers]
    try:
        with torch.inference_mode():
            logits = model(input_ids=ids, use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()
    return _Prefix(inputs, kwargs), torch.log_softmax(logits[:, :-1].float(), dim=-1)


def _logprobs_from(model, prefix: _Prefix, start: int) -> torch.Tensor:
    import torch

    inner, layers = _decoder(model)
    hidden = prefix.inputs[start]
    with torch.inference_mode():
        for layer in layers[start:]:
            out = layer(hidden, **prefix.kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        logits = model.lm_head(inner.norm(hidden))
    return torch.log_softmax(logits[:, :-1].float(), dim=-1)


@dataclass
class _Target:
    """The source's next-token distribution, with the parts of KL(p || q) = sum p log p - sum p log q that do not
    depend on the variant computed once: 210 probes then pay one product-sum each, no exp over the vocabulary."""

    probs: torch.Tensor
    neg_entropy: torch.Tensor  # sum p log p per position

    @classmethod
    def of(cls, logprobs: torch.Tensor) -> _Target:
        probs = logprobs.exp()
        return cls(probs, (probs * logprobs).sum(-1))

    def mean_kld(self, logprobs: torch.Tensor) -> float:
        return (self.neg_entropy - (self.probs * logprobs).sum(-1)).clamp_min(0).mean().item()


def measure_sensitivity(model, sequences: Sequence[Sequence[int]], probe: Int4Probe = Int4Probe(),
                        progress: Callable[[int, int, LayerSensitivity], None] | None = None,
                        ) -> list[LayerSensitivity]:
    """Mean KLD vs the unquantized model for each decoder Linear quantized alone. The sequences must share one
    length (calibration windows do): they run as one batch with no padding to mask."""
    import torch

    if len({len(s) for s in sequences}) != 1:
        raise ValueError("sensitivity sequences must all have the same length")
    model.eval()
    ids = torch.tensor([list(s) for s in sequences])
    prefix, ref = _reference(model, ids)  # the source log-probs, computed once
    target = _Target.of(ref)
    del ref
    linears = quantizable_linears(model)
    results: list[LayerSensitivity] = []
    for i, (name, module) in enumerate(linears, 1):
        start = int(_LAYER_INDEX.search(name).group(1))
        original = module.weight.data.clone()
        try:
            module.weight.data = fake_quantize(original, probe)
            kld = target.mean_kld(_logprobs_from(model, prefix, start))
        finally:
            module.weight.data = original  # the next probe must see an untouched model
        result = LayerSensitivity(name, module.in_features, module.out_features, kld)
        results.append(result)
        if progress:
            progress(i, len(linears), result)
    return results


# ---- the plan a build follows, and what the manifest keeps of it ------------------------------------------

@dataclass(frozen=True)
class Plan:
    promotion: Promotion
    layers: list[LayerSensitivity]
    probe: Int4Probe
    tokens: int
    seconds: float

    def record(self, promoted_to: str):
        """The manifest's account of it: which layers were kept at 8 bits, and why."""
        from quantserve.manifest import MixedPrecision, PromotedLayers

        p = self.promotion
        top = sorted(self.layers, key=lambda s: s.kld, reverse=True)[:10]
        return MixedPrecision(
            promoted_to=promoted_to, probe=self.probe.describe(), sensitivity_tokens=self.tokens,
            sensitivity_seconds=round(self.seconds, 1), budget_ratio=p.budget_ratio,
            int4_ratio=round(p.int4_bytes / p.source_bytes, 4), predicted_ratio=round(p.predicted_ratio, 4),
            promoted=[PromotedLayers(layers=list(u.names), kld=u.kld, extra_bytes=u.extra_bytes) for u in p.picked],
            most_sensitive=[PromotedLayers(layers=[s.name], kld=s.kld,
                                           extra_bytes=extra_bytes_for_8bit(s.out_features, s.in_features,
                                                                            self.probe.group_size))
                            for s in top],
        )


def plan(model, sequences: Sequence[Sequence[int]], probe: Int4Probe, budget_ratio: float,
         source_bytes: int) -> Plan:
    """Measure every decoder Linear, then pick what to keep at 8 bits within the budget, with a line of
    progress every 10 layers (the pass takes minutes on 2 cores)."""
    from quantserve.progress import say

    started = time.perf_counter()

    def progress(i: int, n: int, layer: LayerSensitivity) -> None:
        if i % 10 == 0 or i == n:
            say(f"  sensitivity {i}/{n} ({time.perf_counter() - started:.0f}s): {layer.name} KLD {layer.kld:.5f}")

    layers = measure_sensitivity(model, sequences, probe, progress)
    seconds = time.perf_counter() - started
    group = probe.group_size
    promotion = pick_promotions(promotion_units(layers, group), predicted_int4_bytes(model, group), source_bytes,
                                budget_ratio)
    return Plan(promotion, layers, probe, sum(len(s) for s in sequences), seconds)
