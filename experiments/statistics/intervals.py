"""The `Interval` every estimator returns, and the few normal-theory helpers they share.

An `Interval` is an estimate with a two-sided interval at a stated level: a confidence interval,
a Bayesian credible interval, or a time-uniform confidence sequence, depending on the producer
(the producing Struct's field names say which).
"""

from __future__ import annotations

import math

import msgspec
from scipy import special

__all__ = [
    "Interval",
    "check_level",
    "normal_interval",
    "relative_lift_variance",
    "two_sided_normal_p",
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
