"""The probe's trials, in the serving environment: `python -m quantserve.probe_trials SPEC.json RESULTS.jsonl`.

Each vLLM trial starts a real vLLM engine (offline `LLM`, with its engine core in a process of its own as the
OpenAI server runs it, the same eager mode and KV cache size), generates one token, then times a greedy decode
at each batch size. A llama.cpp or OpenVINO trial starts that runtime's engine server exactly as serving does and
times the same decode over HTTP, the batch sent as that many requests at once (its continuous batching).
One JSON line per trial goes to RESULTS as soon as it ends; the engine's own output goes to
a log per trial, whose last error line is the reason a trial failed.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

from quantserve.probe import Trial

_PROMPTS = [
    "Write a short reply to a customer asking where their order is.",
    "Explain in two sentences what a refund policy is.",
    "List three things to check before restarting a router.",
    "Summarize why backups matter for a small business.",
]
SHUTDOWN_GRACE_S = 1.0
_ERROR_LINE = re.compile(r"\b([A-Z]\w*(?:Error|Exception))(?::\s*(.+))?\s*$")
# What the caller of a dead engine sees; the cause is logged before it by the worker or engine core.
_GENERIC = ("EngineDeadError", "EngineGenerateError", "root cause above", "stack trace above",
            "EngineCore encountered an issue")


def _reason(log: Path, err: BaseException) -> str:
    """The first specific error in the trial's log (the root cause), else the exception the caller got."""
    lines = []
    with contextlib.suppress(OSError):
        lines = log.read_text(errors="replace").splitlines()
    text = ""
    for i, line in enumerate(lines):
        m = _ERROR_LINE.search(line)
        if not m or any(g in line for g in _GENERIC):
            continue
        text = f"{m.group(1)}: {m.group(2).strip()}" if m.group(2) else m.group(1)
        if not m.group(2):  # a bare AssertionError: the assert line above it says what failed
            asserts = [ln.split("]", 1)[-1].strip() for ln in lines[max(0, i - 4):i] if "assert " in ln]
            if asserts:  # the assert may go on over more lines: say so rather than show half a bracket
                more = " …" if asserts[-1].endswith(("(", ",", "\\")) else ""
                text += f" at `{asserts[-1]}{more}`"
        break
    text = " ".join((text or f"{type(err).__name__}: {err}").split())
    return text if len(text) <= 240 else text[:239] + "…"


def _trial(spec: dict, item: dict, log: Path) -> Trial:
    from vllm import LLM, SamplingParams

    trial = Trial(format=item["format"], dtype=item["dtype"], runs=False, env=item.get("env", {}))
    llm = None
    stage = "start"
    saved = {k: os.environ.get(k) for k in trial.env}
    os.environ.update(trial.env)  # the engine core is spawned from here and reads it
    try:
        started = time.perf_counter()
        llm = LLM(model=item["path"], dtype=item["dtype"], max_model_len=512, max_num_seqs=max(spec["batches"]),
                  enforce_eager=spec["device"] == "cpu", seed=0,
                  **({"gpu_memory_utilization": 0.3} if spec["device"] == "cuda" else {}))
        trial.start_s = round(time.perf_counter() - started, 1)
        stage = "smoke test"
        out = llm.generate(["Hello"], SamplingParams(max_tokens=1, temperature=0), use_tqdm=False)
        if not out or not out[0].outputs[0].token_ids:
            raise RuntimeError("the one-token smoke test generated nothing")
        stage = "timed decode"
        params = SamplingParams(max_tokens=spec["decode_tokens"], temperature=0, ignore_eos=True)
        for batch in spec["batches"]:
            prompts = [_PROMPTS[i % len(_PROMPTS)] + f" ({i})" for i in range(batch)]
            t0 = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - t0
            trial.tok_s[str(batch)] = round(sum(len(o.outputs[0].token_ids) for o in outs) / elapsed, 2)
        trial.runs = True
    except Exception as err:  # any failure is a finding of the probe, not a crash of it
        trial.reason = f"{stage} failed: {_reason(log, err)}"
    finally:
        if llm is not None:
            with contextlib.suppress(Exception):
                # vLLM's default grace is 5 s, most of it spent after the worker has exited; the timings are
                # taken, so the engine core is killed after 1 s (11 trials: about 40 s less probe).
                llm.llm_engine.engine_core.shutdown(timeout=SHUTDOWN_GRACE_S)
            del llm
            gc.collect()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return trial


