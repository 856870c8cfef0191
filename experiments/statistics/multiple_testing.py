"""Adjustments for reading many p-values at once (many variants, metrics or segments).

* Holm (1979) controls the family-wise error rate — the chance of any false positive — under any
  dependence. With the m p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted value is
  p̃_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
* Benjamini–Hochberg (1995) controls the false discovery rate — the expected share of false
  positives among the rejections — for independent or positively dependent tests:
  p̃_(i) = min_{j >= i} min(1, m p_(j) / j).

Reject a hypothesis when its adjusted p-value is <= α. Both return results in the input order.
"""

from __future__ import annotations

from typing import Literal

import msgspec
import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["AdjustedPValues", "benjamini_hochberg", "holm"]


class AdjustedPValues(msgspec.Struct, frozen=True, kw_only=True):
    """Adjusted p-values and decisions, in the order of the input.

    Attributes:
        method: ``"holm"`` or ``"benjamini_hochberg"``.
        alpha: the family-wise error rate (Holm) or false discovery rate (BH) targeted.
        p_values: the raw p-values, shape (m,).
        adjusted: the adjusted p-values, shape (m,).
        rejected: adjusted <= alpha, shape (m,).
    """

    method: Literal["holm", "benjamini_hochberg"]
    alpha: float
    p_values: tuple[float, ...]
    adjusted: tuple[float, ...]
    rejected: tuple[bool, ...]


def _validated(p_values: ArrayLike, alpha: float) -> NDArray[np.float64]:
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values has shape {p.shape}, must be 1-D")
    if not np.all((p >= 0.0) & (p <= 1.0)):
        raise ValueError(f"p_values must lie in [0, 1], got {p.tolist()}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha == {alpha}, must be in (0, 1)")
    return p


def _result(
    method: Literal["holm", "benjamini_hochberg"],
    alpha: float,
    p: NDArray[np.float64],
    adjusted: NDArray[np.float64],
) -> AdjustedPValues:
    return AdjustedPValues(
        method=method,
        alpha=alpha,
        p_values=tuple(float(v) for v in p),
        adjusted=tuple(float(v) for v in adjusted),
        rejected=tuple(bool(v) for v in adjusted <= alpha),
    )


def holm(p_values: ArrayLike, *, alpha: float = 0.05) -> AdjustedPValues:
    """Holm step-down adjustment of p-values (shape (m,)); controls the family-wise error rate.

    Raises:
        ValueError: when the input is not 1-D, a p-value is outside [0, 1] or alpha outside (0, 1).
    """
    p = _validated(p_values, alpha)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum((m - np.arange(m)) * p[order], 1.0)
    adjusted = np.empty(m, dtype=np.float64)
    adjusted[order] = np.maximum.accumulate(scaled)
    return _result("holm", alpha, p, adjusted)


def benjamini_hochberg(p_values: ArrayLike, *, alpha: float = 0.05) -> AdjustedPValues:
    """Benjamini–Hochberg step-up adjustment of p-values (shape (m,)); controls the FDR.

    Raises:
        ValueError: when the input is not 1-D, a p-value is outside [0, 1] or alpha outside (0, 1).
    """
    p = _validated(p_values, alpha)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = m * p[order] / np.arange(1, m + 1)
    adjusted = np.empty(m, dtype=np.float64)
    adjusted[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return _result("benjamini_hochberg", alpha, p, adjusted)
