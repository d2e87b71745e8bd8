"""A complete, valid Manifest for tests that need one on disk or to compare with, and a build folder holding one."""

from __future__ import annotations

from pathlib import Path

from quantserve.manifest import GRID_NOTE, Manifest, Quality, SourceInfo
from quantserve.quantize import publish


def make_manifest(**over) -> Manifest:
    base = dict(
        name="smollm2-135m-instruct-gptq-w4a16", variant="gptq-w4a16", method="gptq", scheme="W4A16", bits=4,
        group_size=64, format="compressed-tensors", recipe={"method": "gptq"}, recipe_hash="ab" * 32,
        source=SourceInfo(model="smollm2-135m-instruct", path="/m", sha256="cd" * 32, weight_bytes=269_060_552,
                          note=GRID_NOTE),
        versions={"llmcompressor": "0.14.0.1"}, wall_time_s=12.5, peak_rss_bytes=1 << 30,
        weight_bytes=113_000_000, size_ratio=0.42,
        quality=Quality(heldout_file="h.jsonl", heldout_sha256="ef" * 32, tokens=100, ppl=10.0, ppl_source=9.0,
                        ppl_ratio=10 / 9, kld_mean=0.1, kld_p95=0.3, top1_agreement=0.8),
        vllm_loadable=True, servable_here=False, servable_reason="no 4-bit kernel",
        created_at="2026-11-30T00:00:00+00:00", quantserve_version="0.1.0",
    )
    base.update(over)
    return Manifest(**base)


def variant_build(target: Path, weights: str) -> Path:
    """A finished build of the variant `target` in its temp folder, as the runner leaves it for `publish`."""
    tmp = publish.temp_dir_for(target)
    tmp.mkdir()
    (tmp / "weights.safetensors").write_text(weights)
    make_manifest(name=target.name).write(tmp)
    return tmp
