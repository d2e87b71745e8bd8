"""`quantserve quantize`: source model -> variant folders with manifests, one child build per variant."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from quantserve import __version__
from quantserve.errors import UserError
from quantserve.group_size import choose_group_size, quantized_in_features
from quantserve.manifest import GRID_NOTE, Manifest, SourceInfo
from quantserve.model_fetch import DEFAULT_MODEL, default_model_dir, is_default_model, resolve_model
from quantserve.progress import Bar, say, step
from quantserve.prompts import prompt_path
from quantserve.quantize import publish
from quantserve.quantize.calibration import CALIBRATION_FILE, HELDOUT_FILE
from quantserve.quantize.files import file_hashes, sha256_file, weight_bytes, weights_sha256
from quantserve.quantize.recipes import select_variants
from quantserve.quantize.vllm_check import VllmVerdict
from quantserve.quantize.worker import RESULT_NAME, BuildResult, BuildSpec
from quantserve.stage_env import build_python, serve_python


@dataclass
class QuantizeOptions:
    model: str = DEFAULT_MODEL
    variants: str = "default"  # every recipe not marked opt_in; "all" adds those
    out: Path = Path("variants")
    samples: int = 64
    seq_len: int = 256
    group_size: int | str = "auto"
    force: bool = False
    max_kld: float | None = None
    min_top1: float | None = None
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    recipes_file: Path | None = None
    calibration_file: Path = field(default_factory=lambda: prompt_path(CALIBRATION_FILE))
    heldout_file: Path = field(default_factory=lambda: prompt_path(HELDOUT_FILE))


def model_slug(spec: str, path: Path) -> str:
    if is_default_model(spec) or path == default_model_dir():
        return DEFAULT_MODEL
    return (path.name if Path(spec).exists() else spec.split("/")[-1]).lower()


class _VllmChecker:
    """One long-lived child in the serving environment answers 'can vLLM load/run this folder?'."""

    def __init__(self) -> None:
        python = serve_python()
        self.proc = None
        if python:
            self.proc = subprocess.Popen(
                [python, "-m", "quantserve.quantize.vllm_check"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True,
            )

    def check(self, folder: Path) -> VllmVerdict:
        if self.proc is None:
            reason = "vLLM is not installed in any environment found (run `make install`)"
            return VllmVerdict(str(folder), None, reason, False, reason)
        self.proc.stdin.write(f"{folder}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the vLLM check process died; run `python -m quantserve.quantize.vllm_check DIR`")
        return VllmVerdict.from_json(line)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _recipe_hash(recipe: dict, inputs: dict, group_size: int | None) -> str:
    """Equal hash, equal variant: the recipe plus `inputs` (source, calibration and held-out text, sizes)."""
    key = {"recipe": recipe, "group_size": group_size, **inputs}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _run_worker(spec: BuildSpec, tmp: Path) -> BuildResult:
    spec_file = tmp.parent / f"{tmp.name}.spec.json"
    spec_file.write_text(spec.model_dump_json())
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    proc = subprocess.Popen([build_python(spec.runtime), "-m", "quantserve.quantize.worker", str(spec_file)],
                            env=env)
    try:
        code = proc.wait()
    finally:
        if proc.poll() is None:  # we were interrupted: the child must not outlive us
            proc.kill()
            proc.wait()
        spec_file.unlink(missing_ok=True)
    if code:
        raise UserError(f"building {spec.variant} failed (exit {code}); its log is above, nothing was published")
    result_file = tmp / RESULT_NAME
    result = BuildResult.model_validate_json(result_file.read_text())
    result_file.unlink()
    return result


def _gate(manifest: Manifest, opts: QuantizeOptions) -> str | None:
    asked = [flag for flag, bar in (("--max-kld", opts.max_kld), ("--min-top1", opts.min_top1)) if bar is not None]
    if not asked:
        return None
    q = manifest.quality
    if q is None:
        # A gated run publishes only what it checked. A fresh build always has numbers (the worker measures
        # them or fails); a reused manifest may not, e.g. one written before they were recorded.
        return (f"{manifest.name}: no quality numbers recorded, so {' and '.join(asked)} cannot be checked "
                "(--force rebuilds and measures them)")
    if opts.max_kld is not None and q.kld_mean > opts.max_kld:
        return f"{manifest.name}: mean KLD {q.kld_mean:.4f} is above --max-kld {opts.max_kld}"
    if opts.min_top1 is not None and q.top1_agreement < opts.min_top1:
        return f"{manifest.name}: top-1 agreement {q.top1_agreement:.3f} is below --min-top1 {opts.min_top1}"
    return None


def _refused(manifest: Manifest, opts: QuantizeOptions, failures: list[str]) -> bool:
    """Apply the quality gates. A reused variant goes through the same words and outcome as a fresh build:
    reported, left out of the run's results, and the run fails at its end."""
    gate = _gate(manifest, opts)
    if gate:
        failures.append(gate)
        say(f"{manifest.name}: not published: {gate}")
    return gate is not None