def _server_trial(spec: dict, item: dict, log: Path) -> Trial:
    """One llama.cpp / OpenVINO trial: its engine server started as serving starts it, timed over HTTP."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    trial = Trial(format=item["format"], dtype=item["dtype"], runs=False)
    port = _free_port()
    cmd = _server_command(item, port, max(spec["batches"]))
    stage = "start"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        with httpx.Client(timeout=120.0, trust_env=False) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the engine exited with code {proc.returncode} before it was ready")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{url}/health").status_code == 200:
                        break
                if time.perf_counter() - started > 240:
                    raise TimeoutError("the engine was not ready after 240 s")
                time.sleep(0.2)
            trial.start_s = round(time.perf_counter() - started, 1)

            def complete(prompt: str, tokens: int) -> int:
                reply = client.post(f"{url}/v1/completions", json={
                    "model": "probe", "prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True})
                if reply.status_code != 200:
                    raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:200]}")
                return int(reply.json()["usage"]["completion_tokens"])

            stage = "smoke test"
            if complete("Hello", 1) < 1:
                raise RuntimeError("the one-token smoke test generated nothing")
            stage = "timed decode"
            for batch in spec["batches"]:
                prompts = [_PROMPTS[i % len(_PROMPTS)] + f" ({i})" for i in range(batch)]
                t0 = time.perf_counter()
                with ThreadPoolExecutor(batch) as pool:
                    tokens = sum(pool.map(lambda p: complete(p, spec["decode_tokens"]), prompts))
                trial.tok_s[str(batch)] = round(tokens / (time.perf_counter() - t0), 2)
        trial.runs = True
    except Exception as err:  # any failure is a finding of the probe, not a crash of it
        trial.reason = f"{stage} failed: {_reason(log, err)}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the timings are taken; nothing to drain
        proc.wait(timeout=30)
    return trial


def _server_command(item: dict, port: int, slots: int) -> list[str]:
    from quantserve.runtime_servers import llamacpp_command, openvino_command

    if item["runtime"] == "llama.cpp":
        return llamacpp_command(item["path"], "probe", "127.0.0.1", port, parallel=slots, threads=None,
                                ctx_per_slot=512)
    return openvino_command(item["path"], "probe", "127.0.0.1", port, parallel=slots, threads=None,
                            precision=item["dtype"], kv_cache_gib=1, max_model_len=512)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(spec_file: str, results_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    # vLLM's output goes to a log per trial (the engine core inherits the descriptors when it is spawned);
    # progress lines go to the terminal this process was started from.
    terminal = os.fdopen(os.dup(2), "w", buffering=1)

    def say(line: str) -> None:
        terminal.write(f"[quantserve] {line}\n")

    logs = Path(spec["logs"])
    for n, item in enumerate(spec["trials"], spec["first"]):
        what = f"{item['format']} in {item['dtype']}" + (" on all cores" if item.get("env") else "")
        log = logs / f"{item['format']}-{item['dtype']}{'-all-cores' if item.get('env') else ''}.log"
        say(f"probe {n}/{spec['total']}: {what} ...")
        sys.stdout.flush()
        sys.stderr.flush()
        with open(log, "ab") as out:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
        trial = _trial(spec, item, log) if item.get("runtime", "vllm") == "vllm" else _server_trial(spec, item, log)
        if trial.runs:
            speeds = ", ".join(f"{v:.1f} tok/s at batch {b}" for b, v in trial.tok_s.items())
            say(f"probe {n}/{spec['total']}: {what}: runs, {speeds} "
                f"(engine up in {trial.start_s:.0f}s)")
        else:
            say(f"probe {n}/{spec['total']}: {what}: does not run: {trial.reason}")
        with open(results_file, "a") as out:
            out.write(trial.model_dump_json() + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
