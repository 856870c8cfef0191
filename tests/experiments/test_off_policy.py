"""Off-policy evaluation: estimators against hand loops, coverage on a known bandit, diagnostics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from experiments.off_policy.estimators import (
    effective_sample_size,
    evaluate_policy,
    importance_weights,
)
from experiments.off_policy.reward_models import cell_mean_rewards, cell_mean_table
from experiments.off_policy.target_policies import (
    constant_policy,
    epsilon_greedy_policy,
    greedy_policy,
    logged_policy,
    uniform_policy,
)

# A synthetic contextual bandit: 4 segments, 3 actions, Bernoulli rewards.
SEGMENT_SHARE = np.array([0.4, 0.3, 0.2, 0.1])
TRUE_REWARD = np.array(
    [
        [0.10, 0.15, 0.05],
        [0.20, 0.10, 0.12],
        [0.05, 0.08, 0.20],
        [0.30, 0.10, 0.15],
    ]
)
LOGGING = np.array(
    [
        [0.6, 0.3, 0.1],
        [0.2, 0.5, 0.3],
        [0.34, 0.33, 0.33],
        [0.1, 0.2, 0.7],
    ]
)


def _log_bandit(
    rng: np.random.Generator, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Segments, actions, propensities and rewards of logged rows, all of ``shape``."""
    segments = rng.choice(4, size=shape, p=SEGMENT_SHARE)
    cumulative = np.cumsum(LOGGING, axis=1)[segments]
    actions = (rng.uniform(size=shape)[..., None] > cumulative).sum(axis=-1)
    propensities = LOGGING[segments, actions]
    rewards = rng.binomial(1, TRUE_REWARD[segments, actions]).astype(np.float64)
    return segments, actions, propensities, rewards


def _targets(segments: np.ndarray) -> dict[str, tuple[np.ndarray, float]]:
    """Target matrices for one dataset with each policy's exact value."""
    n = segments.size
    best = np.argmax(TRUE_REWARD, axis=1)
    per_segment = {
        "uniform": np.full((4, 3), 1 / 3),
        "always_0": np.eye(3)[[0, 0, 0, 0]],
        "always_2": np.eye(3)[[2, 2, 2, 2]],
        "best": np.eye(3)[best],
        "logged": LOGGING,
    }
    return {
        name: (table[segments], float(SEGMENT_SHARE @ (table * TRUE_REWARD).sum(axis=1)))
        for name, table in per_segment.items()
    } | {"uniform_helper": (uniform_policy(n, 3), float(SEGMENT_SHARE @ TRUE_REWARD.mean(1)))}


def test_estimators_match_hand_loops() -> None:
    """IPS, SNIPS, DM, DR, the CLT intervals and ESS equal explicit per-row loops."""
    rng = np.random.default_rng(40)
    _, actions, propensities, rewards = _log_bandit(rng, (60,))
    target = epsilon_greedy_policy(rng.normal(size=(60, 3)), 0.3)
    model = rng.uniform(0, 0.3, size=(60, 3))
    result = evaluate_policy(rewards, propensities, actions, target, reward_model=model)

    w, ips_terms, dr_terms, dm_terms = [], [], [], []
    for i in range(60):
        weight = target[i][actions[i]] / propensities[i]
        direct = sum(target[i][a] * model[i][a] for a in range(3))
        w.append(weight)
        ips_terms.append(weight * rewards[i])
        dm_terms.append(direct)
        dr_terms.append(direct + weight * (rewards[i] - model[i][actions[i]]))
    z = stats.norm.ppf(0.975)

    def half_width(terms: list[float]) -> float:
        mean = sum(terms) / len(terms)
        var = sum((t - mean) ** 2 for t in terms) / (len(terms) - 1)
        return z * math.sqrt(var / len(terms))

    snips = sum(ips_terms) / sum(w)
    mean_w = sum(w) / 60
    snips_terms = [w[i] * (rewards[i] - snips) / mean_w for i in range(60)]
    assert result.ips.estimate == pytest.approx(sum(ips_terms) / 60, rel=1e-12)
    assert result.ips.upper - result.ips.estimate == pytest.approx(half_width(ips_terms))
    assert result.snips.estimate == pytest.approx(snips, rel=1e-12)
    assert result.snips.upper - result.snips.estimate == pytest.approx(half_width(snips_terms))
    assert result.direct is not None
    assert result.direct == pytest.approx(sum(dm_terms) / 60, rel=1e-12)
    assert result.doubly_robust is not None
    assert result.doubly_robust.estimate == pytest.approx(sum(dr_terms) / 60, rel=1e-12)
    assert result.doubly_robust.upper - result.doubly_robust.estimate == pytest.approx(
        half_width(dr_terms)
    )
    assert result.effective_sample_size == pytest.approx(
        sum(w) ** 2 / sum(x * x for x in w), rel=1e-12
    )
    assert result.max_weight == pytest.approx(max(w))
    assert importance_weights(propensities, actions, target) == pytest.approx(np.array(w))


