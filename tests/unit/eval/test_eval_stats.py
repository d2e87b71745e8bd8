"""The statistics module against textbook and hand-computed values (no scipy here to compare with)."""

from __future__ import annotations

import math
import random

import pytest

from quantserve.eval.stats import (
    Interval,
    bootstrap_percentiles,
    bootstrap_ratio,
    mcnemar_exact,
    min_samples,
    wilson_interval,
)


@pytest.mark.parametrize(("successes", "n", "low", "high"), [
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score, no continuity correction)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe(successes: int, n: int, low: float, high: float):
    ci = wilson_interval(successes, n)
    assert ci.value == pytest.approx(successes / n)
    assert (ci.low, ci.high) == (pytest.approx(low, abs=5e-5), pytest.approx(high, abs=5e-5))


def test_wilson_edges_and_bad_input():
    assert wilson_interval(0, 20).low == 0.0 and wilson_interval(20, 20).high == 1.0
    assert wilson_interval(20, 20).low == pytest.approx(1 - 0.1611, abs=5e-5)  # mirror of 0/20
    with pytest.raises(ValueError):
        wilson_interval(3, 0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_mcnemar_exact_by_hand():
    # b + c = 12 discordant pairs, 2 one way: p = 2 × (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 158/4096
    assert mcnemar_exact(10, 2) == pytest.approx(158 / 4096) == mcnemar_exact(2, 10)
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0  # never above 1
    assert mcnemar_exact(1, 0) == 1.0
    # large counts stay exact (integer arithmetic): 0 vs 300 is 2 / 2^300, not 0
    assert mcnemar_exact(0, 300) == pytest.approx(2.0 ** -299, rel=1e-12)


def test_min_samples_per_percentile():
    assert [min_samples(q) for q in (0, 50, 90, 95, 99, 99.9)] == [1, 2, 10, 20, 100, 1000]
    with pytest.raises(ValueError):
        min_samples(100)


def test_percentile_bootstrap_is_seeded_and_brackets_the_median():
    values = [float(v) for v in range(100)]
    first = bootstrap_percentiles(values, (50, 99))
    assert first == bootstrap_percentiles(values, (50, 99))  # same seed, same interval
    assert first != bootstrap_percentiles(values, (50, 99), seed=1)
    med = first[50]
    assert med.value == 49.5 and med.low < 49.5 < med.high
    # sample median of 100 uniform values: SE ≈ 100 × sqrt(0.25 / 100) = 5, so a 95% half-width near 10
    assert 6 < med.half_width < 14
    assert first[99].high <= 99.0  # a bootstrap percentile never leaves the sample's range


def test_percentile_bootstrap_matches_normal_theory():
    rng = random.Random(7)
    values = [rng.gauss(0.0, 1.0) for _ in range(400)]
    med = bootstrap_percentiles(values, (50,))[50]
    # asymptotic SE of a normal sample's median: sqrt(pi / 2) × sigma / sqrt(n)
    expected = 1.96 * math.sqrt(math.pi / 2) / math.sqrt(400)
    assert med.half_width == pytest.approx(expected, rel=0.25)


def test_constant_samples_have_zero_width():
    assert bootstrap_percentiles([5.0] * 30, (50, 99)) == {50: Interval(5.0, 5.0, 5.0), 99: Interval(5.0, 5.0, 5.0)}
    assert bootstrap_ratio([1.0] * 20, [1.0] * 20) == Interval(1.0, 1.0, 1.0)


def test_paired_ratio_bootstrap():
    # 40 items; the source gets 32 right, the variant the first 24 of them: recovery 0.75
    source = [1.0 if i < 32 else 0.0 for i in range(40)]
    variant = [1.0 if i < 24 else 0.0 for i in range(40)]
    rec = bootstrap_ratio(variant, source)
    assert rec.value == pytest.approx(0.75) and rec.low < 0.75 < rec.high <= 1.0
    # the ratio of nested binomials: Var ≈ r(1-r)/32 -> SE ≈ 0.0765, 95% half-width ≈ 0.15
    assert rec.half_width == pytest.approx(1.96 * math.sqrt(0.75 * 0.25 / 32), rel=0.25)
    # pairing matters: the same counts shuffled independently give a wider interval
    shuffled = variant[:]
    random.Random(3).shuffle(shuffled)
    assert bootstrap_ratio(shuffled, source).half_width > rec.half_width
    assert bootstrap_ratio([1.0], [0.0]) is None  # nothing to divide by
    assert bootstrap_ratio([2.0, 4.0], [1.0, 1.0], scale=0.5).value == pytest.approx(1.5)
    with pytest.raises(ValueError):
        bootstrap_ratio([1.0], [1.0, 2.0])
