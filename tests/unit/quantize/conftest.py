"""`quantize()` end to end without a model library: a tiny source folder, a fake build child, no vLLM check."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from quantserve.manifest import Manifest, Quality
from quantserve.quantize import runner
from quantserve.quantize.vllm_check import VllmVerdict
from quantserve.quantize.worker import BuildResult, BuildSpec


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


def _quality(kld_mean: float = 0.5, top1_agreement: float = 0.7) -> Quality:
    return Quality(heldout_file="h.jsonl", heldout_sha256="ef" * 32, tokens=100, ppl=10.0, ppl_source=9.0,
                   ppl_ratio=10 / 9, kld_mean=kld_mean, kld_p95=1.0, top1_agreement=top1_agreement)


class _NoVllm:
    def check(self, folder: Path) -> VllmVerdict:
        return VllmVerdict(str(folder), None, "not checked in unit tests", False, "not checked in unit tests")

    def close(self) -> None:
        pass


@pytest.fixture
def fake_quantize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeQuantize:
    source = tmp_path / "tiny-src"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"hidden_size": 64, "intermediate_size": 128,
                                                    "num_attention_heads": 4}))
    (source / "model.safetensors").write_bytes(b"source weights")
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"messages": []}\n')
    fake = FakeQuantize(source=source, texts=texts, quality=_quality())

    def run_worker(spec: BuildSpec, tmp: Path) -> BuildResult:
        fake.builds.append(spec.variant)
        fake.reference_caches.append(spec.reference_cache)
        assert spec.reference_cache and Path(spec.reference_cache).is_dir()
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "model.safetensors").write_bytes(fake.weights)
        return BuildResult(calibration=None, quality=fake.quality, versions={"fake": "1"}, wall_time_s=1.0,
                           peak_rss_bytes=1)

    monkeypatch.setattr(runner, "resolve_model", lambda spec: source)
    monkeypatch.setattr(runner, "_run_worker", run_worker)
    monkeypatch.setattr(runner, "_VllmChecker", _NoVllm)
    return fake


@pytest.fixture
def make_quality() -> Callable[..., Quality]:
    return _quality
