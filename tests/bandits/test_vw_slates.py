"""Ranked slates on VW's CCB: exact per-slot propensities, learning, caching and snapshots."""

from __future__ import annotations

import collections
import itertools
import math

import msgspec
import numpy as np
import pytest

from bandits.base import (
    Arm,
    Candidate,
    CandidateError,
    Context,
    Example,
    Incremental,
    Policy,
    SnapshotError,
)
from bandits.registry import build_policy
from bandits.slates import SlateExample, SlatePolicy
from bandits.vw_slates import VWSlatesPolicy
from tailor_contract.policies import VWSlatesConfig

ITEMS = tuple(
    Candidate(key=f"item{i}", features={"category": f"c{i % 3}", "price": float(i + 1)})
    for i in range(6)
)
# Segment "a" clicks items 0, 1, 2 (best first); segment "b" items 5, 4, 3.
LIKES = {"a": (0.6, 0.4, 0.25, 0.02, 0.02, 0.02), "b": (0.02, 0.02, 0.02, 0.25, 0.4, 0.6)}
EXAMINE = (1.0, 0.7, 0.5)


def _teach(policy: VWSlatesPolicy, steps: int, rng: np.random.Generator) -> list[SlateExample]:
    """Online loop over a position-based click world; returns the logged slates."""
    logged = []
    for _ in range(steps):
        segment = "a" if rng.random() < 0.5 else "b"
        context: Context = {"segment": segment}
        slate = policy.choose_slate(context, ITEMS, 3, rng)
        rewards = tuple(
            float(rng.random() < EXAMINE[j] * LIKES[segment][s.index])
            for j, s in enumerate(slate.slots)
        )
        example = SlateExample(
            context=context,
            candidates=ITEMS,
            chosen=tuple(s.index for s in slate.slots),
            propensities=tuple(s.propensity for s in slate.slots),
            rewards=rewards,
        )
        policy.learn_slates([example])
        logged.append(example)
    return logged


@pytest.fixture(scope="module")
def trained() -> tuple[VWSlatesPolicy, list[SlateExample]]:
    """A slates policy taught 4,000 slates of a world where the best order depends on the
    segment (learning rate raised for so small a world)."""
    policy = VWSlatesPolicy(VWSlatesConfig(learning_rate=0.05), version="v1")
    logged = _teach(policy, 4_000, np.random.default_rng(1))
    return policy, logged


def test_is_a_policy_and_a_slate_policy() -> None:
    """The slates policy speaks both protocols, and the registry builds it from its config."""
    policy = build_policy(VWSlatesConfig(), [Arm(key=c.key) for c in ITEMS])
    assert isinstance(policy, VWSlatesPolicy)
    assert isinstance(policy, Policy)
    assert isinstance(policy, SlatePolicy)
    assert policy.name == "vw_slates"


def test_learns_a_ranking_per_segment(trained: tuple[VWSlatesPolicy, list[SlateExample]]) -> None:
    """After 4,000 slates the greedy ranking puts each segment's three liked items first, in
    the order of their click rates."""
    policy, _ = trained
    assert policy.ranking({"segment": "a"}, ITEMS, 3) == [0, 1, 2]
    assert policy.ranking({"segment": "b"}, ITEMS, 3) == [5, 4, 3]


def test_slate_fills_distinct_slots_with_exact_propensities(
    trained: tuple[VWSlatesPolicy, list[SlateExample]],
) -> None:
    """A slate has min(k, n) distinct items; each slot's propensity is the probability
    slot_pmfs gives its item after the earlier slots, and the earlier items get 0 there."""
    policy, _ = trained
    rng = np.random.default_rng(5)
    for segment in ("a", "b"):
        for _ in range(50):
            slate = policy.choose_slate({"segment": segment}, ITEMS, 4, rng)
            chosen = [s.index for s in slate.slots]
            assert len(set(chosen)) == 4
            pmfs = policy.slot_pmfs({"segment": segment}, ITEMS, chosen)
            for j, slot in enumerate(slate.slots):
                assert slot.key == ITEMS[slot.index].key
                assert pmfs[j][slot.index] == pytest.approx(slot.propensity, rel=1e-12)
                assert math.fsum(pmfs[j]) == pytest.approx(1.0)
                assert all(pmfs[j][i] == 0.0 for i in chosen[:j])
    assert len(policy.choose_slate({}, ITEMS[:2], 5, rng).slots) == 2


