"""Sufficient statistics of a metric per variant, as report SQL produces them.

A report never ships raw rows to Python: ClickHouse aggregates each variant to a handful of sums
(``count()``, ``sum(y)``, ``sum(y * y)``, and for CUPED ``sum(x)``, ``sum(x * x)``, ``sum(x * y)``)
and the estimators in this package work from those sums alone. For a conversion metric the
per-unit value is 0/1, so ``total`` is the number of converting units and ``total_sq == total``.

Variances are the unbiased sample variances (divisor ``n - 1``) computed as
``(total_sq - total**2 / n) / (n - 1)``, clipped at 0 so that rounding in the sums can never yield
a negative variance.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "CupedSummary",
    "MetricSummary",
    "summarize",
    "summarize_with_covariate",
]


def _centered_sum(n: int, total_a: float, total_b: float, total_ab: float) -> float:
    """Sum of (a - mean a)(b - mean b) from raw sums; 0 when n == 0."""
    if n == 0:
        return 0.0
    return total_ab - total_a * total_b / n


class MetricSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One variant's metric as three sums over its units.

    Attributes:
        n: number of units (the randomisation unit, e.g. visitors).
        total: sum over units of the per-unit metric (conversions for a 0/1 metric).
        total_sq: sum over units of the squared per-unit metric.
    """

    n: int
    total: float
    total_sq: float

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n == {self.n}, must be >= 0")
        if self.total_sq < 0:
            raise ValueError(f"total_sq == {self.total_sq}, must be >= 0")
        # Cauchy–Schwarz: total**2 <= n * total_sq, with slack for float rounding.
        if self.total**2 > self.n * self.total_sq * (1 + 1e-9) + 1e-9:
            raise ValueError(
                f"total == {self.total} is impossible with n == {self.n} and "
                f"total_sq == {self.total_sq} (needs total**2 <= n * total_sq)"
            )

    @property
    def mean(self) -> float:
        """Mean per unit; NaN when n == 0."""
        return self.total / self.n if self.n > 0 else math.nan

    @property
    def variance(self) -> float:
        """Unbiased sample variance per unit; NaN when n < 2."""
        if self.n < 2:
            return math.nan
        return max(_centered_sum(self.n, self.total, self.total, self.total_sq), 0.0) / (self.n - 1)

    @property
    def rate(self) -> float:
        """Conversion rate of a 0/1 metric; raises if the sums are not those of 0/1 values."""
        if not 0 <= self.total <= self.n:
            raise ValueError(f"total == {self.total}, must be within [0, n == {self.n}] for a rate")
        return self.mean


class CupedSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One variant's metric y and pre-period covariate x as six sums over its units.

    Attributes:
        n: number of units.
        total: sum of y.
        total_sq: sum of y².
        covariate_total: sum of x.
        covariate_total_sq: sum of x².
        cross_total: sum of x·y.
    """

    n: int
    total: float
    total_sq: float
    covariate_total: float
    covariate_total_sq: float
    cross_total: float

    def __post_init__(self) -> None:
        # Reuse MetricSummary's checks for both marginal metrics.
        MetricSummary(n=self.n, total=self.total, total_sq=self.total_sq)
        MetricSummary(n=self.n, total=self.covariate_total, total_sq=self.covariate_total_sq)

    @property
    def metric(self) -> MetricSummary:
        """The y part alone, for the unadjusted estimators."""
        return MetricSummary(n=self.n, total=self.total, total_sq=self.total_sq)

    @property
    def covariate(self) -> MetricSummary:
        """The x part alone."""
        return MetricSummary(n=self.n, total=self.covariate_total, total_sq=self.covariate_total_sq)

    @property
    def centered_cross(self) -> float:
        """Sum of (x - x̄)(y - ȳ) over the variant's units."""
        return _centered_sum(self.n, self.covariate_total, self.total, self.cross_total)


def summarize(values: ArrayLike) -> MetricSummary:
    """Summarise raw per-unit values (shape (n,)) exactly as the report SQL does."""
    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"values has shape {y.shape}, must be 1-D")
    return MetricSummary(n=int(y.size), total=float(y.sum()), total_sq=float(y @ y))


def summarize_with_covariate(values: ArrayLike, covariate: ArrayLike) -> CupedSummary:
    """Summarise per-unit metric and covariate (both shape (n,)) into CUPED sums."""
    y = np.asarray(values, dtype=np.float64)
    x = np.asarray(covariate, dtype=np.float64)
    if y.ndim != 1 or y.shape != x.shape:
        raise ValueError(f"values {y.shape} and covariate {x.shape} must be 1-D of equal length")
    return CupedSummary(
        n=int(y.size),
        total=float(y.sum()),
        total_sq=float(y @ y),
        covariate_total=float(x.sum()),
        covariate_total_sq=float(x @ x),
        cross_total=float(x @ y),
    )
