"""Off-policy estimates from cell sums equal `evaluate_policy` on the rows they summarise."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from experiments.off_policy.estimators import OffPolicyEstimate, evaluate_policy
from experiments.off_policy.reward_models import cell_mean_rewards, cell_mean_table
from experiments.off_policy.target_policies import constant_policy, logged_policy, uniform_policy
from experiments.reports.cells import (
    CellMoments,
    cell_moments,
    evaluate_constant_target,
    evaluate_logging_policy,
    reward_table,
)

K = 3
Logged = tuple[
    list[CellMoments],
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.intp],
    NDArray[np.float64],
]


def _rows(
    rng: np.random.Generator, n: int, min_p: float = 0.05
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.intp], list[str]]:
    probs = np.clip(rng.dirichlet([2, 2, 2], size=n), min_p, None)
    probs /= probs.sum(axis=1, keepdims=True)
    actions = np.array([rng.choice(K, p=p) for p in probs])
    p = probs[np.arange(n), actions]
    seg = rng.integers(0, 4, n)
    rewards = (rng.random(n) < 0.1 + 0.06 * actions + 0.03 * seg) * rng.uniform(0.5, 3.0, n)
    return rewards, p, actions, [f"s{s}" for s in seg]


def _same(got: OffPolicyEstimate, ref: OffPolicyEstimate) -> None:
    for name in ("ips", "snips", "doubly_robust"):
        g, r = getattr(got, name), getattr(ref, name)
        for part in ("estimate", "lower", "upper"):
            assert getattr(g, part) == pytest.approx(getattr(r, part), rel=1e-9, abs=1e-12)
    assert got.direct == pytest.approx(ref.direct, rel=1e-9)
    assert got.effective_sample_size == pytest.approx(ref.effective_sample_size, rel=1e-9)
    assert got.min_propensity == ref.min_propensity
    assert got.max_weight == pytest.approx(ref.max_weight, rel=1e-12)
    assert got.mean_weight == pytest.approx(ref.mean_weight, rel=1e-12)
    assert (got.low_support, got.warnings) == (ref.low_support, ref.warnings)


@pytest.fixture
def logged() -> Logged:
    """Rows, their cell sums and the rows' reward-model predictions."""
    r, p, a, segs = _rows(np.random.default_rng(3), 4000)
    codes = {s: i for i, s in enumerate(sorted(set(segs)))}
    model = cell_mean_rewards(r, a, K, segments=np.array([codes[s] for s in segs]))
    return cell_moments(r, p, a, segs), r, p, a, model


@pytest.mark.parametrize("target", ["uniform", "always0", "always2"])
def test_constant_targets_equal_evaluate_policy(
    logged: Logged,
    target: str,
) -> None:
    """IPS, SNIPS, DM, DR, ESS and warnings of uniform and always-k targets match the row-level
    estimator to 1e-9."""
    cells, r, p, a, model = logged
    n = r.size
    if target == "uniform":
        rows, vector = uniform_policy(n, K), np.full(K, 1 / K)
    else:
        k = int(target[-1])
        rows, vector = constant_policy(n, K, k), np.eye(K)[k]
    ref = evaluate_policy(r, p, a, rows, reward_model=model)
    _same(evaluate_constant_target(cells, vector, reward_model=reward_table(cells, K)), ref)


def test_logging_policy_equals_evaluate_policy(
    logged: Logged,
) -> None:
    """The deployed policy (`logged_policy` rows) has the same estimates from cell sums."""
    cells, r, p, a, model = logged
    ref = evaluate_policy(r, p, a, logged_policy(a, p, K), reward_model=model)
    _same(evaluate_logging_policy(cells, K, reward_model=reward_table(cells, K)), ref)


def test_reward_table_equals_cell_mean_table() -> None:
    """The shrunk cell means from sums equal `cell_mean_table` fitted on the rows."""
    r, p, a, segs = _rows(np.random.default_rng(5), 600)
    names = sorted(set(segs))
    codes = np.array([names.index(s) for s in segs])
    ref = cell_mean_table(r, a, K, segments=codes)
    table = reward_table(cell_moments(r, p, a, segs), K)
    for i, name in enumerate(names):
        np.testing.assert_allclose(table[name], ref[i], rtol=1e-12)


