"""Thompson sampling: exact win probabilities, the floor, segments, convergence."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps

from bandits.base import Arm, Candidate, Context, Example
from bandits.thompson import ThompsonPolicy
from tailor_contract.policies import ThompsonConfig
from tailor_contract.wire import Factor

ARMS = [Arm(key=k) for k in ("a", "b", "c", "d")]
CANDIDATES = tuple(Candidate(key=a.key) for a in ARMS)


def _example(key: str, reward: float, context: Context | None = None) -> Example:
    index = [c.key for c in CANDIDATES].index(key)
    return Example(
        context=context or {}, candidates=CANDIDATES, chosen=index, propensity=0.25, reward=reward
    )


def test_win_probability_matches_numerical_integration() -> None:
    """With two arms, P(arm wins) is within 0.01 (about 3 standard errors) of the integral."""
    arms = [Arm(key="a"), Arm(key="b")]
    policy = ThompsonPolicy(ThompsonConfig(), arms)
    policy.learn(
        [_example("a", 1.0)] * 6
        + [_example("a", 0.0)] * 4
        + [_example("b", 1.0)] * 4
        + [_example("b", 0.0)] * 6
    )
    a, b = sps.beta(7, 5), sps.beta(5, 7)
    exact, _ = integrate.quad(lambda x: a.pdf(x) * b.cdf(x), 0.0, 1.0)
    pmf = policy.pmf({}, (Candidate(key="a"), Candidate(key="b")))
    assert pmf[0] == pytest.approx(exact, abs=0.01)


def test_floor_is_respected() -> None:
    """No arm falls below min_share even when one arm dominates, for all arms or a subset."""
    policy = ThompsonPolicy(ThompsonConfig(min_share=0.1), ARMS)
    policy.learn([_example("b", 1.0)] * 200 + [_example(k, 0.0) for k in "acd"] * 200)
    pmf = policy.pmf({}, CANDIDATES)
    assert pmf.min() >= 0.1 - 1e-12
    assert pmf[1] == pytest.approx(1.0 - 3 * 0.1, abs=1e-3)
    subset = policy.pmf({}, (CANDIDATES[0], CANDIDATES[1]))
    assert subset.min() >= 0.1 - 1e-12
    assert subset.sum() == pytest.approx(1.0)


def test_fractional_rewards_update_both_parameters() -> None:
    """A reward r adds r to alpha and 1 - r to beta, on top of the configured prior."""
    policy = ThompsonPolicy(ThompsonConfig(prior_alpha=2.0, prior_beta=3.0), ARMS)
    policy.learn([_example("c", 0.25), _example("c", 1.0)])
    assert policy.posterior("c") == pytest.approx((3.25, 3.75))
    assert policy.posterior("a") == (2.0, 3.0)


@pytest.mark.parametrize("reward", [-0.1, 1.5])
def test_rewards_outside_unit_interval_are_refused_atomically(reward: float) -> None:
    """A batch with one reward outside [0, 1] raises and applies none of its examples."""
    policy = ThompsonPolicy(ThompsonConfig(), ARMS)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\] for thompson"):
        policy.learn([_example("a", 1.0), _example("b", reward)])
    assert policy.posterior("a") == (1.0, 1.0)


def test_segments_learn_separately_and_unseen_fall_back() -> None:
    """Each segment has its own posterior; an unseen or missing segment uses the global one."""
    policy = ThompsonPolicy(ThompsonConfig(segment_by="country"), ARMS)
    fr, de = {"country": "fr"}, {"country": "de"}
    policy.learn(
        [_example("a", 1.0, fr)] * 30
        + [_example("b", 0.0, fr)] * 30
        + [_example("b", 1.0, de)] * 20
    )
    assert policy.pmf(fr, CANDIDATES).argmax() == 0
    assert policy.pmf(de, CANDIDATES).argmax() == 1
    assert policy.posterior("a", "fr") == (31.0, 1.0)
    assert policy.posterior("a", "de") == (1.0, 1.0)
    global_pmf = policy.pmf({}, CANDIDATES)
    np.testing.assert_array_equal(policy.pmf({"country": "it"}, CANDIDATES), global_pmf)
    np.testing.assert_array_equal(policy.pmf({"country": ["fr"]}, CANDIDATES), global_pmf)
    assert policy.posterior("a") == (31.0, 1.0)
    assert policy.posterior("b") == (21.0, 31.0)


def test_segment_needs_min_trials_and_count_is_bounded() -> None:
    """Segments under min_segment_trials use the global posterior; beyond max_segments none
    are tracked."""
    config = ThompsonConfig(segment_by="plan", min_segment_trials=10, max_segments=1)
    policy = ThompsonPolicy(config, ARMS)
    policy.learn([_example("d", 1.0, {"plan": "pro"})] * 9 + [_example("a", 1.0, {"plan": 1})] * 50)
    assert policy.posterior("d", "pro") == policy.posterior("d")  # 9 < 10 trials: global
    policy.learn([_example("d", 1.0, {"plan": "pro"})])
    assert policy.posterior("d", "pro") == (11.0, 1.0)
    assert policy.posterior("a", "pro") == (1.0, 1.0)
    assert policy.posterior("a", "1") == policy.posterior("a")  # never tracked
    assert policy.snapshot().count(b"pro") == 1


def test_same_state_gives_same_pmf_on_every_worker() -> None:
    """Two workers restoring one snapshot under different versions compute identical pmfs."""
    policy = ThompsonPolicy(ThompsonConfig(), ARMS)
    policy.learn([_example("a", 1.0), _example("b", 0.0), _example("c", 0.5)])
    snapshot = policy.snapshot()
    one = ThompsonPolicy.restore(ThompsonConfig(), ARMS, snapshot, version="v1")
    two = ThompsonPolicy.restore(ThompsonConfig(), ARMS, snapshot, version="v2")
    np.testing.assert_array_equal(one.pmf({}, CANDIDATES), two.pmf({}, CANDIDATES))


def _trained() -> ThompsonPolicy:
    policy = ThompsonPolicy(ThompsonConfig(segment_by="plan"), ARMS)
    policy.learn([_example("a", 1.0, {"plan": "pro"}), _example("b", 0.0), _example("c", 0.5)])
    return policy


def test_a_restore_takes_the_shipped_win_probabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker restoring a snapshot draws no Monte Carlo for the global pmf over all arms (the
    learner shipped it) and decides exactly as one that drew it; a segment is still drawn."""
    snapshot = _trained().snapshot()
    drawn = ThompsonPolicy.restore(ThompsonConfig(segment_by="plan"), ARMS, snapshot, version="1")
    expected = drawn.pmf({}, CANDIDATES)
    expected_pro = drawn.pmf({"plan": "pro"}, CANDIDATES)
    calls: list[int] = []
    real = np.random.default_rng

    def counted(seed: int) -> np.random.Generator:
        calls.append(seed)
        return real(seed)

    monkeypatch.setattr("bandits.thompson.np.random.default_rng", counted)
    restored = ThompsonPolicy.restore(
        ThompsonConfig(segment_by="plan"), ARMS, snapshot, version="2"
    )
    np.testing.assert_array_equal(restored.pmf({}, CANDIDATES), expected)
    assert calls == []
    np.testing.assert_array_equal(restored.pmf({"plan": "pro"}, CANDIDATES), expected_pro)
    assert len(calls) == 1  # the segment's own posterior: drawn here, as before