@pytest.mark.slow
def test_intervals_cover_known_policy_values_on_a_synthetic_bandit() -> None:
    """Over 300 logged datasets of 3,000 rows, IPS, SNIPS and DR 95% intervals cover each target
    policy's exact value 90–99% of the time, and their means sit within 4 SE of it."""
    rng = np.random.default_rng(41)
    replications, n = 300, 3_000
    segments, actions, propensities, rewards = _log_bandit(rng, (replications, n))
    names = list(_targets(segments[0]))
    covered = {(name, est): 0 for name in names for est in ("ips", "snips", "dr")}
    estimates: dict[tuple[str, str], list[float]] = {key: [] for key in covered}
    truths: dict[str, float] = {}
    for r in range(replications):
        model = cell_mean_rewards(rewards[r], actions[r], 3, segments=segments[r])
        for name, (target, truth) in _targets(segments[r]).items():
            truths[name] = truth
            result = evaluate_policy(
                rewards[r], propensities[r], actions[r], target, reward_model=model
            )
            assert result.doubly_robust is not None
            for est, interval in (
                ("ips", result.ips),
                ("snips", result.snips),
                ("dr", result.doubly_robust),
            ):
                covered[(name, est)] += interval.contains(truth)
                estimates[(name, est)].append(interval.estimate)
    for (name, est), hits in covered.items():
        assert 0.90 <= hits / replications <= 0.99, (name, est, hits / replications)
        values = np.array(estimates[(name, est)])
        se_of_mean = values.std(ddof=1) / math.sqrt(replications)
        assert abs(values.mean() - truths[name]) < 4 * se_of_mean + 1e-12, (name, est)


def test_dr_stays_unbiased_with_a_wrong_reward_model() -> None:
    """With a reward model that is plain wrong (0.5 everywhere), DM is off by > 0.3 while DR,
    corrected by the right propensities, averages within 4 SE of the truth over 200 datasets."""
    rng = np.random.default_rng(48)
    segments, actions, propensities, rewards = _log_bandit(rng, (200, 2_000))
    target_table = np.eye(3)[np.argmax(TRUE_REWARD, axis=1)]
    truth = float(SEGMENT_SHARE @ (target_table * TRUE_REWARD).sum(axis=1))
    wrong_model = np.full((2_000, 3), 0.5)
    direct, doubly_robust = [], []
    for s, a, p, r in zip(segments, actions, propensities, rewards, strict=True):
        result = evaluate_policy(r, p, a, target_table[s], reward_model=wrong_model)
        assert result.direct is not None and result.doubly_robust is not None
        direct.append(result.direct)
        doubly_robust.append(result.doubly_robust.estimate)
    dr = np.array(doubly_robust)
    assert abs(np.mean(direct) - truth) > 0.3
    assert abs(dr.mean() - truth) < 4 * dr.std(ddof=1) / math.sqrt(dr.size)


def test_dr_with_a_good_reward_model_beats_ips_variance() -> None:
    """With rewards offset by 5 and the true reward table as model, DR's interval is under half
    as wide as IPS's (the weights no longer multiply the offset)."""
    rng = np.random.default_rng(42)
    segments, actions, propensities, rewards = _log_bandit(rng, (20_000,))
    target = constant_policy(20_000, 3, 2)
    result = evaluate_policy(
        rewards + 5.0, propensities, actions, target, reward_model=TRUE_REWARD[segments] + 5.0
    )
    assert result.doubly_robust is not None
    assert result.doubly_robust.width < 0.5 * result.ips.width


