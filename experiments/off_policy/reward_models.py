"""A simple reward model for the direct method and doubly robust estimation.

Per-action, per-segment-cell means with hierarchical shrinkage: segment cells (e.g. device ×
country, coded as integers by the caller) are often small, so each cell mean is pulled toward its
action's mean, and each action's mean toward the overall mean, by ``prior_strength``
pseudo-observations:

    r̄      = mean of all logged rewards
    r̂(a)    = (Σ_{i: a_i = a} r_i + k r̄) / (n_a + k)
    r̂(s, a) = (Σ_{i: s_i = s, a_i = a} r_i + k r̂(a)) / (n_{s,a} + k)

so a cell never seen falls back to its action's mean, and an action never logged to r̄.
Shrinkage trades variance for bias in sparse cells — the direct method inherits that bias, the
doubly robust estimate corrects it through the propensities. The model is fitted on the logged
rows themselves; within a cell it ignores how the logging policy
chose, so it can be biased where the policy used finer context than the cells — DR stays
consistent then because its importance-weighted correction uses the propensities. A ridge model
on numeric features, or cross-fitting, would be the next refinements and are not provided here.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["cell_mean_rewards", "cell_mean_table"]

DEFAULT_PRIOR_STRENGTH = 10.0


def cell_mean_table(
    rewards: ArrayLike,
    actions: ArrayLike,
    n_actions: int,
    *,
    segments: ArrayLike | None = None,
    n_segments: int | None = None,
    prior_strength: float = DEFAULT_PRIOR_STRENGTH,
) -> NDArray[np.float64]:
    """Shrunk mean reward per (segment, action), shape (n_segments, n_actions).

    Args:
        rewards: logged rewards, shape (n,).
        actions: logged action indices, shape (n,), in [0, n_actions).
        n_actions: number of actions.
        segments: segment cell index per row, shape (n,), in [0, n_segments); None means one
            segment (per-action means only).
        n_segments: number of segment cells; defaults to max(segments) + 1.
        prior_strength: k, pseudo-observations pulling a cell toward its parent mean (>= 0).

    Raises:
        ValueError: on inconsistent shapes, indices out of range or a negative prior strength.
    """
    r = np.asarray(rewards, dtype=np.float64)
    a = np.asarray(actions)
    if r.ndim != 1 or r.size == 0 or a.shape != r.shape:
        raise ValueError(f"rewards {r.shape} and actions {a.shape} must be equal non-empty 1-D")
    if not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() >= n_actions:
        raise ValueError(f"actions must be integers in [0, {n_actions})")
    if prior_strength < 0:
        raise ValueError(f"prior_strength == {prior_strength}, must be >= 0")
    if segments is None:
        s = np.zeros(r.size, dtype=np.intp)
        n_cells = 1
    else:
        s = np.asarray(segments)
        if s.shape != r.shape or not np.issubdtype(s.dtype, np.integer) or s.min() < 0:
            raise ValueError(f"segments must be non-negative integers of shape {r.shape}")
        n_cells = int(s.max()) + 1 if n_segments is None else n_segments
        if s.max() >= n_cells:
            raise ValueError(f"segments must lie in [0, {n_cells})")
    k = prior_strength
    overall = float(r.mean())
    action_n = np.bincount(a, minlength=n_actions).astype(np.float64)
    action_sum = np.bincount(a, weights=r, minlength=n_actions)
    action_mean = (action_sum + k * overall) / np.maximum(action_n + k, 1e-300)
    # Actions never logged with k == 0 would divide 0 by ~0: fall back to the overall mean.
    action_mean = np.where(action_n + k > 0, action_mean, overall)
    cell = s * n_actions + a
    cell_n = np.bincount(cell, minlength=n_cells * n_actions).reshape(n_cells, n_actions)
    cell_sum = np.bincount(cell, weights=r, minlength=n_cells * n_actions).reshape(
        n_cells, n_actions
    )
    denominator = cell_n + k
    table = np.where(
        denominator > 0,
        (cell_sum + k * action_mean) / np.maximum(denominator, 1e-300),
        action_mean,
    )
    return np.asarray(table, dtype=np.float64)


def cell_mean_rewards(
    rewards: ArrayLike,
    actions: ArrayLike,
    n_actions: int,
    *,
    segments: ArrayLike | None = None,
    prior_strength: float = DEFAULT_PRIOR_STRENGTH,
) -> NDArray[np.float64]:
    """Reward-model predictions r̂(x_i, a) for every logged row and action, shape (n, n_actions).

    Fits `cell_mean_table` on the rows and looks each row's segment up in it.

    Raises:
        ValueError: as `cell_mean_table`.
    """
    table = cell_mean_table(
        rewards, actions, n_actions, segments=segments, prior_strength=prior_strength
    )
    if segments is None:
        return np.repeat(table, np.asarray(rewards).size, axis=0)
    return np.asarray(table[np.asarray(segments)], dtype=np.float64)
