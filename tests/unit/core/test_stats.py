from __future__ import annotations

import pytest

from quantserve.stats import percentile


def test_percentile_is_numpy_linear():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)  # rank 2.7 -> 3 + 0.7
    assert percentile([10], 99) == 10
    assert percentile([5, 1, 3], 0) == 1 and percentile([5, 1, 3], 100) == 5
    with pytest.raises(ValueError):
        percentile([], 50)
