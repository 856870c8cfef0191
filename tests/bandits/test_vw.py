"""Vowpal Wabbit policy: learning, personalisation, example caching and snapshots."""

from __future__ import annotations

import sys

import msgspec
import numpy as np
import pytest
from vowpal_wabbit_next import CBLabel, TextFormatParser, Workspace

from bandits.base import Arm, Candidate, Context, Example, SnapshotError
from bandits.features import action_line, shared_line
from bandits.registry import build_policy
from bandits.thompson import ThompsonPolicy
from bandits.vw import VWPolicy
from tailor_contract.policies import ThompsonConfig, VWCBConfig
from tests.support.training import epsilon_vw

CANDIDATES = (
    Candidate(key="banner_red", features={"colour": "red", "size": 1.0}),
    Candidate(key="banner_blue", features={"colour": "blue", "size": 2.0}),
    Candidate(key="banner_green", features={"colour": "green", "tags": ["eco", "sale"]}),
)
SEGMENTS = ("young", "adult", "senior")
# Segment s converts best on candidate s (0.7 vs 0.1).
RATES = np.full((3, 3), 0.1) + np.eye(3) * 0.6


def _context(segment: int, rng: np.random.Generator) -> Context:
    return {
        "age_band": SEGMENTS[segment],
        "visits": int(rng.integers(1, 20)),
        "member": bool(rng.random() < 0.5),
    }


def _simulate(policy: VWPolicy, steps: int, rng: np.random.Generator) -> list[Example]:
    """Online loop: decide, observe a Bernoulli reward, learn; returns the logged examples."""
    logged = []
    for _ in range(steps):
        segment = int(rng.integers(3))
        context = _context(segment, rng)
        choice = policy.choose(context, CANDIDATES, rng)
        reward = float(rng.random() < RATES[segment, choice.index])
        example = Example(
            context=context,
            candidates=CANDIDATES,
            chosen=choice.index,
            propensity=choice.propensity,
            reward=reward,
        )
        policy.learn([example])
        logged.append(example)
    return logged


@pytest.fixture(scope="module")
def trained() -> tuple[VWPolicy, list[Example]]:
    """A VW policy taught 3,000 simulated decisions with segment-dependent best arms."""
    policy = VWPolicy(epsilon_vw(0.1), version="v1")
    logged = _simulate(policy, 3_000, np.random.default_rng(1))
    return policy, logged


@pytest.mark.slow
def test_personalises_by_segment(trained: tuple[VWPolicy, list[Example]]) -> None:
    """After 3,000 examples each segment's best arm is greedy and chosen > 85% of the time
    (the pmf's ceiling at epsilon 0.1 is 0.933)."""
    policy, _ = trained
    rng = np.random.default_rng(2)
    for segment in range(3):
        contexts = [_context(segment, rng) for _ in range(400)]
        picks = [c.index for c in policy.choose_many(contexts, CANDIDATES, rng)]
        assert policy.pmf(contexts[0], CANDIDATES).argmax() == segment
        assert picks.count(segment) / len(picks) > 0.85


@pytest.mark.slow
def test_converges_without_context() -> None:
    """With an empty context VW learns the single best arm (rates 0.2, 0.6, 0.3).

    Rates this far apart are learned fast with VW's own learning rate (0.5); the default
    (0.01) is tuned for click-through rates of a few percent (loadtests/sim_learning.py).
    """
    policy = VWPolicy(VWCBConfig(exploration="squarecb", learning_rate=0.5))
    rng = np.random.default_rng(3)
    rates = (0.2, 0.6, 0.3)
    for _ in range(1_500):
        choice = policy.choose({}, CANDIDATES, rng)
        policy.learn(
            [
                Example(
                    context={},
                    candidates=CANDIDATES,
                    chosen=choice.index,
                    propensity=choice.propensity,
                    reward=float(rng.random() < rates[choice.index]),
                )
            ]
        )
    assert policy.pmf({}, CANDIDATES)[1] > 0.8


