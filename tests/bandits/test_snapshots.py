"""Snapshots of every policy kind restore exactly through build_policy."""

from __future__ import annotations

import numpy as np
import pytest

from bandits.base import Arm, Candidate, Context, Example, SnapshotError
from bandits.registry import build_policy
from tailor_contract.policies import (
    EpsilonGreedyConfig,
    FixedConfig,
    PolicyConfig,
    ThompsonConfig,
    VWCBConfig,
)

ARMS = [Arm(key="control", weight=2.0), Arm(key="new", weight=1.0), Arm(key="bold")]
CANDIDATES = tuple(Candidate(key=a.key, features={"rank": i}) for i, a in enumerate(ARMS))
CONTEXTS: list[Context] = [{"tier": t, "score": s} for t in ("gold", "free") for s in (0.1, 2.5)]
CONFIGS: list[PolicyConfig] = [
    FixedConfig(),
    ThompsonConfig(segment_by="tier", min_share=0.05),
    EpsilonGreedyConfig(epsilon=0.2),
    # SquareCB's pmf moves with every score (and its example counter), so equal pmfs after
    # further learning mean equal models; VW's reporting counters are not compared.
    VWCBConfig(exploration="squarecb"),
]


def _examples(n: int, seed: int) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        context = CONTEXTS[int(rng.integers(len(CONTEXTS)))]
        chosen = int(rng.integers(len(ARMS)))
        reward = float(
            rng.random() < (0.6 if (chosen == 2) == (context["tier"] == "gold") else 0.2)
        )
        out.append(
            Example(
                context=context,
                candidates=CANDIDATES,
                chosen=chosen,
                propensity=1 / 3,
                reward=reward,
            )
        )
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_round_trip_preserves_predictions_and_learning(config: PolicyConfig) -> None:
    """Restored policies give equal pmfs, carry the new version, and keep learning identically."""
    policy = build_policy(config, ARMS, version="v1")
    policy.learn(_examples(400, seed=1))
    restored = build_policy(config, ARMS, snapshot=policy.snapshot(), version="v2")
    assert (policy.version, restored.version) == ("v1", "v2")
    assert restored.name == policy.name
    for context in CONTEXTS:
        np.testing.assert_array_equal(
            restored.pmf(context, CANDIDATES), policy.pmf(context, CANDIDATES)
        )
    more = _examples(100, seed=2)
    policy.learn(more)
    restored.learn(more)
    for context in CONTEXTS:
        np.testing.assert_array_equal(
            restored.pmf(context, CANDIDATES), policy.pmf(context, CANDIDATES)
        )
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    assert [c.index for c in restored.choose_many(CONTEXTS * 10, CANDIDATES, rng_a)] == [
        c.index for c in policy.choose_many(CONTEXTS * 10, CANDIDATES, rng_b)
    ]


@pytest.mark.parametrize("source", CONFIGS, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("target", CONFIGS, ids=lambda c: type(c).__name__)
def test_snapshot_of_another_kind_is_refused(source: PolicyConfig, target: PolicyConfig) -> None:
    """A snapshot restores only into a policy of its own kind."""
    snapshot = build_policy(source, ARMS).snapshot()
    if type(source) is type(target):
        assert build_policy(target, ARMS, snapshot=snapshot).name == build_policy(source, ARMS).name
    else:
        with pytest.raises(SnapshotError, match="snapshot"):
            build_policy(target, ARMS, snapshot=snapshot)


def test_new_arm_after_snapshot_starts_from_the_prior() -> None:
    """Thompson statistics are keyed by arm, so adding a variant keeps the others' posteriors."""
    config = ThompsonConfig()
    policy = build_policy(config, ARMS)
    policy.learn(_examples(300, seed=3))
    grown = build_policy(config, [*ARMS, Arm(key="extra")], snapshot=policy.snapshot())
    candidates = (*CANDIDATES, Candidate(key="extra"))
    assert grown.pmf({}, candidates).shape == (4,)
    np.testing.assert_array_equal(grown.pmf({}, CANDIDATES), policy.pmf({}, CANDIDATES))
