"""The per-arm tables of a ranked-slates report count a slate once, by its slot-0 item.

A ``vw_slates`` decision logs one exposure per slot; read as arm exposures, a 3-slot slate would
count three times and put its unit in the arm of whichever item has the lowest variant index.
"""

from __future__ import annotations

import uuid

from event_log.rows import Exposure, Outcome
from event_log.store import ClickHouseEventLog
from experiments.reports.build import build_report
from experiments.reports.html import render_report_page
from experiments.reports.results import ReportOptions
from experiments.reports.text import render_report_text
from tailor_contract.definitions import Experiment, Variant
from tailor_contract.policies import VWSlatesConfig

T0 = 1_700_000_000_000
EXPERIMENT = Experiment(
    key="carousel",
    placement="home",
    variants=[Variant(key=k) for k in ("i0", "i1", "i2")],
    default_variant="i0",
    policy=VWSlatesConfig(slots=3),
    primary_metric="click",
)
# unit -> the slate it saw (slot 0 first)
SLATES = {"u0": ("i2", "i0", "i1"), "u1": ("i2", "i1", "i0"), "u2": ("i1", "i2", "i0")}


def _slot(unit: str, j: int, item: str) -> tuple[object, ...]:
    return Exposure(
        event_id=uuid.uuid4(), decision_id=f"d-{unit}", ts_ms=T0, unit_id=unit,
        experiment="carousel", experiment_version=1, placement="home", variant=item,
        propensity=0.5, policy="vw_slates", policy_version="", reason="policy", holdout=False,
        context={"device": "d" if unit == "u2" else "m"}, slot=j, item=item, candidates=3,
    ).row()  # fmt: skip


def test_slot_rows_are_not_arm_exposures(event_log: ClickHouseEventLog) -> None:
    """Units and exposures per arm count each slate once, in the arm of its slot-0 item; a
    click on any slot converts the unit; the drivers read the top item; the text and the page
    say what an arm is."""
    rows = [_slot(u, j, item) for u, slate in SLATES.items() for j, item in enumerate(slate)]
    event_log.insert("exposures", rows, token="slates")
    click = Outcome(
        event_id=uuid.uuid4(), ts_ms=T0 + 10, unit_id="u2", decision_id="d-u2",
        experiment="carousel", type="click", value=0.0, properties={}, slot=1, item="i2",
    )  # fmt: skip
    event_log.insert("outcomes", [click.row()], token="click")
    report = build_report(event_log, EXPERIMENT, ReportOptions(), now_ms=T0 + 60_000)
    arms = {a.arm: (a.units, a.exposures) for a in report.arms}
    assert arms == {"i0": (0, 0), "i1": (1, 1), "i2": (2, 2)}
    primary = {m.arm: (m.units, m.converters) for m in report.metrics[0].arms}
    assert primary == {"i1": (1, 1), "i2": (2, 0)}
    # What drives the choice is read from the top item too: the device tells it, per slate.
    assert [(d.feature, d.importance, d.decisions) for d in report.drivers] == [("device", 1.0, 3)]
    # Both renderings say so next to the traffic table.
    assert "item in slot 0" in render_report_text(report)
    assert "item in slot 0" in render_report_page(report)