def test_low_support_warnings_match() -> None:
    """Tiny propensities and a small ESS raise the same warnings as the row-level estimator."""
    rng = np.random.default_rng(9)
    n = 800
    a = rng.integers(0, K, n)
    p = np.where(a == 1, 0.004, 0.5)
    r = rng.random(n)
    segs = ["s"] * n
    ref = evaluate_policy(r, p, a, constant_policy(n, K, 1))
    got = evaluate_constant_target(cell_moments(r, p, a, segs), np.eye(K)[1])
    assert got.low_support and len(got.warnings) >= 2
    assert got.warnings == ref.warnings
    assert got.ips.estimate == pytest.approx(ref.ips.estimate, rel=1e-12)


@pytest.mark.parametrize(
    ("cells", "target", "match"),
    [
        ([], np.full(K, 1 / K), "need at least 2"),
        (cell_moments([1.0, 0.0], [0.5, 0.5], [0, 1]), np.array([0.5, 0.6, 0.0]), "probability"),
        (cell_moments([1.0, 0.0], [0.5, 0.5], [0, 3]), np.full(K, 1 / K), r"\[0, 3\)"),
    ],
)
def test_bad_inputs_are_refused(
    cells: list[CellMoments], target: NDArray[np.float64], match: str
) -> None:
    """Too few decisions, a target that is not a distribution, or actions out of range raise."""
    with pytest.raises(ValueError, match=match):
        evaluate_constant_target(cells, target)


def test_deployed_policy_with_tiny_propensities_has_no_support_warning() -> None:
    """Regression: the low-support warning fired for the deployed policy, whose weights are all
    1, because some logged propensity was below 0.01. Now it fires only for large weights:
    not for the deployed policy, yes for "always the rarely logged action" (weights 250)."""
    rng = np.random.default_rng(10)
    n = 4_000
    p = np.where(rng.random(n) < 0.5, 0.004, 0.6)
    a = np.where(p == 0.004, 1, rng.integers(0, K, n))
    r = rng.binomial(1, 0.1, n).astype(float)
    cells = cell_moments(r, p, a, ["s"] * n)
    deployed = evaluate_logging_policy(cells, K)
    assert deployed.max_weight == 1.0
    assert not deployed.low_support and deployed.warnings == ()
    row_level = evaluate_policy(r, p, a, logged_policy(a, p, K))
    assert not row_level.low_support and row_level.warnings == ()
    always_rare = evaluate_constant_target(cells, np.eye(K)[1])
    assert always_rare.low_support
    assert any("importance weights up to 250" in w for w in always_rare.warnings)


def test_click_rate_intervals_stay_within_the_reward_range() -> None:
    """Regression: a rare click rate's IPS/SNIPS/DR intervals reached below 0. With the reward
    range (0, 1) every interval lies within it, from cell sums and from rows alike; without it
    the CLT interval does go below 0 on these data."""
    rng = np.random.default_rng(11)
    n = 300
    a = rng.integers(0, K, n)
    p = np.full(n, 1 / K)
    r = (rng.random(n) < 0.01).astype(float)
    r[:2] = 1.0
    cells = cell_moments(r, p, a, ["s"] * n)
    model = reward_table(cells, K)
    unclipped = evaluate_constant_target(cells, np.eye(K)[0], reward_model=model)
    assert unclipped.ips.lower < 0.0
    for estimate in (
        evaluate_constant_target(cells, np.eye(K)[0], reward_model=model, reward_range=(0, 1)),
        evaluate_constant_target(cells, np.full(K, 1 / K), reward_model=model, reward_range=(0, 1)),
        evaluate_logging_policy(cells, K, reward_model=model, reward_range=(0, 1)),
        evaluate_policy(r, p, a, constant_policy(n, K, 0), reward_range=(0.0, 1.0)),
    ):
        intervals = [estimate.ips, estimate.snips]
        if estimate.doubly_robust is not None:
            intervals.append(estimate.doubly_robust)
        for interval in intervals:
            assert 0.0 <= interval.lower <= interval.upper <= 1.0
