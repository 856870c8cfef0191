"""Power, MDE and sample size against hand formulas and statsmodels."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from experiments.statistics.power import (
    mean_mde,
    mean_power,
    mean_sample_size,
    proportion_mde,
    proportion_power,
    proportion_sample_size,
)


def test_proportion_power_matches_hand_formula() -> None:
    """Power is Φ(|d|/se − z) + Φ(−|d|/se − z) with the unpooled se."""
    se = math.sqrt(0.05 * 0.95 / 8_000 + 0.06 * 0.94 / 8_000)
    z = stats.norm.ppf(0.975)
    expected = stats.norm.cdf(0.01 / se - z) + stats.norm.cdf(-0.01 / se - z)
    assert proportion_power(0.05, 0.06, 8_000, 8_000) == pytest.approx(expected, rel=1e-12)
    assert proportion_power(0.06, 0.05, 8_000, 8_000) == pytest.approx(expected, rel=1e-12)


def test_mean_power_matches_statsmodels_normal_ind_power() -> None:
    """For equal sds, mean power equals statsmodels' NormalIndPower at effect size d/sd."""
    power_module = pytest.importorskip("statsmodels.stats.power")
    ours = mean_power(2.0, 25.0, 3_000, 4_500, alpha=0.05)
    reference = power_module.NormalIndPower().power(
        effect_size=2.0 / 25.0, nobs1=3_000, alpha=0.05, ratio=1.5
    )
    assert ours == pytest.approx(reference, rel=1e-9)


def test_mde_round_trips_through_power() -> None:
    """The power at the MDE is the requested power (1e-6), for rates and for means."""
    d = proportion_mde(0.04, 10_000, 10_000, power=0.8)
    assert proportion_power(0.04, 0.04 + d, 10_000, 10_000) == pytest.approx(0.8, abs=1e-6)
    m = mean_mde(30.0, 5_000, 5_000, power=0.9, alpha=0.01)
    assert mean_power(m, 30.0, 5_000, 5_000, alpha=0.01) == pytest.approx(0.9, abs=1e-6)


def test_sample_size_round_trips_through_power() -> None:
    """The sample size reaches the power, and one unit fewer per group (nearly) does not."""
    n = proportion_sample_size(0.1, 0.11, power=0.8)
    assert proportion_power(0.1, 0.11, n, n) >= 0.8
    assert proportion_power(0.1, 0.11, n - 1, n - 1) < 0.8 + 1e-4
    n_means = mean_sample_size(1.0, 20.0, power=0.8)
    assert mean_power(1.0, 20.0, n_means, n_means) >= 0.8
    assert n_means == math.ceil(2 * (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) ** 2 * 400)


def test_power_grows_with_sample_size_and_effect() -> None:
    """More units or a larger effect never lower the power."""
    assert proportion_power(0.05, 0.055, 1_000, 1_000) < proportion_power(
        0.05, 0.055, 10_000, 10_000
    )
    assert mean_power(1.0, 10.0, 500, 500) < mean_power(2.0, 10.0, 500, 500)


def test_zero_effect_has_power_alpha() -> None:
    """With no effect the 'power' is the false-positive rate α."""
    assert mean_power(0.0, 10.0, 100, 100, alpha=0.05) == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: proportion_power(0.0, 0.1, 100, 100), "p_control == 0.0"),
        (lambda: proportion_power(0.1, 1.0, 100, 100), "p_treatment == 1.0"),
        (lambda: proportion_power(0.1, 0.2, 0, 100), "each group needs"),
        (lambda: proportion_power(0.1, 0.2, 100, 100, alpha=1.0), "alpha == 1.0"),
        (lambda: proportion_mde(0.5, 3, 3, power=0.99), "reaches power"),
        (lambda: proportion_mde(0.1, 100, 100, power=1.0), "power == 1.0"),
        (lambda: proportion_sample_size(0.1, 0.1), "no effect"),
        (lambda: mean_power(1.0, 0.0, 100, 100), "must be > 0"),
        (lambda: mean_mde(1.0, 100, 100, sd_treatment=-1.0), "must be > 0"),
        (lambda: mean_sample_size(0.0, 1.0), "effect == 0"),
        (lambda: mean_sample_size(1.0, 0.0), "sd == 0.0"),
    ],
)
def test_rejects_bad_inputs(call: object, match: str) -> None:
    """Rates outside (0, 1), empty groups, bad α/power and impossible targets are refused."""
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]