def test_ordered_slates_occur_as_often_as_their_propensities_say(
    trained: tuple[VWSlatesPolicy, list[SlateExample]],
) -> None:
    """Over 20,000 draws of 2 slots from 3 items, each of the 6 orders occurs with the product
    of its logged propensities (within 4 standard errors), and that product never varies."""
    policy, _ = trained
    items = ITEMS[:3]
    rng = np.random.default_rng(11)
    counts: collections.Counter[tuple[int, ...]] = collections.Counter()
    logged: dict[tuple[int, ...], float] = {}
    draws = 20_000
    for _ in range(draws):
        slate = policy.choose_slate({"segment": "a"}, items, 2, rng)
        order = tuple(s.index for s in slate.slots)
        counts[order] += 1
        p = slate.propensity
        assert logged.setdefault(order, p) == pytest.approx(p, rel=1e-12)
    assert math.fsum(logged.values()) == pytest.approx(1.0)
    for order in itertools.permutations(range(3), 2):
        p = logged[order]
        se = math.sqrt(p * (1 - p) / draws)
        assert abs(counts[order] / draws - p) < 4 * se + 1e-9, (order, counts[order], p)


def test_every_remaining_item_keeps_the_floor(
    trained: tuple[VWSlatesPolicy, list[SlateExample]],
) -> None:
    """Even where the model is sure, each remaining item keeps at least 0.1 / n_remaining."""
    policy, _ = trained
    pmfs = policy.slot_pmfs({"segment": "a"}, ITEMS, [0, 1, 2])
    for j, pmf in enumerate(pmfs):
        remaining = len(ITEMS) - j
        floor = 0.1 / remaining
        assert min(p for i, p in enumerate(pmf) if i not in (0, 1, 2)[:j]) >= floor - 1e-12


def test_slates_depend_on_the_callers_generator_only(
    trained: tuple[VWSlatesPolicy, list[SlateExample]],
) -> None:
    """Two copies of one model give the same slates for the same seed, although one has made
    many predictions before (VW's own sampling state differs): VW's seed never decides."""
    policy, _ = trained
    busy = VWSlatesPolicy.restore(
        VWSlatesConfig(learning_rate=0.05), policy.snapshot(), version="v1"
    )
    fresh = VWSlatesPolicy.restore(
        VWSlatesConfig(learning_rate=0.05), policy.snapshot(), version="v1"
    )
    warm = np.random.default_rng(99)
    for _ in range(300):
        busy.choose_slate({"segment": "b"}, ITEMS, 5, warm)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    for segment in ("a", "b") * 100:
        assert busy.choose_slate({"segment": segment}, ITEMS, 5, a) == fresh.choose_slate(
            {"segment": segment}, ITEMS, 5, b
        )


def test_snapshot_restores_decisions_and_learning_exactly(
    trained: tuple[VWSlatesPolicy, list[SlateExample]],
) -> None:
    """A restored model gives the same pmfs as the original (whose example caches are warm)
    and learns the same from the same slates."""
    policy, logged = trained
    config = VWSlatesConfig(learning_rate=0.05)
    original = VWSlatesPolicy.restore(config, policy.snapshot(), version="v1")
    original.slot_pmfs({"segment": "a"}, ITEMS, [0, 1, 2])  # warm its caches
    copy = VWSlatesPolicy.restore(config, original.snapshot(), version="v2")
    for segment in ("a", "b"):
        assert copy.slot_pmfs({"segment": segment}, ITEMS, [1, 4]) == original.slot_pmfs(
            {"segment": segment}, ITEMS, [1, 4]
        )
    original.learn_slates(logged[:200])
    copy.learn_slates(logged[:200])
    assert copy.slot_pmfs({"segment": "b"}, ITEMS, [5, 0, 3]) == original.slot_pmfs(
        {"segment": "b"}, ITEMS, [5, 0, 3]
    )
    assert copy.version == "v2"


def test_restore_refuses_other_arguments_and_kinds(
    trained: tuple[VWSlatesPolicy, list[SlateExample]],
) -> None:
    """A snapshot trained with other VW arguments, or of another kind, is refused by name;
    epsilon may change."""
    policy, _ = trained
    data = policy.snapshot()
    with pytest.raises(SnapshotError, match="trained with VW arguments"):
        VWSlatesPolicy.restore(VWSlatesConfig(learning_rate=0.1), data, version="1")
    with pytest.raises(SnapshotError, match="not a vw_slates snapshot"):
        VWSlatesPolicy.restore(
            VWSlatesConfig(), msgspec.msgpack.encode({"kind": "vw_cb"}), version="1"
        )
    VWSlatesPolicy.restore(VWSlatesConfig(learning_rate=0.05, epsilon=0.2), data, version="1")


