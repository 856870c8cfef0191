"""Off-policy estimates from per-cell sums, for reports over millions of logged decisions.

`experiments.off_policy.estimators.evaluate_policy` takes one row per logged decision. A report
cannot ship
ten million rows out of ClickHouse, but for the targets a report evaluates — the deployed
(logging) policy, the uniform policy and each "always variant k" — every estimator is a function
of a few sums per *cell* (segment s, logged action a):

    n, Σ1/p, Σ1/p², min p, Σp, Σp², Σr, Σr², Σr/p, Σr/p², Σr²/p², Σpr.

With a context-free target π (a vector over actions) the importance weight of a row in cell
(s, a) is w = π_a / p, so Σw = Σ π_a Σ1/p, Σw² = Σ π_a² Σ1/p², Σwr = Σ π_a Σr/p, and so on; the
doubly robust term c_s + w (r - q_sa) with c_s = Σ_b π_b q_sb has
Σ = n c_s + π_a (Σr/p - q Σ1/p) and Σ² = n c_s² + 2 c_s π_a (Σr/p - q Σ1/p)
+ π_a² (Σr²/p² - 2q Σr/p² + q² Σ1/p²). The logging policy as a target (`logged_policy`: p at the
logged action, (1 - p)/(K - 1) elsewhere) has weight 1 and DR term γ + β p + r with
β = q_a - (Q_s - q_a)/(K - 1), γ = -β, Q_s = Σ_b q_sb. The reward model is
`experiments.off_policy.reward_models.cell_mean_table`'s shrunk cell means, computed from Σr and n.

Every estimate, interval, ESS and warning equals what ``evaluate_policy`` returns on the same rows
(the tests check this to 1e-9); sums of squares are formed in float64, which loses nothing at
rewards of order 1 and weights below 10⁶.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec
import numpy as np
from numpy.typing import ArrayLike, NDArray

from experiments.off_policy.estimators import (
    DEFAULT_MIN_ESS_FRACTION,
    DEFAULT_MIN_PROPENSITY,
    OffPolicyEstimate,
    finish_estimate,
)
from experiments.off_policy.reward_models import DEFAULT_PRIOR_STRENGTH
from experiments.statistics.intervals import Interval, check_level, z_critical

__all__ = [
    "CellMoments",
    "cell_moments",
    "evaluate_constant_target",
    "evaluate_logging_policy",
    "reward_table",
]


class CellMoments(msgspec.Struct, frozen=True, kw_only=True):
    """Sums over the logged decisions of one (segment, action) cell.

    Attributes:
        segment: the segment value ('' when the report has no segment).
        action: logged action index in [0, n_actions).
        n: decisions.
        inv_p, inv_p_sq: Σ1/p and Σ1/p².
        min_p: smallest propensity.
        p, p_sq: Σp and Σp².
        r, r_sq: Σr and Σr².
        r_inv_p, r_inv_p_sq, r_sq_inv_p_sq: Σr/p, Σr/p², Σr²/p².
        r_p: Σpr.
    """

    segment: str
    action: int
    n: int
    inv_p: float
    inv_p_sq: float
    min_p: float
    p: float
    p_sq: float
    r: float
    r_sq: float
    r_inv_p: float
    r_inv_p_sq: float
    r_sq_inv_p_sq: float
    r_p: float


def cell_moments(
    rewards: ArrayLike,
    propensities: ArrayLike,
    actions: ArrayLike,
    segments: Sequence[str] | None = None,
) -> list[CellMoments]:
    """The cell sums of raw logged rows (each shape (n,)), as the report SQL computes them."""
    r = np.asarray(rewards, dtype=np.float64)
    p = np.asarray(propensities, dtype=np.float64)
    a = np.asarray(actions, dtype=np.intp)
    s = np.asarray(["" for _ in range(r.size)] if segments is None else list(segments))
    cells = []
    for seg in sorted(set(s.tolist())):
        for act in sorted(set(a[s == seg].tolist())):
            m = (s == seg) & (a == act)
            rr, pp = r[m], p[m]
            cells.append(
                CellMoments(
                    segment=str(seg),
                    action=int(act),
                    n=int(m.sum()),
                    inv_p=float(np.sum(1 / pp)),
                    inv_p_sq=float(np.sum(1 / pp**2)),
                    min_p=float(pp.min()),
                    p=float(pp.sum()),
                    p_sq=float(pp @ pp),
                    r=float(rr.sum()),
                    r_sq=float(rr @ rr),
                    r_inv_p=float(np.sum(rr / pp)),
                    r_inv_p_sq=float(np.sum(rr / pp**2)),
                    r_sq_inv_p_sq=float(np.sum(rr**2 / pp**2)),
                    r_p=float(rr @ pp),
                )
            )
    return cells


def reward_table(
    cells: Sequence[CellMoments],
    n_actions: int,
    *,
    prior_strength: float = DEFAULT_PRIOR_STRENGTH,
) -> dict[str, NDArray[np.float64]]:
    """Shrunk mean reward per segment and action, as `cell_mean_table` fits it on the rows.

    Returns segment -> array of shape (n_actions,).
    """
    k = prior_strength
    n_total = sum(c.n for c in cells)
    overall = sum(c.r for c in cells) / n_total
    action_n = np.zeros(n_actions)
    action_sum = np.zeros(n_actions)
    for c in cells:
        action_n[c.action] += c.n
        action_sum[c.action] += c.r
    action_mean = np.where(
        action_n + k > 0, (action_sum + k * overall) / np.maximum(action_n + k, 1e-300), overall
    )
    table: dict[str, NDArray[np.float64]] = {}
    for c in cells:
        row = table.setdefault(c.segment, action_mean.copy())
        if c.n + k > 0:
            row[c.action] = (c.r + k * action_mean[c.action]) / (c.n + k)
    return table


def _interval(total: float, total_sq: float, n: int, estimate: float, level: float) -> Interval:
    variance = max(total_sq - total * total / n, 0.0) / (n - 1)
    half = z_critical(level) * math.sqrt(variance / n)
    value = float(estimate)
    return Interval(estimate=value, lower=value - half, upper=value + half, level=level)


def _check(cells: Sequence[CellMoments], n_actions: int, level: float) -> int:
    check_level(level)
    n = sum(c.n for c in cells)
    if n < 2:
        raise ValueError(f"n == {n} logged decisions, need at least 2")
    if any(not 0 <= c.action < n_actions for c in cells):
        raise ValueError(f"cell actions must lie in [0, {n_actions})")
    return n


def evaluate_constant_target(
    cells: Sequence[CellMoments],
    target: ArrayLike,
    *,
    reward_model: dict[str, NDArray[np.float64]] | None = None,
    level: float = 0.95,
    min_propensity: float = DEFAULT_MIN_PROPENSITY,
    min_ess_fraction: float = DEFAULT_MIN_ESS_FRACTION,
    reward_range: tuple[float, float] | None = None,
) -> OffPolicyEstimate:
    """IPS, SNIPS, DM and DR of a context-free target π (shape (n_actions,)) from cell sums.

    Equals ``evaluate_policy`` with the target's row repeated for every logged decision.

    Raises:
        ValueError: on fewer than 2 decisions, a target that is not a probability vector, or
            cells with actions outside it.
    """
    pi = np.asarray(target, dtype=np.float64)
    if pi.ndim != 1 or np.any(pi < 0) or not math.isclose(float(pi.sum()), 1.0, abs_tol=1e-6):
        raise ValueError("target must be a probability vector over actions")
    n = _check(cells, pi.size, level)
    weight = [float(pi[c.action]) for c in cells]
    sum_w = sum(w * c.inv_p for w, c in zip(weight, cells, strict=True))
    sum_w_sq = sum(w * w * c.inv_p_sq for w, c in zip(weight, cells, strict=True))
    sum_wr = sum(w * c.r_inv_p for w, c in zip(weight, cells, strict=True))
    sum_wr_sq = sum(w * w * c.r_sq_inv_p_sq for w, c in zip(weight, cells, strict=True))
    sum_w_sq_r = sum(w * w * c.r_inv_p_sq for w, c in zip(weight, cells, strict=True))
    ips_value = sum_wr / n
    ips = _interval(sum_wr, sum_wr_sq, n, ips_value, level)
    warnings: list[str] = []
    mean_w = sum_w / n
    if mean_w > 0.0:
        v = sum_wr / sum_w
        terms_sq = (sum_wr_sq - 2 * v * sum_w_sq_r + v * v * sum_w_sq) / mean_w**2
        snips = _interval(0.0, terms_sq, n, v, level)
    else:
        snips = Interval(estimate=math.nan, lower=math.nan, upper=math.nan, level=level)
        warnings.append("the target policy never chose a logged action: SNIPS is undefined")
    direct: float | None = None
    doubly_robust: Interval | None = None
    if reward_model is not None:
        dm_total = dr_total = dr_sq = 0.0
        for w, c in zip(weight, cells, strict=True):
            q_row = reward_model[c.segment]
            c_s = float(pi @ q_row)
            q = float(q_row[c.action])
            w_resid = w * (c.r_inv_p - q * c.inv_p)
            resid_sq = c.r_sq_inv_p_sq - 2 * q * c.r_inv_p_sq + q * q * c.inv_p_sq
            dm_total += c.n * c_s
            dr_total += c.n * c_s + w_resid
            dr_sq += c.n * c_s * c_s + 2 * c_s * w_resid + w * w * resid_sq
        direct = dm_total / n
        doubly_robust = _interval(dr_total, dr_sq, n, dr_total / n, level)
    relevant = [c.min_p for w, c in zip(weight, cells, strict=True) if w > 0.0]
    min_p = min(relevant) if relevant else min(c.min_p for c in cells)
    max_w = max(w / c.min_p for w, c in zip(weight, cells, strict=True))
    return finish_estimate(
        n=n,
        ips=ips,
        snips=snips,
        direct=direct,
        doubly_robust=doubly_robust,
        sum_w=sum_w,
        sum_w_sq=sum_w_sq,
        min_p=min_p,
        max_w=max_w,
        warnings=warnings,
        min_propensity=min_propensity,
        min_ess_fraction=min_ess_fraction,
        reward_range=reward_range,
    )


def evaluate_logging_policy(
    cells: Sequence[CellMoments],
    n_actions: int,
    *,
    reward_model: dict[str, NDArray[np.float64]] | None = None,
    level: float = 0.95,
    min_propensity: float = DEFAULT_MIN_PROPENSITY,
    min_ess_fraction: float = DEFAULT_MIN_ESS_FRACTION,
    reward_range: tuple[float, float] | None = None,
) -> OffPolicyEstimate:
    """The deployed (logging) policy's value: ``evaluate_policy`` with `logged_policy` rows.

    IPS and SNIPS are the mean logged reward (every weight is 1); DR adds the reward model's
    prediction under the logging distribution, p at the logged action and (1 - p)/(K - 1)
    elsewhere.

    Raises:
        ValueError: on fewer than 2 decisions or cells with actions outside [0, n_actions).
    """
    n = _check(cells, n_actions, level)
    total_r = sum(c.r for c in cells)
    total_r_sq = sum(c.r_sq for c in cells)
    mean_r = total_r / n
    ips = _interval(total_r, total_r_sq, n, mean_r, level)
    snips = _interval(0.0, total_r_sq - 2 * mean_r * total_r + mean_r**2 * n, n, mean_r, level)
    direct: float | None = None
    doubly_robust: Interval | None = None
    if reward_model is not None:
        dm_total = dr_total = dr_sq = 0.0
        for c in cells:
            q_row = reward_model[c.segment]
            q = float(q_row[c.action])
            others = (float(q_row.sum()) - q) / (n_actions - 1) if n_actions > 1 else 0.0
            beta = q - others if n_actions > 1 else 0.0
            alpha = others if n_actions > 1 else q
            gamma = alpha - q
            dm_total += c.n * alpha + beta * c.p
            dr_total += c.n * gamma + beta * c.p + c.r
            dr_sq += (
                c.n * gamma * gamma
                + beta * beta * c.p_sq
                + c.r_sq
                + 2 * gamma * beta * c.p
                + 2 * gamma * c.r
                + 2 * beta * c.r_p
            )
        direct = dm_total / n
        doubly_robust = _interval(dr_total, dr_sq, n, dr_total / n, level)
    return finish_estimate(
        n=n,
        ips=ips,
        snips=snips,
        direct=direct,
        doubly_robust=doubly_robust,
        sum_w=float(n),
        sum_w_sq=float(n),
        min_p=min(c.min_p for c in cells),
        max_w=1.0,
        warnings=[],
        min_propensity=min_propensity,
        min_ess_fraction=min_ess_fraction,
        reward_range=reward_range,
    )
