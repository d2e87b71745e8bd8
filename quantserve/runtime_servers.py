"""The command lines of the llama.cpp and OpenVINO engine servers (serve/engine_llamacpp.py, engine_openvino.py).

Serving starts them (serve/vllm_command.py) and the probe times them (probe_trials.py) with the same command, so
it lives in the core, which both may import. The key travels in ENGINE_KEY_ENV, never on a command line (`ps`
shows those to every local user).
"""

from __future__ import annotations

import os
import sys

ENGINE_KEY_ENV = "QUANTSERVE_ENGINE_KEY"


def default_threads() -> int:
    """Every core this process may run on: these engines have no frontend process to keep a core for."""
    return len(os.sched_getaffinity(0))


def llamacpp_command(model: str, name: str, host: str, port: int, *, parallel: int, threads: int | None,
                     ctx_per_slot: int) -> list[str]:
    return [sys.executable, "-m", "quantserve.serve.engine_llamacpp", "--model", model, "--name", name,
            "--host", host, "--port", str(port), "--parallel", str(parallel),
            "--threads", str(threads or default_threads()), "--ctx-per-slot", str(ctx_per_slot)]


def openvino_command(model: str, name: str, host: str, port: int, *, parallel: int, threads: int | None,
                     precision: str | None, kv_cache_gib: int, max_model_len: int) -> list[str]:
    cmd = [sys.executable, "-m", "quantserve.serve.engine_openvino", "--model", model, "--name", name,
           "--host", host, "--port", str(port), "--parallel", str(parallel), "--kv-cache-gib", str(kv_cache_gib),
           "--max-model-len", str(max_model_len)]
    if threads:
        cmd += ["--threads", str(threads)]
    if precision in ("bf16", "f32", "f16"):  # else OpenVINO's own choice for this CPU
        cmd += ["--precision", precision]
    return cmd
