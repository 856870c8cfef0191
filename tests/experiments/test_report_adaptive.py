"""The report of an adaptive experiment, on a simulated Thompson log in a real chdb event log.

A Thompson-like policy over three arms (true purchase rates 8%, 10%, 16%) finds the best arm;
a randomised holdout is served the control. The report must read the policy's value against the
holdout — with an interval that covers the simulated truth — not the per-arm comparisons.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from event_log.store import ClickHouseEventLog, open_event_log
from experiments.reports.build import build_report
from experiments.reports.html import render_report_page
from experiments.reports.results import ExperimentReport, ReportOptions
from experiments.reports.text import render_report_text
from tailor_contract.definitions import Experiment, RewardRule, RewardSpec, Variant
from tailor_contract.policies import ThompsonConfig
from tests.experiments.report_rows import DAY, T0, Log, insert_log

ARMS = ("a", "b", "c")
TRUE_RATE = {"a": 0.08, "b": 0.10, "c": 0.16}
HOUR = 3_600_000


def _experiment(key: str) -> Experiment:
    return Experiment(
        key=key,
        placement="home",
        variants=[Variant(key=a) for a in ARMS],
        default_variant="a",
        primary_metric="purchase",
        policy=ThompsonConfig(),
        reward=RewardSpec(rules=[RewardRule(type="purchase", reward=1.0)]),
    )


def _propensities(rng: np.random.Generator, wins: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """Probability matching: P(arm is best) under Beta(1 + wins, 1 + losses), floored at 2%."""
    draws = rng.beta(1 + wins, 1 + trials - wins, size=(2000, len(ARMS)))
    best = np.bincount(draws.argmax(axis=1), minlength=len(ARMS)) / 2000
    p = 0.02 + (1 - 0.02 * len(ARMS)) * best
    return p / p.sum()


def thompson_log(
    rng: np.random.Generator, key: str, units: int, holdout: float, repeat: bool
) -> tuple[Log, float]:
    """A Thompson log over three days and the true gain of its traffic over the control's rate.

    Units arrive in 36 batches; the policy's propensities are updated after each batch from the
    outcomes seen so far. With ``repeat``, a unit gets one to three decisions (it may see several
    arms); it converts at the true rate of its first arm.
    """
    wins, trials = np.zeros(len(ARMS)), np.zeros(len(ARMS))
    exposures, outcomes, first_rates = [], [], []
    batches = np.array_split(np.arange(units), 36)
    for b, batch in enumerate(batches):
        p = _propensities(rng, wins, trials)
        for u in batch:
            start = T0 + b * 2 * HOUR + int(rng.integers(0, 2 * HOUR))
            in_holdout = rng.random() < holdout
            n_dec = int(rng.integers(1, 4)) if repeat and not in_holdout else 1
            first = ""
            for j in range(n_dec):
                k = 0 if in_holdout else int(rng.choice(len(ARMS), p=p))
                first = first or ARMS[k]
                exposures.append(
                    dict(
                        event_id=uuid.uuid4(),
                        decision_id=uuid.uuid4().hex,
                        ts=start + j * 60_000,
                        unit_id=f"{key}-{u}",
                        experiment=key,
                        variant=ARMS[k],
                        propensity=1.0 if in_holdout else float(p[k]),
                        policy="default" if in_holdout else "thompson",
                        reason="holdout" if in_holdout else "policy",
                        holdout=int(in_holdout),
                        device="mobile",
                    )
                )
            converted = rng.random() < TRUE_RATE[first]
            if not in_holdout:
                first_rates.append(TRUE_RATE[first])
                trials[ARMS.index(first)] += 1
                wins[ARMS.index(first)] += converted
            if converted:
                outcomes.append(
                    dict(
                        event_id=uuid.uuid4(),
                        ts=start + 3 * 60_000,
                        decision_id="",
                        unit_id=f"{key}-{u}",
                        experiment=key,
                        type="purchase",
                        value=0.0,
                    )
                )
    log = Log(exposures=pd.DataFrame(exposures), outcomes=pd.DataFrame(outcomes))
    return log, float(np.mean(first_rates)) - TRUE_RATE["a"]


@pytest.fixture(scope="module")
def event_log(chdb_dir: Path) -> Iterator[ClickHouseEventLog]:
    """A database of this module's own."""
    log = open_event_log(f"chdb://{chdb_dir}?database=a{uuid.uuid4().hex[:12]}")
    log.migrate()
    try:
        yield log
    finally:
        log.close()


