"""Holm and Benjamini–Hochberg adjustments against hand values and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from experiments.statistics.multiple_testing import benjamini_hochberg, holm

P_VALUES = [0.01, 0.04, 0.03, 0.005]


def _holm_brute_force(p: np.ndarray) -> np.ndarray:
    """Holm's adjusted p by definition, with explicit loops."""
    m = p.size
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def _bh_brute_force(p: np.ndarray) -> np.ndarray:
    """BH adjusted p by definition: min over j >= rank of m p_(j) / j."""
    m = p.size
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = np.empty(m)
    for rank, i in enumerate(order):
        adjusted[i] = min(min(1.0, m * p[order[j]] / (j + 1)) for j in range(rank, m))
    return adjusted


def test_holm_hand_example() -> None:
    """Holm on (0.01, 0.04, 0.03, 0.005) gives (0.03, 0.06, 0.06, 0.02) in input order."""
    result = holm(P_VALUES)
    assert result.adjusted == pytest.approx((0.03, 0.06, 0.06, 0.02))
    assert result.rejected == (True, False, False, True)
    assert result.p_values == tuple(P_VALUES)


def test_bh_hand_example() -> None:
    """BH on (0.01, 0.04, 0.03, 0.005) gives (0.02, 0.04, 0.04, 0.02): all rejected at 5%."""
    result = benjamini_hochberg(P_VALUES)
    assert result.adjusted == pytest.approx((0.02, 0.04, 0.04, 0.02))
    assert all(result.rejected)


def test_match_brute_force_on_random_vectors_with_ties() -> None:
    """Both adjustments equal their loop definitions on random vectors, ties included."""
    rng = np.random.default_rng(4)
    for size in (1, 2, 7, 50):
        p = np.round(rng.uniform(0, 0.2, size), 3)
        assert holm(p).adjusted == pytest.approx(tuple(_holm_brute_force(p)), abs=1e-12)
        assert benjamini_hochberg(p).adjusted == pytest.approx(tuple(_bh_brute_force(p)), abs=1e-12)


def test_match_statsmodels_multipletests() -> None:
    """Adjusted p-values and decisions equal statsmodels' holm and fdr_bh."""
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(9).uniform(0, 0.1, 30)
    for ours, method in ((holm(p), "holm"), (benjamini_hochberg(p), "fdr_bh")):
        rejected, adjusted, _, _ = multitest.multipletests(p, alpha=0.05, method=method)
        assert ours.adjusted == pytest.approx(tuple(adjusted), abs=1e-12)
        assert ours.rejected == tuple(bool(r) for r in rejected)


def test_bh_is_never_stricter_than_holm() -> None:
    """On any vector BH's adjusted p-values are <= Holm's (FDR is weaker than FWER)."""
    rng = np.random.default_rng(12)
    for _ in range(20):
        p = rng.uniform(0, 1, 10) ** 3
        pairs = zip(benjamini_hochberg(p).adjusted, holm(p).adjusted, strict=True)
        assert all(b <= h + 1e-15 for b, h in pairs)


def test_adjusted_values_are_monotone_in_raw_order() -> None:
    """A smaller raw p-value never gets a larger adjusted one."""
    p = np.random.default_rng(13).uniform(0, 0.3, 12)
    for result in (holm(p), benjamini_hochberg(p)):
        for i, j in itertools.combinations(range(12), 2):
            if p[i] < p[j]:
                assert result.adjusted[i] <= result.adjusted[j]


@pytest.mark.parametrize(
    ("p_values", "alpha", "match"),
    [
        ([0.1, 1.2], 0.05, r"\[0, 1\]"),
        ([0.1, -0.1], 0.05, r"\[0, 1\]"),
        ([0.1, float("nan")], 0.05, r"\[0, 1\]"),
        ([[0.1, 0.2]], 0.05, "1-D"),
        ([0.1, 0.2], 0.0, "alpha == 0.0"),
    ],
)
def test_reject_bad_inputs(p_values: list[float], alpha: float, match: str) -> None:
    """p-values outside [0, 1] (or NaN), non-vectors and bad alphas are refused."""
    for adjust in (holm, benjamini_hochberg):
        with pytest.raises(ValueError, match=match):
            adjust(p_values, alpha=alpha)