def test_logged_policy_reproduces_the_on_policy_mean() -> None:
    """Evaluating the logger itself gives all weights 1, ESS = n and IPS = SNIPS = mean reward."""
    rng = np.random.default_rng(43)
    _, actions, propensities, rewards = _log_bandit(rng, (5_000,))
    target = logged_policy(actions, propensities, 3)
    result = evaluate_policy(rewards, propensities, actions, target)
    assert result.ips.estimate == pytest.approx(rewards.mean(), rel=1e-12)
    assert result.snips.estimate == pytest.approx(rewards.mean(), rel=1e-12)
    assert result.effective_sample_size == pytest.approx(5_000)
    assert result.mean_weight == pytest.approx(1.0)
    assert result.direct is None and result.doubly_robust is None
    assert not result.low_support and result.warnings == ()
    assert target.sum(axis=1) == pytest.approx(np.ones(5_000))


def test_logged_policy_accepts_the_full_logged_distribution() -> None:
    """Full logged probabilities are returned as given when they agree with the propensities."""
    segments = np.array([0, 1, 3])
    actions = np.array([0, 1, 2])
    full = LOGGING[segments]
    assert logged_policy(actions, full[[0, 1, 2], actions], 3, action_probabilities=full) == (
        pytest.approx(full)
    )
    with pytest.raises(ValueError, match="disagree"):
        logged_policy(actions, np.array([0.5, 0.5, 0.5]), 3, action_probabilities=full)


def test_uniform_logging_and_target_has_full_effective_sample() -> None:
    """Uniform logging evaluated for the uniform policy: weights 1, ESS n, no warning."""
    rng = np.random.default_rng(44)
    actions = rng.integers(0, 4, 1_000)
    result = evaluate_policy(
        rng.normal(size=1_000), np.full(1_000, 0.25), actions, uniform_policy(1_000, 4)
    )
    assert result.effective_sample_size == pytest.approx(1_000)
    assert not result.low_support


def test_rarely_logged_action_triggers_low_support_warnings() -> None:
    """A target that always takes an action logged with p = 0.005 is flagged on both counts."""
    rng = np.random.default_rng(45)
    n = 10_000
    probabilities = np.array([0.995, 0.005])
    actions = rng.choice(2, size=n, p=probabilities)
    result = evaluate_policy(
        rng.binomial(1, 0.1, n).astype(float),
        probabilities[actions],
        actions,
        constant_policy(n, 2, 1),
    )
    assert result.low_support
    assert result.min_propensity == pytest.approx(0.005)
    assert result.effective_sample_size < 0.05 * n
    assert any("importance weights up to 200" in w for w in result.warnings)
    assert any("effective sample size" in w for w in result.warnings)


def test_tiny_propensity_of_an_action_the_target_never_takes_is_harmless() -> None:
    """The propensity check looks only at rows the target policy can produce."""
    rng = np.random.default_rng(46)
    probabilities = np.array([0.995, 0.005])
    actions = rng.choice(2, size=10_000, p=probabilities)
    result = evaluate_policy(
        rng.normal(size=10_000), probabilities[actions], actions, constant_policy(10_000, 2, 0)
    )
    assert result.min_propensity == pytest.approx(0.995)
    assert not result.low_support


def test_wrong_propensities_are_called_out() -> None:
    """Propensities logged 3× too high make the mean weight ≈ 1/3 and raise a warning."""
    rng = np.random.default_rng(47)
    actions = rng.integers(0, 3, 3_000)
    result = evaluate_policy(
        rng.normal(size=3_000), np.full(3_000, 1.0), actions, uniform_policy(3_000, 3)
    )
    assert result.mean_weight == pytest.approx(1 / 3)
    assert any("far from 1" in w for w in result.warnings)


def test_effective_sample_size_edge_cases() -> None:
    """Equal weights give n, one non-zero weight gives 1, all-zero weights give 0."""
    assert effective_sample_size(np.full(7, 2.5)) == pytest.approx(7)
    assert effective_sample_size(np.array([0, 0, 3.0])) == pytest.approx(1)
    assert effective_sample_size(np.zeros(4)) == 0.0