def test_learning_matches_plain_vw_on_fresh_examples(
    trained: tuple[VWPolicy, list[Example]],
) -> None:
    """Cached, relabelled action examples and cached shared examples (contexts repeat here)
    train exactly like freshly parsed ones through ``Workspace.learn_one``."""
    _, logged = trained
    assert len({shared_line(ex.context) for ex in logged[:500]}) < 250
    policy = VWPolicy(epsilon_vw(0.1))
    policy.learn(logged[:500])
    reference = Workspace(epsilon_vw(0.1).vw_args())
    parser = TextFormatParser(reference)
    for ex in logged[:500]:
        actions = [parser.parse_line(action_line(c.key, c.features)) for c in ex.candidates]
        actions[ex.chosen].set_label(CBLabel(label=(0, -ex.reward, ex.propensity)))
        reference.learn_one([parser.parse_line(shared_line(ex.context)), *actions])
    np.testing.assert_array_equal(policy._ws.weights(), reference.weights())


def test_snapshot_restores_identical_predictions(
    trained: tuple[VWPolicy, list[Example]],
) -> None:
    """A restored policy predicts the same pmfs as the original for the logged contexts."""
    policy, logged = trained
    restored = build_policy(epsilon_vw(0.1), [], snapshot=policy.snapshot(), version="v2")
    assert restored.version == "v2"
    for ex in logged[:50]:
        np.testing.assert_array_equal(
            restored.pmf(ex.context, CANDIDATES), policy.pmf(ex.context, CANDIDATES)
        )


def test_epsilon_may_change_on_restore(trained: tuple[VWPolicy, list[Example]]) -> None:
    """Restoring under a larger epsilon keeps the greedy arm and applies the new exploration."""
    policy, logged = trained
    wider = VWPolicy.restore(epsilon_vw(0.3), policy.snapshot(), version="v2")
    context = logged[0].context
    old, new = policy.pmf(context, CANDIDATES), wider.pmf(context, CANDIDATES)
    assert new.argmax() == old.argmax()
    assert new.max() == pytest.approx(0.7 + 0.1, abs=1e-6)


@pytest.mark.parametrize(
    ("config", "snapshot", "match"),
    [
        (VWCBConfig(exploration="squarecb"), None, "trained with VW arguments"),
        (VWCBConfig(interactions=()), None, "only epsilon may change"),
        (VWCBConfig(), b"not msgpack at all", "not a vw_cb snapshot"),
        (
            VWCBConfig(),
            ThompsonPolicy(ThompsonConfig(), [Arm(key="a")]).snapshot(),
            "not a vw_cb snapshot",
        ),
    ],
)
def test_incompatible_snapshots_are_refused(
    trained: tuple[VWPolicy, list[Example]],
    config: VWCBConfig,
    snapshot: bytes | None,
    match: str,
) -> None:
    """Snapshots of another shape or kind raise SnapshotError instead of corrupting VW."""
    policy, _ = trained
    with pytest.raises(SnapshotError, match=match):
        VWPolicy.restore(config, snapshot or policy.snapshot(), version="v2")


def test_corrupt_model_bytes_are_refused() -> None:
    """Model bytes VW cannot load raise SnapshotError with VW's reason."""
    with pytest.raises(SnapshotError, match="VW could not load the model"):
        VWPolicy(VWCBConfig(), model=b"\x00" * 64)


def test_vw_rejects_what_passes_the_allow_list() -> None:
    """Options each on the allow-list that VW refuses together fail with VW's message."""
    from bandits.vw import check_vw_config
    from tailor_contract.policies import VWCBConfig

    config = VWCBConfig(extra_args=("--first", "3", "--cover", "3"))
    with pytest.raises(ValueError, match="VW rejected"):
        check_vw_config(config)
    check_vw_config(VWCBConfig())


def _fresh_pmf(policy: VWPolicy, context: Context) -> list[float]:
    """The pmf from freshly parsed shared and action lines (no cache), floored as served."""
    from bandits.base import floor_pmf

    parser = TextFormatParser(policy._ws)
    examples = [parser.parse_line(shared_line(context))]
    examples += [parser.parse_line(action_line(c.key, c.features)) for c in CANDIDATES]
    weights = [0.0] * len(CANDIDATES)
    for action, prob in policy._ws.predict_one(examples):
        weights[action] = prob
    return floor_pmf(weights, policy._config.floor(len(CANDIDATES)))


