"""Offline what-if: progressive replay of a candidate config over simulated logs."""

from __future__ import annotations

import numpy as np
import pytest

from bandits.base import Arm, Candidate, Example
from experiments.off_policy.what_if import progressive_pmfs, what_if
from tailor_contract.policies import FixedConfig, ThompsonConfig

KEYS = ("a", "b", "c")
# True click rates per (segment, variant): the best variant depends on the segment.
RATES = {"x": (0.30, 0.10, 0.05), "y": (0.05, 0.10, 0.30)}
ARMS = tuple(Arm(key=k) for k in KEYS)
CANDIDATES = tuple(Candidate(key=k) for k in KEYS)


def uniform_log(n: int, seed: int) -> list[Example]:
    """Decisions of a uniform logger over the segmented world, in time order."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        segment = "x" if rng.random() < 0.5 else "y"
        chosen = int(rng.integers(len(KEYS)))
        reward = float(rng.random() < RATES[segment][chosen])
        out.append(
            Example(
                context={"seg": segment},
                candidates=CANDIDATES,
                chosen=chosen,
                propensity=1.0 / len(KEYS),
                reward=reward,
            )
        )
    return out


def true_value(pmfs: np.ndarray, examples: list[Example]) -> float:
    """The simulated truth: mean over rows of Σ_a π_i(a | x_i) · rate(x_i, a)."""
    rates = np.array([RATES[str(ex.context["seg"])] for ex in examples])
    return float(np.einsum("ij,ij->i", pmfs, rates).mean())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_contextual_candidate_beats_the_uniform_logger_and_covers_the_truth(seed: int) -> None:
    examples = uniform_log(4000, seed)
    config = ThompsonConfig(segment_by="seg", mc_samples=2000)
    result = what_if(config, ARMS, examples, batch_size=50)
    truth = true_value(progressive_pmfs(config, ARMS, examples, batch_size=50), examples)
    uniform_truth = float(np.mean([np.mean(r) for r in RATES.values()]))

    assert result.n == 4000 and result.policy == "thompson"
    assert result.candidate.snips.estimate > result.deployed.snips.estimate
    assert result.candidate.ips.estimate > result.deployed.ips.estimate
    assert result.difference.lower > 0.0
    assert result.candidate.ips.contains(truth)
    assert result.candidate.snips.contains(truth)
    assert result.candidate.doubly_robust is not None
    assert result.candidate.doubly_robust.contains(truth)
    assert result.deployed.ips.contains(uniform_truth)
    assert truth > uniform_truth + 0.05  # the candidate really is better


def test_progressive_validation_scores_each_batch_before_learning_it() -> None:
    examples = uniform_log(200, 7)
    config = ThompsonConfig(segment_by="seg", mc_samples=2000, min_propensity=0.0)
    pmfs = progressive_pmfs(config, ARMS, examples, batch_size=100)
    # The first batch is scored by an untrained model: uniform, whatever the rewards.
    assert np.allclose(pmfs[:100], 1.0 / 3.0, atol=0.05)
    assert not np.allclose(pmfs[100:], 1.0 / 3.0, atol=0.05)


def test_the_fixed_candidate_equals_the_uniform_logger() -> None:
    examples = uniform_log(500, 4)
    result = what_if(FixedConfig(), ARMS, examples)
    assert result.candidate.ips.estimate == pytest.approx(result.deployed.ips.estimate)
    assert result.difference.estimate == pytest.approx(0.0)


def test_a_config_that_does_not_fit_the_arms_is_refused() -> None:
    with pytest.raises(ValueError, match="min_propensity"):
        what_if(ThompsonConfig(min_propensity=0.5), ARMS, uniform_log(10, 1))
    with pytest.raises(ValueError, match="at least 2"):
        what_if(FixedConfig(), ARMS, uniform_log(1, 1))
