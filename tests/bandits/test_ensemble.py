"""vw_cb's ensemble: cell discovery, the serving rule, snapshots, propensities and cost."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from bandits.base import Candidate, Context, Example, Policy
from bandits.cells import CellModels
from bandits.ensemble import PROBE, EnsemblePolicy, _EnsembleState, _Estimate
from bandits.registry import build_policy
from tailor_contract.policies import VWCBConfig

CANDIDATES = tuple(Candidate(key=f"v{i}") for i in range(3))
SEGMENTS = ("young", "adult", "senior")
DEVICES = ("mobile", "desktop")


def _context(rng: np.random.Generator) -> Context:
    return {"segment": SEGMENTS[int(rng.integers(3))], "device": DEVICES[int(rng.integers(2))],
            "noise": f"n{int(rng.integers(4))}", "visits": float(rng.integers(1, 9))}


def _interaction(context: Context) -> np.ndarray:
    """Best variant = (segment + device) mod 3: 0.5 against 0.1, a pure 2-way interaction."""
    s, d = SEGMENTS.index(str(context["segment"])), DEVICES.index(str(context["device"]))
    rates = np.full(3, 0.1)
    rates[(s + d) % 3] = 0.5
    return rates


def _flat(context: Context) -> np.ndarray:
    """No context effect: v1 is best for everyone."""
    return np.array([0.2, 0.3, 0.2])


def _run(config: VWCBConfig, world: object, n: int, seed: int, batch: int = 250
         ) -> tuple[Policy, Policy, float]:
    """Serve from snapshots refreshed every ``batch`` decisions; returns (learner, serving,
    mean expected reward of the served pmf over the last quarter)."""
    rng = np.random.default_rng(seed)
    learner = build_policy(config, [])
    serving = build_policy(config, [])
    pending: list[Example] = []
    tail = []
    for i in range(n):
        context = _context(rng)
        rates = world(context)  # type: ignore[operator]
        choice = serving.choose(context, CANDIDATES, rng)
        if i >= 3 * n // 4:
            tail.append(float(serving.pmf(context, CANDIDATES) @ rates))
        reward = float(rng.random() < rates[choice.index])
        pending.append(Example(context=context, candidates=CANDIDATES, chosen=choice.index,
                               propensity=choice.propensity, reward=reward))
        if len(pending) == batch:
            learner.learn(pending)
            pending = []
            serving = build_policy(config, [], snapshot=learner.snapshot(), version=str(i))
    return learner, serving, float(np.mean(tail))


@pytest.fixture(scope="module")
def interaction_run() -> tuple[Policy, Policy, float]:
    return _run(VWCBConfig(), _interaction, 6000, seed=3)


def test_cells_find_the_interaction_and_take_over(
    interaction_run: tuple[Policy, Policy, float],
) -> None:
    """In a 2-way world the ensemble picks the (segment, device) crossing, its lower bound
    clears the baseline, and Thompson per cell serves alone, near the oracle (0.5)."""
    _, serving, tail = interaction_run
    assert isinstance(serving, EnsemblePolicy)
    report = serving.serving_report()
    assert set(report.partition.split("+")) == {"segment", "device"}
    assert report.member == "cells:" + report.partition and report.mix == 1.0
    cells = next(m for m in report.members if m.member == "cells")
    assert cells.lower > 0.0
    assert tail > 0.42  # best single variant: 0.5/3 + 0.1*2/3 = 0.23
    choice = serving.choose({"segment": "adult", "device": "mobile"}, CANDIDATES,
                            np.random.default_rng(0))
    assert choice.model_version.endswith("/cells:" + report.partition)


def test_without_context_effect_the_baseline_keeps_serving() -> None:
    """When the context does not matter, no contextual member proves a gain: the baseline
    serves (alone or with the contender's probe share), and the served pmf favours v1."""
    _, serving, tail = _run(VWCBConfig(), _flat, 4000, seed=5)
    assert isinstance(serving, EnsemblePolicy)
    report = serving.serving_report()
    assert report.mix < 1.0
    assert tail > 0.28  # v1 is worth 0.3, uniform 0.233


@pytest.mark.parametrize(
    ("gain", "half_width", "before", "mix"),
    [
        (0.02, 0.01, 0.5, 1.0),      # lower bound above 0: the contender serves alone
        (-0.02, 0.01, 0.5, PROBE),   # upper bound below 0: the baseline, with a probe share
        (0.005, 0.01, 0.5, 0.5),     # undecided: half and half
        (0.005, 0.01, 1.0, 1.0),     # served alone and still estimated better: it stays
        (-0.005, 0.01, 1.0, 0.5),    # served alone, estimate turned negative: back to half
    ],
)
def test_serving_rule(gain: float, half_width: float, before: float, mix: float) -> None:
    """The contender's share follows its 95% interval of gain over the baseline."""
    policy = EnsemblePolicy(VWCBConfig())
    n = 10_000.0
    sd = half_width / 1.96 * np.sqrt(n)
    policy._estimates["vw"] = _Estimate(n, gain * n, (sd**2 + gain**2) * n)
    policy._serving, policy._mix = "vw", before
    policy._select()
    assert policy.serving_report().mix == pytest.approx(mix)


def test_snapshot_round_trip(interaction_run: tuple[Policy, Policy, float]) -> None:
    """A restored ensemble serves identical pmfs, reports the same state and learns on to the
    same state as the original (VW's reporting counters aside, which restart from zero)."""
    learner, _, _ = interaction_run
    restored = build_policy(VWCBConfig(), [], snapshot=learner.snapshot(), version="9")
    assert isinstance(learner, EnsemblePolicy) and isinstance(restored, EnsemblePolicy)
    assert restored.serving_report() == learner.serving_report()
    rng = np.random.default_rng(1)
    contexts = [_context(rng) for _ in range(30)]
    for context in contexts:
        np.testing.assert_array_equal(restored.pmf(context, CANDIDATES),
                                      learner.pmf(context, CANDIDATES))
    more = [Example(context=c, candidates=CANDIDATES, chosen=i % 3, propensity=0.4,
                    reward=float(i % 2)) for i, c in enumerate(contexts)]
    learner.learn(more)
    restored.learn(more)
    after, expected = (msgspec.msgpack.decode(p.snapshot(), type=_EnsembleState)
                       for p in (restored, learner))
    assert msgspec.structs.replace(after, vw=b"") == msgspec.structs.replace(expected, vw=b"")
    for context in contexts:
        np.testing.assert_array_equal(restored.pmf(context, CANDIDATES),
                                      learner.pmf(context, CANDIDATES))


@pytest.mark.parametrize("member", ["cells", "vw", "baseline"])
def test_logged_propensity_is_the_served_pmf_with_the_floor(
    interaction_run: tuple[Policy, Policy, float], member: str
) -> None:
    """Whoever serves, each Choice's propensity is the served pmf's value at the chosen index,
    and every candidate keeps at least the floor."""
    learner, _, _ = interaction_run
    policy = build_policy(VWCBConfig(), [], snapshot=learner.snapshot(), version="3")
    assert isinstance(policy, EnsemblePolicy)
    policy._serving, policy._mix = member, (0.0 if member == "baseline" else 0.5)
    policy._samplers.clear()
    rng = np.random.default_rng(7)
    floor = VWCBConfig().floor(len(CANDIDATES))
    contexts = [_context(rng) for _ in range(40)]
    for context, choice in zip(contexts, policy.choose_many(contexts, CANDIDATES,
                                                             np.random.default_rng(2)),
                               strict=True):
        pmf = policy.pmf(context, CANDIDATES)
        assert pmf.min() >= floor - 1e-12 and pmf.sum() == pytest.approx(1.0)
        assert choice.propensity == pytest.approx(pmf[choice.index], rel=1e-12)
        single = policy.choose(context, CANDIDATES, rng)
        assert single.propensity == pytest.approx(pmf[single.index], rel=1e-12)


def test_cells_serving_never_asks_vw(
    interaction_run: tuple[Policy, Policy, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the cells member serving, a decision is a cached-sampler lookup: VW's prediction
    (the expensive part of a decision) is never called. Its cost is measured by
    loadtests/bench_policies.py, not here."""
    learner, _, _ = interaction_run
    ensemble = build_policy(VWCBConfig(), [], snapshot=learner.snapshot(), version="1")
    assert ensemble.serving_report().member.startswith("cells:")  # type: ignore[attr-defined]

    def no_vw(*_: object) -> None:
        raise AssertionError("VW was asked for a prediction")

    monkeypatch.setattr(ensemble._vw, "pmf", no_vw)  # type: ignore[attr-defined]
    rng = np.random.default_rng(4)
    for _ in range(200):
        choice = ensemble.choose(_context(rng), CANDIDATES, rng)
        assert choice.model_version.startswith("1/cells:")


def test_cells_drop_attributes_with_many_values_and_cap_the_count() -> None:
    """An attribute showing more than max_values values leaves the crossings; at most
    max_attributes attributes are crossed, in pairs and triples."""
    cells = CellModels(max_attributes=3, max_values=4, half_life=None)
    rng = np.random.default_rng(0)
    for i in range(50):
        context: Context = {"id": f"u{i}", "a": f"a{i % 2}", "b": f"b{i % 3}", "c": True,
                            "d": "late", "x": 0.5}
        cells.learn(context, "v0", float(rng.random() < 0.5), 0.5)
    assert cells.attributes == ["a", "b", "c"]
    parts = set(cells.partitions)
    assert ("a", "b", "c") in parts and ("a", "c") in parts and () in parts
    assert not any("id" in p or "d" in p or "x" in p for p in parts)


def test_explain_names_the_cell_that_served(
    interaction_run: tuple[Policy, Policy, float],
) -> None:
    """With the cells member serving, a choice is explained by the partition's attributes and
    the unit's values (not the noise attributes); the baseline explains nothing."""
    _, serving, _ = interaction_run
    assert isinstance(serving, EnsemblePolicy)
    context = {"segment": "adult", "device": "mobile", "noise": "n1", "visits": 3.0}
    factors = serving.explain(context, CANDIDATES, "v1")
    assert {(f.feature, f.value) for f in factors} == {("segment", "adult"), ("device", "mobile")}
    baseline = build_policy(VWCBConfig(), [], snapshot=serving.snapshot(), version="1")
    assert isinstance(baseline, EnsemblePolicy)
    baseline._serving, baseline._mix = "cells", 0.0
    assert baseline.explain(context, CANDIDATES, "v1") == []
