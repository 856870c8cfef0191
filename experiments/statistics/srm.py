"""Sample-ratio mismatch: are the observed unit counts consistent with the configured split?

A mismatch (e.g. 50.5/49.5 on a configured 50/50 over a million units) means assignment or
logging is broken — bots filtered from one arm, a redirect that loses users — and every other
number in the report is suspect (Kohavi, Tang & Xu 2020, ch. 21). The check is Pearson's
chi-square goodness of fit: with N units in total and configured weights w_i (normalised to sum
to 1), E_i = N w_i and X² = Σ (O_i - E_i)² / E_i, referred to χ² with (variants - 1) degrees of
freedom. The conventional alarm threshold is p < 0.001, strict because the check runs on every
experiment every day.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
from scipy import special

__all__ = ["DEFAULT_SRM_THRESHOLD", "SrmResult", "sample_ratio_mismatch"]

DEFAULT_SRM_THRESHOLD = 0.001


class SrmResult(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of the sample-ratio-mismatch check.

    Attributes:
        observed: units observed per variant, in the order given.
        expected: units expected per variant under the configured weights.
        observed_share: observed fraction of units per variant.
        expected_share: configured (normalised) fraction per variant.
        statistic: Pearson's X².
        degrees_of_freedom: variants - 1.
        p_value: P(χ² >= X²).
        threshold: p-value below which the mismatch is flagged.
        mismatch: True when p_value < threshold.
    """

    observed: tuple[int, ...]
    expected: tuple[float, ...]
    observed_share: tuple[float, ...]
    expected_share: tuple[float, ...]
    statistic: float
    degrees_of_freedom: int
    p_value: float
    threshold: float
    mismatch: bool


def sample_ratio_mismatch(
    counts: Sequence[int],
    weights: Sequence[float],
    *,
    threshold: float = DEFAULT_SRM_THRESHOLD,
) -> SrmResult:
    """Chi-square test of observed unit counts against configured weights; flags p < threshold.

    Args:
        counts: units per variant, shape (variants,).
        weights: configured traffic weights in the same order, shape (variants,); any positive
            scale (50/50, 0.5/0.5 and 1/1 are the same split).
        threshold: flag when the p-value is below it.

    Raises:
        ValueError: on fewer than two variants, mismatched lengths, negative counts, non-positive
            weights, no units, or a threshold outside (0, 1).
    """
    observed = np.asarray(counts, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    if observed.ndim != 1 or observed.size < 2:
        raise ValueError(f"counts has shape {observed.shape}, need at least two variants")
    if w.shape != observed.shape:
        raise ValueError(f"weights has shape {w.shape}, counts {observed.shape}: must match")
    if np.any(observed < 0):
        raise ValueError(f"counts {observed.tolist()} must be >= 0")
    if not np.all(w > 0) or not np.all(np.isfinite(w)):
        raise ValueError(f"weights {w.tolist()} must be finite and > 0")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold == {threshold}, must be in (0, 1)")
    total = int(observed.sum())
    if total == 0:
        raise ValueError("counts sum to 0, nothing to check")
    share = w / w.sum()
    expected = total * share
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    df = observed.size - 1
    p_value = float(special.chdtrc(df, statistic))
    return SrmResult(
        observed=tuple(int(c) for c in observed),
        expected=tuple(float(e) for e in expected),
        observed_share=tuple(float(c) / total for c in observed),
        expected_share=tuple(float(s) for s in share),
        statistic=statistic,
        degrees_of_freedom=df,
        p_value=p_value,
        threshold=threshold,
        mismatch=p_value < threshold,
    )
