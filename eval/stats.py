"""The statistics behind every interval and test the report shows, in one place, standard library only
(percentiles themselves come from quantserve.stats, which the gateway bench shares).

Percentile bootstrap (seeded, so a report rebuilt from the same records shows the same intervals), the
Wilson score interval for a proportion, the exact McNemar test for paired right/wrong answers, and a paired
bootstrap for a ratio of sums (task recovery; throughput).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from quantserve.stats import percentile

CONFIDENCE = 0.95
RESAMPLES = 1000
SEED = 0
# Fewest samples a bootstrap interval is computed from: below it a resample has too few distinct values
# for its spread to mean anything, and the table shows the value without ±.
MIN_BOOTSTRAP = 10


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval; shown as value ± half-width, as GuideLLM does."""

    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        # Percentile intervals need not be symmetric; low and high stay exact, ± is the display.
        return (self.high - self.low) / 2.0


def min_samples(q: float) -> int:
    """Fewest samples for which the q-th percentile is more than the largest value seen: 1 / (1 - q/100),
    so p50 needs 2, p90 10, p95 20 and p99 100. Below that the figure is the sample maximum in disguise."""
    if not 0 <= q < 100:
        raise ValueError(f"percentile must be in [0, 100), got {q}")
    return max(1, math.ceil(round(100.0 / (100.0 - q), 9)))


def _bounds(stats: list[float], confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0 * 100.0
    return percentile(stats, tail), percentile(stats, 100.0 - tail)


def bootstrap_percentiles(values: Sequence[float], qs: Sequence[float], *, resamples: int = RESAMPLES,
                          confidence: float = CONFIDENCE, seed: int = SEED) -> dict[float, Interval]:
    """Percentile-bootstrap intervals for several percentiles of one sample, from the same resamples."""
    if not values:
        raise ValueError("bootstrap of no values")
    rng = random.Random(seed)
    data = list(values)
    n = len(data)
    boot: dict[float, list[float]] = {q: [] for q in qs}
    for _ in range(resamples):
        sample = sorted(rng.choices(data, k=n))  # percentile() re-sorts it in linear time
        for q in qs:
            boot[q].append(percentile(sample, q))
    return {q: Interval(percentile(data, q), *_bounds(boot[q], confidence)) for q in qs}


def bootstrap_ratio(numerators: Sequence[float], denominators: Sequence[float], *, scale: float = 1.0,
                    resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                    seed: int = SEED) -> Interval | None:
    """scale × Σ numerators / Σ denominators with a paired percentile-bootstrap interval: each resample draws
    the same indices from both lists, so what the pairs share (the same task item, the same request) cancels.
    None when the denominators sum to zero; resamples whose denominators sum to zero are skipped."""
    if len(numerators) != len(denominators):
        raise ValueError(f"paired lists differ in length: {len(numerators)} != {len(denominators)}")
    total = sum(denominators)
    if not numerators or total == 0:
        return None
    rng = random.Random(seed)
    n = len(numerators)
    stats = []
    for _ in range(resamples):
        idx = rng.choices(range(n), k=n)
        den = sum(denominators[i] for i in idx)
        if den:
            stats.append(scale * sum(numerators[i] for i in idx) / den)
    value = scale * sum(numerators) / total
    return Interval(value, *_bounds(stats, confidence)) if stats else Interval(value, value, value)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval for a proportion (no continuity correction). Unlike value ± z·SE it stays
    inside [0, 1] and keeps its coverage near 0 and 1, where a good or bad model's accuracy sits."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes}/{n}")
    z = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes the bound is exactly 0 or 1; the formula leaves float dust there.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, low, high)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: b items only the first model got right,
    c only the second. Under no difference each discordant item is a fair coin, so this is a two-sided
    binomial test of min(b, c) in b + c trials at 1/2. 1.0 when there are no discordant pairs."""
    if b < 0 or c < 0:
        raise ValueError("counts must not be negative")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)  # integer arithmetic until the one division: exact for any n
