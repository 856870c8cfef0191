"""vw_cb's ensemble: cell discovery, the serving rule, snapshots, propensities and cost."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from bandits.base import Candidate, Context, Example, Policy, floor_pmf
from bandits.cells import CellModels
from bandits.drift import SHIFT_WARMUP, SHIFT_WINDOW
from bandits.ensemble import DRIFT_KEEP, PROBE, EnsemblePolicy, _EnsembleState, _Estimate
from bandits.registry import build_policy
from tailor_contract.policies import VWCBConfig

CANDIDATES = tuple(Candidate(key=f"v{i}") for i in range(3))
SEGMENTS = ("young", "adult", "senior")
DEVICES = ("mobile", "desktop")


def _context(rng: np.random.Generator) -> Context:
    return {
        "segment": SEGMENTS[int(rng.integers(3))],
        "device": DEVICES[int(rng.integers(2))],
        "noise": f"n{int(rng.integers(4))}",
        "visits": float(rng.integers(1, 9)),
    }


def _interaction(context: Context) -> np.ndarray:
    """Best variant = (segment + device) mod 3: 0.5 against 0.1, a pure 2-way interaction."""
    s, d = SEGMENTS.index(str(context["segment"])), DEVICES.index(str(context["device"]))
    rates = np.full(3, 0.1)
    rates[(s + d) % 3] = 0.5
    return rates


def _flat(context: Context) -> np.ndarray:
    """No context effect: v1 is best for everyone."""
    return np.array([0.2, 0.3, 0.2])


def _run(
    config: VWCBConfig, world: object, n: int, seed: int, batch: int = 250
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
        pending.append(
            Example(
                context=context,
                candidates=CANDIDATES,
                chosen=choice.index,
                propensity=choice.propensity,
                reward=reward,
            )
        )
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
    choice = serving.choose(
        {"segment": "adult", "device": "mobile"}, CANDIDATES, np.random.default_rng(0)
    )
    assert choice.model_version.endswith("/cells:" + report.partition)


def test_member_pmfs_are_what_each_member_would_serve_alone(
    interaction_run: tuple[Policy, Policy, float],
) -> None:
    """Every member's own pmf: the cells' puts the interaction's winner first in each cell,
    the baseline's is the same everywhere, and the served pmf is the cells' floored."""
    _, serving, _ = interaction_run
    assert isinstance(serving, EnsemblePolicy)
    floor = serving.floor(len(CANDIDATES))
    baselines = []
    for segment in SEGMENTS:
        for device in DEVICES:
            context: Context = {"segment": segment, "device": device}
            pmfs = serving.member_pmfs(context, CANDIDATES)
            assert set(pmfs) == {"baseline", "cells", "vw"}
            for pmf in pmfs.values():
                assert pmf.sum() == pytest.approx(1.0) and pmf.min() >= 0.0
            assert int(np.argmax(pmfs["cells"])) == int(np.argmax(_interaction(context)))
            served = serving.pmf(context, CANDIDATES)
            assert served == pytest.approx(floor_pmf(pmfs["cells"].tolist(), floor), rel=1e-9)
            baselines.append(pmfs["baseline"])
    assert all(np.array_equal(b, baselines[0]) for b in baselines)


def test_without_context_effect_the_cells_collapse_onto_the_baseline() -> None:
    """When the context does not matter, whatever partition wins the search, its cells'
    Thompson probabilities stay close to the global model's (the empirical-Bayes prior of a
    level whose cells look alike is strong), and the served pmf favours v1."""
    _, serving, tail = _run(VWCBConfig(), _flat, 4000, seed=5)
    assert isinstance(serving, EnsemblePolicy)
    rng = np.random.default_rng(0)
    keys = tuple(c.key for c in CANDIDATES)
    for _ in range(20):
        pmfs = serving._member_pmfs(_context(rng), CANDIDATES, keys, {}, with_vw=False)
        cells = pmfs.get("cells", pmfs["baseline"])
        assert np.abs(cells - pmfs["baseline"]).sum() / 2 < 0.1
    assert tail > 0.28  # v1 is worth 0.3, uniform 0.233


def _set(policy: EnsemblePolicy, member: str, gain: float, half_width: float) -> None:
    """Give ``member`` a gain estimate over 10,000 examples with this 95% half-width."""
    n = 10_000.0
    sd = half_width / 1.96 * np.sqrt(n)
    policy._estimates[member] = _Estimate(n, gain * n, (sd**2 + gain**2) * n)


@pytest.mark.parametrize(
    ("partition", "cells", "vw", "member", "mix"),
    [
        (("segment",), None, None, "cells:segment", 1.0),  # no evidence: cells serve
        (("segment",), 0.005, None, "cells:segment", 1.0),  # undecided: cells serve
        (("segment",), -0.02, None, "mix:cells:segment", PROBE),  # credibly worse: probe
        (("segment",), 0.01, 0.05, "vw", 1.0),  # VW credibly better: VW
        (("segment",), 0.03, 0.025, "cells:segment", 1.0),  # VW not better than cells
        ((), None, 0.005, "mix:vw", PROBE),  # no partition: VW probes
        ((), None, -0.02, "baseline", 0.0),  # VW credibly worse: baseline
    ],
)
def test_serving_rule(
    partition: tuple[str, ...], cells: float | None, vw: float | None, member: str, mix: float
) -> None:
    """The cells serve unless credibly worse than the baseline (then they keep a probe share);
    VW serves only once credibly better than the baseline and than the cells' estimate."""
    policy = EnsemblePolicy(VWCBConfig())
    policy._cells.learn({"segment": "s0"}, "v0", 1.0)
    if cells is not None:
        _set(policy, "cells", cells, 0.01)
    if vw is not None:
        _set(policy, "vw", vw, 0.01)
    policy._cells.ranked = lambda: [(partition, 0.0)]  # type: ignore[method-assign]
    policy._select(rank=True)
    report = policy.serving_report()
    assert (report.member, report.mix) == (member, pytest.approx(mix))


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
        np.testing.assert_array_equal(
            restored.pmf(context, CANDIDATES), learner.pmf(context, CANDIDATES)
        )
    more = [
        Example(context=c, candidates=CANDIDATES, chosen=i % 3, propensity=0.4, reward=float(i % 2))
        for i, c in enumerate(contexts)
    ]
    learner.learn(more)
    restored.learn(more)
    after, expected = (
        msgspec.msgpack.decode(p.snapshot(), type=_EnsembleState) for p in (restored, learner)
    )
    assert msgspec.structs.replace(after, vw=b"") == msgspec.structs.replace(expected, vw=b"")
    for context in contexts:
        np.testing.assert_array_equal(
            restored.pmf(context, CANDIDATES), learner.pmf(context, CANDIDATES)
        )


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
    floor = policy.floor(len(CANDIDATES))
    contexts = [_context(rng) for _ in range(40)]
    for context, choice in zip(
        contexts, policy.choose_many(contexts, CANDIDATES, np.random.default_rng(2)), strict=True
    ):
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
        context: Context = {
            "id": f"u{i}",
            "a": f"a{i % 2}",
            "b": f"b{i % 3}",
            "c": True,
            "d": "late",
            "x": 0.5,
        }
        cells.learn(context, "v0", float(rng.random() < 0.5))
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


