"""Will a 7B-8B model fit a consumer GPU? Weights + KV cache + runtime overhead, from its config.

Tiny demo models say nothing about 8-24 GB cards, so the plan is computed for a real target
architecture (eval/model_configs/*.json) at each precision the variants use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from quantserve.errors import UserError
from quantserve.group_size import auto_group_size, quantized_in_features

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
DEFAULT_PLAN_MODEL = "llama-3.1-8b-instruct"
GIB = 1024**3
CONSUMER_GPUS_GB = (8, 12, 16, 24)
# CUDA context, cuBLAS/attention workspaces and the activation peak of vLLM's profiling run: about
# 1-2 GiB for a 7B model at a few thousand tokens per batch; one fixed figure keeps the table legible.
RUNTIME_OVERHEAD_GIB = 1.5
GPU_MEMORY_UTILIZATION = 0.90  # vLLM's default share of VRAM; the rest is left to the desktop/driver
KV_BYTES = 2  # fp16/bf16 KV cache, vLLM's default kv-cache-dtype

FORMULA = (
    "total = weights + KV cache + runtime overhead; "
    "weights = (params − embedding params) × effective bits / 8 + embedding params × 2 bytes "
    "(embeddings and lm_head stay 16-bit; effective bits = bits + scale bits / group size); "
    f"KV bytes/token = 2 (K and V) × layers × kv_heads × head_dim × {KV_BYTES} bytes; "
    "KV cache = KV bytes/token × context length × concurrent sequences; "
    f"runtime overhead = {RUNTIME_OVERHEAD_GIB} GiB fixed; "
    f"fits when total ≤ {GPU_MEMORY_UTILIZATION:.0%} of the card (vLLM's default gpu_memory_utilization)."
)


class ModelConfig(BaseModel):
    name: str
    hf_id: str
    num_parameters: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    max_position_embeddings: int

    @property
    def embedding_params(self) -> int:
        """Input embedding plus lm_head when untied: the 16-bit part of a quantized checkpoint."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def architecture_params(self) -> int:
        """Parameter count of a Llama-style decoder from the shapes, to cross-check num_parameters."""
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        q = self.num_attention_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.attention_bias else 0)
        layer = attn + 3 * h * self.intermediate_size + 2 * h
        return self.num_hidden_layers * layer + self.embedding_params + h

    def kv_bytes_per_token(self, kv_bytes: int = KV_BYTES) -> int:
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * kv_bytes


def plan_models() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_model_config(name: str) -> ModelConfig:
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise UserError(f"unknown plan model '{name}'; known: {', '.join(plan_models())}")
    return ModelConfig.model_validate_json(path.read_text())


@dataclass(frozen=True)
class Precision:
    label: str  # e.g. "bf16 (source)", "gptq-w4a16"
    bits: int
    group_size: int | None = None  # weights per scale; None when scales are per row (negligible)
    scale_bits: float = 16
    auto_group: bool = False  # recipe said "auto": re-pick the group for the plan model's shapes

    def effective_bits(self, config: ModelConfig | None = None) -> float:
        group = self.group_size
        if self.auto_group and config is not None:
            group = auto_group_size(quantized_in_features(config.model_dump()))
        if self.bits >= 16 or not group:
            return float(self.bits)
        return self.bits + self.scale_bits / group


def precision_of(variant: str, scheme: str, bits: int, group_size: int | None,
                 recipe: dict[str, Any] | None = None) -> Precision:
    if bits == 4 and "nf4" in f"{variant} {scheme}".lower() and not group_size:
        # bitsandbytes NF4: one absmax per 64-weight block, fp32, or 8-bit plus an fp32 per 256 blocks
        # with double quantization.
        double = bool((recipe or {}).get("double_quant"))
        return Precision(variant, 4, 64, 8 + 32 / 256 if double else 32)
    return Precision(variant, bits, group_size, auto_group=(recipe or {}).get("group_size") == "auto")


DEFAULT_PRECISIONS = (
    Precision("bf16 (source)", 16),
    Precision("int8 (W8A8, per-channel)", 8),
    Precision("int4 (GPTQ/AWQ, g128)", 4, 128),
    Precision("nf4 (bitsandbytes)", 4, 64, 32),
)


@dataclass(frozen=True)
class VramRow:
    precision: str
    bits: int
    effective_bits: float
    weights_gb: float
    kv_cache_gb: float
    overhead_gb: float
    total_gb: float
    fits: dict[str, bool]  # "8" -> fits an 8 GB card
    max_context_16gb: int  # longest context per sequence at this concurrency on a 16 GB card


def plan_row(config: ModelConfig, precision: Precision, context_len: int, concurrency: int) -> VramRow:
    dense = config.num_parameters - config.embedding_params
    bits = precision.effective_bits(config)
    weights = (dense * bits / 8 + config.embedding_params * 2) / GIB
    kv_per_token = config.kv_bytes_per_token()
    kv = kv_per_token * context_len * concurrency / GIB
    total = weights + kv + RUNTIME_OVERHEAD_GIB
    room_16 = 16 * GPU_MEMORY_UTILIZATION - weights - RUNTIME_OVERHEAD_GIB
    max_ctx = max(0, int(room_16 * GIB / (kv_per_token * concurrency)))
    return VramRow(
        precision=precision.label, bits=precision.bits, effective_bits=bits,
        weights_gb=weights, kv_cache_gb=kv, overhead_gb=RUNTIME_OVERHEAD_GIB, total_gb=total,
        fits={str(gb): total <= gb * GPU_MEMORY_UTILIZATION for gb in CONSUMER_GPUS_GB},
        max_context_16gb=min(max_ctx, config.max_position_embeddings),
    )


def vram_plan(model: str, precisions: list[Precision] | None = None, context_len: int = 4096,
              concurrency: int = 4) -> dict[str, Any]:
    config = load_model_config(model)
    if context_len <= 0 or concurrency <= 0:
        raise UserError("plan context length and concurrency must be positive")
    rows = [plan_row(config, p, context_len, concurrency) for p in (precisions or list(DEFAULT_PRECISIONS))]
    return {
        "model": config.name,
        "hf_id": config.hf_id,
        "num_parameters": config.num_parameters,
        "context_len": context_len,
        "concurrency": concurrency,
        "kv_bytes_per_token": config.kv_bytes_per_token(),
        "overhead_gb": RUNTIME_OVERHEAD_GIB,
        "gpu_memory_utilization": GPU_MEMORY_UTILIZATION,
        "gpus_gb": list(CONSUMER_GPUS_GB),
        "unit": "GiB (2^30 bytes)",
        "formula": FORMULA,
        "rows": [asdict(r) for r in rows],
    }
