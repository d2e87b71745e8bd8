"""`quantserve probe`: which checkpoint formats run on this machine, in which dtype, and how fast.

Which dtype is fastest, and whether a format runs at all, depends on the CPU (AVX2 has no 4-bit kernel and
emulates bf16; AMX sends W8A8 to a kernel that takes no fp32) or the GPU. So it is measured, never assumed:
for each format (a small checkpoint of the embedded default model) and each candidate dtype a real vLLM
engine starts, answers a one-token smoke test, then times a greedy decode at batch 1 and batch 16.

On a CPU, vLLM keeps one core for its frontend by default and computes on the rest; on a machine with few cores
that core may be worth more computing. So one more trial runs the full model, in its fastest dtype, with no core
kept back; engines then run that way where it measured clearly faster (`ProbeResult.engine_env`).

The result is cached under the state dir by machine fingerprint (CPU/GPU, vLLM and torch builds) and probe
version; serving picks each engine's dtype from it, and decides there whether a variant runs here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from quantserve.atomic import write_text
from quantserve.checkpoint import FORMATS, checkpoint_format, runtime_of_format
from quantserve.device import Device
from quantserve.errors import UserError
from quantserve.machine import Machine, this_machine
from quantserve.paths import state_dir
from quantserve.progress import say

PROBE_VERSION = 4  # bump when what a trial measures changes: older caches are then re-probed
CANDIDATE_DTYPES: dict[Device, tuple[str, ...]] = {"cpu": ("bfloat16", "float32"), "cuda": ("bfloat16", "float16")}
# llama.cpp computes each tensor in its file's type (no choice to measure); OpenVINO's inference precision hint is
# measured like vLLM's dtype. Neither runs on CUDA here (the CPU wheels only).
RUNTIME_DTYPES: dict[str, dict[Device, tuple[str, ...]]] = {
    "llama.cpp": {"cpu": ("gguf",), "cuda": ()},
    "openvino": {"cpu": ("bf16", "f32"), "cuda": ()},
}


def candidate_dtypes(fmt: str, device: Device) -> tuple[str, ...]:
    runtime = runtime_of_format(fmt)
    return CANDIDATE_DTYPES[device] if runtime == "vllm" else RUNTIME_DTYPES[runtime][device]
BATCHES = (1, 16)
DECODE_TOKENS = 24
TRIAL_TIMEOUT_S = 300.0
ALL_CORES_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}  # vLLM's frontend shares the cores its engine computes on
ALL_CORES_MIN_GAIN = 1.05  # under this the two placements are within a trial's noise: vLLM's default stays


class Trial(BaseModel):
    format: str
    dtype: str
    runs: bool
    probed: bool = True  # False: no trial ran (its checkpoint could not be built); says nothing about the format
    reason: str = ""  # why not, when it does not run
    start_s: float | None = None
    tok_s: dict[str, float] = Field(default_factory=dict)  # batch size -> output tokens/s
    env: dict[str, str] = Field(default_factory=dict)  # the engine's environment beyond vLLM's defaults

    @property
    def score(self) -> float:
        """Geometric mean of the tok/s at each batch: one dtype must not win on one load and lose badly on the
        other without that showing."""
        if not self.runs or not self.tok_s:
            return 0.0
        return math.exp(sum(math.log(max(v, 1e-9)) for v in self.tok_s.values()) / len(self.tok_s))


class Verdict(BaseModel):
    """What serving does with one checkpoint format on this machine."""

    format: str
    runs: bool | None  # None: unknown (a format the probe does not measure, or its trial could not run)
    dtype: str | None  # fastest dtype that runs
    reason: str


class ProbeResult(BaseModel):
    probe_version: int = PROBE_VERSION
    machine: Machine
    model: str  # what the trials ran on
    probed_at: str
    wall_time_s: float
    trials: list[Trial]

    def best(self, fmt: str) -> Trial | None:
        """The fastest dtype of a format, among the trials in vLLM's default core placement."""
        running = [t for t in self.trials if t.format == fmt and t.runs and not t.env]
        return max(running, key=lambda t: t.score) if running else None

    def _all_cores(self) -> tuple[Trial, Trial] | None:
        """The all-cores trial and the default-placement trial it is compared with, where both ran."""
        base = self.best("full")
        trial = next((t for t in self.trials if t.env == ALL_CORES_ENV and t.runs), None)
        return (trial, base) if trial is not None and base is not None and trial.dtype == base.dtype else None

    @property
    def engine_env(self) -> dict[str, str]:
        """Environment for every local engine: all cores where that measured clearly faster, else nothing."""
        pair = self._all_cores()
        return dict(pair[0].env) if pair and pair[0].score >= ALL_CORES_MIN_GAIN * pair[1].score else {}

    def placement_reason(self) -> str | None:
        """One line on where engines compute and why, or None where it was not measured (GPU, one core)."""
        pair = self._all_cores()
        if pair is None:
            return None
        trial, base = pair
        speeds = f"all cores {_speeds(trial)}; one core kept for vLLM's frontend {_speeds(base)}"
        if self.engine_env:
            return f"engines compute on all cores, the frontend sharing them: measured faster ({speeds})"
        return f"engines keep vLLM's default, one core for the frontend: all cores were not clearly faster ({speeds})"

    def verdict(self, fmt: str) -> Verdict:
        tried = [t for t in self.trials if t.format == fmt and t.probed and not t.env]
        if not tried:
            unprobed = next((t.reason for t in self.trials if t.format == fmt), "")
            return Verdict(format=fmt, runs=None, dtype=None,
                           reason=unprobed or f"format {fmt} is not one the probe measures")
        best = self.best(fmt)
        label = FORMATS.get(fmt, fmt)  # type: ignore[call-overload]
        if best is None:
            why = "; ".join(f"{t.dtype}: {t.reason}" for t in tried)
            return Verdict(format=fmt, runs=False, dtype=None,
                           reason=f"{label} does not run on this machine ({why})")
        others = "; ".join(f"{t.dtype} {_speeds(t) if t.runs else 'fails: ' + t.reason}"
                           for t in tried if t is not best)
        return Verdict(format=fmt, runs=True, dtype=best.dtype,
                       reason=f"{label} runs here; fastest in {best.dtype} ({_speeds(best)})"
                              + (f"; {others}" if others else ""))

    def verdict_for(self, model_dir: str | Path) -> Verdict:
        """The verdict for a checkpoint folder. A format the probe does not measure is tried (the engine's
        smoke test decides) in the dtype measured fastest for full precision."""
        fmt = checkpoint_format(Path(model_dir))
        v = self.verdict(fmt)
        if v.runs is None and runtime_of_format(fmt) != "vllm":  # its runtime's own default; the smoke test decides
            return Verdict(format=fmt, runs=None, dtype=None, reason=f"{v.reason}; tried in its runtime's default")
        if v.runs is None:
            full = self.verdict("full")
            return Verdict(format=fmt, runs=None, dtype=full.dtype,
                           reason=f"{v.reason}; tried in {full.dtype}, the fastest full-precision dtype here")
        return v


