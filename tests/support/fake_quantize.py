"""`quantize()` without a model library: what the `fake_quantize` fixture (tests/unit/quantize/conftest.py) returns,
quality numbers of a build, and a vLLM check that checks nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from quantserve.manifest import Manifest, Quality
from quantserve.quantize import runner
from quantserve.quantize.vllm_check import VllmVerdict


@dataclass
class FakeQuantize:
    source: Path
    texts: Path
    quality: Quality | None
    weights: bytes = b"one"
    builds: list[str] = field(default_factory=list)  # variant of each build child started
    reference_caches: list[str | None] = field(default_factory=list)  # each build's source-reference folder

    def run(self, out: Path, variants: str = "bnb-nf4", **opts: object) -> list[Manifest]:
        return runner.quantize(runner.QuantizeOptions(
            model=str(self.source), variants=variants, out=out, threads=1,
            calibration_file=self.texts, heldout_file=self.texts, **opts,
        ))


def fake_quality(kld_mean: float = 0.5, top1_agreement: float = 0.7) -> Quality:
    return Quality(heldout_file="h.jsonl", heldout_sha256="ef" * 32, tokens=100, ppl=10.0, ppl_source=9.0,
                   ppl_ratio=10 / 9, kld_mean=kld_mean, kld_p95=1.0, top1_agreement=top1_agreement)


class NoVllm:
    def check(self, folder: Path) -> VllmVerdict:
        return VllmVerdict(str(folder), None, "not checked in unit tests", False, "not checked in unit tests")

    def close(self) -> None:
        pass
