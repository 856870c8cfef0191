"""Every policy: pmfs sum to one, choices follow them, propensities are exact and reproducible."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from bandits.base import Arm, Candidate, CandidateError, Context, Example, Policy
from bandits.registry import build_policy
from tailor_contract.policies import (
    DEFAULT_MIN_PROPENSITY_SHARE,
    EpsilonGreedyConfig,
    FixedConfig,
    ThompsonConfig,
    VWCBConfig,
)
from tests.support.training import epsilon_vw

ARMS = [
    Arm(key="a", weight=1.0),
    Arm(key="b", weight=2.0),
    Arm(key="c", weight=3.0),
    Arm(key="d", weight=4.0),
]
CANDIDATES = tuple(Candidate(key=a.key, features={"size": i + 1}) for i, a in enumerate(ARMS))
CONTEXT: Context = {"country": "fr", "visits": 3, "member": True}
REWARD_RATES = {"a": 0.2, "b": 0.5, "c": 0.35, "d": 0.1}


def _trained(config: FixedConfig | ThompsonConfig | EpsilonGreedyConfig | VWCBConfig) -> Policy:
    """A policy taught 300 uniformly logged examples, so its pmf is not uniform."""
    policy = build_policy(config, ARMS, version="v7")
    rng = np.random.default_rng(11)
    examples = []
    for _ in range(300):
        chosen = int(rng.integers(len(CANDIDATES)))
        reward = float(rng.random() < REWARD_RATES[CANDIDATES[chosen].key])
        examples.append(
            Example(
                context=CONTEXT,
                candidates=CANDIDATES,
                chosen=chosen,
                propensity=0.25,
                reward=reward,
            )
        )
    policy.learn(examples)
    return policy


POLICIES: dict[str, Callable[[], Policy]] = {
    "fixed": lambda: _trained(FixedConfig()),
    "thompson": lambda: _trained(ThompsonConfig(min_share=0.05)),
    "thompson_segmented": lambda: _trained(ThompsonConfig(segment_by="country")),
    "epsilon_greedy": lambda: _trained(EpsilonGreedyConfig(epsilon=0.3)),
    "vw_epsilon": lambda: _trained(epsilon_vw(0.3)),
    "vw_squarecb": lambda: _trained(VWCBConfig(exploration="squarecb", gamma_scale=5.0)),
}


@pytest.fixture(params=list(POLICIES), scope="module")
def policy(request: pytest.FixtureRequest) -> Policy:
    """Each policy kind, trained on the same logged data."""
    return POLICIES[request.param]()


def test_pmf_sums_to_one_and_is_not_degenerate(policy: Policy) -> None:
    """The pmf is a probability vector over the candidates with more than one live arm."""
    pmf = policy.pmf(CONTEXT, CANDIDATES)
    assert pmf.shape == (len(CANDIDATES),)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    assert (pmf >= 0).all()
    assert (pmf > 0).sum() >= 2


def test_choice_frequencies_match_pmf(policy: Policy) -> None:
    """20,000 draws from a fixed seed pass a chi-square test against the pmf at p > 0.001."""
    rng = np.random.default_rng(2024)
    pmf = policy.pmf(CONTEXT, CANDIDATES)
    n = 20_000
    choices = policy.choose_many([CONTEXT] * n, CANDIDATES, rng)
    counts = np.bincount([c.index for c in choices], minlength=len(CANDIDATES))
    live = pmf > 0
    assert counts[~live].sum() == 0
    result = stats.chisquare(counts[live], f_exp=pmf[live] * n)
    assert result.pvalue > 1e-3


def test_logged_propensity_is_the_pmf_value(policy: Policy) -> None:
    """Each Choice carries pmf[index], the key at that index, the policy name and version."""
    rng = np.random.default_rng(5)
    pmf = policy.pmf(CONTEXT, CANDIDATES)
    for _ in range(50):
        choice = policy.choose(CONTEXT, CANDIDATES, rng)
        assert choice.propensity == pytest.approx(pmf[choice.index], rel=1e-9)
        assert choice.key == CANDIDATES[choice.index].key
        assert choice.policy == policy.name
        # vw_cb's ensemble appends the serving member: "v7/cells:segment", "v7/baseline".
        assert choice.model_version.partition("/")[0] == "v7"


def test_choose_many_equals_repeated_choose(policy: Policy) -> None:
    """The bulk path consumes the generator exactly like one choose per context."""
    contexts: list[Context] = [CONTEXT, {"country": "de"}, {}] * 30
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    one_by_one = [policy.choose(c, CANDIDATES, rng_a) for c in contexts]
    assert policy.choose_many(contexts, CANDIDATES, rng_b) == one_by_one


def test_same_seed_same_decisions() -> None:
    """Two policies built and trained identically make identical choices from the same seed."""
    for make in POLICIES.values():
        first, second = make(), make()
        a = first.choose_many([CONTEXT] * 200, CANDIDATES, np.random.default_rng(3))
        b = second.choose_many([CONTEXT] * 200, CANDIDATES, np.random.default_rng(3))
        assert a == b


def test_candidate_subset_renormalises(policy: Policy) -> None:
    """Offering a subset of the arms yields a pmf over that subset that sums to one."""
    subset = (CANDIDATES[3], CANDIDATES[1])
    pmf = policy.pmf(CONTEXT, subset)
    assert pmf.shape == (2,)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    choice = policy.choose(CONTEXT, subset, np.random.default_rng(0))
    assert choice.key in {"d", "b"}


@pytest.mark.parametrize(
    ("candidates", "match"),
    [((), "no candidates"), ((CANDIDATES[0], CANDIDATES[0]), "unique")],
)
def test_bad_candidate_sets_are_refused(
    policy: Policy, candidates: tuple[Candidate, ...], match: str
) -> None:
    """Every policy refuses an empty candidate set and duplicate keys."""
    with pytest.raises(CandidateError, match=match):
        policy.choose(CONTEXT, candidates, np.random.default_rng(0))


def _lopsided(config: ThompsonConfig | EpsilonGreedyConfig | VWCBConfig) -> Policy:
    """A policy taught 2,000 examples in which only "b" ever pays: without a floor its pmf
    gives the other arms (almost) nothing."""
    policy = build_policy(config, ARMS, version="v7")
    rng = np.random.default_rng(17)
    examples = []
    for _ in range(2_000):
        chosen = int(rng.integers(len(CANDIDATES)))
        examples.append(
            Example(
                context=CONTEXT,
                candidates=CANDIDATES,
                chosen=chosen,
                propensity=0.25,
                reward=float(chosen == 1),
            )
        )
    policy.learn(examples)
    return policy


FLOORED: dict[str, Callable[[float | None], ThompsonConfig | EpsilonGreedyConfig | VWCBConfig]] = {
    "thompson": lambda m: ThompsonConfig(min_propensity=m),
    "epsilon_greedy": lambda m: EpsilonGreedyConfig(epsilon=0.02, min_propensity=m),
    "vw_epsilon": lambda m: VWCBConfig(exploration="epsilon", epsilon=0.02, min_propensity=m),
    "vw_squarecb": lambda m: VWCBConfig(min_propensity=m, members="vw"),
}


@pytest.mark.parametrize("kind", list(FLOORED))
@pytest.mark.parametrize("min_propensity", [None, 0.04], ids=["default", "0.04"])
def test_floor_mixes_the_pmf_with_uniform_and_the_log_carries_the_mixed_probability(
    kind: str, min_propensity: float | None
) -> None:
    """Every candidate gets at least the floor (the default is a share of uniform), the pmf is
    the unfloored one mixed with uniform just enough, and each logged propensity (choose and
    choose_many) is the mixed pmf's probability of the chosen variant."""
    config = FLOORED[kind](min_propensity)
    floor = config.floor(len(CANDIDATES))
    assert floor == (DEFAULT_MIN_PROPENSITY_SHARE / 4 if min_propensity is None else 0.04)
    policy = _lopsided(config)
    raw = _lopsided(FLOORED[kind](0.0)).pmf(CONTEXT, CANDIDATES)
    assert raw.min() < floor  # the floor has work to do here
    pmf = policy.pmf(CONTEXT, CANDIDATES)
    assert pmf.min() >= floor - 1e-12
    assert pmf.min() == pytest.approx(floor, rel=1e-9)  # lifted just to the floor
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    lam = (floor - raw.min()) / (1 / 4 - raw.min())
    assert pmf == pytest.approx((1 - lam) * raw + lam / 4, rel=1e-9)
    assert int(pmf.argmax()) == 1
    rng = np.random.default_rng(8)
    choices = [policy.choose(CONTEXT, CANDIDATES, rng) for _ in range(200)]
    choices += policy.choose_many([CONTEXT] * 2_000, CANDIDATES, rng)
    for choice in choices:
        assert choice.propensity == pytest.approx(float(pmf[choice.index]), rel=1e-12)
    assert {c.index for c in choices} == {0, 1, 2, 3}  # the floor is really drawn


@pytest.mark.parametrize("kind", list(FLOORED))
def test_floor_on_a_candidate_subset_is_capped_at_uniform(kind: str) -> None:
    """Offered two of the variants, a floor of 0.25 is within 1/2 and lifts both to >= 0.25."""
    policy = _lopsided(FLOORED[kind](0.25))
    pmf = policy.pmf(CONTEXT, (CANDIDATES[0], CANDIDATES[1]))
    assert pmf.min() >= 0.25 - 1e-12 and pmf.sum() == pytest.approx(1.0, abs=1e-12)


def test_floor_leaves_a_pmf_already_above_it_unchanged() -> None:
    """epsilon_greedy with epsilon 0.4 (every arm >= 0.1) is not changed by a 0.05 floor."""
    floored = _lopsided(EpsilonGreedyConfig(epsilon=0.4, min_propensity=0.05))
    bare = _lopsided(EpsilonGreedyConfig(epsilon=0.4, min_propensity=0.0))
    assert floored.pmf(CONTEXT, CANDIDATES).tolist() == bare.pmf(CONTEXT, CANDIDATES).tolist()