def _speeds(t: Trial) -> str:
    return ", ".join(f"{v:.1f} tok/s at batch {b}" for b, v in t.tok_s.items())


def cache_path(machine: Machine) -> Path:
    return state_dir() / "probe" / f"{machine.key()}-v{PROBE_VERSION}.json"


def cached(machine: Machine | None = None) -> ProbeResult | None:
    """The probe of this machine (same fingerprint and probe version), or None when it was never probed."""
    path = cache_path(machine or this_machine())
    if not path.is_file():
        return None
    try:
        return ProbeResult.model_validate_json(path.read_text())
    except ValueError:
        return None  # a cache from an incompatible build: probe again


def ensure_probe(device: Device | None = None, force: bool = False) -> ProbeResult:
    """The cached probe of this machine, or a fresh one (a few minutes; a line per trial)."""
    machine = this_machine(device)
    if not force and (found := cached(machine)) is not None:
        return found
    if machine.vllm is None:
        raise UserError("vLLM is not installed in this environment; the probe runs in the serving environment "
                        "(.venv, `make install`)")
    lock_path = cache_path(machine).with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        # Two commands starting on a new machine at once must not probe side by side (each would measure
        # the other's load): the second waits and takes the first one's result.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and (found := cached(machine)) is not None:
            return found
        return _probe(machine, force)


def _probe(machine: Machine, force: bool) -> ProbeResult:
    say(f"probing this machine: {machine.summary()}")
    started = time.perf_counter()
    model, checkpoints, trials = _prepare(machine, force)
    plan = [{"format": f, "dtype": d, "path": str(p), "runtime": runtime_of_format(f)}
            for f, p in checkpoints.items() for d in candidate_dtypes(f, machine.device)]
    placement = machine.device == "cpu" and len(os.sched_getaffinity(0)) >= 2
    total = len(plan) + placement
    trials += run_trials(plan, machine.device, total=total)
    full = max((t for t in trials if t.format == "full" and t.runs), key=lambda t: t.score, default=None)
    if placement and full is not None:
        trials += run_trials([{"format": "full", "dtype": full.dtype, "path": str(checkpoints["full"]),
                               "runtime": "vllm", "env": ALL_CORES_ENV}], machine.device, total=total,
                             numbered_from=len(plan))
    order = {fmt: i for i, fmt in enumerate(FORMATS)}
    trials.sort(key=lambda t: (order.get(t.format, 99), t.dtype, bool(t.env)))
    result = ProbeResult(machine=machine, model=model, probed_at=datetime.now(UTC).isoformat(timespec="seconds"),
                         wall_time_s=round(time.perf_counter() - started, 1), trials=trials)
    path = write_text(cache_path(machine), result.model_dump_json(indent=2) + "\n")
    say(f"probe done in {result.wall_time_s:.0f}s; cached at {path}")
    return result


