"""`make bench` -> bench/serve.json: what the gateway costs, that it loses nothing, and what vLLM buys.

1. Gateway vs direct vLLM, same engine, same streamed requests (eval's load generator and metrics: one TTFT
   definition in the project), at concurrency 1 and 16: output-token throughput ratio (target >= 0.98) and the
   median time to first token the gateway adds (target <= 2 ms). The paths alternate round by round so drift in
   the machine's speed hits both alike; the gateway runs in its own process.
2. A soak: >= 1,000 requests at concurrency 32 (unary, streams with and without usage, some cancelled by the
   client), then the ledger reconciled with the answers and with vLLM's own token counters.
3. Output tok/s at concurrency 16 through the gateway vs Hugging Face transformers' sequential `generate` on the
   same model and the same greedy, fixed-length outputs (target >= 6x), after the stack has stopped.
4. The gateway alone against a zero-latency stub: requests/s one gateway process carries and the p99 latency it
   adds (targets >= 1,000 req/s, <= 10 ms), per uvicorn loop/parser pair.

    python -m quantserve.app.bench.serve bench/serve.json [--model PATH_OR_NAME] [--max-tokens 64]

In app/bench/ (orchestration), not in serve/, because it drives both stages: serve's stack and eval's load generator
and metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from quantserve.app.bench.overhead import OverheadPlan, measure_in_subprocess
from quantserve.app.bench.soak import KINDS, SoakPlan, engine_counters, reconcile, run_soak
from quantserve.eval.endpoint import Endpoint
from quantserve.eval.loadgen import LoadLimits, LoadPoint, make_client, run_point
from quantserve.eval.metrics import Metrics, compute_metrics
from quantserve.eval.records import RequestRecord
from quantserve.eval.scenarios import ScenarioItem, load_scenario
from quantserve.model_fetch import DEFAULT_MODEL
from quantserve.serve.config import build_config
from quantserve.serve.keys import KeyStore
from quantserve.serve.stack import ServeStack

log = logging.getLogger("quantserve.serve.bench")

SCENARIO = "short-questions"
TARGETS = {"throughput_ratio_min": 0.98, "ttft_added_ms_max": 2.0, "speedup_vs_hf_min": 6.0}


def _summary(records: list[RequestRecord]) -> dict[str, Any]:
    m: Metrics = compute_metrics(records)
    return {
        "requests": m.requests, "errors": m.failed, "output_tokens": m.total_output_tokens,
        "wall_s": round(m.duration_s, 3), "output_tok_s": round(m.output_throughput, 2),
        "ttft_ms_p50": round(m.ttft_ms.p50, 2) if m.ttft_ms else None,
        "ttft_ms_p90": round(m.ttft_ms.p90, 2) if m.ttft_ms else None,
    }


async def _compare(endpoints: dict[str, Endpoint], model: str, items: list[ScenarioItem], max_tokens: int,
                   plan: dict[int, int], rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for concurrency, count in plan.items():
        limits = LoadLimits(num_requests=count, duration_s=3600, warmup=2, max_tokens=max_tokens, ignore_eos=True,
                            timeout_s=600)
        point = LoadPoint("concurrency", concurrency)
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
        records: dict[str, list[RequestRecord]] = {"direct": [], "gateway": []}
        async with make_client(limits) as client:
            for r in range(rounds):
                order = ("direct", "gateway") if r % 2 == 0 else ("gateway", "direct")
                for path in order:
                    rotated = items[r:] + items[:r]  # each round its own prompts, the same on both paths
                    got = await run_point(client, endpoints[path], model, SCENARIO, rotated, point, limits)
                    records[path] += got
                    runs[path].append(_summary(got))
                    log.info("c=%d round %d %s: %.1f tok/s, ttft p50 %s ms", concurrency, r, path,
                             runs[path][-1]["output_tok_s"], runs[path][-1]["ttft_ms_p50"])
        direct, gateway = _pooled(runs["direct"], records["direct"]), _pooled(runs["gateway"], records["gateway"])
        ratio = gateway["output_tok_s"] / direct["output_tok_s"] if direct["output_tok_s"] else None
        added = (gateway["ttft_ms_p50"] - direct["ttft_ms_p50"]
                 if gateway["ttft_ms_p50"] is not None and direct["ttft_ms_p50"] is not None else None)
        results[f"c{concurrency}"] = {
            "direct": direct, "gateway": gateway,
            "throughput_ratio": round(ratio, 4) if ratio is not None else None,
            "ttft_added_ms_p50": round(added, 2) if added is not None else None,
        }
    return results


def _pooled(rounds: list[dict[str, Any]], records: list[RequestRecord]) -> dict[str, Any]:
    """Throughput: tokens over the rounds' summed wall time; TTFT percentiles over every request."""
    tokens = sum(r["output_tokens"] for r in rounds)
    wall = sum(r["wall_s"] for r in rounds)
    ttft = compute_metrics(records).ttft_ms
    return {
        "requests": sum(r["requests"] for r in rounds), "errors": sum(r["errors"] for r in rounds),
        "output_tokens": tokens, "wall_s": round(wall, 3),
        "output_tok_s": round(tokens / wall, 2) if wall else 0.0,
        "ttft_ms_p50": round(ttft.p50, 2) if ttft else None,
        "ttft_ms_p90": round(ttft.p90, 2) if ttft else None,
        "rounds": [{"tok_s": r["output_tok_s"], "wall_s": r["wall_s"]} for r in rounds],
    }


