"""Target-policy matrices for off-policy evaluation.

`experiments.off_policy.estimators` takes a target policy as its action probabilities on every
logged row,
an array of shape (n, n_actions) whose rows sum to 1. These helpers build the usual ones: the
uniform split, "always action k", the logging policy itself, and greedy / epsilon-greedy over a
score matrix (e.g. a reward model's predictions).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "constant_policy",
    "epsilon_greedy_policy",
    "greedy_policy",
    "logged_policy",
    "uniform_policy",
]


def _check_shape(n: int, n_actions: int) -> None:
    if n < 1 or n_actions < 1:
        raise ValueError(f"shape ({n}, {n_actions}) must have n >= 1 and n_actions >= 1")


def uniform_policy(n: int, n_actions: int) -> NDArray[np.float64]:
    """Every action with probability 1 / n_actions on every row; shape (n, n_actions)."""
    _check_shape(n, n_actions)
    return np.full((n, n_actions), 1.0 / n_actions)


def constant_policy(n: int, n_actions: int, action: int) -> NDArray[np.float64]:
    """Always ``action``: one-hot rows, shape (n, n_actions).

    Raises:
        ValueError: when action is outside [0, n_actions).
    """
    _check_shape(n, n_actions)
    if not 0 <= action < n_actions:
        raise ValueError(f"action == {action}, must be in [0, {n_actions})")
    pi = np.zeros((n, n_actions))
    pi[:, action] = 1.0
    return pi


def logged_policy(
    actions: ArrayLike,
    propensities: ArrayLike,
    n_actions: int,
    *,
    action_probabilities: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """The logging policy itself as a target, shape (n, n_actions).

    When the logger recorded its full distribution (``action_probabilities``, shape
    (n, n_actions)), that is returned as is after checks. Otherwise row i has the logged
    propensity p_i at the chosen action and (1 - p_i) spread evenly over the other actions —
    exact for IPS/SNIPS (which read only the chosen action's probability; all weights are 1, so
    both equal the mean logged reward) but an approximation in the direct term of DM/DR.

    Raises:
        ValueError: on inconsistent shapes, actions out of range, or rows that are not
            probability vectors.
    """
    a = np.asarray(actions)
    p = np.asarray(propensities, dtype=np.float64)
    if a.ndim != 1 or p.shape != a.shape:
        raise ValueError(f"actions {a.shape} and propensities {p.shape} must be equal 1-D shapes")
    _check_shape(a.size, n_actions)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"actions has dtype {a.dtype}, must be integer action indices")
    if a.min() < 0 or a.max() >= n_actions:
        raise ValueError(f"actions must lie in [0, {n_actions})")
    if not np.all((p > 0.0) & (p <= 1.0)):
        raise ValueError("propensities must lie in (0, 1]")
    rows = np.arange(a.size)
    if action_probabilities is not None:
        full = np.array(action_probabilities, dtype=np.float64)
        if full.shape != (a.size, n_actions):
            raise ValueError(
                f"action_probabilities has shape {full.shape}, need {(a.size, n_actions)}"
            )
        if not np.all(full >= 0.0) or not np.allclose(full.sum(axis=1), 1.0, atol=1e-6):
            raise ValueError("action_probabilities rows must be probability vectors")
        if not np.allclose(full[rows, a], p, atol=1e-6):
            raise ValueError("action_probabilities disagree with the logged propensities")
        return full
    if n_actions == 1:
        return np.ones((a.size, 1))
    pi = np.repeat(((1.0 - p) / (n_actions - 1))[:, None], n_actions, axis=1)
    pi[rows, a] = p
    return pi


def greedy_policy(scores: ArrayLike) -> NDArray[np.float64]:
    """One-hot on each row's highest score (first on ties); scores and result (n, n_actions)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores has shape {s.shape}, must be (n, n_actions)")
    _check_shape(*s.shape)
    pi = np.zeros_like(s)
    pi[np.arange(s.shape[0]), np.argmax(s, axis=1)] = 1.0
    return pi


def epsilon_greedy_policy(scores: ArrayLike, epsilon: float) -> NDArray[np.float64]:
    """(1 - ε) on each row's best action plus ε / n_actions on every action; (n, n_actions).

    Raises:
        ValueError: when epsilon is outside [0, 1].
    """
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon == {epsilon}, must be in [0, 1]")
    greedy = greedy_policy(scores)
    return np.asarray((1.0 - epsilon) * greedy + epsilon / greedy.shape[1], dtype=np.float64)