def test_shipped_win_probabilities_need_the_same_posterior(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other priors (so another posterior) or another number of draws ignore what was shipped,
    and a snapshot without it (older learners) restores as before."""
    policy = _trained()
    snapshot = policy.snapshot()
    for config in (ThompsonConfig(prior_alpha=2.0), ThompsonConfig(mc_samples=5_000)):
        fresh = ThompsonPolicy(config, ARMS)
        fresh.learn([_example("a", 1.0, {"plan": "pro"}), _example("b", 0.0), _example("c", 0.5)])
        restored = ThompsonPolicy.restore(config, ARMS, snapshot, version="2")
        np.testing.assert_array_equal(restored.pmf({}, CANDIDATES), fresh.pmf({}, CANDIDATES))
    old = msgspec.msgpack.encode(
        {"kind": "thompson", "arms": {"a": [1.0, 0.0], "b": [0.0, 1.0]}, "segments": {}}
    )
    restored = ThompsonPolicy.restore(ThompsonConfig(), ARMS, old, version="3")
    assert restored.pmf({}, CANDIDATES).sum() == pytest.approx(1.0)


@pytest.mark.slow
def test_converges_to_the_best_arm() -> None:
    """Learning in batches of 50 on Bernoulli arms (0.1, 0.2, 0.5, 0.15), the best arm gets
    > 80% of the last 1,000 decisions and > 0.9 of the final pmf."""
    rates = {"a": 0.1, "b": 0.2, "c": 0.5, "d": 0.15}
    policy = ThompsonPolicy(ThompsonConfig(mc_samples=5_000), ARMS)
    rng = np.random.default_rng(42)
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
    assert picks[-1000:].count("c") > 800
    assert policy.pmf({}, CANDIDATES)[2] > 0.9


def test_explain_names_the_segment_that_selected_the_posterior() -> None:
    """A choice from a segment's own posterior is explained by the segment attribute and the
    unit's value; a choice from the global posterior (segment too small, or missing) by none."""
    policy = ThompsonPolicy(ThompsonConfig(segment_by="plan", min_segment_trials=3), ARMS)
    candidates = [Candidate(key=a.key) for a in ARMS]
    policy.learn([_example("a", 1.0, {"plan": "pro"}) for _ in range(3)])
    policy.learn([_example("a", 1.0, {"plan": "free"})])
    assert policy.explain({"plan": "pro", "city": "Oslo"}, candidates, "a") == [
        Factor(feature="plan", value="pro")
    ]
    assert policy.explain({"plan": "free"}, candidates, "a") == []
    assert policy.explain({"city": "Oslo"}, candidates, "b") == []
