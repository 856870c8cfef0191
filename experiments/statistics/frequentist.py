"""Fixed-horizon lift of treatment over control: two-proportion z and Welch t.

Both tests compare independent groups from their sufficient statistics and return the absolute
lift ``m_t - m_c`` and the relative lift ``m_t / m_c - 1`` with confidence intervals and a
two-sided p-value for "no difference". The relative interval is Fieller's set built on the same
standard errors and critical value as the absolute test
(`experiments.statistics.intervals.fieller_relative_interval`), so it excludes 0 exactly when
the p-value is below α.

Conversion rates use the Agresti–Caffo interval (Agresti & Caffo 2000): one pseudo-conversion
and one pseudo-non-conversion are added to each group before the Wald formula, so a group with
0 of n or n of n converting never has a plug-in variance of 0 (the plain Wald interval of 0/2
against 2/2 is the impossible "+100 pp, [100, 100]"). Its coverage is close to nominal down to
a handful of units, and at report sizes it equals the Wald interval. The z statistic and p-value
use the same adjusted difference and standard error, so p < α exactly when 0 is outside the
interval. `enough_outcomes` is the minimum-count rule a report applies before it calls a
comparison significant.

These intervals are valid for **one** look at a pre-planned sample size; a report read every day
needs `experiments.statistics.sequential` instead.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec
from scipy import special

from experiments.statistics.intervals import (
    Interval,
    check_level,
    fieller_relative_interval,
    two_sided_normal_p,
    z_critical,
)
from experiments.statistics.summaries import MetricSummary

__all__ = [
    "MIN_OUTCOMES",
    "LiftMethod",
    "LiftResult",
    "agresti_caffo_moments",
    "enough_outcomes",
    "lift_from_moments",
    "mean_lift",
    "proportion_lift",
]

LiftMethod = Literal["two_proportion_z", "welch_t", "cuped_welch_t"]

MIN_OUTCOMES = 10
"""Conversions, and non-conversions, the two arms need together before a comparison may be
called significant (see `enough_outcomes`)."""


def enough_outcomes(
    control: MetricSummary, treatment: MetricSummary, minimum: int = MIN_OUTCOMES
) -> bool:
    """True when both arms together have at least ``minimum`` conversions and ``minimum``
    non-conversions (``total`` = converting units of a 0/1 metric).

    Every test here leans on a normal approximation that has nothing to approximate with a
    handful of outcomes (0/2 against 2/2 has Fisher's exact p = 0.33). The rule counts the two
    arms *together* on purpose: a guard-rail that never fires in control (0 of 1,000) and fires
    40 times in the variant is a real harm that a per-arm minimum would hide forever.
    """
    conversions = control.total + treatment.total
    non_conversions = (control.n - control.total) + (treatment.n - treatment.total)
    return conversions >= minimum and non_conversions >= minimum


def agresti_caffo_moments(summary: MetricSummary) -> tuple[float, float, int]:
    """(p̃, p̃(1 - p̃), n + 2) with p̃ = (conversions + 1) / (n + 2): one pseudo-conversion and
    one pseudo-non-conversion added to a group (Agresti & Caffo 2000).

    Raises:
        ValueError: when conversions lie outside [0, n].
    """
    summary.rate  # noqa: B018 - validates 0 <= total <= n
    adjusted = (summary.total + 1.0) / (summary.n + 2.0)
    return adjusted, adjusted * (1.0 - adjusted), summary.n + 2


class LiftResult(msgspec.Struct, frozen=True, kw_only=True):
    """Treatment-vs-control comparison at one look.

    Attributes:
        method: which test produced it.
        control_mean: control mean per unit (rate for a conversion metric).
        treatment_mean: treatment mean per unit.
        absolute: ``treatment_mean - control_mean`` with its confidence interval.
        relative: ``treatment_mean / control_mean - 1`` with its Fieller interval (NaN when
            the control mean is 0; infinite bounds when the control mean is indistinguishable
            from 0).
        standard_error: standard error of the absolute lift.
        statistic: z or t statistic of the absolute lift (NaN when both groups are constant
            and equal).
        degrees_of_freedom: Welch–Satterthwaite df for t tests; ``inf`` for z tests.
        p_value: two-sided p-value for "no difference".
    """

    method: LiftMethod
    control_mean: float
    treatment_mean: float
    absolute: Interval
    relative: Interval
    standard_error: float
    statistic: float
    degrees_of_freedom: float
    p_value: float


def _t_critical(level: float, df: float) -> float:
    if math.isinf(df):
        return z_critical(level)
    return float(special.stdtrit(df, 0.5 + level / 2.0))


def _t_two_sided_p(statistic: float, df: float) -> float:
    if math.isnan(statistic):
        return 1.0
    if math.isinf(df):
        return two_sided_normal_p(statistic)
    return float(2.0 * special.stdtr(df, -abs(statistic)))


def _welch_df(var_mean_c: float, n_c: int, var_mean_t: float, n_t: int) -> float:
    """Welch–Satterthwaite degrees of freedom from the variances of the two means."""
    denominator = var_mean_c**2 / (n_c - 1) + var_mean_t**2 / (n_t - 1)
    if denominator == 0.0:
        return math.inf
    return (var_mean_c + var_mean_t) ** 2 / denominator


def lift_from_moments(
    *,
    control_mean: float,
    control_variance: float,
    control_n: int,
    treatment_mean: float,
    treatment_variance: float,
    treatment_n: int,
    level: float = 0.95,
    method: LiftMethod = "welch_t",
    test_standard_error: float | None = None,
) -> LiftResult:
    """Lift, intervals and p-value from per-group means and per-unit variances.

    With V_g = variance_g / n_g, the absolute lift d = m_t - m_c has standard error
    sqrt(V_t + V_c); a ``*welch_t`` method uses Student's t with Welch–Satterthwaite df
    ``(V_t + V_c)**2 / (V_t**2/(n_t-1) + V_c**2/(n_c-1))``, ``two_proportion_z`` the normal.
    The relative interval is Fieller's set of ρ - 1 with |m_t - ρ m_c| <= crit·sqrt(V_t + ρ²V_c),
    the same test as the absolute one at ρ = 1.
    ``test_standard_error`` (optional) replaces the standard error in the statistic and p-value
    only, e.g. the pooled one of the classical two-proportion test.

    Raises:
        ValueError: on a level outside (0, 1), a negative variance, or a group too small.
    """
    check_level(level)
    min_n = 1 if method == "two_proportion_z" else 2
    for name, n, var in (
        ("control", control_n, control_variance),
        ("treatment", treatment_n, treatment_variance),
    ):
        if n < min_n:
            raise ValueError(f"{name} n == {n}, must be >= {min_n} for {method}")
        if not var >= 0.0:
            raise ValueError(f"{name} variance == {var}, must be >= 0")
    var_mean_c = control_variance / control_n
    var_mean_t = treatment_variance / treatment_n
    se = math.sqrt(var_mean_c + var_mean_t)
    df = (
        math.inf
        if method == "two_proportion_z"
        else _welch_df(var_mean_c, control_n, var_mean_t, treatment_n)
    )
    crit = _t_critical(level, df)
    diff = treatment_mean - control_mean

    test_se = se if test_standard_error is None else test_standard_error
    if test_se > 0.0:
        statistic = diff / test_se
    else:
        statistic = math.nan if diff == 0.0 else math.copysign(math.inf, diff)
    p_value = _t_two_sided_p(statistic, df)

    relative = fieller_relative_interval(
        estimate=treatment_mean / control_mean - 1.0 if control_mean != 0.0 else math.nan,
        control_mean=control_mean,
        control_var_mean=var_mean_c,
        treatment_mean=treatment_mean,
        treatment_var_mean=var_mean_t,
        critical=crit,
        level=level,
    )
    return LiftResult(
        method=method,
        control_mean=control_mean,
        treatment_mean=treatment_mean,
        absolute=Interval(
            estimate=diff, lower=diff - crit * se, upper=diff + crit * se, level=level
        ),
        relative=relative,
        standard_error=se,
        statistic=statistic,
        degrees_of_freedom=df,
        p_value=p_value,
    )


def proportion_lift(
    control: MetricSummary,
    treatment: MetricSummary,
    *,
    level: float = 0.95,
    pooled_test: bool = False,
) -> LiftResult:
    """Two-proportion comparison of conversion rates (``total`` = converting units).

    The interval is Agresti–Caffo's: with p̃_g = (c_g + 1)/(n_g + 2),
    ``p̃_t - p̃_c ± z·sqrt(p̃_t(1-p̃_t)/(n_t+2) + p̃_c(1-p̃_c)/(n_c+2))``, clipped to [-1, 1]; the
    relative interval is Fieller's on the same adjusted means and variances (lower end clipped
    at -1). By default the z statistic is the adjusted difference over that standard error, so
    "p < α" and "the interval excludes 0" always agree; with ``pooled_test=True`` the statistic
    is the classical pooled ``(p_t - p_c)/sqrt(p(1-p)(1/n_t + 1/n_c))``. The reported means and
    estimates are the observed rates, their difference and ratio.

    Raises:
        ValueError: when a group has no units or conversions outside [0, n].
    """
    p_c, p_t = control.rate, treatment.rate  # .rate validates 0 <= total <= n
    for name, group in (("control", control), ("treatment", treatment)):
        if group.n < 1:
            raise ValueError(f"{name} n == {group.n}, must be >= 1 for two_proportion_z")
    m_c, var_c, n_c = agresti_caffo_moments(control)
    m_t, var_t, n_t = agresti_caffo_moments(treatment)
    adjusted = lift_from_moments(
        control_mean=m_c,
        control_variance=var_c,
        control_n=n_c,
        treatment_mean=m_t,
        treatment_variance=var_t,
        treatment_n=n_t,
        level=level,
        method="two_proportion_z",
    )
    a, r = adjusted.absolute, adjusted.relative
    statistic, p_value = adjusted.statistic, adjusted.p_value
    if pooled_test:
        pooled = (control.total + treatment.total) / (control.n + treatment.n)
        pooled_se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / control.n + 1.0 / treatment.n))
        diff = p_t - p_c
        if pooled_se > 0.0:
            statistic = diff / pooled_se
        else:
            statistic = math.nan if diff == 0.0 else math.copysign(math.inf, diff)
        p_value = two_sided_normal_p(statistic)
    return msgspec.structs.replace(
        adjusted,
        control_mean=p_c,
        treatment_mean=p_t,
        absolute=Interval(
            estimate=p_t - p_c, lower=max(a.lower, -1.0), upper=min(a.upper, 1.0), level=level
        ),
        relative=Interval(
            estimate=p_t / p_c - 1.0 if p_c > 0.0 else math.nan,
            lower=max(r.lower, -1.0) if p_c > 0.0 else math.nan,
            upper=r.upper if p_c > 0.0 else math.nan,
            level=level,
        ),
        statistic=statistic,
        p_value=p_value,
    )


def mean_lift(
    control: MetricSummary, treatment: MetricSummary, *, level: float = 0.95
) -> LiftResult:
    """Welch t comparison of means per unit (e.g. revenue per visitor).

    Uses the unbiased per-unit sample variances; equals scipy's
    ``ttest_ind(treatment_rows, control_rows, equal_var=False)`` on the raw rows.

    Raises:
        ValueError: when a group has fewer than 2 units.
    """
    return lift_from_moments(
        control_mean=control.mean,
        control_variance=control.variance,
        control_n=control.n,
        treatment_mean=treatment.mean,
        treatment_variance=treatment.variance,
        treatment_n=treatment.n,
        level=level,
        method="welch_t",
    )
