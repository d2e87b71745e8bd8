"""Perplexity, KL divergence and top-1 agreement of a variant against its source, on held-out text."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from quantserve.progress import say

if TYPE_CHECKING:
    import torch


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


def reference_logprobs(source_model, sequences: list[list[int]]) -> list[torch.Tensor]:
    """The source's next-token log-probabilities (fp32) at every predicted position of each sequence."""
    import torch

    out = []
    for seq in sequences:
        with torch.inference_mode():
            out.append(torch.log_softmax(source_model(torch.tensor([seq])).logits[0, :-1].float(), dim=-1))
    return out


def cached_reference(cache: Path | None, key: str, compute: Callable[[], list[torch.Tensor]]) -> list[torch.Tensor]:
    """The source's log-probabilities from `cache` (one file per held-out set), or computed and stored there.

    One `quantize` call checks every variant against the same source on the same text, so the source's forward
    pass runs once instead of once per variant (about a third of each check on the default). The file is a cache:
    when it cannot be written (no space, say) the check goes on without it."""
    import torch

    path = cache / f"source-logprobs-{key[:16]}.pt" if cache else None
    if path is not None and path.is_file():
        return torch.load(path, mmap=True)
    reference = compute()
    if path is not None:
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        try:
            torch.save(reference, tmp)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
            tmp.unlink(missing_ok=True)
            say(f"  quality: source reference not cached ({err}); the next check computes it again")
    return reference


def compare(reference: Sequence[torch.Tensor], variant_model, sequences: list[list[int]]) -> QualityStats:
    """The variant sees the sequences the reference was computed on; per-token stats are pooled over all
    predicted positions."""
    import torch

    nll_src = nll_var = 0.0
    klds: list[torch.Tensor] = []
    agree = total = 0
    for i, (seq, lp_src) in enumerate(zip(sequences, reference, strict=True), 1):
        ids = torch.tensor([seq])
        target = ids[0, 1:]
        with torch.inference_mode():
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
