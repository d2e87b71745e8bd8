"""A llama.cpp engine: llama.cpp's own OpenAI-compatible server (xllamacpp's prebuilt build) on one GGUF file.

    python -m quantserve.serve.engine_llamacpp --model X.gguf --name NAME --port N [--parallel 16 --threads 2]

Its command line is rendered by quantserve/runtime_servers.py. The key comes from QUANTSERVE_ENGINE_KEY (the
environment, not the command line, which `ps` shows): llama.cpp then answers every route but /health only to who
sends it. The server runs on native threads inside this
process; SIGTERM ends the process at once, which drops any request in flight as a crash would (the gateway
already let its clients go): llama.cpp's own shutdown waits for running requests to finish first.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from quantserve.runtime_servers import ENGINE_KEY_ENV, default_threads


def params(args: argparse.Namespace, key: str | None):
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = args.model
    p.hostnames = [args.host]
    p.port = args.port
    p.n_parallel = args.parallel  # slots: requests decoded together in one batch (continuous batching)
    p.cont_batching = True
    p.n_ctx = args.ctx_per_slot * args.parallel  # the KV cache is split evenly between the slots
    p.fit_params = False  # else llama.cpp may resize the context to what it guesses fits in memory
    # every request in flight holds one of llama.cpp's HTTP threads while it waits for its slot; with its default
    # (slots + 2) a busy engine left none for /health, and the gateway took it for dead (tasks at 32 in flight got
    # 503s): room for the gateway's 64 in flight per engine, and more
    p.n_threads_http = 4 * args.parallel + 8
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.model_alias = {args.name}
    p.endpoint_metrics = True
    p.verbosity = args.verbosity
    if key:
        p.api_keys = [key]
    return p


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m quantserve.serve.engine_llamacpp")
    parser.add_argument("--model", required=True, help="a .gguf file, or a folder holding one")
    parser.add_argument("--name", required=True, help="the served model name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--ctx-per-slot", type=int, default=2048)
    parser.add_argument("--verbosity", type=int, default=1)
    args = parser.parse_args(argv)
    from quantserve.checkpoint import gguf_file

    model = gguf_file(Path(args.model))
    if model is None:
        sys.exit(f"no .gguf file at {args.model}")
    args.model = str(model)
    import xllamacpp

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        server = xllamacpp.Server(params(args, os.environ.get(ENGINE_KEY_ENV)))  # returns once the port listens
    except RuntimeError as err:
        sys.exit(f"llama.cpp server failed to start on {args.host}:{args.port} with {args.model}: {err}")
    print(f"llama.cpp server for {args.name} listening on {server.listening_address} "
          f"({args.parallel} slots, {args.threads} threads, xllamacpp {_version()})", flush=True)
    while not stop.wait(1.0):
        pass
    sys.stdout.flush()
    os._exit(0)  # see the module doc: `del server` would wait out every request in flight


def _version() -> str:
    from importlib.metadata import version

    return version("xllamacpp")


if __name__ == "__main__":
    main()
