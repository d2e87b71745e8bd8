"""Synthetic manifests and run folders for the report tests: timings chosen so results are hand-checkable."""

from __future__ import annotations

import json
from pathlib import Path

from quantserve.eval.records import RequestRecord, append_records
from quantserve.manifest import GRID_NOTE, Manifest, Quality, SourceInfo

SOURCE = "smol"
GPTQ = "smol-gptq-w4a16"
AWQ = "smol-awq-w4a16"  # served, but every request fails
NF4 = "smol-bnb-nf4"  # not servable here
NF4_REASON = "bitsandbytes needs a CUDA GPU; vLLM on CPU cannot load it"  # the manifest's, where it was built
NF4_NOT_SERVED = "bitsandbytes NF4 does not run on this machine (bfloat16: start failed: AssertionError)"
SOURCE_BYTES = 270_000_000


def manifest(name: str, variant: str, method: str, scheme: str, bits: int, weight_bytes: int,
             ppl: float, kld: float, top1: float, servable: bool = True, reason: str = "") -> Manifest:
    return Manifest(
        name=name, variant=variant, method=method, scheme=scheme, bits=bits,
        group_size=64 if method in ("gptq", "awq") else None, format="compressed-tensors", recipe={},
        recipe_hash="h",
        source=SourceInfo(model="smollm2-135m-instruct", path="/models/smol", sha256="s",
                          weight_bytes=SOURCE_BYTES, note=GRID_NOTE),
        versions={}, wall_time_s=1.0, peak_rss_bytes=1, weight_bytes=weight_bytes,
        size_ratio=weight_bytes / SOURCE_BYTES,
        quality=Quality(heldout_file="prompts/heldout/x.txt", heldout_sha256="h", tokens=4096, ppl=ppl,
                        ppl_source=12.0, ppl_ratio=ppl / 12.0, kld_mean=kld, kld_p95=kld * 3,
                        top1_agreement=top1),
        servable_here=servable, servable_reason=reason, created_at="2026-11-30T00:00:00Z",
        quantserve_version="0.1.0",
    )


def write_manifests(root: Path) -> Path:
    for m in (
        manifest(GPTQ, "gptq-w4a16", "gptq", "W4A16", 4, 100_000_000, 12.5, 0.05, 0.9),
        manifest(AWQ, "awq-w4a16", "awq", "W4A16_ASYM", 4, 101_000_000, 12.4, 0.04, 0.91),
        manifest(NF4, "bnb-nf4", "bnb", "NF4", 4, 110_000_000, 12.6, 0.06, 0.88, servable=False,
                 reason=NF4_REASON),
    ):
        (root / m.name).mkdir(parents=True)
        m.write(root / m.name)
    return root


def _requests(model: str, point: str, n: int, ttft: float, tpot: float, tokens: int = 10,
              error: str | None = None) -> list[RequestRecord]:
    """n requests started together at t=1000: TTFT `ttft` s, then a token every `tpot` s."""
    out = []
    for i in range(n):
        start = 1000.0
        if error:
            out.append(RequestRecord(model, "support-chat", f"q{i}", point, start, end=start + 0.5,
                                     status_code=500, error=error))
            continue
        chunks = [start + ttft + k * tpot for k in range(tokens)]
        out.append(RequestRecord(model, "support-chat", f"q{i}", point, start, first_token=chunks[0],
                                 chunk_times=chunks, end=chunks[-1], prompt_tokens=20,
                                 completion_tokens=tokens, status_code=200))
    return out


TASK_ITEMS = 40


def task_scores(model: str, right: int, total: int = TASK_ITEMS) -> dict:
    """Items t0..t{right-1} right, the rest wrong: two models' right answers nest, so every discordant item
    is one the better model got and the other did not."""
    results = [{"id": f"t{i}", "kind": "routing", "output": "", "correct": i < right, "error": None}
               for i in range(total)]
    return {"model": model, "total": total, "correct": right, "errors": 0, "accuracy": right / total,
            "by_kind": {"routing": right / total}, "results": results}


def write_run(run_dir: Path, variants_dir: Path | None, gpu: str | None = "cpu-2core") -> Path:
    """source: TTFT 200 ms, TPOT 200 ms (e2e 2 s, 10 tokens); gptq: 100 ms / 100 ms (e2e 1 s).
    concurrency=1 runs 1 request, concurrency=4 runs 4 at once: gptq 40 tok/s, source 20 tok/s at c=4.
    Tasks: the source gets 32 of 40 items right (0.8), gptq the first 24 of those (0.6, recovery 0.75)."""
    run_dir.mkdir(parents=True)
    records = []
    results = {}
    for model, ttft, tpot, right in ((SOURCE, 0.2, 0.2, 32), (GPTQ, 0.1, 0.1, 24), (AWQ, 0.1, 0.1, None)):
        points = []
        for c in (1, 4):
            label = f"concurrency={c}"
            error = "HTTP 500: boom" if model == AWQ else None
            records += _requests(model, label, c, ttft, tpot, error=error)
            points.append({"point": label, "mode": "concurrency", "value": float(c), "metrics": {}})
        results[model] = {"points": points, "tasks": task_scores(model, right) if right is not None else None}
    append_records(run_dir / "records.jsonl", records)
    doc = {
        "schema_version": 1, "scenario": "support-chat", "sweep": {"mode": "concurrency", "values": [1, 4]},
        "slo": {"ttft_p99_ms": 500.0}, "gpu": gpu,
        "variants_dir": str(variants_dir) if variants_dir else None,
        "source_model": SOURCE, "models": list(results), "results": results, "notes": [],
        "serving": {SOURCE: {"format": "full", "dtype": "float32", "dtype_from": "probe"},
                    GPTQ: {"format": "w4a16-int4", "dtype": "bfloat16", "dtype_from": "probe"},
                    AWQ: {"format": "w4a16-int4", "dtype": "bfloat16", "dtype_from": "config"}},
        "not_served": {NF4: NF4_NOT_SERVED},
    }
    (run_dir / "eval.json").write_text(json.dumps(doc))
    return run_dir


def write_big_run(run_dir: Path, n: int = 120) -> Path:
    """The source alone at concurrency=1, n requests one after another, request i: TTFT 100 + i ms, then 10 tokens
    50 ms apart (E2E TTFT + 450 ms); enough for a p99 and every interval."""
    run_dir.mkdir(parents=True)
    records = []
    for i in range(n):
        start = 1000.0 + i
        chunks = [start + 0.1 + i / 1000 + k * 0.05 for k in range(10)]
        records.append(RequestRecord(SOURCE, "support-chat", f"q{i}", "concurrency=1", start, first_token=chunks[0],
                                     chunk_times=chunks, end=chunks[-1], prompt_tokens=20, completion_tokens=10,
                                     status_code=200))
    append_records(run_dir / "records.jsonl", records)
    doc = {"schema_version": 1, "scenario": "support-chat", "sweep": {"mode": "concurrency", "values": [1]},
           "slo": {}, "gpu": None, "variants_dir": None, "source_model": SOURCE, "models": [SOURCE],
           "results": {SOURCE: {"points": [{"point": "concurrency=1", "mode": "concurrency", "value": 1.0,
                                            "metrics": {}}], "tasks": task_scores(SOURCE, 32)}},
           "notes": []}
    (run_dir / "eval.json").write_text(json.dumps(doc))
    return run_dir
