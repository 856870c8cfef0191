"""The `Interval` every estimator returns, and the few normal-theory helpers they share.

An `Interval` is an estimate with a two-sided interval at a stated level: a confidence interval,
a Bayesian credible interval, or a time-uniform confidence sequence, depending on the producer
(the producing Struct's field names say which).

Relative lifts use Fieller's construction (`fieller_relative_interval`): the ratios ρ = m_t/m_c
whose difference m_t - ρ m_c the absolute test would *not* reject. At ρ = 1 that is exactly the
absolute test, so a relative interval excludes 0 if and only if the absolute one does and the
p-value is below α — one method behind the interval and the p-value.
"""

from __future__ import annotations

import math

import msgspec
from scipy import special

__all__ = [
    "Interval",
    "check_level",
    "fieller_ratio_interval",
    "fieller_relative_interval",
    "newcombe_difference",
    "normal_interval",
    "relative_lift_variance",
    "two_sided_normal_p",
    "wilson_interval",
    "z_critical",
]


class Interval(msgspec.Struct, frozen=True, kw_only=True):
    """A point estimate with a two-sided interval at ``level`` (e.g. 0.95).

    Bounds may be NaN when the estimate is undefined (e.g. relative lift over a zero control).
    """

    estimate: float
    lower: float
    upper: float
    level: float

    def contains(self, value: float) -> bool:
        """True when ``lower <= value <= upper``."""
        return self.lower <= value <= self.upper

    @property
    def width(self) -> float:
        """``upper - lower``."""
        return self.upper - self.lower


