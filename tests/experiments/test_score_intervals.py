"""Wilson's and Newcombe's score intervals against statsmodels, and their edge cases."""

from __future__ import annotations

import math

import pytest
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from experiments.statistics.intervals import newcombe_difference, wilson_interval


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (37, 1000), (500, 1000)])
def test_wilson_matches_statsmodels(k: int, n: int) -> None:
    """The Wilson interval equals statsmodels' ``method="wilson"`` to 1e-12."""
    iv = wilson_interval(k / n, n, 0.95)
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert (iv.lower, iv.upper) == pytest.approx((lo, hi), abs=1e-12)


@pytest.mark.parametrize(
    ("k1", "n1", "k2", "n2"), [(0, 2, 2, 2), (5, 40, 1, 30), (120, 1000, 90, 1000), (7, 7, 0, 9)]
)
def test_newcombe_matches_statsmodels(k1: int, n1: int, k2: int, n2: int) -> None:
    """Newcombe's hybrid score interval equals statsmodels' ``method="newcomb"`` to 1e-12."""
    iv = newcombe_difference(k1 / n1, n1, k2 / n2, n2, 0.95)
    lo, hi = confint_proportions_2indep(k1, n1, k2, n2, method="newcomb", compare="diff")
    assert (iv.lower, iv.upper) == pytest.approx((lo, hi), abs=1e-12)
    assert -1.0 <= iv.lower < iv.estimate < iv.upper <= 1.0 or iv.estimate in (-1.0, 1.0)


def test_no_zero_width_and_no_effective_size() -> None:
    """0 of 2 against 2 of 2 is not a certainty; without trials the bounds are NaN."""
    iv = newcombe_difference(0.0, 2, 1.0, 2, 0.95)
    assert iv.width > 0.5
    assert math.isnan(wilson_interval(0.5, 0.0, 0.95).lower)
