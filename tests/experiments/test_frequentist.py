"""Fixed-horizon lift: Welch t and two-proportion z against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from experiments.statistics.frequentist import lift_from_moments, mean_lift, proportion_lift
from experiments.statistics.intervals import Interval, normal_interval, z_critical
from experiments.statistics.summaries import MetricSummary, summarize


@pytest.fixture(scope="module")
def revenue_rows() -> tuple[np.ndarray, np.ndarray]:
    """Zero-inflated lognormal revenue per unit for control and treatment."""
    rng = np.random.default_rng(20)
    control = rng.binomial(1, 0.08, 3_000) * rng.lognormal(3.0, 0.8, 3_000)
    treatment = rng.binomial(1, 0.09, 3_500) * rng.lognormal(3.1, 0.8, 3_500)
    return control, treatment


def test_welch_matches_scipy_ttest_on_raw_rows(
    revenue_rows: tuple[np.ndarray, np.ndarray],
) -> None:
    """Statistic, df, p-value and interval equal scipy's Welch test on the same rows (1e-9)."""
    control, treatment = revenue_rows
    result = mean_lift(summarize(control), summarize(treatment), level=0.9)
    reference = stats.ttest_ind(treatment, control, equal_var=False)
    ci = reference.confidence_interval(0.9)
    assert result.method == "welch_t"
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-9)
    assert result.degrees_of_freedom == pytest.approx(reference.df, rel=1e-9)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.absolute.lower == pytest.approx(ci.low, rel=1e-9)
    assert result.absolute.upper == pytest.approx(ci.high, rel=1e-9)
    assert result.absolute.estimate == pytest.approx(treatment.mean() - control.mean(), rel=1e-12)


def test_relative_lift_matches_delta_method_by_gradient(
    revenue_rows: tuple[np.ndarray, np.ndarray],
) -> None:
    """The relative interval equals a gradient·covariance·gradient delta method on raw rows."""
    control, treatment = revenue_rows
    result = mean_lift(summarize(control), summarize(treatment))
    m_c, m_t = control.mean(), treatment.mean()
    gradient = np.array([1.0 / m_c, -m_t / m_c**2])  # d(m_t/m_c)/d(m_t, m_c)
    covariance = np.diag(
        [treatment.var(ddof=1) / treatment.size, control.var(ddof=1) / control.size]
    )
    se = math.sqrt(gradient @ covariance @ gradient)
    crit = stats.t.ppf(0.975, result.degrees_of_freedom)
    assert result.relative.estimate == pytest.approx(m_t / m_c - 1.0, rel=1e-12)
    assert result.relative.upper - result.relative.estimate == pytest.approx(crit * se, rel=1e-9)


def test_proportion_lift_matches_hand_wald_computation() -> None:
    """Unpooled z, interval and p-value equal a hand computation with scipy.stats.norm."""
    control = MetricSummary(n=10_000, total=500, total_sq=500)
    treatment = MetricSummary(n=9_000, total=520, total_sq=520)
    result = proportion_lift(control, treatment)
    p_c, p_t = 0.05, 520 / 9_000
    se = math.sqrt(p_c * (1 - p_c) / 10_000 + p_t * (1 - p_t) / 9_000)
    z = (p_t - p_c) / se
    assert result.method == "two_proportion_z"
    assert math.isinf(result.degrees_of_freedom)
    assert result.statistic == pytest.approx(z, rel=1e-12)
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    assert result.absolute.lower == pytest.approx(p_t - p_c - stats.norm.ppf(0.975) * se)
    assert (result.p_value < 0.05) == (not result.absolute.contains(0.0))