def _raise_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def quantize(opts: QuantizeOptions) -> list[Manifest]:
    recipes = select_variants(opts.variants, extra=opts.recipes_file)
    for f in (opts.calibration_file, opts.heldout_file):
        if not Path(f).is_file():
            raise UserError(f"text file {f} does not exist")
    with step("resolve the source model"):
        source = resolve_model(opts.model)
    config = json.loads((source / "config.json").read_text())
    widths = quantized_in_features(config)
    group_sizes = {
        name: choose_group_size(widths, opts.group_size if opts.group_size != "auto" else r.group_size)
        if getattr(r, "group_size", None) is not None else None
        for name, r in recipes.items()
    }
    publish.prepare_out_dir(opts.out)
    src_bytes = weight_bytes(source)
    publish.check_free_space(opts.out, int(src_bytes * 0.8 * len(recipes)) + (256 << 20))
    with step("hash the source weights"):
        source_sha = weights_sha256(source)
    slug = model_slug(opts.model, source)
    source_info = SourceInfo(model=opts.model, path=str(source), sha256=source_sha, weight_bytes=src_bytes,
                             note=GRID_NOTE if slug == DEFAULT_MODEL else None)
    inputs = {
        "source": source_sha, "samples": opts.samples, "seq_len": opts.seq_len,
        "calibration": sha256_file(opts.calibration_file), "heldout": sha256_file(opts.heldout_file),
        "quantserve": __version__,
    }
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    checker = _VllmChecker()
    # The source's log-probabilities on the held-out text, computed by the first quality check, read by the rest.
    reference_dir = Path(tempfile.mkdtemp(prefix=".quality-reference-", dir=opts.out))
    done: list[Manifest] = []
    failures: list[str] = []
    try:
        with Bar(len(recipes), "quantize") as bar:
            for i, (variant, recipe) in enumerate(recipes.items(), 1):
                name = f"{slug}-{variant}"
                bar.at(i - 1, name)
                target = opts.out / name
                recipe_dict = recipe.model_dump(mode="json")
                rhash = _recipe_hash(recipe_dict, inputs, group_sizes[variant])
                if not opts.force and target.is_dir():
                    try:
                        existing = Manifest.read(target)
                    except (OSError, ValueError):
                        existing = None
                    if existing and existing.recipe_hash == rhash:
                        say(f"[{i}/{len(recipes)}] {name}: same recipe and source as the published one, reused "
                            "(--force rebuilds)")
                        if not _refused(existing, opts, failures):
                            done.append(existing)
                        continue
                say(f"[{i}/{len(recipes)}] {name}: building ({recipe.library}, {recipe.scheme}"
                    + (f", group size {group_sizes[variant]}" if group_sizes[variant] else "") + ")")
                tmp = publish.temp_dir_for(target)
                try:
                    spec = BuildSpec(
                        variant=variant, recipe=recipe_dict, source=str(source), out=str(tmp),
                        calibration_file=str(opts.calibration_file), samples=opts.samples, seq_len=opts.seq_len,
                        heldout_file=str(opts.heldout_file), threads=opts.threads, group_size=group_sizes[variant],
                        reference_cache=str(reference_dir), runtime=recipe.runtime,
                    )
                    result = _run_worker(spec, tmp)
                    with step(f"{name}: vLLM config resolution and platform check"):
                        verdict = checker.check(tmp)
                    w_bytes = weight_bytes(tmp)
                    manifest = Manifest(
                        name=name, variant=variant, method=recipe.method, scheme=recipe.scheme, bits=recipe.bits,
                        group_size=group_sizes[variant], format=recipe.checkpoint_format, runtime=recipe.runtime,
                        recipe=recipe_dict,
                        recipe_hash=rhash, source=source_info, calibration=result.calibration,
                        versions=result.versions, wall_time_s=result.wall_time_s,
                        peak_rss_bytes=result.peak_rss_bytes, weight_bytes=w_bytes,
                        size_ratio=round(w_bytes / src_bytes, 4), quality=result.quality,
                        mixed_precision=result.mixed_precision,
                        vllm_loadable=verdict.vllm_loadable, vllm_loadable_reason=verdict.vllm_loadable_reason,
                        servable_here=verdict.servable_here, servable_reason=verdict.servable_reason,
                        files=file_hashes(tmp), created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                        quantserve_version=__version__,
                    )
                    if _refused(manifest, opts, failures):
                        continue
                    manifest.write(tmp)
                    publish.publish(tmp, target)
                    kld = f", KLD {result.quality.kld_mean:.3f}" if result.quality else ""
                    say(f"[{i}/{len(recipes)}] {name}: published, {w_bytes / 1e6:.1f} MB, built in "
                        f"{result.wall_time_s:.0f}s{kld}")
                    done.append(manifest)
                except OSError as err:
                    if err.errno == errno.ENOSPC:
                        raise UserError(f"out of disk space while building {name}; nothing was published") from None
                    raise
                finally:
                    if tmp.exists():
                        shutil.rmtree(tmp, ignore_errors=True)
            bar.at(len(recipes))
    finally:
        checker.close()
        shutil.rmtree(reference_dir, ignore_errors=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if failures:
        raise UserError("quality gate failed: " + "; ".join(failures))
    return done