def _prepare(machine: Machine, force: bool) -> tuple[str, dict[str, Path], list[Trial]]:
    """The probe checkpoints (built once, each in the environment that builds its runtime's variants) and a failed
    trial for each format whose checkpoint could not be built."""
    from quantserve.model_fetch import DEFAULT_MODEL, ensure_default_model
    from quantserve.stage_env import build_python

    source = ensure_default_model()
    root = state_dir() / "probe" / "checkpoints" / DEFAULT_MODEL
    checkpoints: dict[str, Path] = {"full": source}
    # a checkpoint is renamed into place when complete, so a folder that exists is a whole one
    wanted = [f for f in FORMATS if f != "full" and candidate_dtypes(f, machine.device)]
    missing = [f for f in wanted if force or not (root / f).is_dir()]
    failed: list[Trial] = []
    why: dict[str, str] = {}
    for env in ("quant", "openvino"):
        group = [f for f in missing if (runtime_of_format(f) == "openvino") == (env == "openvino")]
        if not group:
            continue
        try:
            python = build_python("openvino" if env == "openvino" else "vllm")
        except UserError as err:
            why.update(dict.fromkeys(group, str(err)))
            continue
        say(f"building probe checkpoints of {DEFAULT_MODEL}: {', '.join(group)} (data-free, seconds each)")
        proc = subprocess.run([python, "-m", "quantserve.quantize.probe_checkpoints", str(source), str(root),
                               *group], env={**os.environ, "HF_HUB_OFFLINE": "1"})
        why.update(dict.fromkeys(group, f"building its probe checkpoint failed (exit {proc.returncode}); "
                                        "its log is above"))
    for fmt in wanted:
        if (root / fmt).is_dir():
            checkpoints[fmt] = root / fmt
        else:
            failed += [Trial(format=fmt, dtype=d, runs=False, probed=False, reason=f"not probed: {why.get(fmt, '')}")
                       for d in candidate_dtypes(fmt, machine.device)]
    return DEFAULT_MODEL, checkpoints, failed


def run_trials(plan: list[dict], device: Device, total: int | None = None, numbered_from: int = 0) -> list[Trial]:
    """The planned trials ({format, dtype, path[, env]}) in trial processes of the serving environment. A trial
    that takes its process down is recorded as failed and the rest go on in a fresh process. The progress lines
    number them after `numbered_from`, out of `total`."""
    from quantserve.stage_env import serve_python

    python = serve_python()
    if python is None:
        raise UserError("vLLM is not installed in any environment found (run `make install`)")
    root = state_dir() / "probe"
    root.mkdir(parents=True, exist_ok=True)
    for old in [] if numbered_from else root.glob("trials-*"):  # the last probe's engine logs are kept, older not
        shutil.rmtree(old, ignore_errors=True)
    logs = Path(tempfile.mkdtemp(prefix="trials-", dir=root))
    done: list[Trial] = []
    while len(done) < len(plan):
        pending = plan[len(done):]
        spec = logs / "spec.json"
        spec.write_text(json.dumps({"trials": pending, "first": numbered_from + len(done) + 1,
                                    "total": total or len(plan),
                                    "device": device, "batches": list(BATCHES), "decode_tokens": DECODE_TOKENS,
                                    "logs": str(logs)}))
        results = logs / "results.jsonl"
        results.unlink(missing_ok=True)
        proc = subprocess.Popen([python, "-m", "quantserve.probe_trials", str(spec), str(results)],
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = proc.wait(timeout=TRIAL_TIMEOUT_S * len(pending))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            code = None
        finally:
            if proc.poll() is None:
                _kill_group(proc)
        got = [Trial.model_validate_json(line) for line in results.read_text().splitlines()] \
            if results.is_file() else []
        done += got
        if len(done) < len(plan) and len(got) < len(pending):
            t = pending[len(got)]
            how = "timed out" if code is None else f"died (exit {code})"
            say(f"  probe process {how} during {t['format']} in {t['dtype']}; going on with the rest")
            done.append(Trial(format=t["format"], dtype=t["dtype"], runs=False, env=t.get("env", {}),
                              reason=f"the trial process {how}; see {logs}"))
    return done


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def table_rows(result: ProbeResult) -> list[dict[str, str]]:
    """format x dtype -> runs or why not, tok/s at each batch; the chosen dtype marked."""
    rows = []
    for t in result.trials:
        best = result.best(t.format)
        rows.append({
            "format": FORMATS.get(t.format, t.format),  # type: ignore[call-overload]
            "dtype": t.dtype + (" *" if best is t else "") + (", all cores" if t.env == ALL_CORES_ENV else ""),
            "runs": "yes" if t.runs else t.reason if not t.probed else f"no: {t.reason}",
            **{f"tok/s @{b}": f"{t.tok_s[str(b)]:.1f}" if str(b) in t.tok_s else "–" for b in BATCHES},
            "start s": f"{t.start_s:.0f}" if t.start_s is not None else "–",
        })
    return rows


ProbeProvider = Callable[[], ProbeResult]