def _hf_baseline(model_path: str, items: list[ScenarioItem], max_tokens: int, prompts: int, dtype: str
                 ) -> dict[str, Any]:
    """Sequential transformers generate in the dtype the engine ran in (the probe's choice): like for like.
    "auto" (an engine the catalog gave no dtype) is the checkpoint's own dtype on both sides."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    model.eval()

    def generate(item: ScenarioItem) -> int:
        ids = tokenizer.apply_chat_template(item.messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        return int(out.shape[-1] - ids["input_ids"].shape[-1])

    generate(items[0])  # warm-up
    start = time.perf_counter()
    tokens = sum(generate(items[i % len(items)]) for i in range(prompts))
    wall = time.perf_counter() - start
    return {"requests": prompts, "output_tokens": tokens, "wall_s": round(wall, 3),
            "output_tok_s": round(tokens / wall, 2), "dtype": dtype, "torch_threads": torch.get_num_threads()}


def run_bench(out: Path, model: str = DEFAULT_MODEL, max_tokens: int = 64, requests_c1: int = 6,
              requests_c16: int = 32, rounds: int = 3, hf_prompts: int = 4, soak: SoakPlan | None = None,
              overhead: OverheadPlan | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    items = load_scenario(SCENARIO)
    soak = soak or SoakPlan()
    with tempfile.TemporaryDirectory(prefix="quantserve-bench-") as tmp:
        # first, while nothing else runs: the gateway's own cost against a stub upstream
        gateway_overhead = measure_in_subprocess(Path(tmp), overhead or OverheadPlan())
        db_url = f"sqlite:///{tmp}/bench.db"
        store = KeyStore(db_url)
        bench_key = store.create("bench")[1]
        soak_keys = {kind: store.create(f"soak-{kind}") for kind in KINDS}
        # auth, limits off for these keys, and the ledger on: the gateway's cost as users run it
        config = build_config(model_path=model, port=0, database_url=db_url)
        with ServeStack(config, gateway_mode="process", log_dir=Path(tmp) / "logs") as stack:
            served = stack.models[0]
            engine = stack.engine(served)
            model_path, device, engine_dtype = engine.spec.model, engine.spec.device, engine.spec.vllm_dtype
            engine_key = stack.engine_headers.get("authorization", "").removeprefix("Bearer ") or None
            endpoints = {"direct": Endpoint.of(stack.engine_url(served), engine_key),
                         "gateway": Endpoint.of(stack.base_url, bench_key)}
            comparison = asyncio.run(_compare(endpoints, served, items, max_tokens,
                                              {1: requests_c1, 16: requests_c16}, rounds))
            before = engine_counters(stack.engine_url(served), stack.engine_headers)
            soak_started = time.perf_counter()
            tallies = asyncio.run(run_soak(stack.base_url, served, {k: v[1] for k, v in soak_keys.items()},
                                           [i.messages[-1]["content"] for i in items], soak))
            soak_wall = time.perf_counter() - soak_started
            after = engine_counters(stack.engine_url(served), stack.engine_headers)
        # the stack has stopped: the gateway flushed its ledger
        soak_result = reconcile(db_url, {k: v[0].id for k, v in soak_keys.items()}, tallies, before, after)
        soak_result |= {"concurrency": soak.concurrency, "wall_s": round(soak_wall, 1)}
        log.info("soak: %d requests in %.0f s, %d ledger rows; checks %s", soak_result["requests"], soak_wall,
                 soak_result["ledger_rows"], soak_result["checks"])
        hf = _hf_baseline(model_path, items, max_tokens, hf_prompts, engine_dtype)
    gateway_c16 = comparison["c16"]["gateway"]["output_tok_s"]
    speedup = gateway_c16 / hf["output_tok_s"] if hf["output_tok_s"] else None
    checks = {
        f"throughput_ratio_{c}": comparison[c]["throughput_ratio"] is not None
        and comparison[c]["throughput_ratio"] >= TARGETS["throughput_ratio_min"] for c in ("c1", "c16")
    } | {
        f"ttft_added_{c}": comparison[c]["ttft_added_ms_p50"] is not None
        and comparison[c]["ttft_added_ms_p50"] <= TARGETS["ttft_added_ms_max"] for c in ("c1", "c16")
    } | {"speedup_vs_hf": speedup is not None and speedup >= TARGETS["speedup_vs_hf_min"]} \
      | {f"soak_{k}": v for k, v in soak_result["checks"].items()} \
      | {f"overhead_{k}": v for k, v in gateway_overhead["checks"].items()}
    result = {
        "model": served,
        "model_path": model_path,
        "device": device,
        "engine_dtype": engine_dtype,
        "max_tokens": max_tokens,
        "rounds": rounds,
        "scenario": SCENARIO,
        "gateway_vs_direct": comparison,
        "soak": soak_result,
        "hf_transformers_sequential": hf,
        "speedup_vs_hf_c16": round(speedup, 2) if speedup is not None else None,
        "gateway_overhead": gateway_overhead,
        "targets": TARGETS,
        "checks": checks,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m quantserve.app.bench.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="JSON file to write")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="folder, variant folder or default name")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-c1", type=int, default=6, help="requests per round at concurrency 1")
    parser.add_argument("--requests-c16", type=int, default=32, help="requests per round at concurrency 16")
    parser.add_argument("--rounds", type=int, default=3, help="alternating direct/gateway rounds")
    parser.add_argument("--hf-prompts", type=int, default=4)
    parser.add_argument("--soak-requests", type=int, default=SoakPlan.requests)
    parser.add_argument("--overhead-seconds", type=float, default=OverheadPlan.seconds)
    args = parser.parse_args(argv)
    from quantserve.serve.gateway import configure_logging

    configure_logging("info")
    result = run_bench(args.out, args.model, args.max_tokens, args.requests_c1, args.requests_c16, args.rounds,
                       args.hf_prompts, SoakPlan(requests=args.soak_requests),
                       OverheadPlan(seconds=args.overhead_seconds))
    for c in ("c1", "c16"):
        row = result["gateway_vs_direct"][c]
        print(f"{c}: direct {row['direct']['output_tok_s']} tok/s, gateway {row['gateway']['output_tok_s']} tok/s, "
              f"ratio {row['throughput_ratio']}, ttft added p50 {row['ttft_added_ms_p50']} ms")
    soak = result["soak"]
    print(f"soak: {soak['requests']} requests at c={soak['concurrency']} in {soak['wall_s']} s, "
          f"{soak['ledger_rows']} ledger rows; ledger tokens {soak['ledger_prompt_tokens']}+"
          f"{soak['ledger_completion_tokens']}, vLLM counted {soak['vllm_prompt_tokens']:.0f}+"
          f"{soak['vllm_generation_tokens']:.0f}")
    for pair in result["gateway_overhead"]["pairs"]:
        opened = next(v for k, v in pair.items() if k.startswith("open_loop"))
        print(f"overhead {pair['loop']}+{pair['http']}: peak {pair['closed_loop']['rps']} req/s; added p50 "
              f"{opened['added_ms_p50']} ms, p99 {opened['added_ms_p99']} ms")
    print(f"hf sequential {result['hf_transformers_sequential']['output_tok_s']} tok/s; gateway c16 is "
          f"{result['speedup_vs_hf_c16']}x; checks {result['checks']}; {result['wall_s']} s -> {args.out}")


if __name__ == "__main__":
    main()
