"""Always-valid p-values and confidence sequences: formulas and their consistency."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.statistics.frequentist import mean_lift, proportion_lift
from experiments.statistics.sequential import (
    confidence_sequence_radius,
    mixture_log_likelihood_ratio,
    optimal_mixture_ratio,
    proportion_p_values,
    sequential_mean_test,
    sequential_proportion_test,
)
from experiments.statistics.summaries import MetricSummary, summarize


def test_radius_equals_howard_asymptotic_confidence_sequence() -> None:
    """With V = σ²/t and τ² = σ²ρ² the radius is Howard et al.'s normal-mixture boundary."""
    sigma, rho, alpha = 2.5, 0.03, 0.05
    for t in (10, 1_000, 123_456):
        howard = sigma * math.sqrt(
            2 * (t * rho**2 + 1) / (t**2 * rho**2) * math.log(math.sqrt(t * rho**2 + 1) / alpha)
        )
        ours = confidence_sequence_radius(sigma**2 / t, sigma**2 * rho**2, 1 - alpha)
        assert ours == pytest.approx(howard, rel=1e-12)


def test_optimal_ratio_solves_its_equation_and_minimises_width() -> None:
    """k solves k = 2 log(1/α) + log(1+k) and no other τ²/V on a grid gives a narrower radius."""
    k = optimal_mixture_ratio(0.95)
    assert k == pytest.approx(2 * math.log(20) + math.log1p(k), rel=1e-12)
    assert 8.0 < k < 8.4
    grid = np.geomspace(0.5, 100, 400)
    widths = [confidence_sequence_radius(1.0, g, 0.95) for g in grid]
    assert confidence_sequence_radius(1.0, k, 0.95) <= min(widths) + 1e-12


def test_p_value_and_sequence_agree() -> None:
    """p <= α exactly when 0 lies outside the confidence sequence, over many effect sizes."""
    control = MetricSummary(n=5_000, total=250, total_sq=250)
    for conversions in range(200, 360, 5):
        treatment = MetricSummary(n=5_000, total=conversions, total_sq=conversions)
        result = sequential_proportion_test(control, treatment, horizon_units=20_000)
        assert (result.p_value <= 0.05) == (not result.absolute.contains(0.0)), conversions


def test_p_value_is_the_inverse_mixture_likelihood_ratio() -> None:
    """The always-valid p-value is min(1, 1/Λ) with Λ computed by hand from the sums."""
    rng = np.random.default_rng(5)
    control, treatment = rng.normal(10, 3, 4_000), rng.normal(10.3, 3, 4_000)
    result = sequential_mean_test(summarize(control), summarize(treatment), horizon_units=8_000)
    variance = control.var(ddof=1) / 4_000 + treatment.var(ddof=1) / 4_000
    d = treatment.mean() - control.mean()
    tau2 = 8_000 * variance * optimal_mixture_ratio(0.95) / 8_000
    lam = math.sqrt(variance / (variance + tau2)) * math.exp(
        tau2 * d**2 / (2 * variance * (variance + tau2))
    )
    assert result.mixture_variance == pytest.approx(tau2, rel=1e-12)
    assert result.p_value == pytest.approx(min(1.0, 1 / lam), rel=1e-9)
    assert math.log(lam) == pytest.approx(mixture_log_likelihood_ratio(d, variance, tau2))


def test_sequence_at_horizon_is_about_one_and_a_half_fixed_intervals() -> None:
    """At the planned horizon the sequence is 1.4–1.7× the fixed interval, and always wider;
    planning for far more or far fewer units than observed gives a wider sequence."""
    rng = np.random.default_rng(6)
    control, treatment = rng.normal(10, 3, 4_000), rng.normal(10, 3, 4_000)
    c, t = summarize(control), summarize(treatment)
    fixed = mean_lift(c, t)
    at_horizon = sequential_mean_test(c, t, horizon_units=8_000)
    early = sequential_mean_test(c, t, horizon_units=800_000)
    late = sequential_mean_test(c, t, horizon_units=80)
    assert 1.4 < at_horizon.absolute.width / fixed.absolute.width < 1.7
    assert early.absolute.width > 1.2 * at_horizon.absolute.width
    assert late.absolute.width > 1.1 * at_horizon.absolute.width
    assert at_horizon.relative.width > fixed.relative.width


def test_sequential_p_value_exceeds_fixed_p_value() -> None:
    """Always-valid evidence costs something: the sequential p is larger than the fixed one."""
    control = MetricSummary(n=20_000, total=1_000, total_sq=1_000)
    treatment = MetricSummary(n=20_000, total=1_110, total_sq=1_110)
    fixed = proportion_lift(control, treatment)
    sequential = sequential_proportion_test(control, treatment, horizon_units=40_000)
    assert fixed.p_value < 0.05
    assert sequential.p_value > fixed.p_value