def test_serving_looks_up_the_shipped_probabilities(
    interaction_run: tuple[Policy, Policy, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A policy restored from a snapshot serves the experiment's candidates, in any order, from
    the table the snapshot ships: no Thompson probability is computed at serving time."""
    learner, _, _ = interaction_run
    served = build_policy(VWCBConfig(), [], snapshot=learner.snapshot(), version="2")
    keys = tuple(learner._cells.arms)  # type: ignore[attr-defined]
    for candidates in (
        tuple(Candidate(key=k) for k in keys),
        tuple(Candidate(key=k) for k in reversed(keys)),
    ):
        _serve_without_computing(served, candidates, monkeypatch)


def _serve_without_computing(
    served: Policy, candidates: tuple[Candidate, ...], monkeypatch: pytest.MonkeyPatch
) -> None:

    def computed(*_: object) -> None:
        raise AssertionError("Thompson probabilities computed while serving")

    monkeypatch.setattr("bandits.ensemble.thompson_probabilities", computed)
    monkeypatch.setattr("bandits.cells.best_probabilities", computed)
    rng = np.random.default_rng(5)
    for _ in range(100):
        context = _context(rng)
        choice = served.choose(context, candidates, rng)
        assert choice.propensity == pytest.approx(served.pmf(context, candidates)[choice.index])


def _switching(n_before: int) -> object:
    """The interaction world, whose best variant moves by one after ``n_before`` calls."""
    calls = [0]

    def world(context: Context) -> np.ndarray:
        calls[0] += 1
        rates = _interaction(context)
        return np.roll(rates, 1) if calls[0] > n_before else rates

    return world


def test_a_change_of_the_world_is_detected_and_old_evidence_discounted() -> None:
    """When every cell's best variant moves, the drift detector fires, the statistics are
    discounted, and the ensemble serves the new best variants within a few thousand
    decisions (without the reset, 6,000 examples of the old world would outweigh them)."""
    learner, _, tail = _run(VWCBConfig(), _switching(6000), 10_000, seed=11)
    assert isinstance(learner, EnsemblePolicy)
    assert learner.serving_report().changes >= 1
    assert tail > 0.4  # the new oracle earns 0.5, best single variant 0.23


def test_the_default_floor_falls_with_evidence_to_its_minimum() -> None:
    """With the default min_propensity the ensemble's floor is 0.1/n until 5,000 examples, then
    falls like 1/sqrt(examples) to 0.03/n; an explicit min_propensity stays fixed."""
    config = VWCBConfig()
    assert config.floor(4, examples=1_000) == pytest.approx(0.1 / 4)
    assert config.floor(4, examples=20_000) == pytest.approx(0.05 / 4)
    assert config.floor(4, examples=10**7) == pytest.approx(0.03 / 4)
    assert config.floor(4) == pytest.approx(0.1 / 4)
    fixed = VWCBConfig(min_propensity=0.02)
    assert fixed.floor(4, examples=10**7) == pytest.approx(0.02)


def test_an_alarm_of_the_cell_level_test_discounts_old_evidence() -> None:
    """The learner feeds the cell-level test (bandits.drift.CellShift) the served cell's
    prediction for every example; its alarm discounts the statistics like the CUSUM's."""
    learner, _, _ = _run(VWCBConfig(), _interaction, 2000, seed=4)
    assert isinstance(learner, EnsemblePolicy)
    shift = learner._shift
    assert sum(t[0] for t in shift.terms.values()) == shift.seen > 0
    before = learner.serving_report().changes
    weight = learner._cells._totals[0] / learner._cells.scale
    # Prime the test: a full window whose one cell fell far short of its predictions.
    shift.terms = {"1\x1fyoung\x1fv0": [500.0, 10.0, 250.0, 125.0, 0.0]}
    shift.seen, shift.windows = SHIFT_WINDOW - 1, SHIFT_WARMUP
    rng = np.random.default_rng(0)
    context = _context(rng)
    learner.learn(
        [Example(context=context, candidates=CANDIDATES, chosen=0, propensity=0.5, reward=0.0)]
    )
    assert learner.serving_report().changes == before + 1
    after = learner._cells._totals[0] / learner._cells.scale
    assert after == pytest.approx(weight * DRIFT_KEEP + 1.0, rel=0.01)
    assert shift.alarms == 1 and learner._shift.seen == 0


def test_a_snapshot_without_the_cell_level_test_restores(
    interaction_run: tuple[Policy, Policy, float],
) -> None:
    """Snapshots written before the cell-level test existed restore with a fresh one."""
    learner, _, _ = interaction_run
    raw = msgspec.msgpack.decode(learner.snapshot())
    del raw["shift"]
    restored = build_policy(VWCBConfig(), [], snapshot=msgspec.msgpack.encode(raw), version="2")
    assert isinstance(restored, EnsemblePolicy)
    assert restored._shift.seen == 0 and restored._shift.terms == {}


def test_a_serving_worker_patches_newer_snapshots_like_a_restore() -> None:
    """With epsilon exploration (decisions depend on VW's weights alone) a serving ensemble
    takes each newer snapshot in place — VW's weight rows copied, no workspace loaded — and
    then decides exactly as one restored from it: members' pmfs, the served pmf, the report."""
    config = VWCBConfig(exploration="epsilon", epsilon=0.05)
    rng = np.random.default_rng(5)
    learner = build_policy(config, [])
    serving = build_policy(config, [], snapshot=learner.snapshot(), version="0")
    assert isinstance(serving, EnsemblePolicy)
    contexts = [_context(rng) for _ in range(30)]
    for step in range(1, 5):
        batch = []
        for _ in range(400):
            context = _context(rng)
            choice = learner.choose(context, CANDIDATES, rng)
            reward = float(rng.random() < _interaction(context)[choice.index])
            batch.append(
                Example(
                    context=context,
                    candidates=CANDIDATES,
                    chosen=choice.index,
                    propensity=choice.propensity,
                    reward=reward,
                )
            )
        learner.learn(batch)
        snapshot = learner.snapshot()
        assert serving.patch(snapshot, version=str(step))
        restored = build_policy(config, [], snapshot=snapshot, version=str(step))
        assert isinstance(restored, EnsemblePolicy)
        assert serving.version == str(step)
        assert serving.serving_report() == restored.serving_report()
        for context in contexts:
            np.testing.assert_array_equal(
                serving.pmf(context, CANDIDATES), restored.pmf(context, CANDIDATES)
            )
            np.testing.assert_array_equal(
                serving._vw.pmf(context, CANDIDATES), restored._vw.pmf(context, CANDIDATES)
            )
        assert serving.choose(contexts[0], CANDIDATES, np.random.default_rng(step)) == (
            restored.choose(contexts[0], CANDIDATES, np.random.default_rng(step))
        )


def test_patch_refuses_what_it_cannot_take() -> None:
    """SquareCB (state beyond the weights), another VW shape, or bytes that are no ensemble:
    False and nothing changed (the worker then rebuilds)."""
    squarecb = build_policy(VWCBConfig(), [])
    assert isinstance(squarecb, EnsemblePolicy)
    assert not squarecb.patch(squarecb.snapshot(), version="1")
    epsilon = VWCBConfig(exploration="epsilon", epsilon=0.05)
    serving = build_policy(epsilon, [], version="0")
    assert isinstance(serving, EnsemblePolicy)
    other = build_policy(VWCBConfig(exploration="epsilon", epsilon=0.05, interactions=("UA",)), [])
    assert not serving.patch(other.snapshot(), version="1")
    assert not serving.patch(b"not a snapshot", version="1")
    assert serving.version == "0"
