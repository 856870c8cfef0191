"""Power, minimum detectable effect and sample size for the fixed-horizon tests.

All under the normal approximation used by `experiments.statistics.frequentist` (unpooled standard
error,
two-sided test at level α). For an absolute effect d whose estimate has standard error
se = sqrt(σ_t²/n_t + σ_c²/n_c), the power is

    Φ(|d|/se - z_{1-α/2}) + Φ(-|d|/se - z_{1-α/2}),

the chance that the z statistic lands beyond either critical value. For means the minimum
detectable effect (MDE) at power 1-β is (z_{1-α/2} + z_{1-β}) · se, which ignores the far tail
(< 1e-6 at usual settings); for rates σ_t² = p_t(1-p_t) depends on the effect, so the MDE is the
root of power(d) = 1-β found by Brent's method. Welch's t has slightly less power than the normal
below a few dozen units per group; at report sizes the difference is nil.
"""

from __future__ import annotations

import math

from scipy import optimize, special

__all__ = [
    "mean_mde",
    "mean_power",
    "mean_sample_size",
    "proportion_mde",
    "proportion_power",
    "proportion_sample_size",
]


def _check_alpha_power(alpha: float, power: float | None = None) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha == {alpha}, must be in (0, 1)")
    if power is not None and not alpha / 2.0 < power < 1.0:
        raise ValueError(f"power == {power}, must be in (alpha/2, 1)")


def _check_n(n_control: float, n_treatment: float) -> None:
    if n_control < 1 or n_treatment < 1:
        raise ValueError(f"n == ({n_control}, {n_treatment}), each group needs >= 1 unit")


def _check_rate(name: str, p: float) -> None:
    if not 0.0 < p < 1.0:
        raise ValueError(f"{name} == {p}, must be in (0, 1)")


def _power_from_se(effect: float, se: float, alpha: float) -> float:
    z = float(special.ndtri(1.0 - alpha / 2.0))
    shift = abs(effect) / se
    return float(special.ndtr(shift - z) + special.ndtr(-shift - z))


def proportion_power(
    p_control: float,
    p_treatment: float,
    n_control: float,
    n_treatment: float,
    *,
    alpha: float = 0.05,
) -> float:
    """Power of the two-sided two-proportion z test to detect rates p_control vs p_treatment.

    Raises:
        ValueError: on rates outside (0, 1), a group with < 1 unit, or alpha outside (0, 1).
    """
    _check_alpha_power(alpha)
    _check_rate("p_control", p_control)
    _check_rate("p_treatment", p_treatment)
    _check_n(n_control, n_treatment)
    se = math.sqrt(
        p_control * (1 - p_control) / n_control + p_treatment * (1 - p_treatment) / n_treatment
    )
    return _power_from_se(p_treatment - p_control, se, alpha)


def proportion_mde(
    p_control: float,
    n_control: float,
    n_treatment: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """Smallest absolute rate increase d > 0 detected with the given power (p_t = p_c + d).

    Raises:
        ValueError: on invalid inputs, or when even p_t → 1 cannot reach the power at this n.
    """
    _check_alpha_power(alpha, power)
    _check_rate("p_control", p_control)
    _check_n(n_control, n_treatment)
    upper = (1.0 - p_control) * (1.0 - 1e-12)

    def gap(d: float) -> float:
        return proportion_power(p_control, p_control + d, n_control, n_treatment, alpha=alpha) - (
            power
        )

    if gap(upper) < 0.0:
        raise ValueError(
            f"no increase over p_control == {p_control} reaches power {power} "
            f"with n == ({n_control}, {n_treatment})"
        )
    return float(optimize.brentq(gap, 1e-12, upper, xtol=1e-12, rtol=1e-10))


def proportion_sample_size(
    p_control: float,
    p_treatment: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """Units per group (equal split) to detect p_control vs p_treatment with the given power.

    n = (z_{1-α/2} + z_{1-β})² (p_c(1-p_c) + p_t(1-p_t)) / (p_t - p_c)², rounded up.

    Raises:
        ValueError: on rates outside (0, 1), equal rates, or alpha/power out of range.
    """
    _check_alpha_power(alpha, power)
    _check_rate("p_control", p_control)
    _check_rate("p_treatment", p_treatment)
    if p_control == p_treatment:
        raise ValueError("p_treatment == p_control: no effect to detect")
    z = float(special.ndtri(1.0 - alpha / 2.0) + special.ndtri(power))
    var = p_control * (1 - p_control) + p_treatment * (1 - p_treatment)
    return math.ceil(z**2 * var / (p_treatment - p_control) ** 2)


def mean_power(
    effect: float,
    sd_control: float,
    n_control: float,
    n_treatment: float,
    *,
    sd_treatment: float | None = None,
    alpha: float = 0.05,
) -> float:
    """Power of the two-sided test of means to detect an absolute difference ``effect``.

    ``sd_treatment`` defaults to ``sd_control`` (per-unit standard deviations).

    Raises:
        ValueError: on a non-positive standard deviation, a group with < 1 unit, or a bad alpha.
    """
    _check_alpha_power(alpha)
    _check_n(n_control, n_treatment)
    sd_t = sd_control if sd_treatment is None else sd_treatment
    if not (sd_control > 0 and sd_t > 0):
        raise ValueError(f"standard deviations ({sd_control}, {sd_t}) must be > 0")
    se = math.sqrt(sd_control**2 / n_control + sd_t**2 / n_treatment)
    return _power_from_se(effect, se, alpha)


def mean_mde(
    sd_control: float,
    n_control: float,
    n_treatment: float,
    *,
    sd_treatment: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """Minimum detectable absolute difference in means, (z_{1-α/2} + z_{1-β}) · se.

    Raises:
        ValueError: on a non-positive standard deviation, a group with < 1 unit, or bad
            alpha/power.
    """
    _check_alpha_power(alpha, power)
    _check_n(n_control, n_treatment)
    sd_t = sd_control if sd_treatment is None else sd_treatment
    if not (sd_control > 0 and sd_t > 0):
        raise ValueError(f"standard deviations ({sd_control}, {sd_t}) must be > 0")
    se = math.sqrt(sd_control**2 / n_control + sd_t**2 / n_treatment)
    return float(special.ndtri(1.0 - alpha / 2.0) + special.ndtri(power)) * se


def mean_sample_size(
    effect: float,
    sd: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """Units per group (equal split, common sd) to detect ``effect``: 2 (z_a + z_b)² sd² / effect².

    Raises:
        ValueError: on a zero effect, a non-positive sd, or bad alpha/power.
    """
    _check_alpha_power(alpha, power)
    if effect == 0.0:
        raise ValueError("effect == 0: nothing to detect")
    if not sd > 0:
        raise ValueError(f"sd == {sd}, must be > 0")
    z = float(special.ndtri(1.0 - alpha / 2.0) + special.ndtri(power))
    return math.ceil(2.0 * z**2 * sd**2 / effect**2)
