"""`quantize()` end to end without a model library: a tiny source folder, a fake build child, no vLLM check."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from quantserve.manifest import Quality
from quantserve.quantize import runner
from quantserve.quantize.worker import BuildResult, BuildSpec
from tests.support.fake_quantize import FakeQuantize, NoVllm, fake_quality


@pytest.fixture
def fake_quantize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeQuantize:
    source = tmp_path / "tiny-src"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"hidden_size": 64, "intermediate_size": 128,
                                                    "num_attention_heads": 4}))
    (source / "model.safetensors").write_bytes(b"source weights")
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"messages": []}\n')
    fake = FakeQuantize(source=source, texts=texts, quality=fake_quality())

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
    monkeypatch.setattr(runner, "_VllmChecker", NoVllm)
    return fake


@pytest.fixture
def make_quality() -> Callable[..., Quality]:
    return fake_quality