def test_cell_mean_table_matches_hand_shrinkage() -> None:
    """Cell means shrink toward action means, those toward the overall mean, by k pseudo-rows."""
    rewards = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 5.0])
    actions = np.array([0, 0, 1, 1, 1, 0])
    segments = np.array([0, 0, 0, 1, 1, 1])
    k = 2.0
    table = cell_mean_table(rewards, actions, 3, segments=segments, prior_strength=k)
    overall = rewards.mean()
    action_0 = (1 + 0 + 5 + k * overall) / (3 + k)
    action_1 = (1 + 1 + 0 + k * overall) / (3 + k)
    action_2 = overall  # never logged: only the prior
    assert table.shape == (2, 3)
    assert table[0, 0] == pytest.approx((1 + 0 + k * action_0) / (2 + k))
    assert table[1, 1] == pytest.approx((1 + 0 + k * action_1) / (2 + k))
    assert table[0, 2] == pytest.approx(action_2)
    predictions = cell_mean_rewards(rewards, actions, 3, segments=segments, prior_strength=k)
    assert predictions == pytest.approx(table[segments])
    unsegmented = cell_mean_rewards(rewards, actions, 3, prior_strength=0.0)
    assert unsegmented[0] == pytest.approx([2.0, 2 / 3, overall])


def test_greedy_policy_breaks_ties_to_the_first_action() -> None:
    """Greedy rows are one-hot on the first maximal score; epsilon spreads ε evenly."""
    scores = np.array([[1.0, 3.0, 3.0], [5.0, 0.0, 1.0]])
    assert greedy_policy(scores) == pytest.approx(np.array([[0, 1, 0], [1, 0, 0]]))
    assert epsilon_greedy_policy(scores, 0.3)[0] == pytest.approx([0.1, 0.8, 0.1])


_N = 4


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"rewards": np.zeros(3)}, "must both have shape"),
        ({"rewards": np.zeros(1)}, "n >= 2"),
        ({"propensities": np.array([0.5, 0.0, 0.5, 0.5])}, r"propensities must lie in \(0, 1\]"),
        ({"propensities": np.array([0.5, 1.5, 0.5, 0.5])}, r"propensities must lie in \(0, 1\]"),
        ({"actions": np.array([0, 1, 2, 3])}, r"actions must lie in \[0, 3\)"),
        ({"actions": np.array([0.0, 1.0, 2.0, 1.0])}, "integer action indices"),
        ({"target": np.full((_N, 3), 0.5)}, "probability vectors"),
        ({"target": np.full((_N + 1, 3), 1 / 3)}, "must be"),
        ({"rewards": np.array([0.0, np.nan, 1.0, 0.0])}, "finite"),
        ({"reward_model": np.zeros((_N, 2))}, "reward_model has shape"),
        ({"level": 0.0}, "level == 0.0"),
    ],
)
def test_evaluate_policy_rejects_bad_inputs(overrides: dict[str, object], match: str) -> None:
    """Mismatched shapes, impossible propensities or actions and bad targets are refused."""
    arguments: dict[str, object] = {
        "rewards": np.array([1.0, 0.0, 1.0, 0.0]),
        "propensities": np.full(_N, 0.5),
        "actions": np.array([0, 1, 2, 1]),
        "target": uniform_policy(_N, 3),
    } | overrides
    with pytest.raises(ValueError, match=match):
        evaluate_policy(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: constant_policy(3, 2, 2), r"action == 2, must be in \[0, 2\)"),
        (lambda: uniform_policy(0, 2), "n >= 1"),
        (lambda: epsilon_greedy_policy(np.zeros((2, 2)), 1.5), "epsilon == 1.5"),
        (lambda: greedy_policy(np.zeros(3)), "must be"),
        (lambda: logged_policy(np.array([0, 3]), np.array([0.5, 0.5]), 3), "actions must lie"),
        (lambda: logged_policy(np.array([0, 1]), np.array([0.0, 0.5]), 3), "propensities"),
        (lambda: cell_mean_table(np.zeros(3), np.array([0, 1, 5]), 3), "actions must be"),
        (lambda: cell_mean_table(np.zeros(2), np.array([0, 1]), 2, prior_strength=-1), "prior"),
        (
            lambda: cell_mean_table(np.zeros(2), np.array([0, 1]), 2, segments=np.array([0, -1])),
            "segments",
        ),
    ],
)
def test_policy_and_model_helpers_reject_bad_inputs(call: object, match: str) -> None:
    """Helpers refuse out-of-range actions, shapes, epsilons and prior strengths."""
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]
