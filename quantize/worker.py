"""Builds one variant into a folder, in the quantization environment, as a child process.

A child per variant keeps each build's peak memory its own (it is reported in the manifest) and lets the
parent run where the quantization libraries are not installed (see quantize/stage_env.py).
"""

from __future__ import annotations

import importlib.metadata
import json
import resource
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from quantserve.manifest import CalibrationInfo, MixedPrecision, Quality
from quantserve.progress import say, step

LIBRARIES = ("torch", "transformers", "llmcompressor", "compressed-tensors", "bitsandbytes", "accelerate", "xllamacpp",
             "gguf", "openvino", "nncf", "optimum-intel")
RESULT_NAME = ".build.json"


class BuildSpec(BaseModel):
    variant: str
    recipe: dict
    source: str
    out: str
    calibration_file: str
    samples: int
    seq_len: int
    heldout_file: str
    threads: int
    group_size: int | None
    reference_cache: str | None = None  # a folder the builds of one `quantize` call share (quality.cached_reference)
    runtime: str = "vllm"  # the recipe's: which environment builds it (stage_env.build_python)


class BuildResult(BaseModel):
    calibration: CalibrationInfo | None
    quality: Quality | None
    mixed_precision: MixedPrecision | None = None
    versions: dict[str, str]
    wall_time_s: float
    peak_rss_bytes: int


