"""Fixed-horizon lift: Welch t and two-proportion z against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from experiments.statistics.frequentist import (
    enough_outcomes,
    lift_from_moments,
    mean_lift,
    proportion_lift,
)
from experiments.statistics.intervals import normal_interval, z_critical
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


def test_relative_interval_is_fieller_set_of_the_absolute_test(
    revenue_rows: tuple[np.ndarray, np.ndarray],
) -> None:
    """The relative bounds ρ - 1 solve (m_t - ρ m_c)² = t² (V_t + ρ² V_c) with the Welch t
    critical value, and at this size lie within 20% of the delta method's."""
    control, treatment = revenue_rows
    result = mean_lift(summarize(control), summarize(treatment))
    m_c, m_t = control.mean(), treatment.mean()
    v_c = control.var(ddof=1) / control.size
    v_t = treatment.var(ddof=1) / treatment.size
    crit = stats.t.ppf(0.975, result.degrees_of_freedom)
    assert result.relative.estimate == pytest.approx(m_t / m_c - 1.0, rel=1e-12)
    for bound in (result.relative.lower, result.relative.upper):
        rho = bound + 1.0
        assert (m_t - rho * m_c) ** 2 == pytest.approx(crit**2 * (v_t + rho**2 * v_c), rel=1e-9)
    delta_se = math.sqrt(v_t / m_c**2 + m_t**2 * v_c / m_c**4)
    assert result.relative.width == pytest.approx(2 * crit * delta_se, rel=0.2)


def test_relative_interval_and_p_value_always_agree() -> None:
    """Regression: a delta-method relative interval excluded 0 while p was 0.061. Over 3,000
    skewed revenue comparisons (Welch) and rate comparisons, "relative interval excludes 0",
    "absolute interval excludes 0" and "p < 0.05" agree every time."""
    rng = np.random.default_rng(61)
    disagreements = 0
    for _ in range(1_500):
        n = int(rng.integers(20, 400))
        control = rng.binomial(1, 0.1, n) * rng.lognormal(3.0, 1.2, n)
        treatment = rng.binomial(1, 0.1, n) * rng.lognormal(3.4, 1.2, n)
        if control.sum() == 0:
            continue
        c_conv, t_conv = int(rng.binomial(n, 0.1)), int(rng.binomial(n, 0.16))
        for result in (
            mean_lift(summarize(control), summarize(treatment)),
            proportion_lift(
                MetricSummary(n=n, total=c_conv, total_sq=c_conv),
                MetricSummary(n=n, total=t_conv, total_sq=t_conv),
            ),
        ):
            if math.isnan(result.relative.estimate):
                continue
            significant = result.p_value < 0.05
            if significant == result.relative.contains(0.0):
                disagreements += 1
            if significant == result.absolute.contains(0.0):
                disagreements += 1
    assert disagreements == 0


def _agresti_caffo(c: int, n: int) -> tuple[float, float]:
    p = (c + 1) / (n + 2)
    return p, p * (1 - p) / (n + 2)


def test_proportion_lift_is_agresti_caffo() -> None:
    """Interval, z and p-value equal a hand Agresti–Caffo computation (one pseudo-conversion
    and one pseudo-non-conversion per arm); the estimate is the observed difference."""
    control = MetricSummary(n=10_000, total=500, total_sq=500)
    treatment = MetricSummary(n=9_000, total=520, total_sq=520)
    result = proportion_lift(control, treatment)
    (a_c, v_c), (a_t, v_t) = _agresti_caffo(500, 10_000), _agresti_caffo(520, 9_000)
    se = math.sqrt(v_c + v_t)
    z = (a_t - a_c) / se
    assert result.method == "two_proportion_z"
    assert math.isinf(result.degrees_of_freedom)
    assert result.absolute.estimate == pytest.approx(520 / 9_000 - 0.05, rel=1e-12)
    assert result.statistic == pytest.approx(z, rel=1e-12)
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    assert result.absolute.lower == pytest.approx(a_t - a_c - stats.norm.ppf(0.975) * se)
    assert result.absolute.upper == pytest.approx(a_t - a_c + stats.norm.ppf(0.975) * se)
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


def test_interval_matches_statsmodels_agresti_caffo() -> None:
    """The interval equals statsmodels' Agresti–Caffo interval of two independent proportions."""
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    control = MetricSummary(n=4_000, total=200, total_sq=200)
    treatment = MetricSummary(n=4_200, total=250, total_sq=250)
    result = proportion_lift(control, treatment)
    low, high = proportion.confint_proportions_2indep(
        250, 4_200, 200, 4_000, method="agresti-caffo", compare="diff"
    )
    assert result.absolute.lower == pytest.approx(low, rel=1e-9)
    assert result.absolute.upper == pytest.approx(high, rel=1e-9)


def test_no_conversions_anywhere_gives_no_evidence() -> None:
    """Zero conversions in both groups: p-value 1, an interval around 0 that is not a point,
    NaN relative lift."""
    empty = MetricSummary(n=100, total=0, total_sq=0)
    result = proportion_lift(empty, empty)
    assert result.p_value == 1.0
    assert result.absolute.estimate == 0.0
    assert result.absolute.lower < 0.0 < result.absolute.upper
    assert math.isnan(result.relative.estimate)


def test_a_winner_from_four_units_is_no_winner() -> None:
    """Regression: 0/2 against 2/2 gave "+100.0 pp, 95% CI [100.0, 100.0]" and p = 0 from a
    plug-in variance of 0 (Fisher's exact p = 0.33). Now the interval is wide and p > 0.05, and
    the pair fails the minimum-outcome rule."""
    control = MetricSummary(n=2, total=0, total_sq=0)
    treatment = MetricSummary(n=2, total=2, total_sq=2)
    result = proportion_lift(control, treatment)
    assert result.absolute.estimate == 1.0
    assert result.absolute.width > 0.5
    assert result.absolute.contains(0.0)
    assert result.p_value > 0.05
    assert stats.fisher_exact([[2, 0], [0, 2]]).pvalue == pytest.approx(1 / 3)
    assert not enough_outcomes(control, treatment)


def test_minimum_outcome_rule_counts_both_arms_together() -> None:
    """10 conversions and 10 non-conversions over both arms: a guard-rail that never fires in
    control but fires 40 times in the variant passes; 4 units do not."""
    assert enough_outcomes(
        MetricSummary(n=1_000, total=0, total_sq=0), MetricSummary(n=1_000, total=40, total_sq=40)
    )
    assert not enough_outcomes(
        MetricSummary(n=1_000, total=4, total_sq=4), MetricSummary(n=1_000, total=5, total_sq=5)
    )
    assert not enough_outcomes(
        MetricSummary(n=6, total=6, total_sq=6), MetricSummary(n=6, total=3, total_sq=3)
    )


def test_constant_but_different_groups_are_clearly_different() -> None:
    """All-convert vs none-convert on 50 units each: tiny p, but not a zero-width interval."""
    result = proportion_lift(
        MetricSummary(n=50, total=0, total_sq=0), MetricSummary(n=50, total=50, total_sq=50)
    )
    assert result.p_value < 1e-12
    assert result.absolute.width > 0.05
    assert result.absolute.upper <= 1.0


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
