"""Epsilon-greedy: the exact pmf, ties, new arms and convergence."""

from __future__ import annotations

import numpy as np
import pytest

from bandits.base import Arm, Candidate, Example
from bandits.epsilon_greedy import EpsilonGreedyPolicy
from tailor_contract.policies import EpsilonGreedyConfig

ARMS = [Arm(key=k) for k in ("a", "b", "c", "d")]
CANDIDATES = tuple(Candidate(key=a.key) for a in ARMS)


def _example(key: str, reward: float) -> Example:
    index = [c.key for c in CANDIDATES].index(key)
    return Example(context={}, candidates=CANDIDATES, chosen=index, propensity=0.25, reward=reward)


def test_untrained_policy_is_uniform() -> None:
    """Before any reward every arm ties, so the pmf is uniform."""
    policy = EpsilonGreedyPolicy(EpsilonGreedyConfig(epsilon=0.2), ARMS)
    np.testing.assert_allclose(policy.pmf({}, CANDIDATES), [0.25] * 4)


def test_pmf_is_epsilon_over_n_plus_greedy_mass_shared_by_ties() -> None:
    """The best means share 1 - epsilon; every arm gets epsilon / n; revenue-like rewards work."""
    policy = EpsilonGreedyPolicy(EpsilonGreedyConfig(epsilon=0.2), ARMS)
    policy.learn(
        [
            _example("a", 30.0),
            _example("b", 10.0),
            _example("b", 50.0),
            _example("c", 5.0),
            _example("d", 30.0),
        ]
    )
    assert policy.mean("b") == 30.0
    np.testing.assert_allclose(
        policy.pmf({}, CANDIDATES), [0.05 + 0.8 / 3] * 2 + [0.05] + [0.05 + 0.8 / 3]
    )


def test_arm_without_data_is_explored_not_exploited() -> None:
    """An arm never rewarded gets only epsilon / n while others have data."""
    policy = EpsilonGreedyPolicy(EpsilonGreedyConfig(epsilon=0.1), ARMS)
    policy.learn([_example("a", 0.0), _example("b", 0.0), _example("c", 0.0)])
    pmf = policy.pmf({}, CANDIDATES)
    assert pmf[3] == pytest.approx(0.025)
    assert policy.mean("d") is None


@pytest.mark.slow
def test_converges_to_the_best_arm() -> None:
    """Learning in batches of 50 on Bernoulli arms, the best arm (0.5) ends greedy and takes
    > 80% of the last 1,000 decisions at epsilon 0.1."""
    rates = {"a": 0.1, "b": 0.3, "c": 0.5, "d": 0.2}
    policy = EpsilonGreedyPolicy(EpsilonGreedyConfig(epsilon=0.1), ARMS)
    rng = np.random.default_rng(7)
    picks: list[str] = []
    for _ in range(60):
        choices = policy.choose_many([{}] * 50, CANDIDATES, rng)
        policy.learn(
            [
                Example(
                    context={},
                    candidates=CANDIDATES,
                    chosen=c.index,
                    propensity=c.propensity,
                    reward=float(rng.random() < rates[c.key]),
                )
                for c in choices
            ]
        )
        picks += [c.key for c in choices]
    assert policy.pmf({}, CANDIDATES).argmax() == 2
    assert picks[-1000:].count("c") > 800