def test_no_conversions_yet_gives_p_value_one() -> None:
    """An early look with no conversions anywhere gives p = 1 and an interval around 0 that is
    not a point (a zero plug-in variance is not certainty)."""
    empty = MetricSummary(n=30, total=0, total_sq=0)
    result = sequential_proportion_test(empty, empty, horizon_units=1_000)
    assert result.p_value == 1.0
    assert result.absolute.lower < 0.0 < result.absolute.upper
    assert math.isnan(result.relative.estimate)


def test_four_units_never_make_a_winner() -> None:
    """Regression: 0/2 against 2/2 had a plug-in variance of 0, so Λ = ∞ and p = 0 ("b beats a:
    +100.0 pp, 95% CI [100.0, 100.0]", significant after Holm). With Agresti–Caffo moments p is
    far above α at any horizon, and the sequence is wide."""
    control = MetricSummary(n=2, total=0, total_sq=0)
    treatment = MetricSummary(n=2, total=2, total_sq=2)
    for horizon in (4, 100, 62_462):
        result = sequential_proportion_test(control, treatment, horizon_units=horizon)
        assert result.absolute.estimate == 1.0
        assert result.p_value > 0.5, horizon
        assert result.absolute.lower < 0.0
        assert result.absolute.upper == 1.0


def test_relative_sequence_excludes_zero_exactly_when_p_is_below_alpha() -> None:
    """The relative sequence is Fieller's set with the absolute sequence's critical value, so it
    agrees with the always-valid p-value (rates and means, many effect sizes and horizons)."""
    rng = np.random.default_rng(8)
    checked = 0
    for conversions in range(20, 200, 3):
        for horizon in (500, 5_000, 50_000):
            control = MetricSummary(n=1_000, total=50, total_sq=50)
            treatment = MetricSummary(n=1_000, total=conversions, total_sq=conversions)
            result = sequential_proportion_test(control, treatment, horizon_units=horizon)
            assert (result.p_value <= 0.05) == (not result.relative.contains(0.0))
            checked += result.p_value <= 0.05
    for shift in np.linspace(0.0, 2.0, 40):
        c = rng.binomial(1, 0.2, 300) * rng.lognormal(2.0, 1.0, 300)
        t = rng.binomial(1, 0.2, 300) * rng.lognormal(2.0 + shift, 1.0, 300)
        result = sequential_mean_test(summarize(c), summarize(t), horizon_units=2_000)
        assert (result.p_value <= 0.05) == (not result.relative.contains(0.0))
        assert (result.p_value <= 0.05) == (not result.absolute.contains(0.0))
    assert checked > 20


def test_vectorised_p_values_equal_the_scalar_test() -> None:
    """proportion_p_values, used by the simulations, equals sequential_proportion_test."""
    rng = np.random.default_rng(9)
    n_c, n_t = rng.integers(1, 3_000, 200), rng.integers(1, 3_000, 200)
    c_c, c_t = rng.binomial(n_c, 0.3), rng.binomial(n_t, 0.33)
    vector = proportion_p_values(c_c, n_c, c_t, n_t, horizon_units=4_000)
    for i in range(200):
        scalar = sequential_proportion_test(
            MetricSummary(n=int(n_c[i]), total=float(c_c[i]), total_sq=float(c_c[i])),
            MetricSummary(n=int(n_t[i]), total=float(c_t[i]), total_sq=float(c_t[i])),
            horizon_units=4_000,
        )
        assert vector[i] == pytest.approx(scalar.p_value, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(
    ("control", "horizon", "level", "match"),
    [
        (MetricSummary(n=1, total=1.0, total_sq=1.0), 1_000, 0.95, "each group needs >= 2"),
        (MetricSummary(n=100, total=5.0, total_sq=5.0), 1, 0.95, "horizon_units == 1"),
        (MetricSummary(n=100, total=5.0, total_sq=5.0), 1_000, 1.0, "level == 1.0"),
    ],
)
def test_sequential_mean_test_rejects_bad_inputs(
    control: MetricSummary, horizon: int, level: float, match: str
) -> None:
    """Too-small groups, a degenerate horizon and bad levels are refused."""
    treatment = MetricSummary(n=100, total=6.0, total_sq=6.0)
    with pytest.raises(ValueError, match=match):
        sequential_mean_test(control, treatment, horizon_units=horizon, level=level)
