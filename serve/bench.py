"""`make bench`: what the gateway costs and what vLLM buys, measured in one run on one engine.

1. Gateway vs direct vLLM, same engine, same streamed requests, at concurrency 1 and 16: output-token throughput
   ratio (target >= 0.98) and the median time to first token the gateway adds (target <= 2 ms). The two paths
   alternate round by round so drift in the machine's speed hits both alike; the gateway runs in its own
   process so the benchmark client does not share its interpreter.
2. Output tok/s at concurrency 16 through the gateway vs Hugging Face transformers' sequential `generate` on the
   same model and the same greedy, fixed-length outputs (target >= 6x). transformers runs after the stack has
   stopped, so it has the whole CPU.

    python -m quantserve.serve.bench bench/serve.json [--model PATH_OR_NAME] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from quantserve.serve.config import build_config
from quantserve.serve.stack import ServeStack

log = logging.getLogger("quantserve.serve.bench")

PROMPTS = [
    "Explain why the sky is blue to a ten-year-old.",
    "Write a short poem about the sea.",
    "List three uses of a paperclip.",
    "What makes a good cup of tea?",
    "Describe a busy train station in the morning.",
    "Give advice to someone learning to cook.",
    "Why do cats purr?",
    "Summarize the water cycle.",
]
TARGETS = {"throughput_ratio_min": 0.98, "ttft_added_ms_max": 2.0, "speedup_vs_hf_min": 6.0}


@dataclass
class Phase:
    path: str  # "direct" or "gateway"
    concurrency: int
    requests: int = 0
    output_tokens: int = 0
    wall_s: float = 0.0
    ttft_ms: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def tok_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s else 0.0


def _body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    # ignore_eos + a fixed max_tokens: every answer is the same length on both paths and in transformers
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


async def _one(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[float | None, int]:
    start = time.perf_counter()
    ttft: float | None = None
    tokens = 0
    async with client.stream("POST", url, json=body) as reply:
        reply.raise_for_status()
        async for line in reply.aiter_lines():
            if not line.startswith("data: {"):
                continue
            if ttft is None:
                ttft = (time.perf_counter() - start) * 1000
            if '"usage"' in line:
                usage = json.loads(line[6:]).get("usage")
                if usage:
                    tokens = int(usage["completion_tokens"])
    return ttft, tokens


async def _phase(base: str, path: str, model: str, concurrency: int, count: int, max_tokens: int,
                 offset: int) -> Phase:
    phase = Phase(path, concurrency)
    url = f"{base}/v1/chat/completions"
    todo = iter(range(count))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits, trust_env=False) as client:

        async def worker() -> None:
            for i in todo:
                try:
                    ttft, tokens = await _one(client, url, _body(model, PROMPTS[(i + offset) % len(PROMPTS)],
                                                                 max_tokens))
                except httpx.HTTPError as err:
                    log.warning("%s request failed: %s", path, err)
                    phase.errors += 1
                    continue
                phase.requests += 1
                phase.output_tokens += tokens
                if ttft is not None:
                    phase.ttft_ms.append(ttft)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        phase.wall_s = time.perf_counter() - start
    return phase


def _merge(phases: list[Phase]) -> dict[str, Any]:
    ttft = [t for p in phases for t in p.ttft_ms]
    tokens = sum(p.output_tokens for p in phases)
    wall = sum(p.wall_s for p in phases)
    return {
        "requests": sum(p.requests for p in phases),
        "errors": sum(p.errors for p in phases),
        "output_tokens": tokens,
        "wall_s": round(wall, 3),
        "output_tok_s": round(tokens / wall, 2) if wall else 0.0,
        "ttft_ms_p50": round(statistics.median(ttft), 2) if ttft else None,
        "ttft_ms_p90": round(statistics.quantiles(ttft, n=10)[-1], 2) if len(ttft) >= 2 else None,
        "rounds": [{"tok_s": round(p.tok_s, 2), "wall_s": round(p.wall_s, 3)} for p in phases],
    }


async def _compare(stack: ServeStack, model: str, max_tokens: int, plan: dict[int, int], rounds: int
                   ) -> dict[str, Any]:
    paths = {"direct": stack.engine_url(model), "gateway": stack.base_url}
    for base in paths.values():  # warm-up: first requests pay one-off costs on both paths
        await _phase(base, "warmup", model, 2, 4, max_tokens, 0)
    results: dict[str, Any] = {}
    for concurrency, count in plan.items():
        runs: dict[str, list[Phase]] = {"direct": [], "gateway": []}
        for r in range(rounds):
            order = ("direct", "gateway") if r % 2 == 0 else ("gateway", "direct")
            for path in order:
                phase = await _phase(paths[path], path, model, concurrency, count, max_tokens, offset=r)
                runs[path].append(phase)
                log.info("c=%d round %d %s: %.1f tok/s, ttft p50 %.1f ms", concurrency, r, path, phase.tok_s,
                         statistics.median(phase.ttft_ms) if phase.ttft_ms else float("nan"))
        direct, gateway = _merge(runs["direct"]), _merge(runs["gateway"])
        ratio = gateway["output_tok_s"] / direct["output_tok_s"] if direct["output_tok_s"] else None
        added = (gateway["ttft_ms_p50"] - direct["ttft_ms_p50"]
                 if gateway["ttft_ms_p50"] is not None and direct["ttft_ms_p50"] is not None else None)
        results[f"c{concurrency}"] = {
            "direct": direct, "gateway": gateway,
            "throughput_ratio": round(ratio, 4) if ratio is not None else None,
            "ttft_added_ms_p50": round(added, 2) if added is not None else None,
        }
    return results


def _hf_baseline(model_path: str, max_tokens: int, prompts: int, dtype: str) -> dict[str, Any]:
    """Sequential transformers generate in the dtype the engine ran in (the probe's choice): like for like."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    model.eval()

    def generate(prompt: str) -> int:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        return int(out.shape[-1] - ids["input_ids"].shape[-1])

    generate(PROMPTS[0])  # warm-up
    start = time.perf_counter()
    tokens = sum(generate(PROMPTS[i % len(PROMPTS)]) for i in range(prompts))
    wall = time.perf_counter() - start
    return {"requests": prompts, "output_tokens": tokens, "wall_s": round(wall, 3),
            "output_tok_s": round(tokens / wall, 2), "dtype": dtype, "torch_threads": torch.get_num_threads()}


def run_bench(out: Path, model: str = "smollm2-135m-instruct", max_tokens: int = 64, requests_c1: int = 6,
              requests_c16: int = 32, rounds: int = 2, hf_prompts: int = 4) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quantserve-bench-") as tmp:
        config = build_config(model_path=model, no_auth=True, port=0, database_url=f"sqlite:///{tmp}/bench.db")
        with ServeStack(config, gateway_mode="process", log_dir=Path(tmp) / "logs") as stack:
            served = stack.models[0]
            model_path = stack.engine(served).spec.model
            device = stack.engine(served).spec.device
            engine_dtype = stack.engine(served).spec.dtype or "float32"
            comparison = asyncio.run(_compare(stack, served, max_tokens, {1: requests_c1, 16: requests_c16}, rounds))
    hf = _hf_baseline(model_path, max_tokens, hf_prompts, engine_dtype)
    gateway_c16 = comparison["c16"]["gateway"]["output_tok_s"]
    speedup = gateway_c16 / hf["output_tok_s"] if hf["output_tok_s"] else None
    checks = {
        f"throughput_ratio_{c}": comparison[c]["throughput_ratio"] is not None
        and comparison[c]["throughput_ratio"] >= TARGETS["throughput_ratio_min"] for c in ("c1", "c16")
    } | {
        f"ttft_added_{c}": comparison[c]["ttft_added_ms_p50"] is not None
        and comparison[c]["ttft_added_ms_p50"] <= TARGETS["ttft_added_ms_max"] for c in ("c1", "c16")
    } | {"speedup_vs_hf": speedup is not None and speedup >= TARGETS["speedup_vs_hf_min"]}
    result = {
        "model": served,
        "model_path": model_path,
        "device": device,
        "engine_dtype": engine_dtype,
        "max_tokens": max_tokens,
        "rounds": rounds,
        "gateway_vs_direct": comparison,
        "hf_transformers_sequential": hf,
        "speedup_vs_hf_c16": round(speedup, 2) if speedup is not None else None,
        "targets": TARGETS,
        "checks": checks,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m quantserve.serve.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="JSON file to write")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="folder, variant folder or default name")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-c1", type=int, default=6, help="requests per round at concurrency 1")
    parser.add_argument("--requests-c16", type=int, default=32, help="requests per round at concurrency 16")
    parser.add_argument("--rounds", type=int, default=2, help="alternating direct/gateway rounds")
    parser.add_argument("--hf-prompts", type=int, default=4)
    args = parser.parse_args(argv)
    from quantserve.serve.gateway import configure_logging

    configure_logging("info")
    result = run_bench(args.out, args.model, args.max_tokens, args.requests_c1, args.requests_c16, args.rounds,
                       args.hf_prompts)
    for c in ("c1", "c16"):
        row = result["gateway_vs_direct"][c]
        print(f"{c}: direct {row['direct']['output_tok_s']} tok/s, gateway {row['gateway']['output_tok_s']} tok/s, "
              f"ratio {row['throughput_ratio']}, ttft added p50 {row['ttft_added_ms_p50']} ms")
    print(f"hf sequential {result['hf_transformers_sequential']['output_tok_s']} tok/s; gateway c16 is "
          f"{result['speedup_vs_hf_c16']}x; checks {result['checks']}; {result['wall_s']} s -> {args.out}")


if __name__ == "__main__":
    main()
