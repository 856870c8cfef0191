"""CUPED: variance reduction with a pre-experiment covariate (Deng, Xu, Kohavi & Walker 2013).

Each unit has the metric y (during the experiment) and a covariate x measured before it (e.g.
the same metric over the previous 28 days; 0 for new units). The adjusted metric is
y - θ (x - x̄) with θ = cov(x, y) / var(x), the coefficient that minimises its variance. Because
x is fixed before assignment, E[x̄_t - x̄_c] = 0 and the adjusted difference in means stays unbiased
for the treatment effect while its variance shrinks by the factor 1 - ρ², ρ = corr(x, y).

From the sums of `experiments.statistics.summaries.CupedSummary`:

* θ = S_xy / S_xx with the *within-group pooled* sums S_xy = Σ_g Σ_i (x - x̄_g)(y - ȳ_g) and
  S_xx = Σ_g Σ_i (x - x̄_g)², so a treatment effect on y cannot leak into θ; θ = 0 when x is
  constant.
* adjusted means ȳ_g^cv = ȳ_g - θ (x̄_g - x̄), x̄ the covariate mean over both groups;
* adjusted per-unit variances s_g² + θ² s_xg² - 2θ c_xyg (sample variances and covariance within
  the group);
* then the Welch lift, interval and p-value of
`experiments.statistics.frequentist.lift_from_moments`.

Estimating θ on the same data adds an O(1/n) bias, negligible at report sizes (Deng et al. 2013).

The relative lift is the adjusted difference over the *unadjusted* control mean, Δ_cv / ȳ_c
(Deng et al. 2013), not the ratio of the adjusted means: one unit with a large pre-period value
and a huge order can push θ into the hundreds and the adjusted control mean below 0, and the
ratio of adjusted means then had the opposite sign of the lift. Its interval is Fieller's set
{r : (Δ_cv - r ȳ_c)² <= t² (V_Δ + r² V_c)}, which at r = 0 is the adjusted Welch test, so it
excludes 0 exactly when the p-value is below α.
"""

from __future__ import annotations

import math

import msgspec

from experiments.statistics.frequentist import LiftResult, lift_from_moments, mean_lift
from experiments.statistics.intervals import Interval, fieller_ratio_interval
from experiments.statistics.summaries import CupedSummary

__all__ = ["CupedResult", "cuped_lift", "cuped_theta"]


class CupedResult(msgspec.Struct, frozen=True, kw_only=True):
    """CUPED-adjusted comparison next to the unadjusted one.

    Attributes:
        theta: the pooled regression coefficient of y on x.
        adjusted: lift, intervals and p-value on the adjusted metric; its relative lift is
            Δ_cv over the unadjusted control mean.
        unadjusted: the plain Welch comparison of the same data.
        variance_reduction: 1 - Var(adjusted lift) / Var(unadjusted lift); ≈ ρ² for large n.
    """

    theta: float
    adjusted: LiftResult
    unadjusted: LiftResult
    variance_reduction: float


def cuped_theta(control: CupedSummary, treatment: CupedSummary) -> float:
    """θ = S_xy / S_xx from within-group pooled sums of both groups; 0 for a constant x."""
    s_xy = control.centered_cross + treatment.centered_cross
    s_xx = sum(
        max(g.covariate_total_sq - g.covariate_total**2 / g.n, 0.0)
        for g in (control, treatment)
        if g.n > 0
    )
    if s_xx <= 0.0:
        return 0.0
    return s_xy / s_xx


def _adjusted_variance(summary: CupedSummary, theta: float) -> float:
    cov_xy = summary.centered_cross / (summary.n - 1)
    variance = (
        summary.metric.variance + theta**2 * summary.covariate.variance - 2.0 * theta * cov_xy
    )
    return max(variance, 0.0)


def _relative(adjusted: LiftResult, control: CupedSummary, level: float) -> Interval:
    """Δ_cv / ȳ_c with Fieller's interval at the adjusted test's critical value."""
    a, se = adjusted.absolute, adjusted.standard_error
    y_bar = control.metric.mean
    if y_bar == 0.0 or se == 0.0:
        estimate = a.estimate / y_bar if y_bar != 0.0 else math.nan
        return Interval(estimate=estimate, lower=estimate, upper=estimate, level=level)
    return fieller_ratio_interval(
        estimate=a.estimate / y_bar,
        numerator=a.estimate,
        numerator_var=se**2,
        denominator=y_bar,
        denominator_var=control.metric.variance / control.n,
        critical=(a.upper - a.estimate) / se,
        null=0.0,
        level=level,
    )


def cuped_lift(
    control: CupedSummary, treatment: CupedSummary, *, level: float = 0.95
) -> CupedResult:
    """CUPED-adjusted absolute and relative lift with Welch intervals and p-value.

    Raises:
        ValueError: when a group has fewer than 2 units or the level is outside (0, 1).
    """
    for name, g in (("control", control), ("treatment", treatment)):
        if g.n < 2:
            raise ValueError(f"{name} n == {g.n}, must be >= 2")
    theta = cuped_theta(control, treatment)
    x_bar = (control.covariate_total + treatment.covariate_total) / (control.n + treatment.n)
    adjusted_c = control.metric.mean - theta * (control.covariate.mean - x_bar)
    adjusted_t = treatment.metric.mean - theta * (treatment.covariate.mean - x_bar)
    adjusted = lift_from_moments(
        control_mean=adjusted_c,
        control_variance=_adjusted_variance(control, theta),
        control_n=control.n,
        treatment_mean=adjusted_t,
        treatment_variance=_adjusted_variance(treatment, theta),
        treatment_n=treatment.n,
        level=level,
        method="cuped_welch_t",
    )
    unadjusted = mean_lift(control.metric, treatment.metric, level=level)
    adjusted = msgspec.structs.replace(adjusted, relative=_relative(adjusted, control, level))
    if unadjusted.standard_error > 0.0:
        reduction = 1.0 - (adjusted.standard_error / unadjusted.standard_error) ** 2
    else:
        reduction = 0.0
    return CupedResult(
        theta=theta,
        adjusted=adjusted,
        unadjusted=unadjusted,
        variance_reduction=reduction,
    )