def test_pooled_two_proportion_test_matches_classical_statistic() -> None:
    """pooled_test=True gives the textbook pooled z (and statsmodels' proportions_ztest)."""
    control = MetricSummary(n=4_000, total=200, total_sq=200)
    treatment = MetricSummary(n=4_200, total=250, total_sq=250)
    result = proportion_lift(control, treatment, pooled_test=True)
    pooled = 450 / 8_200
    z = (250 / 4_200 - 200 / 4_000) / math.sqrt(pooled * (1 - pooled) * (1 / 4_000 + 1 / 4_200))
    assert result.statistic == pytest.approx(z, rel=1e-12)
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    sm_z, sm_p = proportion.proportions_ztest([250, 200], [4_200, 4_000])
    assert result.statistic == pytest.approx(sm_z, rel=1e-9)
    assert result.p_value == pytest.approx(sm_p, rel=1e-9)


def test_unpooled_test_matches_statsmodels_wald() -> None:
    """The default test equals statsmodels' unpooled Wald test of two independent proportions."""
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    control = MetricSummary(n=4_000, total=200, total_sq=200)
    treatment = MetricSummary(n=4_200, total=250, total_sq=250)
    result = proportion_lift(control, treatment)
    reference = proportion.test_proportions_2indep(
        250, 4_200, 200, 4_000, method="wald", compare="diff", correction=False
    )
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-9)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)


def test_no_conversions_anywhere_gives_no_evidence() -> None:
    """Zero conversions in both groups: p-value 1, zero-width interval, NaN relative lift."""
    empty = MetricSummary(n=100, total=0, total_sq=0)
    result = proportion_lift(empty, empty)
    assert result.p_value == 1.0
    assert result.absolute == Interval(estimate=0.0, lower=0.0, upper=0.0, level=0.95)
    assert math.isnan(result.relative.estimate)


def test_constant_but_different_groups_are_certainly_different() -> None:
    """All-convert vs none-convert has zero variance and a p-value of 0."""
    result = proportion_lift(
        MetricSummary(n=50, total=0, total_sq=0), MetricSummary(n=50, total=50, total_sq=50)
    )
    assert result.p_value == 0.0
    assert math.isinf(result.statistic)


def test_normal_interval_helper_is_symmetric_at_the_level() -> None:
    """normal_interval spans estimate ± z·se with z the two-sided normal quantile."""
    interval = normal_interval(1.0, 0.5, 0.95)
    assert interval.upper - 1.0 == pytest.approx(stats.norm.ppf(0.975) * 0.5)
    assert z_critical(0.99) == pytest.approx(stats.norm.ppf(0.995))
    assert interval.width == pytest.approx(2 * stats.norm.ppf(0.975) * 0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"control_n": 1}, "control n == 1"),
        ({"treatment_n": 0}, "treatment n == 0"),
        ({"control_variance": -1.0}, "control variance == -1.0"),
        ({"treatment_variance": math.nan}, "treatment variance == nan"),
        ({"level": 1.0}, "level == 1.0"),
        ({"level": 0.0}, "level == 0.0"),
    ],
)
def test_lift_from_moments_rejects_bad_inputs(kwargs: dict[str, float], match: str) -> None:
    """Too-small groups, negative or NaN variances and levels outside (0, 1) are refused."""
    base: dict[str, float] = {
        "control_mean": 1.0,
        "control_variance": 1.0,
        "control_n": 10,
        "treatment_mean": 1.1,
        "treatment_variance": 1.0,
        "treatment_n": 10,
    }
    with pytest.raises(ValueError, match=match):
        lift_from_moments(**{**base, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("control", "treatment", "match"),
    [
        (
            MetricSummary(n=10, total=11, total_sq=121),
            MetricSummary(n=10, total=1, total_sq=1),
            "within",
        ),
        (
            MetricSummary(n=0, total=0, total_sq=0),
            MetricSummary(n=10, total=1, total_sq=1),
            "n == 0",
        ),
    ],
)
def test_proportion_lift_rejects_bad_counts(
    control: MetricSummary, treatment: MetricSummary, match: str
) -> None:
    """Conversions above units, or an empty group, are refused."""
    with pytest.raises(ValueError, match=match):
        proportion_lift(control, treatment)
