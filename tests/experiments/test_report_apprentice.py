"""The apprentice section of a report: the model's estimate, who serves, when it took over."""

from __future__ import annotations

import math
import uuid
from typing import Literal

import msgspec

from bandits.apprentice import ApprenticeEstimate
from event_log.rows import Exposure
from event_log.store import ClickHouseEventLog
from experiments.reports.apprentice import apprentice_status
from experiments.reports.build import build_report
from experiments.reports.html import render_report_page
from experiments.reports.results import ReportOptions
from experiments.reports.text import render_report_text
from tailor_contract.definitions import Experiment, Status, Variant
from tailor_contract.policies import Apprentice, ThompsonConfig

T0 = 1_700_000_000_000


def _experiment(takeover: Literal["auto", "manual"] = "auto") -> Experiment:
    return Experiment(
        key="appr",
        placement="home",
        variants=[Variant(key="a", weight=1.0), Variant(key="b", weight=0.0)],
        default_variant="a",
        policy=ThompsonConfig(apprentice=Apprentice(takeover=takeover, min_decisions=100)),
        status=Status.RUNNING,
    )


def _log(event_log: ClickHouseEventLog, policies: list[str]) -> None:
    rows = [
        Exposure(
            event_id=uuid.uuid4(),
            decision_id=uuid.uuid4().hex,
            ts_ms=T0 + i * 1000,
            unit_id=f"u{i}",
            experiment="appr",
            experiment_version=1,
            placement="home",
            variant="a",
            propensity=0.95,
            policy=policy,
            policy_version="1",
            reason="policy",
            holdout=False,
            context={},
        ).row()
        for i, policy in enumerate(policies)
    ]
    event_log.insert("exposures", rows, uuid.uuid4().hex)


def _estimate(serving: str, by: str = "") -> ApprenticeEstimate:
    return ApprenticeEstimate(
        n=500,
        own=0.14,
        split=0.10,
        gain=0.04,
        gain_lower=0.01,
        gain_upper=0.07,
        serving=serving,  # type: ignore[arg-type]
        taken_over_by=by,
    )


def test_while_apprenticing_the_rule_serves(event_log: ClickHouseEventLog) -> None:
    """Before the takeover: the rule (all weight on a: "always a") serves, the estimate and its
    interval are the model's, the sentence says when it would take over."""
    _log(event_log, ["apprentice:thompson"] * 30)
    status = apprentice_status(event_log, _experiment(), _estimate("split"), end_ms=T0 + 10**7)
    assert status is not None
    assert (status.serving, status.rule, status.taken_over_at) == ("rule", "always a", None)
    assert (status.rule_decisions, status.policy_decisions) == (30, 0)
    assert status.gain is not None and (status.gain.lower, status.gain.upper) == (0.01, 0.07)
    assert status.own_value == 0.14 and status.rule_value == 0.10
    assert "always a serves while thompson learns" in status.sentence
    assert "+0.0400, 95% CI [0.0100, 0.0700] over 500 decisions" in status.sentence
    assert "after 100 decisions" in status.sentence


def test_after_the_takeover_the_log_dates_it(event_log: ClickHouseEventLog) -> None:
    """The first decision under the policy's own name after the first apprenticed one dates the
    takeover (a late apprenticed decision from a slower worker does not move it)."""
    _log(
        event_log,
        ["apprentice:thompson"] * 20
        + ["thompson"] * 5
        + ["apprentice:thompson"]
        + ["thompson"] * 4,
    )
    status = apprentice_status(
        event_log, _experiment(), _estimate("policy", "auto"), end_ms=T0 + 10**7
    )
    assert status is not None and status.serving == "policy"
    assert status.taken_over_at == "2023-11-14T22:13:40Z"  # T0 + 20 s
    assert (status.rule_decisions, status.policy_decisions) == (21, 9)
    assert "thompson took over from always a automatically at 2023-11-14T22:13:40Z" in (
        status.sentence
    )


def test_before_any_learning_and_without_apprentice_mode(event_log: ClickHouseEventLog) -> None:
    """No model yet: the rule serves, no estimate (NaN, no interval); the model store down: said.
    A policy without apprentice mode has no section."""
    status = apprentice_status(
        event_log, _experiment("manual"), None, end_ms=T0, model_unavailable=True
    )
    assert status is not None and status.gain is None and math.isnan(status.own_value)
    assert "learned nothing yet" in status.sentence and "could not be read" in status.sentence
    plain = Experiment(
        key="plain",
        placement="home",
        variants=[Variant(key="a"), Variant(key="b")],
        default_variant="a",
        policy=ThompsonConfig(),
    )
    assert apprentice_status(event_log, plain, None, end_ms=T0) is None


def test_text_and_page_show_the_apprentice(event_log: ClickHouseEventLog) -> None:
    """The text report and the page carry the section."""
    _log(event_log, ["apprentice:thompson"] * 10)
    report = build_report(
        event_log, _experiment(), ReportOptions(off_policy=False), now_ms=T0 + 10**7
    )
    status = apprentice_status(event_log, _experiment(), _estimate("split"), end_ms=T0 + 10**7)
    report = msgspec.structs.replace(report, apprentice=status)
    assert "apprentice\n  Apprentice mode: always a serves" in render_report_text(report)
    page = render_report_page(report)
    assert '<section class="apprentice"><h2>Apprentice</h2>' in page
    assert "always a (apprentice mode)" in page and "+0.0400 [0.0100, 0.0700]" in page