def _versions() -> dict[str, str]:
    found = {}
    for lib in LIBRARIES:
        try:
            found[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _measure_quality(spec: BuildSpec) -> Quality:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantserve.quantize.calibration import heldout_ids, ids_sha256
    from quantserve.quantize.quality import cached_reference, compare, reference_logprobs

    tokenizer = AutoTokenizer.from_pretrained(spec.source)
    seqs = heldout_ids(tokenizer, Path(spec.heldout_file))
    seqs_sha = ids_sha256(seqs)

    def source_reference() -> list[torch.Tensor]:
        # The source in fp32 is the reference.
        source = AutoModelForCausalLM.from_pretrained(spec.source, dtype=torch.float32).eval()
        return reference_logprobs(source, seqs)

    cache = Path(spec.reference_cache) if spec.reference_cache else None
    reference = cached_reference(cache, seqs_sha, source_reference)
    method = spec.recipe["method"]
    if method == "openvino":
        from quantserve.quantize.build_openvino import load_for_quality

        variant = load_for_quality(Path(spec.out))
    else:
        variant = _load_variant(spec)
    stats = compare(reference, variant, seqs)
    return Quality(
        heldout_file=Path(spec.heldout_file).name, heldout_sha256=seqs_sha, tokens=stats.tokens,
        ppl=stats.ppl, ppl_source=stats.ppl_source, ppl_ratio=stats.ppl_ratio, kld_mean=stats.kld_mean,
        kld_p95=stats.kld_p95, top1_agreement=stats.top1_agreement,
    )


def _load_variant(spec: BuildSpec):
    import torch
    from transformers import AutoModelForCausalLM

    from quantserve.checkpoint import activation_quantized_targets
    from quantserve.quantize.quality import emulate_dynamic_int8_activations

    method = spec.recipe["method"]
    if method == "gguf":
        from quantserve.quantize.build_gguf import GGUF_NAME

        # transformers dequantizes each tensor from its GGUF type: the weights' error exactly, without the 8-bit
        # rounding of activations that llama.cpp's quantized dot products add (README: GGUF quality)
        return AutoModelForCausalLM.from_pretrained(spec.out, gguf_file=GGUF_NAME, dtype=torch.float32).eval()
    # compressed-tensors variants are dequantized once at load (the same numbers as running compressed, which
    # would unpack every weight on every forward pass).
    extra = {}
    if method != "bnb":
        from transformers import CompressedTensorsConfig

        extra["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    variant = AutoModelForCausalLM.from_pretrained(spec.out, dtype=torch.float32, device_map="cpu", **extra).eval()
    targets = activation_quantized_targets(Path(spec.out))
    if targets:
        emulate_dynamic_int8_activations(variant, None if "Linear" in targets else targets)
    return variant


def run(spec: BuildSpec) -> BuildResult:
    import torch
    from transformers import AutoTokenizer

    from quantserve.quantize.calibration import calibration_ids, ids_sha256
    from quantserve.quantize.recipes import BnbRecipe, GgufRecipe, OpenVinoRecipe, parse_recipe

    torch.set_num_threads(spec.threads)
    recipe = parse_recipe(spec.recipe)
    out = Path(spec.out)
    start = time.perf_counter()
    calibration = mixed = None
    if isinstance(recipe, GgufRecipe):
        from quantserve.quantize import build_gguf

        with step(f"{spec.variant}: convert with llama.cpp's converter, quantize with ggml ({recipe.quant_type})"):
            tensor_types = build_gguf.build(recipe, Path(spec.source), out, spec.threads)
        say(f"  tensor types: {', '.join(f'{n} x{c}' for n, c in sorted(tensor_types.items()))}")
    elif isinstance(recipe, OpenVinoRecipe):
        from quantserve.quantize import build_openvino

        with step(f"{spec.variant}: export to OpenVINO IR with NNCF {recipe.weight_format} weights (data-free)"):
            build_openvino.build(recipe, Path(spec.source), out, spec.group_size)
    elif isinstance(recipe, BnbRecipe):
        from quantserve.quantize import build_bnb

        with step(f"{spec.variant}: quantize with bitsandbytes ({recipe.scheme}) and save"):
            build_bnb.build(recipe, Path(spec.source), out)
    else:
        from quantserve.quantize import build_llmcompressor

        tokenizer = AutoTokenizer.from_pretrained(spec.source)
        calib = calibration_ids(tokenizer, Path(spec.calibration_file), recipe.calibration_windows(spec.samples),
                                spec.seq_len)
        calibration = CalibrationInfo(file=Path(spec.calibration_file).name, samples=len(calib),
                                      seq_len=spec.seq_len, sha256=ids_sha256(calib))
        with step(f"{spec.variant}: calibrate layer by layer on {len(calib)}x{spec.seq_len} tokens and save"):
            mixed = build_llmcompressor.build(recipe, Path(spec.source), out, calib, spec.group_size)
    wall = time.perf_counter() - start
    with step(f"{spec.variant}: quality vs source on held-out text"):
        quality = _measure_quality(spec)
    return BuildResult(
        calibration=calibration, quality=quality, mixed_precision=mixed, versions=_versions(),
        wall_time_s=round(wall, 2),
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )


def quiet_libraries() -> None:
    """llm-compressor logs every module and draws a bar per layer pass; a user wants one line per layer
    (build_llmcompressor prints those) and each distinct warning once.

    QUANTSERVE_VERBOSE=1 keeps the libraries' own output."""
    import logging
    import os

    if os.environ.get("QUANTSERVE_VERBOSE") == "1":
        return
    os.environ["TQDM_DISABLE"] = "1"
    logging.getLogger("transformers").setLevel(logging.ERROR)
    # NNCF prints a bit-width table and a progress bar per export, optimum-intel its export steps
    for name in ("nncf", "optimum", "optimum.intel"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # auto-round logs its own defaults at INFO, per layer (a hub data set llm-compressor never uses, torch.compile
    # hints); it sets its logger's level from AR_LOG_LEVEL when imported.
    os.environ.setdefault("AR_LOG_LEVEL", "ERROR")
    logging.getLogger("autoround").setLevel(logging.ERROR)
    # A mixed variant names its 8-bit layers; each Linear stops at the first target it matches ("Linear"), so
    # compressed-tensors reports every named one as unmatched, once per pass, although exact names win when the
    # scheme is resolved (the test of the mixed variant checks the saved groups).
    logging.getLogger("compressed_tensors.utils.match").setLevel(logging.ERROR)
    seen: set[str] = set()

    def first_time(message: str) -> bool:
        if message in seen:
            return False
        seen.add(message)
        return True

    # bitsandbytes logs one warning per matmul call ("MatMul8bitLt: inputs will be cast ..."): once is enough.
    once = logging.StreamHandler(sys.stderr)
    once.addFilter(lambda record: first_time(record.getMessage()))
    once.setFormatter(logging.Formatter("[quantserve]   %(levelname)s: %(message)s"))
    bnb_logger = logging.getLogger("bitsandbytes")
    bnb_logger.addHandler(once)
    bnb_logger.propagate = False
    try:
        import llmcompressor  # noqa: F401  (it installs its own sinks at import; replace them after)
        from loguru import logger
    except ImportError:
        return
    def sink(message) -> None:
        record = message.record
        # not llm-compressor's METRIC level
        if record["level"].name in ("WARNING", "ERROR", "CRITICAL") and first_time(record["message"]):
            sys.stderr.write(f"[quantserve]   {record['level'].name.lower()}: {record['message']}\n")

    logger.remove()
    logger.add(sink, level="WARNING")


def main() -> None:
    spec = BuildSpec.model_validate_json(Path(sys.argv[1]).read_text())
    quiet_libraries()
    result = run(spec)
    (Path(spec.out) / RESULT_NAME).write_text(json.dumps(result.model_dump(mode="json"), indent=2))


if __name__ == "__main__":
    main()