def test_cached_shared_examples_predict_like_fresh_ones() -> None:
    """Contexts seen again reuse their parsed shared example; the pmf equals one from freshly
    parsed lines, before and after more learning (a reused example keeps no trace of use)."""
    rng = np.random.default_rng(11)
    policy = VWPolicy(VWCBConfig(exploration="epsilon", epsilon=0.1))
    contexts = [_context(s, rng) for s in (0, 1, 2)]
    for _ in range(3):
        for context in contexts:
            assert np.array_equal(policy.pmf(context, CANDIDATES), _fresh_pmf(policy, context))
            policy.choose(context, CANDIDATES, rng)
        policy.learn(_simulate(VWPolicy(VWCBConfig()), 200, rng))
    # Learning parses its contexts through the same cache (the simulated ones as well).
    assert len(policy._shared) > len(contexts)
    assert all(policy._shared._cache.get(msgspec.msgpack.encode(c)) is not None for c in contexts)


def test_patch_takes_a_newer_snapshot_like_a_restore() -> None:
    """A weights-only (epsilon) model patched in place with newer snapshots decides exactly as
    the snapshots restored whole, including weights that went back to zero; squarecb, whose
    exploration counts examples outside the weights, refuses and is rebuilt instead."""
    rng = np.random.default_rng(5)
    config = VWCBConfig(exploration="epsilon", epsilon=0.1)
    learner = VWPolicy(config)
    serving = VWPolicy(config)
    contexts = [_context(s, rng) for s in (0, 1, 2, 0, 1)]
    for step in range(3):
        learner.learn(_simulate(VWPolicy(VWCBConfig()), 150, rng))
        data = learner.snapshot()
        assert serving.patch(data, version=str(step + 1))
        restored = VWPolicy.restore(config, data, version=str(step + 1))
        for context in contexts:
            assert np.array_equal(serving.pmf(context, CANDIDATES),
                                  restored.pmf(context, CANDIDATES))  # fmt: skip
        assert serving.version == str(step + 1)
    other = VWPolicy(config)  # another model (a reset, then a little learning): fewer rows
    other.learn(_simulate(VWPolicy(VWCBConfig()), 20, rng))
    assert serving.patch(other.snapshot(), version="4")
    restored = VWPolicy.restore(config, other.snapshot(), version="4")
    # The weights themselves (column 0; VW does not serialize its scratch column 3).
    assert np.array_equal(serving._ws.weights()[..., 0], restored._ws.weights()[..., 0])
    for context in contexts:
        assert np.array_equal(serving.pmf(context, CANDIDATES), restored.pmf(context, CANDIDATES))
    fresh = VWPolicy(config).snapshot()  # a reset: every weight back to zero
    assert not serving.patch(fresh, version="9")  # no rows to copy: rebuilt by the caller
    square = VWPolicy(VWCBConfig())
    assert not square.patch(VWPolicy(VWCBConfig()).snapshot(), version="2")
    assert not serving.patch(b"\x92garbage", version="3")


def test_explain_names_the_attribute_the_choice_depends_on(
    trained: tuple[VWPolicy, list[Example]],
) -> None:
    """The segment attribute (``age_band``) weighs most in a personalised choice: dropping it
    costs the chosen arm the most probability; at most five attributes, largest first."""
    policy, _ = trained
    context = {"age_band": "young", "visits": 3, "member": True}
    chosen = CANDIDATES[int(policy.pmf(context, CANDIDATES).argmax())].key
    factors = policy.explain(context, CANDIDATES, chosen)
    assert factors and (factors[0].feature, factors[0].value) == ("age_band", "young")
    assert factors[0].weight is not None and factors[0].weight > 0.1
    weights = [f.weight or 0.0 for f in factors]
    assert weights == sorted(weights, reverse=True) and len(factors) <= 5
    assert policy.explain(context, CANDIDATES, "no_such_arm") == []


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_distinct_contexts_do_not_grow_memory_past_the_caches_bound() -> None:
    """A serving policy deciding for many distinct visitors keeps its parsed-example caches to
    a few MB: each parsed VW example holds ~32 KB of native memory, and 4,096 cached shared
    examples grew a worker by 130 MB per vw_cb experiment (the tree went over 1 GB)."""
    policy = VWPolicy(VWCBConfig(exploration="epsilon", epsilon=0.1))
    rng = np.random.default_rng(5)

    def decide(first: int, count: int) -> None:
        for i in range(first, first + count):
            policy.choose({"unit": f"u-{i}", "segment": SEGMENTS[i % 3]}, CANDIDATES, rng)

    decide(0, 1_000)  # warm: VW's own buffers, the parser, a full cache of the new size
    before = _rss_mb()
    decide(1_000, 5_000)
    assert _rss_mb() - before < 40  # 4,096 cached shared examples: ~100 MB more here
