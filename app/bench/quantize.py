"""`make bench` (quantize part): per variant wall time, peak RSS, size ratio and quality, as JSON, with the
targets beside the numbers. Reads the manifests; it does not time anything itself."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from quantserve.manifest import list_manifests

INT4_SIZE_RATIO_TARGET = 0.45  # on the default: its tied 28M-parameter embedding stays 16-bit


def collect(root: Path) -> dict:
    rows = []
    for _, m in list_manifests(root):
        q = m.quality
        rows.append({
            "name": m.name, "variant": m.variant, "runtime": m.runtime, "bits": m.bits, "group_size": m.group_size,
            "wall_time_s": m.wall_time_s, "peak_rss_mb": round(m.peak_rss_bytes / 2**20, 1),
            "weight_mb": round(m.weight_bytes / 1e6, 1), "size_ratio": m.size_ratio,
            "size_ratio_target": INT4_SIZE_RATIO_TARGET if m.bits == 4 else None,
            "size_ratio_ok": (m.size_ratio <= INT4_SIZE_RATIO_TARGET) if m.bits == 4 else None,
            "calibration": m.calibration and m.calibration.model_dump(),
            "ppl": q and q.ppl, "ppl_source": q and q.ppl_source, "ppl_ratio": q and q.ppl_ratio,
            "kld_mean": q and q.kld_mean, "kld_p95": q and q.kld_p95, "top1_agreement": q and q.top1_agreement,
            "heldout_tokens": q and q.tokens, "servable_here": m.servable_here,
        })
    notes = sorted({m.source.note for _, m in list_manifests(root) if m.source.note})
    return {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
            "notes": notes, "variants": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", type=Path, default=Path("variants"))
    parser.add_argument("--out", type=Path, default=Path("bench/quantize.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(collect(args.variants), indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
