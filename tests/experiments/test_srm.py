"""Sample-ratio mismatch: chi-square goodness of fit against configured weights."""

from __future__ import annotations

import pytest
from scipy import stats

from experiments.statistics.srm import sample_ratio_mismatch


def test_matches_scipy_chisquare() -> None:
    """Statistic and p-value equal scipy.stats.chisquare with the same expected counts."""
    counts, weights = [3_310, 3_290, 3_520], [1, 1, 1.1]
    result = sample_ratio_mismatch(counts, weights)
    total = sum(counts)
    expected = [total * w / sum(weights) for w in weights]
    reference = stats.chisquare(counts, expected)
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.degrees_of_freedom == 2
    assert result.expected == pytest.approx(tuple(expected))


def test_flags_a_505_495_split_of_a_million_units() -> None:
    """50.5/49.5 on 1,000,000 units under a 50/50 design is flagged (X² = 100)."""
    result = sample_ratio_mismatch([505_000, 495_000], [50, 50])
    assert result.statistic == pytest.approx(100.0)
    assert result.p_value < 1e-20
    assert result.mismatch


def test_does_not_flag_a_fair_split() -> None:
    """A split within ordinary binomial noise of 50/50 is not flagged."""
    assert not sample_ratio_mismatch([500_000, 500_000], [0.5, 0.5]).mismatch
    # 1.5 binomial standard deviations off: p ≈ 0.13.
    assert not sample_ratio_mismatch([500_750, 499_250], [0.5, 0.5]).mismatch


def test_uneven_design_is_checked_against_its_own_weights() -> None:
    """A 90/10 design observed as 90/10 is fine; the same counts against 50/50 are flagged."""
    counts = [90_120, 9_880]
    assert not sample_ratio_mismatch(counts, [9, 1]).mismatch
    assert sample_ratio_mismatch(counts, [1, 1]).mismatch
    assert sample_ratio_mismatch(counts, [9, 1]).observed_share[0] == pytest.approx(0.9012)


def test_threshold_is_respected() -> None:
    """The flag is p < threshold: a p of about 0.003 flags at 0.01 but not at 0.001."""
    counts = [50_000 + 470, 50_000 - 470]  # z ≈ 2.97, p ≈ 0.003
    assert not sample_ratio_mismatch(counts, [1, 1]).mismatch
    assert sample_ratio_mismatch(counts, [1, 1], threshold=0.01).mismatch


@pytest.mark.parametrize(
    ("counts", "weights", "threshold", "match"),
    [
        ([100], [1], 0.001, "at least two"),
        ([100, 100], [1, 1, 1], 0.001, "must match"),
        ([100, -1], [1, 1], 0.001, ">= 0"),
        ([100, 100], [1, 0], 0.001, "> 0"),
        ([0, 0], [1, 1], 0.001, "sum to 0"),
        ([100, 100], [1, 1], 1.5, "threshold == 1.5"),
    ],
)
def test_rejects_bad_inputs(
    counts: list[int], weights: list[float], threshold: float, match: str
) -> None:
    """Malformed counts, weights or thresholds are refused with a precise message."""
    with pytest.raises(ValueError, match=match):
        sample_ratio_mismatch(counts, weights, threshold=threshold)
