"""The table `variants list` and `quantize` print."""

from __future__ import annotations

import json
from pathlib import Path

from quantserve.errors import UserError
from quantserve.manifest import Manifest, list_manifests
from quantserve.text import shorten


def _rows(root: Path) -> list[Manifest]:
    if not root.is_dir():
        raise UserError(f"{root} is not a folder of variants")
    return [m for _, m in list_manifests(root)]


def summary(m: Manifest) -> dict:
    q = m.quality
    return {
        "name": m.name, "runtime": m.runtime, "method": m.method, "scheme": m.scheme, "bits": m.bits,
        "group_size": m.group_size,
        "size_mb": round(m.weight_bytes / 1e6, 1), "size_ratio": m.size_ratio,
        "ppl": q and round(q.ppl, 2), "ppl_ratio": q and round(q.ppl_ratio, 3), "kld_mean": q and round(q.kld_mean, 4),
        "top1_agreement": q and round(q.top1_agreement, 3), "vllm_loadable": m.vllm_loadable,
        "servable_here": m.servable_here, "servable_reason": m.servable_reason, "wall_time_s": m.wall_time_s,
    }


def print_json(root: Path) -> None:
    print(json.dumps([summary(m) for m in _rows(root)], indent=2))


def print_table(root: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    manifests = _rows(root)
    table = Table(title=f"variants in {root}")
    for col in ("name", "runtime", "method", "bits", "size MB", "size ratio", "PPL ratio", "KLD", "top-1",
                "vLLM-loadable", "servable here"):
        table.add_column(col)
    for m in manifests:
        s = summary(m)
        fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
        table.add_row(
            s["name"], s["runtime"], f"{s['method']} {s['scheme']}", str(s["bits"]),
            f"{s['size_mb']:.1f}",
            fmt(s["size_ratio"], ".3f"), fmt(s["ppl_ratio"], ".3f"), fmt(s["kld_mean"], ".4f"),
            fmt(s["top1_agreement"], ".3f"),
            {True: "yes", False: "no", None: "—" if s["runtime"] != "vllm" else "not checked"}[s["vllm_loadable"]],
            {True: "yes", False: "no: ", None: ""}[s["servable_here"]]
            + ("" if s["servable_here"] else shorten(s["servable_reason"], 90)),
        )
    console = Console(width=200)
    console.print(table)
    notes = {m.source.note for m in manifests if m.source.note}
    for note in notes:
        console.print(f"note: {note}")
    if not manifests:
        console.print("no published variants")
