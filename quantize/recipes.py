"""Quantization recipes as typed objects with a YAML form (variants.yaml is the one list)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from quantserve.errors import UserError, first_validation_error

VARIANTS_FILE = Path(__file__).with_name("variants.yaml")


class _Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scheme: str
    bits: int
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"])
    # Built only when named or with `--variants all` (`make bench`), not by default (`make run`'s time budget).
    # Which runs is a selection, not part of how a variant is made: kept out of the dump, so out of its hash.
    opt_in: bool = Field(default=False, exclude=True)

    @property
    def library(self) -> str:
        return "llm-compressor"

    @property
    def checkpoint_format(self) -> str:
        return "compressed-tensors"

    @property
    def runtime(self) -> str:
        """What serves the checkpoint (quantserve.checkpoint.RUNTIMES)."""
        return "vllm"

    @property
    def needs_calibration(self) -> bool:
        return True

    def calibration_windows(self, available: int) -> int:
        """How many of the run's `available` calibration windows this recipe calibrates on."""
        return min(available, getattr(self, "calibration_samples", None) or available)


class GPTQRecipe(_Recipe):
    method: Literal["gptq"]
    group_size: int | Literal["auto"] = "auto"
    symmetric: bool = True
    actorder: Literal["weight", "group", "none"] = "weight"
    dampening_frac: float = 0.01


class AWQRecipe(_Recipe):
    method: Literal["awq"]
    group_size: int | Literal["auto"] = "auto"
    symmetric: bool = False
    duo_scaling: bool = True
    n_grid: int = 20
    quantizer: Literal["rtn", "gptq"] = "rtn"  # what rounds the weights after AWQ's scaling
    dampening_frac: float = 0.01
    # at most this many of the run's calibration windows: AWQ's scales are fitted on activation magnitudes, which
    # a small set already pins down (the AWQ paper: 16 sequences suffice, GPTQ needs ~10x more); None: all of them
    calibration_samples: int | None = Field(default=None, ge=1)


class AutoRoundRecipe(_Recipe):
    """Intel's AutoRound (signed-gradient rounding and clipping, tuned block by block) through llm-compressor."""

    method: Literal["autoround"]
    group_size: int | Literal["auto"] = "auto"
    symmetric: bool = False
    iters: int = Field(default=200, ge=1)  # tuning steps per decoder layer
    batch_size: int = Field(default=8, ge=1)
    lr: float | None = None  # None: AutoRound's own default (1 / iters)


class MixedRecipe(_Recipe):
    """INT4 as awq-w4a16 (AWQ scales, GPTQ rounding), with the layers that INT4 hurts most kept at 8 bits until
    the checkpoint reaches `size_budget` of the source's bytes. The layers are measured on each build
    (quantize/sensitivity.py: the KLD when only that layer is at INT4), and the manifest lists them and why."""

    method: Literal["mixed"]
    group_size: int | Literal["auto"] = "auto"
    symmetric: bool = False
    duo_scaling: bool = True
    n_grid: int = 10
    dampening_frac: float = 0.01
    # W8A8 (int8 channel weights, dynamic per-token int8 activations) is the one 8-bit form vLLM CPU 0.32 runs
    # beside W4A16: its WNA16 kernel takes uint4 only, so W8A16 layers fail at engine start.
    promote_to: Literal["w8a8"] = "w8a8"
    size_budget: float = Field(default=0.45, gt=0, le=1)
    sensitivity_samples: int = Field(default=4, ge=1)  # calibration windows the sensitivity is measured on


class W8A8Recipe(_Recipe):
    method: Literal["w8a8"]
    smoothing_strength: float = 0.8
    weight_quantizer: Literal["rtn", "gptq"] = "rtn"
    dampening_frac: float = 0.01
    group_size: None = None


class SparseW8A8Recipe(_Recipe):
    """SparseGPT pruning to a structured N:M pattern, then SmoothQuant W8A8: the seed's "quantize, then prune"."""

    method: Literal["sparsegpt-w8a8"]
    sparsity: float = Field(default=0.5, gt=0, lt=1)
    mask_structure: str = Field(default="2:4", pattern=r"^\d+:\d+$")
    smoothing_strength: float = 0.8
    dampening_frac: float = 0.01
    group_size: None = None


