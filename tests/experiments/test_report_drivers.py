"""The report's feature importance for learning policies, from logged decisions in real chdb."""

from __future__ import annotations

import re
import uuid

import msgspec
import numpy as np

from event_log.rows import Exposure
from event_log.store import ClickHouseEventLog
from experiments.reports.build import build_report
from experiments.reports.drivers import drivers
from experiments.reports.html import render_report_page
from experiments.reports.results import ReportOptions
from tailor_contract.definitions import Experiment, Status, Variant
from tailor_contract.policies import ThompsonConfig

T0 = 1_700_000_000_000


def _log_decisions(event_log: ClickHouseEventLog, n: int = 600) -> None:
    """A policy that picks ``b`` for ``plan=pro`` and ``a`` for ``plan=free`` (90%), whatever
    the device; a unique ``session`` id per decision; a few fixed-split rows that must not count."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        plan = "pro" if rng.random() < 0.5 else "free"
        likely = "b" if plan == "pro" else "a"
        variant = likely if rng.random() < 0.9 else ("a" if likely == "b" else "b")
        reason = "policy" if i % 20 else "split"
        rows.append(
            Exposure(
                event_id=uuid.uuid4(),
                decision_id=uuid.uuid4().hex,
                ts_ms=T0 + i * 1000,
                unit_id=f"u{i}",
                experiment="learn",
                experiment_version=1,
                placement="home",
                variant=variant,
                propensity=0.5,
                policy="thompson",
                policy_version="1",
                reason=reason,
                holdout=False,
                context={
                    "plan": plan,
                    "device": "mobile" if rng.random() < 0.5 else "desktop",
                    "session": uuid.uuid4().hex,
                },
            ).row()
        )
    event_log.insert("exposures", rows, uuid.uuid4().hex)


def test_drivers_rank_the_attribute_the_policy_follows(event_log: ClickHouseEventLog) -> None:
    """``plan`` drives the choice (V ≈ 0.8), ``device`` does not (V ≈ 0); only decisions a
    policy made count; an id-like attribute is pooled beyond 50 values and does not rank
    first."""
    _log_decisions(event_log)
    found = drivers(event_log, "learn", 0, T0 + 10**9)
    by_name = {d.feature: d for d in found}
    assert found[0].feature == "plan" and 0.7 < found[0].importance < 0.9
    assert by_name["device"].importance < 0.15
    assert by_name["plan"].decisions == 570  # 600 minus the 30 split rows
    assert [d.importance for d in found] == sorted((d.importance for d in found), reverse=True)


def test_report_of_a_learning_policy_lists_its_drivers(event_log: ClickHouseEventLog) -> None:
    """A Thompson experiment's report carries ``drivers``; a fixed split's does not."""
    _log_decisions(event_log)
    learning = Experiment(
        key="learn",
        placement="home",
        variants=[Variant(key="a"), Variant(key="b")],
        default_variant="a",
        policy=ThompsonConfig(),
        status=Status.RUNNING,
    )
    options = ReportOptions(off_policy=False)
    report = build_report(event_log, learning, options, now_ms=T0 + 10**9)
    assert report.drivers is not None and report.drivers[0].feature == "plan"
    fixed = Experiment(
        key="learn",
        placement="home",
        variants=[Variant(key="a"), Variant(key="b")],
        default_variant="a",
        status=Status.RUNNING,
    )
    assert build_report(event_log, fixed, options, now_ms=T0 + 10**9).drivers is None


def test_the_page_shows_the_drivers_most_important_first(event_log: ClickHouseEventLog) -> None:
    """The HTML page has a "What drives the choice" table: ``plan`` first with its Cramér's V
    and a bar as wide as it; a fixed split's page has no such section."""
    _log_decisions(event_log)
    learning = Experiment(
        key="learn",
        placement="home",
        variants=[Variant(key="a"), Variant(key="b")],
        default_variant="a",
        policy=ThompsonConfig(),
        status=Status.RUNNING,
    )
    report = build_report(event_log, learning, ReportOptions(off_policy=False), now_ms=T0 + 10**9)
    assert report.drivers is not None
    page = render_report_page(report)
    section = page.split('<section class="drivers">', 1)[1].split("</section>", 1)[0]
    assert "What drives the choice" in section
    rows = re.findall(
        r"<tr><td>([^<]+)</td><td>([\d.]+)</td><td><span class=\"bar\" "
        r"style=\"width:(\d+)%\">",
        section,
    )
    assert rows[0][0] == "plan"
    assert [r[0] for r in rows] == [d.feature for d in report.drivers]
    top = report.drivers[0]
    assert rows[0][1] == f"{top.importance:.2f}" and int(rows[0][2]) == round(top.importance * 100)
    fixed = msgspec.structs.replace(report, drivers=None)
    assert "What drives the choice" not in render_report_page(fixed)
