"""Fixed-horizon lift of treatment over control: two-proportion z and Welch t.

Both tests compare independent groups from their sufficient statistics and return the absolute
lift ``m_t - m_c`` and the relative lift ``m_t / m_c - 1`` with confidence intervals and a
two-sided p-value for "no difference". The relative interval uses the delta method (Kohavi, Tang
& Xu 2020, ch. 18; see `experiments.statistics.intervals.relative_lift_variance`).

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
    relative_lift_variance,
    two_sided_normal_p,
    z_critical,
)
from experiments.statistics.summaries import MetricSummary

__all__ = [
    "LiftMethod",
    "LiftResult",
    "lift_from_moments",
    "mean_lift",
    "proportion_lift",
]

LiftMethod = Literal["two_proportion_z", "welch_t", "cuped_welch_t"]


class LiftResult(msgspec.Struct, frozen=True, kw_only=True):
    """Treatment-vs-control comparison at one look.

    Attributes:
        method: which test produced it.
        control_mean: control mean per unit (rate for a conversion metric).
        treatment_mean: treatment mean per unit.
        absolute: ``treatment_mean - control_mean`` with its confidence interval.
        relative: ``treatment_mean / control_mean - 1`` with its delta-method interval
            (NaN when the control mean is 0).
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
    The relative interval is ``r ± crit * sqrt(V_t/m_c**2 + m_t**2 V_c/m_c**4)``.
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

    if control_mean == 0.0:
        relative = Interval(estimate=math.nan, lower=math.nan, upper=math.nan, level=level)
    else:
        rel = treatment_mean / control_mean - 1.0
        rel_se = math.sqrt(
            relative_lift_variance(control_mean, var_mean_c, treatment_mean, var_mean_t)
        )
        relative = Interval(
            estimate=rel, lower=rel - crit * rel_se, upper=rel + crit * rel_se, level=level
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
    """Two-proportion z comparison of conversion rates (``total`` = converting units).

    Rates p_g = total_g / n_g with per-unit variance p_g (1 - p_g). The interval is the Wald
    interval ``d ± z * sqrt(p_t(1-p_t)/n_t + p_c(1-p_c)/n_c)``. By default the test uses the same
    unpooled standard error, so "p < 0.05" and "the 95% interval excludes 0" always agree; with
    ``pooled_test=True`` the statistic uses the classical pooled standard error
    ``sqrt(p(1-p)(1/n_t + 1/n_c))`` with p the rate of both groups together.

    Raises:
        ValueError: when a group has no units or conversions outside [0, n].
    """
    p_c, p_t = control.rate, treatment.rate  # .rate validates 0 <= total <= n
    test_se: float | None = None
    if pooled_test and control.n > 0 and treatment.n > 0:
        pooled = (control.total + treatment.total) / (control.n + treatment.n)
        test_se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / control.n + 1.0 / treatment.n))
    return lift_from_moments(
        control_mean=p_c,
        control_variance=p_c * (1.0 - p_c),
        control_n=control.n,
        treatment_mean=p_t,
        treatment_variance=p_t * (1.0 - p_t),
        treatment_n=treatment.n,
        level=level,
        method="two_proportion_z",
        test_standard_error=test_se,
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
