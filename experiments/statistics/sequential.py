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

Since τ²/V = r = N k / N* does not depend on the data, Λ is a function of z² = d²/V and N only:
log Λ = -½ log(1 + r) + r z² / (2 (1 + r)), and the sequence is d ± c·sqrt(V) with
c² = (1 + r)/r · (2 log(1/α) + log(1 + r)) (`sequence_critical`; c² = 1 + k at N = N*). The
relative sequence is Fieller's set with that same c, so it excludes 0 exactly when p <= α.

Conversion rates plug in Agresti–Caffo moments (one pseudo-conversion and one
pseudo-non-conversion per arm, as in `experiments.statistics.frequentist.proportion_lift`):
the plain plug-in variance p(1 - p) is 0 for 0 of 2 or 2 of 2, which made Λ infinite and let an
A/A test read after every unit reject 8% of the time at a 30% base rate. With the pseudo-counts
(and the report's minimum-outcome rule) the rate stays below α; see
`tests/experiments/test_small_samples.py`. `proportion_p_values` is the same test vectorised
over many looks, for simulations.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec
import numpy as np
from numpy.typing import ArrayLike, NDArray

from experiments.statistics.intervals import Interval, check_level, fieller_relative_interval
from experiments.statistics.summaries import MetricSummary

__all__ = [
    "SequentialResult",
    "confidence_sequence_radius",
    "mixture_log_likelihood_ratio",
    "optimal_mixture_ratio",
    "proportion_p_values",
    "sequence_critical",
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
        relative: relative lift with a Fieller confidence sequence (NaN on a zero control,
            infinite bounds while the control mean is indistinguishable from 0).
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


def sequence_critical(ratio: float, level: float) -> float:
    """c with radius = c·sqrt(V) for τ²/V = ``ratio``: sqrt((1+r)/r · (2 log(1/α) + log(1+r)))."""
    check_level(level)
    return math.sqrt(
        (1.0 + ratio) / ratio * (2.0 * math.log(1.0 / (1.0 - level)) + math.log1p(ratio))
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
    n_total: int,
    horizon_units: int,
    level: float,
    estimates: tuple[float, float] | None = None,
) -> SequentialResult:
    """The test on moments (means, per-unit variances, the n that divides them).

    ``n_total`` is the number of real units (N in τ² = N·V·k/N*); ``estimates`` replaces the
    reported means (e.g. observed rates when the test runs on pseudo-count moments).
    """
    check_level(level)
    if horizon_units < 2:
        raise ValueError(f"horizon_units == {horizon_units}, must be >= 2")
    ratio = n_total * optimal_mixture_ratio(level) / horizon_units
    v_c, v_t = var_c / n_c, var_t / n_t
    variance = v_c + v_t
    diff = m_t - m_c
    tau2 = ratio * variance
    log_lr = mixture_log_likelihood_ratio(diff, variance, tau2)
    p_value = math.exp(-max(log_lr, 0.0))
    crit = sequence_critical(ratio, level)
    radius = crit * math.sqrt(variance)
    shown_c, shown_t = estimates if estimates is not None else (m_c, m_t)
    relative = fieller_relative_interval(
        estimate=shown_t / shown_c - 1.0 if shown_c != 0.0 else math.nan,
        control_mean=m_c,
        control_var_mean=v_c,
        treatment_mean=m_t,
        treatment_var_mean=v_t,
        critical=crit,
        level=level,
    )
    return SequentialResult(
        method=method,
        control_mean=shown_c,
        treatment_mean=shown_t,
        absolute=Interval(
            estimate=shown_t - shown_c, lower=diff - radius, upper=diff + radius, level=level
        ),
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
    if control.n < 2 or treatment.n < 2:
        raise ValueError(f"n == ({control.n}, {treatment.n}), each group needs >= 2 units")
    return _sequential_from_moments(
        method="msprt_mean",
        m_c=control.mean,
        var_c=control.variance,
        n_c=control.n,
        m_t=treatment.mean,
        var_t=treatment.variance,
        n_t=treatment.n,
        n_total=control.n + treatment.n,
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
    """Always-valid comparison of conversion rates at the current look.

    The test runs on Agresti–Caffo moments p̃ = (c + 1)/(n + 2), per-unit variance p̃(1 - p̃)
    over n + 2, so 0 of n never has a variance of 0; the reported means and estimates are the
    observed rates, and the sequence is centred on p̃_t - p̃_c and clipped to [-1, 1].

    Raises:
        ValueError: when a group has no units, conversions outside [0, n] or horizon_units < 2.
    """
    p_c, p_t = control.rate, treatment.rate
    if control.n < 1 or treatment.n < 1:
        raise ValueError(f"n == ({control.n}, {treatment.n}), each group needs >= 1 unit")
    m_c, n_c = (control.total + 1.0) / (control.n + 2.0), control.n + 2
    m_t, n_t = (treatment.total + 1.0) / (treatment.n + 2.0), treatment.n + 2
    result = _sequential_from_moments(
        method="msprt_proportion",
        m_c=m_c,
        var_c=m_c * (1.0 - m_c),
        n_c=n_c,
        m_t=m_t,
        var_t=m_t * (1.0 - m_t),
        n_t=n_t,
        n_total=control.n + treatment.n,
        horizon_units=horizon_units,
        level=level,
        estimates=(p_c, p_t),
    )
    a, r = result.absolute, result.relative
    return msgspec.structs.replace(
        result,
        absolute=Interval(
            estimate=a.estimate, lower=max(a.lower, -1.0), upper=min(a.upper, 1.0), level=level
        ),
        relative=Interval(
            estimate=r.estimate,
            lower=max(r.lower, -1.0) if not math.isnan(r.lower) else r.lower,
            upper=r.upper,
            level=level,
        ),
    )


def proportion_p_values(
    conversions_control: ArrayLike,
    n_control: ArrayLike,
    conversions_treatment: ArrayLike,
    n_treatment: ArrayLike,
    *,
    horizon_units: int,
    level: float = 0.95,
) -> NDArray[np.float64]:
    """`sequential_proportion_test`'s p-value for many looks at once (arrays of any one shape).

    Looks where an arm has no unit get p = 1. For simulations of a report read after every unit.
    """
    check_level(level)
    c_c = np.asarray(conversions_control, dtype=np.float64)
    c_t = np.asarray(conversions_treatment, dtype=np.float64)
    n_c = np.asarray(n_control, dtype=np.float64)
    n_t = np.asarray(n_treatment, dtype=np.float64)
    m_c, m_t = (c_c + 1.0) / (n_c + 2.0), (c_t + 1.0) / (n_t + 2.0)
    variance = m_c * (1.0 - m_c) / (n_c + 2.0) + m_t * (1.0 - m_t) / (n_t + 2.0)
    ratio = (n_c + n_t) * optimal_mixture_ratio(level) / horizon_units
    log_lr = -0.5 * np.log1p(ratio) + ratio * (m_t - m_c) ** 2 / (2.0 * variance * (1.0 + ratio))
    p = np.exp(-np.maximum(log_lr, 0.0))
    return np.where((n_c >= 1) & (n_t >= 1), p, 1.0)