@pytest.fixture(scope="module")
def with_holdout(event_log: ClickHouseEventLog) -> tuple[ExperimentReport, Log, float]:
    """The report of a Thompson experiment with a 15% holdout and repeated decisions."""
    log, truth = thompson_log(np.random.default_rng(5), "bandit", 8000, 0.15, repeat=True)
    insert_log(event_log, log)
    report = build_report(event_log, _experiment("bandit"), ReportOptions(), now_ms=T0 + 4 * DAY)
    return report, log, truth


def _interval(headline: str) -> tuple[float, float]:
    found = re.search(r"95% CI \[(-?[\d.]+), (-?[\d.]+)\]", headline)
    assert found, headline
    return float(found[1]) / 100, float(found[2]) / 100


def test_thompson_headline_is_the_gain_over_the_holdout(
    with_holdout: tuple[ExperimentReport, Log, float],
) -> None:
    """The headline says the bandit earns more than the holdout, with an interval covering the
    simulated truth; the A/B reading ("No clear difference") is not the verdict."""
    report, _, truth = with_holdout
    headline = report.verdict.headline
    assert headline.startswith("The bandit earns +"), headline
    assert re.match(
        r"The bandit earns \+[\d.]+ pp over the holdout on purchase, 95% CI \[", headline
    )
    assert "No clear difference" not in headline
    lower, upper = _interval(headline)
    assert lower > 0
    assert lower <= truth <= upper, (truth, headline)
    assert report.verdict.status == "winner"
    section = report.adaptive
    assert section is not None and section.source == "holdout" and section.significant
    assert section.gain is not None and section.gain.contains(truth)
    # per-arm comparisons are listed, labelled descriptive, never as the verdict
    per_arm = [d for d in report.verdict.details if "per-arm comparison" in d]
    assert per_arm and all(d.startswith("Descriptive") for d in per_arm)
    assert any("biases comparisons" in d for d in report.verdict.details)


def test_allocation_over_time_moves_to_the_best_arm(
    with_holdout: tuple[ExperimentReport, Log, float],
) -> None:
    """Shares per bucket sum to 1, the decisions add up to the log's, the best arm gains."""
    report, log, _ = with_holdout
    section = report.adaptive
    assert section is not None
    assert section.bucket == "6 hours"  # three days of decisions
    assert len(section.allocation) in (12, 13)  # buckets start on the epoch
    decided = log.exposures[log.exposures.holdout == 0]
    counts = decided.variant.value_counts()
    for i, arm in enumerate(ARMS):
        assert sum(b.decisions[i] for b in section.allocation) == counts.get(arm, 0)
    for b in section.allocation:
        assert math.isclose(sum(b.shares), 1.0)
    c = ARMS.index("c")
    assert section.allocation[-1].shares[c] > 0.8 > section.allocation[0].shares[c]
    assert "sent" in report.verdict.headline and "to c" in report.verdict.headline


def test_units_in_several_arms_are_counted_and_disclosed(
    with_holdout: tuple[ExperimentReport, Log, float],
) -> None:
    """Units exposed to more than one arm: counted as pandas counts them, and said."""
    report, log, _ = with_holdout
    decided = log.exposures[log.exposures.holdout == 0]
    several = int((decided.groupby("unit_id").variant.nunique() > 1).sum())
    section = report.adaptive
    assert section is not None
    assert section.units_in_several_arms == several > 0
    expected = len(decided) / decided.unit_id.nunique()
    assert section.decisions_per_unit == pytest.approx(expected)
    assert any(f"{several:,} of" in n and "more than one arm" in n for n in section.notes)


