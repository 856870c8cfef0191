"""Sufficient statistics: sums, derived moments and their validation."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from experiments.statistics.summaries import (
    CupedSummary,
    MetricSummary,
    summarize,
    summarize_with_covariate,
)


def test_summary_moments_match_numpy_on_raw_rows() -> None:
    """Mean and variance from the three sums equal numpy's on the rows they came from."""
    rng = np.random.default_rng(1)
    y = rng.gamma(2.0, 10.0, size=5_000)
    s = summarize(y)
    assert s.n == 5_000
    assert s.mean == pytest.approx(y.mean(), rel=1e-12)
    assert s.variance == pytest.approx(y.var(ddof=1), rel=1e-9)


def test_cuped_summary_cross_moment_matches_numpy_covariance() -> None:
    """The centred cross sum equals (n - 1) times numpy's sample covariance."""
    rng = np.random.default_rng(2)
    x = rng.normal(5.0, 2.0, size=1_000)
    y = 3.0 + 0.7 * x + rng.normal(size=1_000)
    s = summarize_with_covariate(y, x)
    assert s.centered_cross / (s.n - 1) == pytest.approx(np.cov(x, y)[0, 1], rel=1e-9)
    assert s.metric == summarize(y)
    assert s.covariate == summarize(x)


def test_small_groups_have_nan_moments() -> None:
    """An empty group has a NaN mean and a single unit a NaN variance, never a crash."""
    assert math.isnan(MetricSummary(n=0, total=0.0, total_sq=0.0).mean)
    assert math.isnan(MetricSummary(n=1, total=3.0, total_sq=9.0).variance)


def test_rounding_never_gives_negative_variance() -> None:
    """Sums of a constant metric with rounding noise give variance 0, not a negative number."""
    s = MetricSummary(n=3, total=0.3, total_sq=0.03 - 1e-18)
    assert s.variance == 0.0


def test_summary_decodes_from_a_sql_row() -> None:
    """A row mapping from the report query converts into the Struct with msgspec."""
    row = {"n": 10, "total": 4, "total_sq": 4}
    assert msgspec.convert(row, MetricSummary) == MetricSummary(n=10, total=4.0, total_sq=4.0)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"n": -1, "total": 0.0, "total_sq": 0.0}, "n == -1"),
        ({"n": 5, "total": 1.0, "total_sq": -1.0}, "total_sq == -1.0"),
        ({"n": 2, "total": 10.0, "total_sq": 1.0}, "impossible"),
    ],
)
def test_metric_summary_rejects_impossible_sums(fields: dict[str, float], match: str) -> None:
    """Sums that no set of rows can produce are refused at construction."""
    with pytest.raises(ValueError, match=match):
        MetricSummary(**fields)  # type: ignore[arg-type]


def test_cuped_summary_checks_the_covariate_sums() -> None:
    """A covariate total impossible for its sum of squares is refused too."""
    with pytest.raises(ValueError, match="impossible"):
        CupedSummary(
            n=2,
            total=1.0,
            total_sq=1.0,
            covariate_total=10.0,
            covariate_total_sq=1.0,
            cross_total=0.0,
        )


@pytest.mark.parametrize(
    ("summary", "match"),
    [
        (MetricSummary(n=10, total=11.0, total_sq=121.0), "within"),
        (MetricSummary(n=10, total=-1.0, total_sq=1.0), "within"),
    ],
)
def test_rate_requires_conversions_within_units(summary: MetricSummary, match: str) -> None:
    """A conversion rate needs 0 <= conversions <= units."""
    with pytest.raises(ValueError, match=match):
        _ = summary.rate


@pytest.mark.parametrize(
    ("values", "covariate", "match"),
    [
        (np.zeros((2, 2)), None, "1-D"),
        (np.zeros(3), np.zeros(4), "equal length"),
    ],
)
def test_summarize_rejects_bad_shapes(
    values: np.ndarray, covariate: np.ndarray | None, match: str
) -> None:
    """Raw rows must be 1-D (and metric and covariate of equal length)."""
    with pytest.raises(ValueError, match=match):
        if covariate is None:
            summarize(values)
        else:
            summarize_with_covariate(values, covariate)
