"""manifest.json: what a variant is, how it was made, what it costs and how good it is.

Quantize writes it, serve reads it to decide what to host, eval reads it for the report: the one schema all
stages share, so it lives in the core and no stage imports another for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

MANIFEST_NAME = "manifest.json"

GRID_NOTE = (
    "The embedded default (SmolLM2-135M-Instruct) ships as a Q4_1 GGUF: its 'bf16 source' weights already "
    "sit on a 4-bit grid, so quantization error measured against it is smaller than on a true bf16 model."
)


class SourceInfo(BaseModel):
    model: str  # what the user asked for: the embedded default's name, an HF id or a path
    path: str  # the local HF folder quantized from
    sha256: str  # over the weight files, in name order
    dtype: str = "bfloat16"
    weight_bytes: int
    note: str | None = None  # e.g. GRID_NOTE for the embedded default


class CalibrationInfo(BaseModel):
    file: str
    samples: int
    seq_len: int
    sha256: str  # of the exact token ids used, so two runs on the same text agree


class Quality(BaseModel):
    """Against the source on held-out text (never the calibration text), computed in transformers."""

    heldout_file: str
    heldout_sha256: str
    tokens: int
    ppl: float
    ppl_source: float
    ppl_ratio: float
    kld_mean: float
    kld_p95: float
    top1_agreement: float


class PromotedLayers(BaseModel):
    layers: list[str]  # one Linear, or every shard of a layer vLLM fuses (q/k/v, gate/up): they share a scheme
    kld: float  # mean KLD vs the source with only these layers at INT4 (the sensitivity probe), summed over shards
    extra_bytes: int  # what keeping them at 8 bits costs over INT4


class MixedPrecision(BaseModel):
    """Which layers a mixed-precision variant keeps at 8 bits, and why."""

    promoted_to: str  # the 8-bit scheme
    probe: str  # how sensitivity was measured
    sensitivity_tokens: int
    sensitivity_seconds: float
    budget_ratio: float
    int4_ratio: float  # predicted, every decoder Linear at INT4
    predicted_ratio: float  # predicted, with the promoted layers at 8 bits
    promoted: list[PromotedLayers]  # in pick order: most KLD per extra byte first
    most_sensitive: list[PromotedLayers]  # the ten most sensitive single layers, picked or not


class Manifest(BaseModel):
    name: str  # folder name and served model name, e.g. smollm2-135m-instruct-gptq-w4a16
    variant: str  # recipe name from variants.yaml, e.g. gptq-w4a16
    method: str
    scheme: str
    bits: int
    group_size: int | None = None
    format: str  # checkpoint format: compressed-tensors, bitsandbytes, gguf, openvino
    runtime: str = "vllm"  # what serves it (quantserve.checkpoint.RUNTIMES); older manifests were all vLLM's
    recipe: dict[str, Any]
    recipe_hash: str  # of recipe + source sha256 + calibration: equal hash, equal variant
    source: SourceInfo
    calibration: CalibrationInfo | None = None
    versions: dict[str, str]
    wall_time_s: float
    peak_rss_bytes: int
    weight_bytes: int
    size_ratio: float  # weight bytes on disk / source weight bytes in bf16
    quality: Quality | None = None
    mixed_precision: MixedPrecision | None = None
    vllm_loadable: bool | None = None
    vllm_loadable_reason: str = ""
    # Verified where it was quantized (the probe of that machine); serving decides again where it runs.
    servable_here: bool | None = False
    servable_reason: str = ""
    files: dict[str, str] = Field(default_factory=dict)  # relative path -> sha256
    created_at: str
    quantserve_version: str

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST_NAME
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        return cls.model_validate_json((folder / MANIFEST_NAME).read_text())


def list_manifests(root: Path) -> list[tuple[Path, Manifest]]:
    """Published variants under `root`, by name. Temp build folders (dot-prefixed) are never listed."""
    found: list[tuple[Path, Manifest]] = []
    if not root.is_dir():
        return found
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not (child / MANIFEST_NAME).is_file():
            continue
        found.append((child, Manifest.read(child)))
    return found
