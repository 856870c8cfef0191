"""Always-valid p-values and confidence sequences for a report that is read every day.

The fixed-horizon test of `experiments.statistics.frequentist` holds its 5% error rate for one
look; looked
at daily and stopped at the first "significant" day, it rejects a true null far more often. The
mixture sequential probability ratio test (mSPRT; Johari, Pekelis & Walsh, "Always valid
inference", 2017/2022) fixes that. With d the current absolute lift and V its variance
(s_t²/n_t + s_c²/n_c), and a normal mixing distribution N(0, τ²) over the true lift, the mixture
likelihood ratio against "no difference" is

    Λ = sqrt(V / (V + τ²)) · exp(τ² d² / (2 V (V + τ²))),

a nonnegative martingale under the null, so by Ville's inequality P(∃ look: Λ ≥ 1/α) ≤ α. The
always-valid p-value is min(1, 1/Λ) and the confidence sequence — the lifts θ not rejected — is

    d ± sqrt(V (V + τ²) / τ² · (2 log(1/α) + log((V + τ²) / V))),

which with V = σ²/t and τ² = σ²ρ² is exactly Howard et al. (2021) / Waudby-Smith et al.'s
asymptotic normal-mixture confidence sequence. Both come from the *current* aggregates only:
rejecting the first time p ≤ α (or 0 leaves the sequence) keeps the false-positive rate ≤ α no
matter how often, or when, the report is read. A caller that stores past values may report the
running minimum of p and the running intersection of the intervals; the guarantee is the same.

τ² sets where the sequence is tightest, not whether it is valid. We take τ² = σ_D² k / N*, where
σ_D² = N·V is the plug-in per-unit variance of the lift (N = units in both groups), N* the
planned total units (``horizon_units``, e.g. from `experiments.statistics.power`) and k the root of
k = 2 log(1/α) + log(1 + k) (k ≈ 8.2 at α = 0.05), which minimises the width at N = N*; there the
sequence is about 1.55 times as wide as the fixed-horizon interval. The variance is plugged in
from the data, so validity is asymptotic in n (Waudby-Smith et al. 2024), as for the t test.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from experiments.statistics.intervals import Interval, check_level, relative_lift_variance
from experiments.statistics.summaries import MetricSummary

__all__ = [
    "SequentialResult",
    "confidence_sequence_radius",
    "mixture_log_likelihood_ratio",
    "optimal_mixture_ratio",
    "sequential_mean_test",
    "sequential_proportion_test",
]


class SequentialResult(msgspec.Struct, frozen=True, kw_only=True):
    """An always-valid comparison of treatment against control at the current look.

    Attributes:
        method: the data model, ``"msprt_mean"`` or ``"msprt_proportion"``.
        control_mean: control mean per unit (rate for a conversion metric).
        treatment_mean: treatment mean per unit.
        absolute: absolute lift with its confidence sequence at ``level``.
        relative: relative lift with a delta-method confidence sequence (NaN on a zero control).
        p_value: always-valid p-value for "no difference", min(1, 1/Λ).
        mixture_variance: τ² used for the absolute lift.
        horizon_units: planned total units at which the sequence is tightest.
    """

    method: Literal["msprt_mean", "msprt_proportion"]
    control_mean: float
    treatment_mean: float
    absolute: Interval
    relative: Interval
    p_value: float
    mixture_variance: float
    horizon_units: int


def optimal_mixture_ratio(level: float) -> float:
    """k = τ²/V minimising the sequence's width at a given V: the root of k = 2log(1/α) + log(1+k).

    Solved by fixed-point iteration (a contraction, since d/dk log(1+k) < 1).
    """
    check_level(level)
    two_log = 2.0 * math.log(1.0 / (1.0 - level))
    k = two_log
    for _ in range(60):
        k = two_log + math.log1p(k)
    return k


def mixture_log_likelihood_ratio(lift: float, variance: float, mixture_variance: float) -> float:
    """log Λ of the normal-mixture SPRT for an estimate ``lift`` of variance ``variance``."""
    if variance <= 0.0:
        return 0.0 if lift == 0.0 else math.inf
    total = variance + mixture_variance
    return 0.5 * math.log(variance / total) + mixture_variance * lift**2 / (2.0 * variance * total)


def confidence_sequence_radius(variance: float, mixture_variance: float, level: float) -> float:
    """Half-width sqrt(V (V+τ²)/τ² · (2 log(1/α) + log((V+τ²)/V))) of the sequence at ``level``."""
    check_level(level)
    if variance <= 0.0:
        return 0.0
    total = variance + mixture_variance
    return math.sqrt(
        variance
        * total
        / mixture_variance
        * (2.0 * math.log(1.0 / (1.0 - level)) + math.log(total / variance))
    )


def _sequence(estimate: float, variance: float, tau2: float, level: float) -> Interval:
    radius = confidence_sequence_radius(variance, tau2, level)
    return Interval(
        estimate=estimate, lower=estimate - radius, upper=estimate + radius, level=level
    )


def _sequential_from_moments(
    *,
    method: Literal["msprt_mean", "msprt_proportion"],
    m_c: float,
    var_c: float,
    n_c: int,
    m_t: float,
    var_t: float,
    n_t: int,
    horizon_units: int,
    level: float,
) -> SequentialResult:
    check_level(level)
    if horizon_units < 2:
        raise ValueError(f"horizon_units == {horizon_units}, must be >= 2")
    min_n = 1 if method == "msprt_proportion" else 2
    if n_c < min_n or n_t < min_n:
        raise ValueError(f"n == ({n_c}, {n_t}), each group needs >= {min_n} units")
    k = optimal_mixture_ratio(level)
    n_total = n_c + n_t
    v_c, v_t = var_c / n_c, var_t / n_t
    variance = v_c + v_t
    diff = m_t - m_c
    tau2 = n_total * variance * k / horizon_units
    log_lr = mixture_log_likelihood_ratio(diff, variance, tau2)
    p_value = math.exp(-max(log_lr, 0.0))
    if m_c == 0.0:
        relative = Interval(estimate=math.nan, lower=math.nan, upper=math.nan, level=level)
    else:
        rel_var = relative_lift_variance(m_c, v_c, m_t, v_t)
        rel_tau2 = n_total * rel_var * k / horizon_units
        relative = _sequence(m_t / m_c - 1.0, rel_var, rel_tau2, level)
    return SequentialResult(
        method=method,
        control_mean=m_c,
        treatment_mean=m_t,
        absolute=_sequence(diff, variance, tau2, level),
        relative=relative,
        p_value=p_value,
        mixture_variance=tau2,
        horizon_units=horizon_units,
    )


def sequential_mean_test(
    control: MetricSummary,
    treatment: MetricSummary,
    *,
    horizon_units: int,
    level: float = 0.95,
) -> SequentialResult:
    """Always-valid comparison of means per unit (revenue) at the current look.

    Args:
        control: control sums so far.
        treatment: treatment sums so far.
        horizon_units: planned total units (both groups) where the sequence should be tightest;
            any fixed value gives valid inference, it must not be tuned on the data.
        level: 1 - α; the p-value is compared with α = 1 - level.

    Raises:
        ValueError: when a group has fewer than 2 units or horizon_units < 2.
    """
    return _sequential_from_moments(
        method="msprt_mean",
        m_c=control.mean,
        var_c=control.variance,
        n_c=control.n,
        m_t=treatment.mean,
        var_t=treatment.variance,
        n_t=treatment.n,
        horizon_units=horizon_units,
        level=level,
    )


def sequential_proportion_test(
    control: MetricSummary,
    treatment: MetricSummary,
    *,
    horizon_units: int,
    level: float = 0.95,
) -> SequentialResult:
    """Always-valid comparison of conversion rates at the current look (per-unit var p(1-p)).

    Raises:
        ValueError: when a group has no units, conversions outside [0, n] or horizon_units < 2.
    """
    p_c, p_t = control.rate, treatment.rate
    return _sequential_from_moments(
        method="msprt_proportion",
        m_c=p_c,
        var_c=p_c * (1.0 - p_c),
        n_c=control.n,
        m_t=p_t,
        var_t=p_t * (1.0 - p_t),
        n_t=treatment.n,
        horizon_units=horizon_units,
        level=level,
    )
