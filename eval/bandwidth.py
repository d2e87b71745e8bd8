"""This machine's memory bandwidth, measured once per run with a STREAM-style copy.

Decode of a small batch reads every weight once per token, so bytes per token times tokens per second against
this figure says how close the engine runs to the memory wall (eval/breakdown.py). A copy moves each byte twice
(read and write), as STREAM's Copy counts it; the best of several repeats, as STREAM reports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Bandwidth:
    bytes_per_s: float
    array_bytes: int
    repeats: int
    threads: int
    method: str = "STREAM-style copy (torch, all threads), best of repeats, 2 bytes moved per byte copied"


def measure_bandwidth(array_bytes: int = 256 * 2**20, repeats: int = 5) -> Bandwidth:
    """Far larger than any last-level cache, so the copy streams from and to DRAM; on every thread, as the
    engine decodes on every thread (one thread alone reaches a fraction of a server's channels)."""
    import torch

    src = torch.ones(array_bytes // 8, dtype=torch.float64)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    nbytes = src.numel() * src.element_size()
    return Bandwidth(bytes_per_s=2 * nbytes / best, array_bytes=nbytes, repeats=repeats,
                     threads=torch.get_num_threads())
