"""Perplexity, KL divergence and top-1 agreement of a variant against its source, on held-out text."""

from __future__ import annotations

import math
from dataclasses import dataclass

from quantserve.progress import say


@dataclass
class QualityStats:
    tokens: int
    ppl: float
    ppl_source: float
    kld_mean: float
    kld_p95: float
    top1_agreement: float

    @property
    def ppl_ratio(self) -> float:
        return self.ppl / self.ppl_source


def emulate_dynamic_int8_activations(model, only: set[str] | None = None) -> int:
    """Round every quantized Linear's input (or only those of the named modules: a mixed variant's 8-bit layers)
    to INT8 per token, as vLLM's W8A8 kernels do at run time.

    transformers runs a W8A8 checkpoint with full-precision activations, so without this the quality check
    would see only the weight error. Returns how many layers were wrapped."""
    import torch

    def quantize_input(module, args):
        x = args[0]
        scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127.0
        return ((x / scale).round().clamp(-128, 127) * scale, *args[1:])

    wrapped = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head") and (only is None or name in only):
            module.register_forward_pre_hook(quantize_input)
            wrapped += 1
    return wrapped


def compare(source_model, variant_model, sequences: list[list[int]]) -> QualityStats:
    """Both models see the same sequences; per-token stats are pooled over all predicted positions."""
    import torch

    nll_src = nll_var = 0.0
    klds: list[torch.Tensor] = []
    agree = total = 0
    for i, seq in enumerate(sequences, 1):
        ids = torch.tensor([seq])
        target = ids[0, 1:]
        with torch.inference_mode():
            lp_src = torch.log_softmax(source_model(ids).logits[0, :-1].float(), dim=-1)
            lp_var = torch.log_softmax(variant_model(ids).logits[0, :-1].float(), dim=-1)
        nll_src -= lp_src.gather(1, target[:, None]).sum().item()
        nll_var -= lp_var.gather(1, target[:, None]).sum().item()
        klds.append((lp_src.exp() * (lp_src - lp_var)).sum(-1))
        agree += (lp_src.argmax(-1) == lp_var.argmax(-1)).sum().item()
        total += target.numel()
        if i % 10 == 0 or i == len(sequences):
            say(f"  quality: {i}/{len(sequences)} held-out sequences")
    kld = torch.cat(klds).clamp_min(0)
    return QualityStats(
        tokens=total,
        ppl=math.exp(nll_var / total),
        ppl_source=math.exp(nll_src / total),
        kld_mean=kld.mean().item(),
        kld_p95=torch.quantile(kld, 0.95).item(),
        top1_agreement=agree / total,
    )
