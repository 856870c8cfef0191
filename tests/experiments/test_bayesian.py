"""Bayesian read-outs: Monte Carlo against closed forms and numerical integration."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from experiments.statistics.bayesian import (
    beta_binomial_comparison,
    exact_chance_to_beat,
    normal_comparison,
)
from experiments.statistics.summaries import MetricSummary, summarize

CONTROL = MetricSummary(n=2_000, total=100, total_sq=100)
TREATMENT = MetricSummary(n=2_000, total=120, total_sq=120)


def _integrated_chance(a_c: float, b_c: float, a_t: float, b_t: float) -> float:
    """P(p_t > p_c) = ∫ f_c(x) (1 - F_t(x)) dx by adaptive quadrature."""
    lo, hi = stats.beta.ppf([1e-12, 1 - 1e-12], a_c, b_c)
    value, _ = integrate.quad(
        lambda x: stats.beta.pdf(x, a_c, b_c) * stats.beta.sf(x, a_t, b_t), lo, hi, limit=200
    )
    return float(value)


def _integrated_loss(a_c: float, b_c: float, a_t: float, b_t: float) -> float:
    """E[max(p_c - p_t, 0)] = ∫ f_t(x) E[(p_c - x)+] dx with the Beta partial expectation."""
    mean_c = a_c / (a_c + b_c)

    def shortfall(x: float) -> float:
        # E[(p_c - x) 1{p_c > x}] = E[p_c] (1 - I_x(a_c + 1, b_c)) - x (1 - I_x(a_c, b_c))
        return mean_c * (1 - special.betainc(a_c + 1, b_c, x)) - x * (
            1 - special.betainc(a_c, b_c, x)
        )

    lo, hi = stats.beta.ppf([1e-12, 1 - 1e-12], a_t, b_t)
    value, _ = integrate.quad(
        lambda x: stats.beta.pdf(x, a_t, b_t) * shortfall(x), lo, hi, limit=200
    )
    return float(value)


def test_exact_chance_matches_numerical_integration() -> None:
    """Evan Miller's closed-form sum equals quadrature of the two Beta posteriors (1e-7)."""
    exact = exact_chance_to_beat(CONTROL, TREATMENT)
    assert exact == pytest.approx(_integrated_chance(101, 1_901, 121, 1_881), abs=1e-7)


def test_exact_chance_is_symmetric() -> None:
    """P(t > c) + P(c > t) == 1 for continuous posteriors."""
    forward = exact_chance_to_beat(CONTROL, TREATMENT)
    backward = exact_chance_to_beat(TREATMENT, CONTROL)
    assert forward + backward == pytest.approx(1.0, abs=1e-10)


def test_monte_carlo_matches_exact_chance_and_integrated_loss() -> None:
    """MC chance is within 4 MC SEs of the exact one; expected losses within 2% of quadrature."""
    result = beta_binomial_comparison(CONTROL, TREATMENT, np.random.default_rng(7), draws=400_000)
    exact = exact_chance_to_beat(CONTROL, TREATMENT)
    assert abs(result.chance_to_beat_control - exact) < 4 * result.monte_carlo_error
    assert result.expected_loss_treatment == pytest.approx(
        _integrated_loss(101, 1_901, 121, 1_881), rel=0.02
    )
    assert result.expected_loss_control == pytest.approx(
        _integrated_loss(121, 1_881, 101, 1_901), rel=0.02
    )


def test_beta_credible_interval_matches_posterior_quantiles() -> None:
    """The absolute credible interval matches quantiles of independent posterior draws (±3e-4)."""
    result = beta_binomial_comparison(CONTROL, TREATMENT, np.random.default_rng(8))
    rng = np.random.default_rng(99)
    diff = stats.beta.rvs(121, 1_881, size=400_000, random_state=rng) - stats.beta.rvs(
        101, 1_901, size=400_000, random_state=rng
    )
    lo, hi = np.quantile(diff, [0.025, 0.975])
    assert result.absolute.lower == pytest.approx(lo, abs=3e-4)
    assert result.absolute.upper == pytest.approx(hi, abs=3e-4)
    assert result.absolute.estimate == pytest.approx(121 / 2_002 - 101 / 2_002, rel=1e-12)
    assert result.relative.contains(result.relative.estimate)


def test_same_seed_gives_same_answer() -> None:
    """Randomness only comes from the Generator passed in."""
    first = beta_binomial_comparison(CONTROL, TREATMENT, np.random.default_rng(3), draws=1_000)
    second = beta_binomial_comparison(CONTROL, TREATMENT, np.random.default_rng(3), draws=1_000)
    assert first == second


def test_normal_comparison_matches_closed_form_and_simulation() -> None:
    """Chance to beat is Φ(d/σ) from the raw rows; losses match a 10⁶-draw simulation (1%)."""
    rng = np.random.default_rng(11)
    control = rng.binomial(1, 0.1, 5_000) * rng.lognormal(3.0, 0.7, 5_000)
    treatment = rng.binomial(1, 0.1, 5_000) * rng.lognormal(3.05, 0.7, 5_000)
    result = normal_comparison(summarize(control), summarize(treatment))
    d = treatment.mean() - control.mean()
    sigma = math.sqrt(control.var(ddof=1) / 5_000 + treatment.var(ddof=1) / 5_000)
    assert result.method == "normal"
    assert result.chance_to_beat_control == pytest.approx(stats.norm.cdf(d / sigma), rel=1e-9)
    draws = rng.normal(d, sigma, 1_000_000)
    assert result.expected_loss_treatment == pytest.approx(np.maximum(-draws, 0).mean(), rel=0.01)
    assert result.expected_loss_control == pytest.approx(np.maximum(draws, 0).mean(), rel=0.01)
    assert result.absolute.upper - d == pytest.approx(stats.norm.ppf(0.975) * sigma, rel=1e-9)


def test_normal_comparison_of_identical_constant_groups_is_a_coin_flip() -> None:
    """Zero variance and no difference: chance 0.5 and no expected loss."""
    constant = MetricSummary(n=10, total=50.0, total_sq=250.0)
    result = normal_comparison(constant, constant)
    assert result.chance_to_beat_control == 0.5
    assert result.expected_loss_treatment == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prior_alpha": 0.0}, "prior"),
        ({"prior_beta": -1.0}, "prior"),
        ({"draws": 10}, "draws == 10"),
        ({"level": 1.5}, "level == 1.5"),
    ],
)
def test_beta_binomial_rejects_bad_settings(kwargs: dict[str, float], match: str) -> None:
    """Non-positive priors, too few draws and bad levels are refused."""
    with pytest.raises(ValueError, match=match):
        beta_binomial_comparison(CONTROL, TREATMENT, np.random.default_rng(0), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("treatment", "kwargs", "match"),
    [
        (TREATMENT, {"prior_alpha": 0.5}, "must be an integer"),
        (MetricSummary(n=10, total=12, total_sq=144), {}, "within"),
    ],
)
def test_exact_chance_rejects_non_integer_alpha_and_bad_counts(
    treatment: MetricSummary, kwargs: dict[str, float], match: str
) -> None:
    """The closed form needs an integer treatment alpha and valid conversion counts."""
    with pytest.raises(ValueError, match=match):
        exact_chance_to_beat(CONTROL, treatment, **kwargs)


def test_normal_comparison_needs_two_units_per_group() -> None:
    """A single-unit group has no variance estimate and is refused."""
    with pytest.raises(ValueError, match="treatment n == 1"):
        normal_comparison(CONTROL, MetricSummary(n=1, total=1, total_sq=1))