def test_one_slot_protocol_matches_the_first_slot(
    trained: tuple[VWSlatesPolicy, list[SlateExample]],
) -> None:
    """choose() is a one-slot slate with the first slot's pmf; learn() takes one-slot
    examples (a placement that asked for one item)."""
    policy, _ = trained
    pmf = policy.pmf({"segment": "a"}, ITEMS)
    assert pmf.shape == (6,)
    choice = policy.choose({"segment": "a"}, ITEMS, np.random.default_rng(4))
    assert choice.propensity == pytest.approx(pmf[choice.index], rel=1e-12)
    assert choice.policy == "vw_slates"
    assert choice.model_version == "v1"
    copy = VWSlatesPolicy.restore(
        VWSlatesConfig(learning_rate=0.05), policy.snapshot(), version="v1"
    )
    copy.learn(
        [Example(context={"segment": "a"}, candidates=ITEMS, chosen=3, propensity=0.02, reward=1.0)]
    )
    assert copy.snapshot() != policy.snapshot()
    many = policy.choose_many([{"segment": "a"}, {"segment": "b"}], ITEMS, np.random.default_rng(4))
    assert many[0] == choice


@pytest.mark.parametrize(
    ("candidates", "slots", "match"),
    [
        ((), 2, "no candidates"),
        ((ITEMS[0], ITEMS[0]), 2, "must be unique"),
        (ITEMS, 0, "slots == 0, must be >= 1"),
    ],
)
def test_bad_slate_requests_fail_by_name(
    candidates: tuple[Candidate, ...], slots: int, match: str
) -> None:
    """An empty or duplicated candidate set, or no slot, is a CandidateError naming it."""
    policy = VWSlatesPolicy(VWSlatesConfig())
    with pytest.raises(CandidateError, match=match):
        policy.choose_slate({}, candidates, slots, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"chosen": ()}, "at least one slot"),
        ({"chosen": (0, 0)}, "must be distinct"),
        ({"chosen": (0, 9)}, r"must be in \[0, 6\)"),
        ({"propensities": (0.5,)}, "one entry per slot"),
        ({"propensities": (0.5, 0.0)}, r"propensity == 0.0, must be in \(0, 1\]"),
        ({"rewards": (1.0, float("inf"))}, "reward == inf, must be finite"),
    ],
)
def test_slate_examples_are_validated(fields: dict[str, object], match: str) -> None:
    """A training slate with inconsistent slots is refused with a message naming the rule."""
    base: dict[str, object] = {
        "context": {},
        "candidates": ITEMS,
        "chosen": (0, 1),
        "propensities": (0.5, 0.5),
        "rewards": (1.0, 0.0),
    }
    with pytest.raises(ValueError, match=match):
        SlateExample(**{**base, **fields})  # type: ignore[arg-type]


def test_a_serving_policy_takes_a_newer_snapshot_by_patching_its_weights(
    trained: tuple[VWSlatesPolicy, list[SlateExample]],
) -> None:
    """A fresh (or older) epsilon-greedy slates policy patched with a snapshot decides exactly
    as the snapshot restored whole, and says so (Incremental); a SquareCB config, a snapshot
    trained with other arguments or a snapshot of another kind is refused (the caller
    rebuilds)."""
    policy, logged = trained
    config = VWSlatesConfig(learning_rate=0.05)
    serving = VWSlatesPolicy(config)
    assert isinstance(serving, Incremental)
    newer = VWSlatesPolicy.restore(config, policy.snapshot(), version="v1")
    newer.learn_slates(logged[:300])  # a newer model: the old rows must go, the new ones come in
    for data, version in ((policy.snapshot(), "v1"), (newer.snapshot(), "v2")):
        assert serving.patch(data, version=version)
        whole = VWSlatesPolicy.restore(config, data, version=version)
        for segment in ("a", "b"):
            assert serving.slot_pmfs({"segment": segment}, ITEMS, [3, 0, 5]) == whole.slot_pmfs(
                {"segment": segment}, ITEMS, [3, 0, 5]
            )
        assert serving.version == version
    square = VWSlatesPolicy(VWSlatesConfig(learning_rate=0.05, exploration="squarecb"))
    assert not square.patch(square.snapshot(), version="x")
    assert not serving.patch(VWSlatesPolicy(VWSlatesConfig()).snapshot(), version="x")
    assert not serving.patch(msgspec.msgpack.encode({"kind": "vw_cb"}), version="x")
    assert serving.version == "v2"
