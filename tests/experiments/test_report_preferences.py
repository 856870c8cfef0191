"""What an adaptive policy prefers per segment now, from logged decisions in real chdb."""

from __future__ import annotations

import re
import uuid

import numpy as np
import pandas as pd
import pytest

from event_log.rows import Exposure
from event_log.store import ClickHouseEventLog
from experiments.reports.build import build_report
from experiments.reports.html import render_report_page
from experiments.reports.preferences import recent_start
from experiments.reports.results import AllocationBucket, ReportOptions
from experiments.reports.text import render_report_text
from tailor_contract.definitions import Experiment, Status, Variant
from tailor_contract.policies import ThompsonConfig

T0 = 1_700_000_000_000
HOUR = 3_600_000
ARMS = ("a", "b", "c")
EXPERIMENT = Experiment(
    key="prefs",
    placement="home",
    variants=[Variant(key=a) for a in ARMS],
    default_variant="a",
    policy=ThompsonConfig(segment_by="plan"),
    status=Status.RUNNING,
)


def _log(event_log: ClickHouseEventLog) -> pd.DataFrame:
    """2,000 decisions over 20 hours: uniform for 10 hours, then ``b`` for ``plan=pro`` and
    ``a`` for ``plan=free`` (90% each); the device says nothing. A few holdout rows."""
    rng = np.random.default_rng(11)
    rows, kept = [], []
    for i in range(2000):
        ts = T0 + i * 36_000
        plan = "pro" if rng.random() < 0.4 else "free"
        device = "mobile" if rng.random() < 0.5 else "desktop"
        if ts < T0 + 10 * HOUR:
            variant = ARMS[int(rng.integers(0, 3))]
        else:
            likely = "b" if plan == "pro" else "a"
            variant = likely if rng.random() < 0.9 else "c"
        holdout = i % 50 == 0
        rows.append(
            Exposure(
                event_id=uuid.uuid4(),
                decision_id=uuid.uuid4().hex,
                ts_ms=ts,
                unit_id=f"u{i}",
                experiment="prefs",
                experiment_version=1,
                placement="home",
                variant="a" if holdout else variant,
                propensity=1.0 if holdout else 0.3,
                policy="default" if holdout else "thompson",
                policy_version="1",
                reason="holdout" if holdout else "policy",
                holdout=holdout,
                context={"plan": plan, "device": device},
            ).row()
        )
        if not holdout:
            kept.append((ts, plan, device, variant))
    event_log.insert("exposures", rows, uuid.uuid4().hex)
    return pd.DataFrame(kept, columns=["ts", "plan", "device", "variant"])


def test_recent_start_holds_a_tenth_of_the_decisions() -> None:
    """The window starts at the latest bucket from which at least 10% of decisions follow."""
    buckets = [
        AllocationBucket(start=f"2024-01-01T0{i}:00:00Z", decisions=[n, 0], shares=[1.0, 0.0])
        for i, n in enumerate([50, 30, 10, 6, 4])
    ]
    assert recent_start(buckets) == "2024-01-01T03:00:00Z"  # 6 + 4 = 10 of 100
    assert recent_start(buckets[:1]) == "2024-01-01T00:00:00Z"
    assert recent_start([]) is None


@pytest.mark.parametrize("segment", ["", "device"])
def test_the_policy_prefers_per_segment_what_it_chose_lately(
    event_log: ClickHouseEventLog, segment: str
) -> None:
    """Per value of the policy's ``segment_by`` (and the report's segment): each arm's share of
    the decisions since the window's start, as pandas counts them; ``plan=pro`` prefers ``b``,
    ``plan=free`` ``a`` (what the whole period's allocation would not show); JSON, text and page."""
    frame = _log(event_log)
    options = ReportOptions(off_policy=False, segment=segment)
    report = build_report(event_log, EXPERIMENT, options, now_ms=T0 + 21 * HOUR)
    section = report.adaptive
    assert section is not None and section.bucket == "hour"
    since = pd.Timestamp(section.preferences_since).value // 1_000_000
    assert since == T0 - T0 % HOUR + 18 * HOUR  # the last bucket alone is under 10%
    recent = frame[frame.ts >= since]
    by = {(p.attribute, p.value): p for p in section.preferences}
    expected = {("plan", "pro"), ("plan", "free")}
    if segment:
        expected |= {("device", "mobile"), ("device", "desktop")}
    assert set(by) == expected
    for (attribute, value), pref in by.items():
        mine = recent[recent[attribute] == value]
        counts = mine.variant.value_counts()
        assert pref.decisions == len(mine)
        assert pref.shares == pytest.approx([counts.get(a, 0) / len(mine) for a in ARMS])
        assert pref.preferred == counts.idxmax()
    assert by[("plan", "pro")].preferred == "b" and by[("plan", "pro")].share > 0.8
    assert by[("plan", "free")].preferred == "a" and by[("plan", "free")].share > 0.8
    text = render_report_text(report)
    assert re.search(r"^plan=pro\s+[\d,]+\s+b \(\d+%\)", text, re.M), text
    page = render_report_page(report)
    assert "What the policy prefers now, per segment" in page
    assert "plan = pro" in page and "<strong>b</strong>" in page
