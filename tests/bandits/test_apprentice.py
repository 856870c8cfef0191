"""Apprentice mode: serve the split while learning; take over automatically or by an admin."""

from __future__ import annotations

import numpy as np

from bandits.apprentice import ApprenticePolicy, take_over
from bandits.base import Arm, Candidate, Example
from bandits.registry import build_policy
from tailor_contract.policies import Apprentice, ThompsonConfig

KEYS = ("a", "b", "c")
# The split serves "b" alone (the default variant); the best variant depends on the segment.
ARMS = (Arm(key="a", weight=0.0), Arm(key="b", weight=1.0), Arm(key="c", weight=0.0))
CANDIDATES = tuple(Candidate(key=k) for k in KEYS)
SEGMENTED = {"x": (0.30, 0.10, 0.05), "y": (0.05, 0.10, 0.30)}
B_IS_BEST = {"x": (0.05, 0.20, 0.05), "y": (0.05, 0.20, 0.05)}


def run(
    takeover: str, world: dict[str, tuple[float, ...]], n: int, seed: int = 0
) -> tuple[ApprenticePolicy, list[str]]:
    """Serve and learn ``n`` decisions in batches of 100, rebuilding from the snapshot after
    each batch as the workers do; returns the final policy and the name logged per decision."""
    config = ThompsonConfig(
        segment_by="seg",
        mc_samples=2000,
        apprentice=Apprentice(takeover=takeover, min_decisions=500),  # type: ignore[arg-type]
    )
    rng = np.random.default_rng(seed)
    learner = build_policy(config, ARMS)
    names: list[str] = []
    for _ in range(n // 100):
        serving = build_policy(config, ARMS, snapshot=learner.snapshot())
        batch = []
        for _ in range(100):
            segment = "x" if rng.random() < 0.5 else "y"
            choice = serving.choose({"seg": segment}, CANDIDATES, rng)
            names.append(choice.policy)
            reward = float(rng.random() < world[segment][choice.index])
            batch.append(
                Example(
                    context={"seg": segment},
                    candidates=CANDIDATES,
                    chosen=choice.index,
                    propensity=choice.propensity,
                    reward=reward,
                )
            )
        learner.learn(batch)
    assert isinstance(learner, ApprenticePolicy)
    return learner, names


def test_it_serves_the_split_with_exploration_while_apprenticing() -> None:
    config = ThompsonConfig(apprentice=Apprentice(explore=0.3))
    policy = build_policy(config, ARMS)
    assert policy.name == "apprentice:thompson"
    assert np.allclose(policy.pmf({}, CANDIDATES), [0.1, 0.8, 0.1])


def test_auto_takeover_when_its_lower_bound_beats_the_split() -> None:
    policy, names = run("auto", SEGMENTED, 6000)
    estimate = policy.estimate()
    assert estimate.taken_over_by == "auto" and estimate.serving == "policy"
    assert names[0] == "apprentice:thompson" and names[-1] == "thompson"
    first_own = names.index("thompson")
    assert 500 <= first_own < 6000
    assert estimate.gain_lower > 0.0 and estimate.own > estimate.split
    # Once taken over it serves its own, segment-dependent choices.
    assert int(np.argmax(policy.pmf({"seg": "x"}, CANDIDATES))) == 0
    assert int(np.argmax(policy.pmf({"seg": "y"}, CANDIDATES))) == 2


def test_no_takeover_while_the_split_is_better() -> None:
    policy, names = run("auto", B_IS_BEST, 4000, seed=1)
    estimate = policy.estimate()
    assert estimate.serving == "split" and estimate.taken_over_by == ""
    assert set(names) == {"apprentice:thompson"}
    assert estimate.gain_upper < 0.05


def test_manual_takeover_only_by_the_admin_call() -> None:
    policy, names = run("manual", SEGMENTED, 4000)
    estimate = policy.estimate()
    assert estimate.gain_lower > 0.0  # it would have taken over on auto
    assert estimate.serving == "split" and set(names) == {"apprentice:thompson"}
    config = ThompsonConfig(
        segment_by="seg", mc_samples=2000, apprentice=Apprentice(takeover="manual")
    )
    taken = build_policy(config, ARMS, snapshot=take_over(policy.snapshot()))
    assert isinstance(taken, ApprenticePolicy)
    assert taken.name == "thompson" and taken.estimate().taken_over_by == "admin"
    assert taken.estimate().n == estimate.n
    assert int(np.argmax(taken.pmf({"seg": "y"}, CANDIDATES))) == 2
