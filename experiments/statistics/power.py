"""Power, minimum detectable effect and sample size: fixed-horizon and always-valid tests.

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

The verdict decides with the always-valid test (`experiments.statistics.sequential`), so plans
are made for *that* test (``sequential_*``). With n units per compared arm and a planned horizon
N*, τ²/V = r = 2n·k/N* and the test rejects when |d|/se exceeds
c(r) = sqrt((1 + r)/r · (2 log(1/α) + log(1 + r))), so its power at n is

    Φ(|d|/se - c) + Φ(-|d|/se - c),

the fixed formula with c in place of z_{1-α/2}. This counts a rejection at the look at n only;
reading the report more often only adds chances to reject (the false-positive rate stays ≤ α),
so it is a lower bound on the power of a report read every day. At the horizon of an A/B test
(r = k) c² = 1 + k, about 3.03 at α = 0.05 against 1.96, so for the same power the always-valid
test needs about 1.9 times the units of the fixed test. ``alpha`` is the level each comparison
is tested at: with m comparisons in the report's family, Holm's first step tests at α/m.
"""

from __future__ import annotations

import math

from scipy import special

__all__ = [
    "mean_mde",
    "mean_power",
    "mean_sample_size",
    "proportion_mde",
    "proportion_power",
    "proportion_sample_size",
    "sequential_horizon_units",
    "sequential_proportion_power",
    "sequential_units_needed",
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
    # scipy.optimize is imported on first use: about 24 MB of RSS in every serving worker,
    # which imports this module for its reports but seldom plans a test.
    from scipy import optimize

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


def _sequential_critical(units_per_arm: float, horizon_units: float, alpha: float) -> float:
    k = _mixture_ratio(alpha)
    r = 2.0 * units_per_arm * k / horizon_units
    return math.sqrt((1.0 + r) / r * (2.0 * math.log(1.0 / alpha) + math.log1p(r)))


def _mixture_ratio(alpha: float) -> float:
    """k = τ²/V at the horizon: the root of k = 2 log(1/α) + log(1 + k)."""
    two_log = 2.0 * math.log(1.0 / alpha)
    k = two_log
    for _ in range(60):
        k = two_log + math.log1p(k)
    return k


def sequential_proportion_power(
    p_control: float,
    p_treatment: float,
    units_per_arm: float,
    *,
    horizon_units: float,
    alpha: float = 0.05,
) -> float:
    """Power of the always-valid rate test read at ``units_per_arm`` units in each compared arm.

    Φ(|d|/se - c) + Φ(-|d|/se - c) with se = sqrt((p_c(1-p_c) + p_t(1-p_t)) / n) and
    c = c(2n·k/N*) (module docstring): a lower bound for a report read more often.

    Raises:
        ValueError: on rates outside (0, 1), a group with < 1 unit, a horizon < 2 or a bad alpha.
    """
    _check_alpha_power(alpha)
    _check_rate("p_control", p_control)
    _check_rate("p_treatment", p_treatment)
    _check_n(units_per_arm, units_per_arm)
    if horizon_units < 2:
        raise ValueError(f"horizon_units == {horizon_units}, must be >= 2")
    se = math.sqrt((p_control * (1 - p_control) + p_treatment * (1 - p_treatment)) / units_per_arm)
    c = _sequential_critical(units_per_arm, horizon_units, alpha)
    shift = abs(p_treatment - p_control) / se
    return float(special.ndtr(shift - c) + special.ndtr(-shift - c))


def sequential_horizon_units(
    p_control: float,
    p_treatment: float,
    *,
    arms: int = 2,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """Planned total units N* (all ``arms``, equal split) at which the always-valid rate test
    reaches ``power`` for p_control vs p_treatment, with N* also setting its mixture.

    At N* each compared pair holds 2N*/arms units, so r = 2k/arms and c is fixed; then
    n = (c + z_{1-β})² (p_c(1-p_c) + p_t(1-p_t)) / (p_t - p_c)² per arm and N* = arms · n.

    Raises:
        ValueError: on rates outside (0, 1), equal rates, fewer than 2 arms or bad alpha/power.
    """
    _check_alpha_power(alpha, power)
    _check_rate("p_control", p_control)
    _check_rate("p_treatment", p_treatment)
    if p_control == p_treatment:
        raise ValueError("p_treatment == p_control: no effect to detect")
    if arms < 2:
        raise ValueError(f"arms == {arms}, must be >= 2")
    c = _sequential_critical(1.0, arms, alpha)  # r = 2·1·k/arms
    var = p_control * (1 - p_control) + p_treatment * (1 - p_treatment)
    per_arm = math.ceil(
        (c + float(special.ndtri(power))) ** 2 * var / (p_treatment - p_control) ** 2
    )
    return per_arm * arms


def sequential_units_needed(
    p_control: float,
    p_treatment: float,
    *,
    horizon_units: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """Units per compared arm at which the always-valid rate test, with its horizon already
    fixed at ``horizon_units``, reaches ``power`` for p_control vs p_treatment.

    The power grows with n (c(r) grows only like sqrt(log n) past the horizon), so the root is
    found by bisection on whole units.

    Raises:
        ValueError: on invalid inputs.
    """
    _check_alpha_power(alpha, power)

    def enough(n: int) -> bool:
        return (
            sequential_proportion_power(
                p_control, p_treatment, n, horizon_units=horizon_units, alpha=alpha
            )
            >= power
        )

    low, high = 1, 2
    while not enough(high):
        low, high = high, high * 2
        if high > 10**13:
            raise ValueError(
                f"no sample size reaches power {power} for {p_control} vs {p_treatment}"
            )
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return low if enough(low) else high