def check_level(level: float) -> None:
    """Raise ValueError unless 0 < level < 1."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level == {level}, must be in (0, 1)")


def z_critical(level: float) -> float:
    """The standard normal quantile z with P(|Z| <= z) == level."""
    check_level(level)
    return float(special.ndtri(0.5 + level / 2.0))


def two_sided_normal_p(z: float) -> float:
    """Two-sided p-value P(|Z| >= |z|) for a standard normal Z; 1.0 for NaN z (no evidence)."""
    if math.isnan(z):
        return 1.0
    return float(2.0 * special.ndtr(-abs(z)))


def normal_interval(estimate: float, standard_error: float, level: float) -> Interval:
    """``estimate ± z_critical(level) * standard_error`` as an Interval."""
    half = z_critical(level) * standard_error
    return Interval(estimate=estimate, lower=estimate - half, upper=estimate + half, level=level)


def relative_lift_variance(
    control_mean: float, control_var_mean: float, treatment_mean: float, treatment_var_mean: float
) -> float:
    """Delta-method variance of ``treatment_mean / control_mean - 1`` for independent groups.

    With independent means m_t, m_c and their variances V_t, V_c (variances of the *means*,
    i.e. per-unit variance over n), the first-order Taylor expansion of m_t / m_c gives
    ``V_t / m_c**2 + m_t**2 * V_c / m_c**4`` (Kohavi, Tang & Xu 2020, ch. 18). NaN when
    ``control_mean == 0``.
    """
    if control_mean == 0.0:
        return math.nan
    return (
        treatment_var_mean / control_mean**2
        + treatment_mean**2 * control_var_mean / control_mean**4
    )


def fieller_relative_interval(
    *,
    estimate: float,
    control_mean: float,
    control_var_mean: float,
    treatment_mean: float,
    treatment_var_mean: float,
    critical: float,
    level: float,
) -> Interval:
    """Fieller's interval for ``m_t / m_c - 1``: every ρ - 1 with
    ``(m_t - ρ m_c)² <= critical² (V_t + ρ² V_c)``.

    ``critical`` is the absolute test's critical value (z, Welch t, or a confidence sequence's
    radius over its standard error), so 0 lies inside the result exactly when the absolute
    interval ``m_t - m_c ± critical·sqrt(V_t + V_c)`` contains 0. See `fieller_ratio_interval`
    for the unbounded cases. ``estimate`` is reported as given (NaN when ``control_mean == 0``).
    """
    ratio = fieller_ratio_interval(
        estimate=estimate + 1.0,
        numerator=treatment_mean,
        numerator_var=treatment_var_mean,
        denominator=control_mean,
        denominator_var=control_var_mean,
        critical=critical,
        null=1.0,
        level=level,
    )
    return Interval(
        estimate=estimate, lower=ratio.lower - 1.0, upper=ratio.upper - 1.0, level=level
    )


def fieller_ratio_interval(
    *,
    estimate: float,
    numerator: float,
    numerator_var: float,
    denominator: float,
    denominator_var: float,
    critical: float,
    null: float,
    level: float,
) -> Interval:
    """Fieller's set of ratios ρ with ``(a - ρ b)² <= critical² (V_a + ρ² V_b)`` for independent
    estimates a (``numerator``) and b (``denominator``) with variances V_a, V_b.

    At ρ = ``null`` the inequality is the test the caller's p-value comes from, so ``null`` lies
    in the set exactly when that test does not reject. When b is itself not distinguishable from
    0 (``b² <= critical² V_b``) the set is unbounded: either every ratio (bounds ``-inf`` /
    ``+inf``, JSON ``null``) or two rays, of which the one holding ``a / b`` is returned (for
    nonnegative metrics the other holds only negative ratios) unless ``null`` lies on the other.
    NaN throughout when ``denominator == 0`` or the estimate is NaN.
    """
    if denominator == 0.0 or math.isnan(estimate):
        return Interval(estimate=math.nan, lower=math.nan, upper=math.nan, level=level)
    c2 = critical**2
    a = denominator**2 - c2 * denominator_var
    half_b = denominator * numerator
    c = numerator**2 - c2 * numerator_var
    disc = half_b**2 - a * c
    whole = Interval(estimate=estimate, lower=-math.inf, upper=math.inf, level=level)
    if a == 0.0 or (a < 0.0 and disc <= 0.0):
        return whole
    root = math.sqrt(max(disc, 0.0))
    low, high = sorted(((half_b - root) / a, (half_b + root) / a))
    if a > 0.0:
        return Interval(estimate=estimate, lower=low, upper=high, level=level)
    ratio = numerator / denominator
    if ratio >= high and not low >= null:
        return Interval(estimate=estimate, lower=high, upper=math.inf, level=level)
    if ratio <= low and not high <= null:
        return Interval(estimate=estimate, lower=-math.inf, upper=low, level=level)
    return whole


def wilson_interval(p: float, n: float, level: float) -> Interval:
    """Wilson's score interval of a proportion ``p`` observed over ``n`` trials.

    ``n`` may be an effective sample size (not an integer): a weighted proportion's Kish size
    (Σw)² / Σw². Unlike ``p ± z sqrt(p(1-p)/n)`` it never has zero width at p = 0 or 1 and stays
    inside [0, 1]. NaN bounds when ``n <= 0`` or ``p`` is NaN.
    """
    if n <= 0.0 or math.isnan(p):
        return Interval(estimate=p, lower=math.nan, upper=math.nan, level=level)
    z = z_critical(level)
    z2 = z * z
    p = min(max(p, 0.0), 1.0)
    scale = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / scale
    half = z / scale * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    return Interval(
        estimate=p, lower=max(centre - half, 0.0), upper=min(centre + half, 1.0), level=level
    )


def newcombe_difference(p1: float, n1: float, p2: float, n2: float, level: float) -> Interval:
    """Newcombe's hybrid score interval (1998, method 10) for ``p1 - p2`` of independent
    proportions: with Wilson intervals (l1, u1) and (l2, u2),
    ``[d - sqrt((p1 - l1)² + (u2 - p2)²), d + sqrt((u1 - p1)² + (p2 - l2)²)]``.

    ``n1``, ``n2`` may be effective sizes (see `wilson_interval`). The interval lies inside
    [-1, 1] and keeps its coverage where the plug-in (Wald) one does not: few successes, or a
    side estimated from few, heavily weighted observations.
    """
    a = wilson_interval(p1, n1, level)
    b = wilson_interval(p2, n2, level)
    d = p1 - p2
    lower = d - math.sqrt((p1 - a.lower) ** 2 + (b.upper - p2) ** 2)
    upper = d + math.sqrt((a.upper - p1) ** 2 + (p2 - b.lower) ** 2)
    return Interval(estimate=d, lower=lower, upper=upper, level=level)