class BnbRecipe(_Recipe):
    method: Literal["bnb"]
    quant_type: Literal["nf4", "fp4", "int8"]
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    llm_int8_threshold: float = 6.0
    group_size: None = None
    ignore: list[str] = Field(default_factory=list)

    @property
    def library(self) -> str:
        return "bitsandbytes"

    @property
    def checkpoint_format(self) -> str:
        return "bitsandbytes"

    @property
    def needs_calibration(self) -> bool:
        return False


class GgufRecipe(_Recipe):
    """A llama.cpp GGUF file: the source converted at full precision, then quantized by llama.cpp's own quantizer
    (its k-quants keep the most sensitive tensors at more bits: Q4_K_M stores attn_v and ffn_down at Q6_K)."""

    method: Literal["gguf"]
    quant_type: Literal["Q8_0", "Q4_K_M", "Q4_0"]
    group_size: None = None
    ignore: list[str] = Field(default_factory=list)

    @property
    def library(self) -> str:
        return "llama.cpp"

    @property
    def checkpoint_format(self) -> str:
        return "gguf"

    @property
    def runtime(self) -> str:
        return "llama.cpp"

    @property
    def needs_calibration(self) -> bool:
        return False


class OpenVinoRecipe(_Recipe):
    """OpenVINO IR with NNCF weight compression through optimum-intel, data-free (no calibration text)."""

    method: Literal["openvino"]
    weight_format: Literal["int8", "int4"]
    group_size: int | Literal["auto"] | None = None  # INT4 only: weights per scale
    symmetric: bool = False
    ratio: float = Field(default=1.0, gt=0, le=1)  # INT4 only: the share of layers at 4 bits, the rest INT8
    ignore: list[str] = Field(default_factory=list)

    @property
    def library(self) -> str:
        return "nncf"

    @property
    def checkpoint_format(self) -> str:
        return "openvino"

    @property
    def runtime(self) -> str:
        return "openvino"

    @property
    def needs_calibration(self) -> bool:
        return False


AnyRecipe = (GPTQRecipe | AWQRecipe | AutoRoundRecipe | MixedRecipe | W8A8Recipe | SparseW8A8Recipe | BnbRecipe
             | GgufRecipe | OpenVinoRecipe)
Recipe = Annotated[AnyRecipe, Field(discriminator="method")]
_RECIPE = TypeAdapter(Recipe)


def parse_recipe(data: dict) -> AnyRecipe:
    return _RECIPE.validate_python(data)


def load_variants(path: Path = VARIANTS_FILE) -> dict[str, AnyRecipe]:
    raw = yaml.safe_load(path.read_text()) or {}
    out = {}
    for name, body in raw.items():
        try:
            out[name] = parse_recipe(body)
        except ValidationError as err:
            raise UserError(f"{path}: variant {name!r} is not a valid recipe: "
                            f"{first_validation_error(err)}") from None
    return out


def select_variants(spec: str, path: Path = VARIANTS_FILE, extra: Path | None = None) -> dict[str, AnyRecipe]:
    """`spec` is a comma list of names from variants.yaml (plus a user's recipe file) and groups: `default` (every
    recipe not marked opt_in), `all`, a runtime (`vllm`, `llama.cpp`, `openvino`: its recipes) or `runtimes`
    (every recipe served by a runtime other than vLLM). `default,runtimes` is the default set beside the other
    runtimes' variants."""
    known = load_variants(path)
    if extra is not None:
        if not extra.is_file():
            raise UserError(f"recipe file {extra} does not exist")
        known.update(load_variants(extra))
    groups = {
        "all": list(known),
        "default": [n for n, r in known.items() if not r.opt_in],
        "runtimes": [n for n, r in known.items() if r.runtime != "vllm"],
        **{rt: [n for n, r in known.items() if r.runtime == rt] for rt in ("vllm", "llama.cpp", "openvino")},
    }
    names: list[str] = []
    for token in (s.strip() for s in spec.split(",")):
        if token:
            names += groups.get(token, [token])
    names = list(dict.fromkeys(names))
    if not names:
        raise UserError("no variants given: pass --variants with names from " + ", ".join(known))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown variant {', '.join(unknown)!s}; known variants: {', '.join(known)} "
                        f"(or a group: {', '.join(groups)})")
    return {n: known[n] for n in names}


def to_yaml(recipes: dict[str, BaseModel]) -> str:
    return yaml.safe_dump({n: {**r.model_dump(mode="json"), **({"opt_in": True} if getattr(r, "opt_in", False)
                                                                 else {})}
                           for n, r in recipes.items()}, sort_keys=False)