def test_adaptive_section_is_rendered(
    with_holdout: tuple[ExperimentReport, Log, float],
) -> None:
    """The text report and the page carry the policy's value, the allocation and the note."""
    report, _, _ = with_holdout
    text = render_report_text(report)
    page = render_report_page(report)
    for out in (text, page):
        assert "allocation" in out.lower()
        assert "descriptive" in out.lower()
    assert "adaptive policy" in text
    assert 'id="chart-allocation"' in page


def test_without_a_holdout_the_gain_is_off_policy(event_log: ClickHouseEventLog) -> None:
    """No holdout: the gain is the deployed policy's reward per decision against always the
    control (SNIPS with the logged propensities), and its interval covers the truth."""
    log, truth = thompson_log(np.random.default_rng(8), "noho", 6000, 0.0, repeat=False)
    insert_log(event_log, log)
    report = build_report(event_log, _experiment("noho"), ReportOptions(), now_ms=T0 + 4 * DAY)
    section = report.adaptive
    assert section is not None and section.source == "off_policy"
    assert section.gain is not None and section.gain.contains(truth), (truth, section.gain)
    assert section.gain.lower > 0
    assert report.verdict.headline.startswith("The bandit earns +")
    assert "always a" in report.verdict.headline
    # the valid per-arm estimate (inverse propensity, one decision per unit) covers each arm's
    # true rate, where the descriptive first-exposure rates need not
    for arm in section.arms:
        assert arm.value is not None and arm.value.contains(TRUE_RATE[arm.arm]), arm


def test_value_over_time_from_the_holdout(
    with_holdout: tuple[ExperimentReport, Log, float],
) -> None:
    """The holdout comparison cumulated per bucket of first exposure: unit counts as pandas
    counts them, always-valid intervals, the last point is the headline's gain."""
    report, log, _ = with_holdout
    section = report.adaptive
    assert section is not None and section.gain is not None
    points = section.value_over_time
    assert section.value_bucket == "day" and len(points) >= 3
    assert points[-1].gain == section.gain
    first = log.exposures.sort_values("ts").groupby("unit_id").first()
    for point in points:
        end = pd.Timestamp(point.start).value // 1_000_000 + DAY
        cohort = first[first.ts < end]
        assert point.baseline_count == int((cohort.holdout == 1).sum())
        assert point.count == int((cohort.holdout == 0).sum())
    assert [p.count for p in points] == sorted(p.count for p in points)
    # always-valid: later points are not wider for lack of looks
    assert points[-1].gain.width < points[0].gain.width


def test_value_over_time_off_policy(event_log: ClickHouseEventLog) -> None:
    """Without a holdout the value over time is off-policy, cumulated per allocation bucket of
    decision time: decisions so far and the control's as pandas counts them, the last point is
    the headline's gain, and asking for a segment (a second query) changes none of it."""
    log, _ = thompson_log(np.random.default_rng(9), "overtime", 3000, 0.0, repeat=False)
    insert_log(event_log, log)
    experiment = _experiment("overtime")
    report = build_report(event_log, experiment, ReportOptions(), now_ms=T0 + 4 * DAY)
    section = report.adaptive
    assert section is not None and section.source == "off_policy" and section.gain is not None
    points = section.value_over_time
    assert section.value_bucket == "6 hours" and len(points) >= 10
    assert points[-1].gain == section.gain
    ts = log.exposures.ts
    for point in points:
        end = pd.Timestamp(point.start).value // 1_000_000 + 6 * HOUR
        assert point.count == int((ts < end).sum())
        assert point.baseline_count == int(((ts < end) & (log.exposures.variant == "a")).sum())
        assert point.gain.lower <= point.gain.estimate <= point.gain.upper
    segmented = build_report(
        event_log, experiment, ReportOptions(segment="device"), now_ms=T0 + 4 * DAY
    )
    assert segmented.adaptive is not None and segmented.off_policy is not None
    assert segmented.adaptive.value_over_time == points
    assert report.off_policy is not None
    for mine, theirs in zip(report.off_policy.policies, segmented.off_policy.policies, strict=True):
        assert mine.estimate.snips.estimate == pytest.approx(theirs.estimate.snips.estimate, 1e-9)
    text = render_report_text(report)
    assert "value over time against always a (cumulative, per 6 hours)" in text
    assert 'id="chart-value"' in render_report_page(report)
