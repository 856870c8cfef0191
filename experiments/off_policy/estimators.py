"""Off-policy evaluation: what would a target policy have earned, from logged bandit data?

Each logged row i has a context x_i, the action a_i the logging policy chose with propensity
p_i = μ(a_i | x_i), and the reward r_i. A target policy π is given as its probabilities
π(a | x_i) for every row and action (see `experiments.off_policy.target_policies`), and optionally
a reward
model r̂(x_i, a) (see `experiments.off_policy.reward_models`). With importance weights
w_i = π(a_i | x_i) / p_i (Dudík, Langford & Li 2011; Saito et al. 2021):

* IPS:    V = (1/n) Σ w_i r_i — unbiased when the logged propensities are right and μ > 0
  wherever π > 0.
* SNIPS:  V = Σ w_i r_i / Σ w_i — self-normalised; slightly biased, often much lower variance, and
  invariant to adding a constant to the rewards.
* DM:     V = (1/n) Σ_i Σ_a π(a | x_i) r̂(x_i, a) — the direct method, as good as the reward
  model.
* DR:     V = (1/n) Σ_i [Σ_a π(a | x_i) r̂(x_i, a) + w_i (r_i - r̂(x_i, a_i))] — unbiased if
  either the propensities or the reward model is right, lower variance than IPS when r̂ is good.

Intervals are CLT intervals on the per-row terms: estimate ± z · sd(terms) / sqrt(n) with the
terms w_i r_i (IPS), the DR terms (DR) and, for SNIPS, the delta-method influence terms
w_i (r_i - V) / w̄. The DR interval treats the reward model as fixed; its importance-weighted
correction carries the residual uncertainty, so it still covers (see the tests). DM gets a point
estimate only: its uncertainty is the reward model's, which this function does not see, and a
CLT interval on its per-row terms covers the truth far less often than stated (about 10% of the
time for a 95% interval in our simulations). All intervals need a fair number of rows with
non-negligible weight: when the effective sample size (Kish) ESS = (Σ w)² / Σ w² is small or
some importance weight is large (above 1 / ``min_propensity``, i.e. the target relies on a row
the logging policy chose with a tiny propensity), a few rows dominate, the CLT fails and the
result says so in ``warnings``. A tiny propensity alone is no problem: evaluating the logging
policy itself gives every row weight 1.

The value of a policy is a mean reward, so it lies in the reward's range: given
``reward_range`` (e.g. (0, 1) for a click rate), every interval is clipped to it — a CLT
interval of a rare click rate would otherwise reach below 0.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np
from numpy.typing import ArrayLike, NDArray

from experiments.statistics.intervals import Interval, check_level, z_critical

__all__ = [
    "DEFAULT_MIN_ESS_FRACTION",
    "DEFAULT_MIN_PROPENSITY",
    "OffPolicyEstimate",
    "clip_to_range",
    "effective_sample_size",
    "evaluate_policy",
    "importance_weights",
    "large_weight_warning",
]

DEFAULT_MIN_PROPENSITY = 0.01
DEFAULT_MIN_ESS_FRACTION = 0.05
_ROW_SUM_TOLERANCE = 1e-6


class OffPolicyEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """Estimated value (mean reward per decision) of a target policy from logged data.

    Attributes:
        n: logged rows used.
        ips: inverse propensity scoring estimate and CLT interval.
        snips: self-normalised IPS estimate and delta-method interval (NaN when Σw == 0).
        direct: direct-method point estimate (no interval, see the module docstring), present
            when a reward model was given.
        doubly_robust: doubly robust estimate, present when a reward model was given.
        effective_sample_size: (Σ w)² / Σ w² of the importance weights.
        min_propensity: smallest logged propensity among rows the target policy can produce
            (π(a_i | x_i) > 0); the overall minimum when there are none.
        max_weight: largest importance weight.
        mean_weight: mean importance weight; near 1 when the propensities are right.
        low_support: True when some weight is large (> 1/min_propensity) or the ESS is too
            small to trust IPS/DR.
            A mean weight far from 1 only adds a warning: it points at wrong propensities.
        warnings: human-readable reasons, empty when none.
    """

    n: int
    ips: Interval
    snips: Interval
    direct: float | None
    doubly_robust: Interval | None
    effective_sample_size: float
    min_propensity: float
    max_weight: float
    mean_weight: float
    low_support: bool
    warnings: tuple[str, ...]


def _as_inputs(
    rewards: ArrayLike,
    propensities: ArrayLike,
    actions: ArrayLike,
    target: ArrayLike,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.intp], NDArray[np.float64]]:
    r = np.asarray(rewards, dtype=np.float64)
    p = np.asarray(propensities, dtype=np.float64)
    a_raw = np.asarray(actions)
    pi = np.asarray(target, dtype=np.float64)
    if r.ndim != 1 or r.size < 2:
        raise ValueError(f"rewards has shape {r.shape}, must be (n,) with n >= 2")
    n = r.size
    if p.shape != (n,) or a_raw.shape != (n,):
        raise ValueError(
            f"propensities {p.shape} and actions {a_raw.shape} must both have shape ({n},)"
        )
    if pi.ndim != 2 or pi.shape[0] != n:
        raise ValueError(f"target has shape {pi.shape}, must be ({n}, n_actions)")
    if not np.issubdtype(a_raw.dtype, np.integer):
        raise ValueError(f"actions has dtype {a_raw.dtype}, must be integer action indices")
    a = a_raw.astype(np.intp)
    if a.min() < 0 or a.max() >= pi.shape[1]:
        raise ValueError(f"actions must lie in [0, {pi.shape[1]}), got [{a.min()}, {a.max()}]")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards must be finite")
    if not np.all((p > 0.0) & (p <= 1.0)):
        raise ValueError(f"propensities must lie in (0, 1], got min {p.min()}, max {p.max()}")
    if not np.all(pi >= 0.0) or not np.allclose(pi.sum(axis=1), 1.0, atol=_ROW_SUM_TOLERANCE):
        raise ValueError("target rows must be probability vectors (>= 0, summing to 1)")
    return r, p, a, pi


def importance_weights(
    propensities: ArrayLike, actions: ArrayLike, target: ArrayLike
) -> NDArray[np.float64]:
    """w_i = π(a_i | x_i) / p_i, shape (n,), from propensities (n,), actions (n,), target (n, K).

    Raises:
        ValueError: on inconsistent shapes, propensities outside (0, 1] or actions out of range.
    """
    p = np.asarray(propensities, dtype=np.float64)
    r = np.zeros(p.shape, dtype=np.float64)
    _, p, a, pi = _as_inputs(r, p, actions, target)
    return pi[np.arange(p.size), a] / p


def effective_sample_size(weights: ArrayLike) -> float:
    """Kish effective sample size (Σ w)² / Σ w² of weights shape (n,); 0 when all are 0."""
    w = np.asarray(weights, dtype=np.float64)
    sum_sq = float(w @ w)
    return float(w.sum()) ** 2 / sum_sq if sum_sq > 0.0 else 0.0


def clip_to_range(interval: Interval, reward_range: tuple[float, float] | None) -> Interval:
    """The interval's bounds clipped to ``reward_range`` = (lowest, highest reward); as is when
    None or when the bounds are NaN."""
    if reward_range is None:
        return interval
    lo, hi = reward_range
    return Interval(
        estimate=interval.estimate,
        lower=min(max(interval.lower, lo), hi),
        upper=max(min(interval.upper, hi), lo),
        level=interval.level,
    )


def large_weight_warning(max_weight: float, min_p: float, min_propensity: float) -> str | None:
    """The low-support warning when some importance weight exceeds 1 / ``min_propensity``."""
    if max_weight <= 1.0 / min_propensity:
        return None
    return (
        f"importance weights up to {max_weight:.3g} (logged propensities down to {min_p:.3g}, "
        f"weights above {1.0 / min_propensity:.3g}) make IPS/DR intervals unreliable"
    )


def _clt_interval(
    estimate: float, terms: NDArray[np.float64], crit: float, level: float
) -> Interval:
    se = float(np.std(terms, ddof=1)) / math.sqrt(terms.size)
    return Interval(
        estimate=estimate, lower=estimate - crit * se, upper=estimate + crit * se, level=level
    )


def evaluate_policy(
    rewards: ArrayLike,
    propensities: ArrayLike,
    actions: ArrayLike,
    target: ArrayLike,
    *,
    reward_model: ArrayLike | None = None,
    level: float = 0.95,
    min_propensity: float = DEFAULT_MIN_PROPENSITY,
    min_ess_fraction: float = DEFAULT_MIN_ESS_FRACTION,
    reward_range: tuple[float, float] | None = None,
) -> OffPolicyEstimate:
    """IPS, SNIPS and (with a reward model) DM and DR estimates of a target policy's value.

    Args:
        rewards: observed reward per logged row, shape (n,).
        propensities: logging probability of the chosen action per row, shape (n,), in (0, 1].
        actions: chosen action index per row, shape (n,), in [0, n_actions).
        target: target policy probabilities, shape (n, n_actions), rows summing to 1.
        reward_model: predicted reward per row and action, shape (n, n_actions), or None.
        level: interval level.
        min_propensity: warn when an importance weight exceeds 1 / min_propensity.
        min_ess_fraction: warn when ESS < min_ess_fraction · n.
        reward_range: (lowest, highest) possible reward; intervals are clipped to it.

    Raises:
        ValueError: on inconsistent shapes or values outside their ranges.
    """
    check_level(level)
    r, p, a, pi = _as_inputs(rewards, propensities, actions, target)
    n = r.size
    rows = np.arange(n)
    w = pi[rows, a] / p
    crit = z_critical(level)

    ips_terms = w * r
    ips = _clt_interval(float(ips_terms.mean()), ips_terms, crit, level)

    warnings: list[str] = []
    mean_w = float(w.mean())
    if mean_w > 0.0:
        snips_value = float(ips_terms.sum() / w.sum())
        snips = _clt_interval(snips_value, w * (r - snips_value) / mean_w, crit, level)
    else:
        snips = Interval(estimate=math.nan, lower=math.nan, upper=math.nan, level=level)
        warnings.append("the target policy never chose a logged action: SNIPS is undefined")

    direct: float | None = None
    doubly_robust: Interval | None = None
    if reward_model is not None:
        q = np.asarray(reward_model, dtype=np.float64)
        if q.shape != pi.shape or not np.all(np.isfinite(q)):
            raise ValueError(f"reward_model has shape {q.shape}, must be finite {pi.shape}")
        dm_terms = np.einsum("ij,ij->i", pi, q)
        dr_terms = dm_terms + w * (r - q[rows, a])
        direct = float(dm_terms.mean())
        doubly_robust = _clt_interval(float(dr_terms.mean()), dr_terms, crit, level)

    # Only rows the target policy could have produced carry weight; a tiny propensity of an
    # action the target never takes does not hurt its estimate.
    relevant = pi[rows, a] > 0.0
    min_p = float(p[relevant].min()) if relevant.any() else float(p.min())
    return finish_estimate(
        n=n,
        ips=ips,
        snips=snips,
        direct=direct,
        doubly_robust=doubly_robust,
        sum_w=float(w.sum()),
        sum_w_sq=float((w * w).sum()),
        min_p=min_p,
        max_w=float(w.max()),
        warnings=warnings,
        min_propensity=min_propensity,
        min_ess_fraction=min_ess_fraction,
        reward_range=reward_range,
    )


def finish_estimate(
    *,
    n: int,
    ips: Interval,
    snips: Interval,
    direct: float | None,
    doubly_robust: Interval | None,
    sum_w: float,
    sum_w_sq: float,
    min_p: float,
    max_w: float,
    warnings: list[str],
    min_propensity: float,
    min_ess_fraction: float,
    reward_range: tuple[float, float] | None,
) -> OffPolicyEstimate:
    """The estimate with its support diagnostics and warnings, intervals clipped to the reward
    range: one definition for row-level (:func:`evaluate_policy`) and per-cell estimates."""
    ess = sum_w**2 / sum_w_sq if sum_w_sq > 0.0 else 0.0
    mean_w = sum_w / n
    weight_var = max(sum_w_sq - sum_w * sum_w / n, 0.0) / (n - 1)
    weight_se = math.sqrt(weight_var) / math.sqrt(n)
    low_support = False
    if abs(mean_w - 1.0) > max(4.0 * weight_se, 0.05):
        warnings.append(
            f"mean importance weight {mean_w:.3g} is far from 1 (se {weight_se:.2g}): the logged "
            "propensities may be wrong or the target puts mass on actions never logged"
        )
    large = large_weight_warning(max_w, min_p, min_propensity)
    if large is not None:
        low_support = True
        warnings.append(large)
    if ess < min_ess_fraction * n:
        low_support = True
        warnings.append(
            f"effective sample size {ess:.1f} is {ess / n:.1%} of {n} rows "
            f"(< {min_ess_fraction:.1%}): the logged data barely support the target policy"
        )
    return OffPolicyEstimate(
        n=n,
        ips=clip_to_range(ips, reward_range),
        snips=clip_to_range(snips, reward_range),
        direct=direct,
        doubly_robust=(
            clip_to_range(doubly_robust, reward_range) if doubly_robust is not None else None
        ),
        effective_sample_size=ess,
        min_propensity=min_p,
        max_weight=max_w,
        mean_weight=mean_w,
        low_support=low_support,
        warnings=tuple(warnings),
    )
