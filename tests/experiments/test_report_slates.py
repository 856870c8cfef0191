"""The slates section of a report: click rates per slot and item, off-policy per slot.

Logs are simulated with the real ``vw_slates`` policy in a position-based click world whose
per-slot click rates under random order and under any fixed ranking are known exactly.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pytest

from bandits.base import Candidate
from bandits.slates import SlateExample
from bandits.vw_slates import VWSlatesPolicy
from experiments.reports.slate_verdict import slate_verdict
from experiments.reports.slates import slate_section
from tailor_contract.definitions import Experiment, Variant
from tailor_contract.policies import VWSlatesConfig

ITEMS = [f"i{k}" for k in range(5)]
CONFIG = VWSlatesConfig(slots=3, learning_rate=0.05)
EXPERIMENT = Experiment(
    key="carousel",
    placement="home",
    variants=[Variant(key=k, features={"kind": k}) for k in ITEMS],
    default_variant="i0",
    policy=CONFIG,
    primary_metric="click",
    reward_window_s=60,
)
CANDIDATES = [Candidate(key=k, features={"kind": k}) for k in ITEMS]
EXAMINE = np.array([1.0, 0.6, 0.4])
# attract[segment][item]: segment "a" likes i0 > i1 > ..., segment "b" the reverse.
ATTRACT = {"a": np.array([0.5, 0.35, 0.2, 0.1, 0.05]), "b": np.array([0.05, 0.1, 0.2, 0.35, 0.5])}
T0 = 1_700_000_000_000


def _simulate(n: int, seed: int) -> tuple[list[list[Any]], list[list[Any]], VWSlatesPolicy]:
    """Decide and learn ``n`` slates; every 10th decision is a holdout (the default order).

    Returns exposure rows and outcome rows as the report's queries return them, and the
    model as it stands at the end (before the last decisions' clicks would reach it)."""
    rng = np.random.default_rng(seed)
    policy = VWSlatesPolicy(CONFIG)
    exposures: list[list[Any]] = []
    outcomes: list[list[Any]] = []
    for d in range(n):
        segment = "a" if rng.random() < 0.5 else "b"
        context = {"segment": segment}
        ts = T0 + d
        did = f"d{d}"
        if d % 10 == 9:
            order, props, reason, holdout = [0, 1, 2], [1.0, 1.0, 1.0], "holdout", 1
        else:
            slate = policy.choose_slate(context, CANDIDATES, 3, rng)
            order = [s.index for s in slate.slots]
            props = [s.propensity for s in slate.slots]
            reason, holdout = "policy", 0
        clicks = rng.random(3) < EXAMINE * ATTRACT[segment][order]
        for j, (i, p) in enumerate(zip(order, props, strict=True)):
            exposures.append([did, j, ITEMS[i], p, reason, holdout, 5, {"segment": segment}, ts])
            if clicks[j]:
                # Half the clicks name the item, half the slot; one late click never counts.
                named = (-1, ITEMS[i]) if (d + j) % 2 else (j, "")
                outcomes.append([did, named[0], named[1], ts + 1000])
        if reason == "policy":
            policy.learn_slates([SlateExample(
                context=context, candidates=tuple(CANDIDATES), chosen=tuple(order),
                propensities=tuple(props), rewards=tuple(float(c) for c in clicks),
            )])  # fmt: skip
    outcomes.append(["d0", 0, "", T0 + 61_000])
    exposures.reverse()  # newest first, as the query returns them
    return exposures, outcomes, policy


@pytest.fixture(scope="module")
def simulated() -> tuple[list[list[Any]], list[list[Any]], VWSlatesPolicy]:
    """4,000 simulated slates (seed 3)."""
    return _simulate(4_000, seed=3)


def test_click_rates_per_slot_and_item_count_what_was_logged(
    simulated: tuple[list[list[Any]], list[list[Any]], VWSlatesPolicy],
) -> None:
    """Per slot, the policy's and the holdout's exposures and clicks are counted apart (a click
    naming the slot or the item, within the window); per item and slot the same."""
    exposures, outcomes, policy = simulated
    report = slate_section(exposures, outcomes, EXPERIMENT, model=policy, level=0.95)
    assert report is not None
    assert report.decisions == 4_000
    assert [s.slot for s in report.slots] == [0, 1, 2]
    assert [s.exposures for s in report.slots] == [3_600] * 3
    assert [s.holdout_exposures for s in report.slots] == [400] * 3
    assert sum(r.exposures for r in report.items if r.slot == 0) == 3_600
    clicked = {(str(o[0]), int(o[1]), str(o[2])) for o in outcomes[:-1]}
    slot0 = sum(
        1 for e in exposures
        if e[1] == 0 and e[4] == "policy"
        and ((e[0], 0, "") in clicked or (e[0], -1, e[2]) in clicked)
    )  # fmt: skip
    assert report.slots[0].clicks == slot0
    # The holdout always shows i0, i1, i2: its slot 0 rate is i0's, averaged over segments.
    assert report.slots[0].holdout_click_rate == pytest.approx(
        float(np.mean([ATTRACT["a"][0], ATTRACT["b"][0]])), abs=0.05
    )


def test_off_policy_per_slot_covers_random_order_and_the_learned_ranking(
    simulated: tuple[list[list[Any]], list[list[Any]], VWSlatesPolicy],
) -> None:
    """Per slot, the 95% IPS and SNIPS intervals of random order cover its exact click rate
    (examine[j] x the mean attraction), and those of the learned ranking cover the exact click
    rate of the model's greedy slate; the learned ranking beats random order in slot 0."""
    exposures, outcomes, policy = simulated
    report = slate_section(exposures, outcomes, EXPERIMENT, model=policy, level=0.95)
    assert report is not None
    greedy = {s: policy.ranking({"segment": s}, CANDIDATES, 3) for s in ("a", "b")}
    for e in report.estimates:
        j = e.slot
        random_truth = EXAMINE[j] * float(np.mean([ATTRACT[s].mean() for s in "ab"]))
        learned_truth = EXAMINE[j] * float(np.mean([ATTRACT[s][greedy[s][j]] for s in "ab"]))
        assert e.random_ips.contains(random_truth), (j, e.random_ips, random_truth)
        assert e.random_snips.contains(random_truth), (j, e.random_snips, random_truth)
        assert e.learned_ips is not None and e.learned_snips is not None
        assert e.learned_ips.contains(learned_truth), (j, e.learned_ips, learned_truth)
        assert e.learned_snips.contains(learned_truth), (j, e.learned_snips, learned_truth)
        assert (e.n, e.learned_n) == (3_600, 3_000)  # the latest 3,000 decisions
    first = report.estimates[0]
    assert first.learned_ips is not None
    assert first.learned_ips.lower > first.random_ips.upper


def test_without_a_model_only_random_order_is_estimated() -> None:
    """No published model: random order is still estimated per slot, the learned ranking is
    not, and a note says why; no slot exposure at all gives no section."""
    exposures, outcomes, _ = _simulate(300, seed=4)
    report = slate_section(exposures, outcomes, EXPERIMENT, model=None, level=0.95)
    assert report is not None
    assert all(e.learned_ips is None for e in report.estimates)
    assert report.notes and "No published model" in report.notes[0]
    assert slate_section([], [], EXPERIMENT, model=None, level=0.95) is None


def test_the_verdict_compares_whole_slates_with_the_holdout(
    simulated: tuple[list[list[Any]], list[list[Any]], VWSlatesPolicy],
) -> None:
    """The holdout's clicks per slate match its default order's exact value; the learned
    slates beat it (segment b dislikes the default order) and the verdict says so with the
    difference and its interval, one detail line per slot."""
    exposures, outcomes, policy = simulated
    report = slate_section(exposures, outcomes, EXPERIMENT, model=policy, level=0.95)
    assert report is not None and report.holdout_clicks_per_slate is not None
    default_truth = float(np.mean([EXAMINE @ ATTRACT[s][:3] for s in "ab"]))
    assert report.holdout_clicks_per_slate == pytest.approx(default_truth, abs=0.05)
    gain = report.gain_over_holdout
    assert gain is not None and gain.lower > 0
    assert gain.estimate == pytest.approx(report.clicks_per_slate - report.holdout_clicks_per_slate)
    verdict = slate_verdict(report, 0.95)
    assert verdict.status == "winner"
    assert verdict.headline.startswith("The ranked slates earn more clicks than the holdout")
    assert len(verdict.details) == 3 and verdict.details[0].startswith("Slot 0:")
    without_holdout = msgspec.structs.replace(report, gain_over_holdout=None,
                                              holdout_clicks_per_slate=None)  # fmt: skip
    plain = slate_verdict(without_holdout, 0.95)
    assert plain.status == "no_difference" and "no holdout" in plain.headline
    assert report.learned_clicks_per_slate is not None
    assert report.random_clicks_per_slate is not None
    assert report.learned_clicks_per_slate > report.random_clicks_per_slate


def test_a_slot_nobody_clicked_gets_an_interval_not_a_point() -> None:
    """With no click in a slot the estimates are 0 with the exact interval of 0 successes in
    the weights' effective sample size (here 40 uniform rows: upper 1 - 0.025^(1/40)), not a
    zero-width interval from a zero plug-in variance."""
    exposures = [
        [f"d{i}", 0, "i0" if i % 2 else "i1", 0.5, "policy", 0, 2, {}, T0 + i] for i in range(40)
    ]
    report = slate_section(exposures, [], EXPERIMENT, model=None, level=0.95)
    assert report is not None
    [estimate] = report.estimates
    for iv in (estimate.random_ips, estimate.random_snips):
        assert (iv.estimate, iv.lower) == (0.0, 0.0)
        assert iv.upper == pytest.approx(1 - 0.025 ** (1 / 40))
