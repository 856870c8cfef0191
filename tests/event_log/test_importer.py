"""`tailor import`: logged decisions from files, validated row by row, loaded all or nothing."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest

from event_log.importer import ImportFormat, ImportRejected, import_decisions, read_rows
from event_log.rows import Table
from event_log.store import ClickHouseEventLog, EventLog
from experiments.off_policy.estimators import evaluate_policy
from experiments.off_policy.reward_models import cell_mean_rewards
from experiments.off_policy.target_policies import constant_policy, logged_policy, uniform_policy
from experiments.reports.build import build_report
from experiments.reports.results import ReportOptions
from tailor_contract.definitions import Experiment, RewardRule, RewardSpec, Status, Variant
from tailor_contract.errors import EventLogUnavailable

EXPERIMENT = Experiment(
    key="legacy",
    placement="home",
    variants=[Variant(key="red"), Variant(key="green"), Variant(key="blue")],
    default_variant="red",
    primary_metric="click",
    reward=RewardSpec(rules=[RewardRule(type="click", reward=1.0)]),
    reward_window_s=3600,
    status=Status.RUNNING,
    version=3,
)
ROWS = [
    {
        "unit_id": "u1",
        "ts": "2024-03-01T10:00:00Z",
        "variant": "green",
        "propensity": 0.25,
        "context.device": "mobile",
        "outcome.click": 1,
    },
    {
        "unit_id": "u2",
        "ts": "2024-03-01T11:00:00+02:00",
        "variant": "red",
        "propensity": 0.5,
        "decision_id": "d-7",
        "context.device": "desktop",
        "outcome.purchase": 19.5,
    },
]


def _encode(rows: Sequence[Mapping[str, Any]], fmt: ImportFormat) -> bytes:
    frame = pd.DataFrame(rows)
    if fmt == "csv":
        return frame.to_csv(index=False).encode()
    if fmt == "parquet":
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return buffer.getvalue()
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_rows_become_exposures_and_outcomes(event_log: ClickHouseEventLog, fmt: str) -> None:
    """Each row is one exposure (policy imported, reason policy, its propensity and context)
    and its outcomes, tagged with the experiment and the decision."""
    summary = import_decisions(event_log, EXPERIMENT, _encode(ROWS, fmt), fmt)  # type: ignore[arg-type]
    assert (summary.decisions, summary.outcomes) == (2, 2)
    assert summary.variants == {"green": 1, "red": 1}
    exposures = event_log.query(
        "SELECT unit_id, toUnixTimestamp64Milli(ts), variant, propensity, policy, reason, holdout,"
        " placement, experiment_version, context['device'], decision_id FROM exposures"
        " ORDER BY unit_id"
    )
    assert [r[:10] for r in exposures] == [
        ("u1", 1709287200000, "green", 0.25, "imported", "policy", 0, "home", 3, "mobile"),
        ("u2", 1709283600000, "red", 0.5, "imported", "policy", 0, "home", 3, "desktop"),
    ]
    assert exposures[1][10] == "d-7"
    outcomes = event_log.query(
        "SELECT unit_id, decision_id, experiment, type, value, toUnixTimestamp64Milli(ts)"
        " FROM outcomes ORDER BY unit_id"
    )
    assert outcomes == [
        ("u1", exposures[0][10], "legacy", "click", 1.0, 1709287200000),
        ("u2", "d-7", "legacy", "purchase", 19.5, 1709283600000),
    ]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"unit_id": ""}, r"row 2: unit_id must be 1 to 256 characters"),
        ({"ts": "yesterday"}, r"row 2: ts 'yesterday' is not an ISO 8601 time"),
        (
            {"variant": "purple"},
            r"row 2: variant 'purple' is not one of \['red', 'green', 'blue'\]",
        ),
        ({"propensity": 1.5}, r"row 2: propensity 1.5 must be in \(0, 1\]"),
        ({"propensity": "often"}, r"row 2: propensity 'often' is not a number"),
        ({"outcome.click": "yes"}, r"row 2: outcome.click 'yes' is not a number"),
        ({"context": "{not json"}, r"row 2: context is not valid JSON"),
        (
            {"outcomes": json.dumps([{"type": "click", "ts": "2024-02-01"}])},
            r"row 2: outcome 'click' happens before its decision",
        ),
        # The API's unit-id rule: such units could never be exported or erased.
        ({"unit_id": "u{1}"}, r"row 2: unit_id 'u\{1\}' must not contain control characters"),
        ({"unit_id": "u\n1"}, r"row 2: unit_id 'u\\n1' must not contain control characters"),
        ({"ts": "1999-12-31T23:59:59Z"}, r"row 2: ts 1999-12-31T23:59:59\+00:00 must be from"),
        ({"ts": "9999-01-01T00:00:00Z"}, r"row 2: ts 9999-01-01T00:00:00\+00:00 must be from"),
        ({"ts": 1e300}, r"row 2: ts .* must be from 2000-01-01 to an hour from now"),
        (
            {"outcomes": json.dumps([{"type": "click", "ts": "9000-01-01"}])},
            r"row 2: outcomes\[0\].ts 9000-01-01T00:00:00\+00:00 must be from",
        ),
    ],
)
def test_a_bad_row_loads_nothing(
    event_log: ClickHouseEventLog, change: dict[str, Any], match: str
) -> None:
    """One invalid row rejects the file with its row number and reason; no row is written."""
    rows = [dict(ROWS[0]), {**ROWS[1], **change}]
    with pytest.raises(ImportRejected, match=match):
        import_decisions(event_log, EXPERIMENT, _encode(rows, "csv"), "csv")
    assert event_log.query("SELECT count() FROM exposures") == [(0,)]
    assert event_log.query("SELECT count() FROM outcomes") == [(0,)]


def test_every_bad_row_is_listed(event_log: ClickHouseEventLog) -> None:
    """All invalid rows are counted, the first 100 listed."""
    rows = [{**ROWS[0], "propensity": 0} for _ in range(150)]
    with pytest.raises(ImportRejected) as caught:
        import_decisions(event_log, EXPERIMENT, _encode(rows, "jsonl"), "jsonl")
    assert caught.value.total == 150 and len(caught.value.errors) == 100
    assert caught.value.errors[-1].startswith("row 100: propensity 0.0 must be")


def test_importing_twice_changes_nothing(event_log: ClickHouseEventLog) -> None:
    """The same file again is recognised and writes no row twice."""
    data = _encode(ROWS, "parquet")
    first = import_decisions(event_log, EXPERIMENT, data, "parquet")
    again = import_decisions(event_log, EXPERIMENT, data, "parquet")
    assert again.already_imported and again.import_id == first.import_id
    assert event_log.query("SELECT count() FROM exposures FINAL") == [(2,)]


class FailingOutcomes:
    """An event log whose outcome inserts fail (the rest goes to the real one)."""

    def __init__(self, inner: ClickHouseEventLog) -> None:
        self.inner = inner

    def insert(self, table: Table, rows: Sequence[tuple[object, ...]], token: str) -> None:
        if table == "outcomes":
            raise EventLogUnavailable("disk full")
        self.inner.insert(table, rows, token)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_failed_write_leaves_nothing_behind(event_log: ClickHouseEventLog) -> None:
    """When an insert fails midway, the exposures already written are deleted again."""
    failing: EventLog = FailingOutcomes(event_log)  # type: ignore[assignment]
    with pytest.raises(EventLogUnavailable, match="disk full"):
        import_decisions(failing, EXPERIMENT, _encode(ROWS, "csv"), "csv")
    assert event_log.query("SELECT count() FROM exposures") == [(0,)]


def test_off_policy_on_an_import_matches_the_rows(event_log: ClickHouseEventLog) -> None:
    """Logged decisions with known propensities, imported and reported, give the off-policy
    estimates `evaluate_policy` computes on the same rows (IPS, SNIPS, DR, ESS)."""
    rng = np.random.default_rng(17)
    n = 3000
    device = rng.choice(["mobile", "desktop"], n)
    best = np.where(device == "mobile", 1, 2)
    probs = np.full((n, 3), 0.1)
    probs[np.arange(n), best] = 0.8  # an epsilon-greedy logger that knew the best colour
    action = np.array([rng.choice(3, p=p) for p in probs])
    propensity = probs[np.arange(n), action]
    click = rng.random(n) < np.where(action == best, 0.3, 0.1)
    names = [v.key for v in EXPERIMENT.variants]
    rows = [
        {
            "unit_id": f"v{i}",
            "ts": 1_709_000_000 + 60 * i,
            "variant": names[action[i]],
            "propensity": float(propensity[i]),
            "context": {"device": str(device[i])},
            "outcomes": [{"type": "click"}] if click[i] else [],
        }
        for i in range(n)
    ]
    import_decisions(event_log, EXPERIMENT, _encode(rows, "jsonl"), "jsonl")
    report = build_report(
        event_log,
        EXPERIMENT,
        ReportOptions(segment="device", off_policy=True),
        now_ms=1_800_000_000_000,
    )
    assert report.off_policy is not None and report.off_policy.decisions_used == n
    got = {p.policy: p.estimate for p in report.off_policy.policies}
    reward = click.astype(float)
    codes = (device == "desktop").astype(int)  # segment codes in sorted order
    model = cell_mean_rewards(reward, action, 3, segments=codes)
    targets = {
        "deployed": logged_policy(action, propensity, 3),
        "uniform": uniform_policy(n, 3),
        "always:green": constant_policy(n, 3, 1),
    }
    for name, target in targets.items():
        ref = evaluate_policy(reward, propensity, action, target, reward_model=model)
        est = got[name]
        assert est.ips.estimate == pytest.approx(ref.ips.estimate, rel=1e-9)
        assert est.snips.upper == pytest.approx(ref.snips.upper, rel=1e-9)
        assert est.doubly_robust is not None and ref.doubly_robust is not None
        assert est.doubly_robust.lower == pytest.approx(ref.doubly_robust.lower, rel=1e-9)
        assert est.effective_sample_size == pytest.approx(ref.effective_sample_size, rel=1e-9)
    primary = report.metrics[0]
    assert primary.metric == "click"
    assert sum(a.converters for a in primary.arms) == int(click.sum())


def test_an_import_over_many_years_loads_every_row(event_log: ClickHouseEventLog) -> None:
    """A history over 150 months loads whole (inserts are cut by month, under ClickHouse's 100
    partitions per insert) instead of failing with 'too many partitions'."""
    rows = [
        {**ROWS[0], "unit_id": f"u{i}", "ts": f"{2010 + i // 12}-{1 + i % 12:02d}-15T10:00:00Z"}
        for i in range(150)
    ]
    summary = import_decisions(event_log, EXPERIMENT, _encode(rows, "jsonl"), "jsonl")
    assert (summary.decisions, summary.outcomes) == (150, 150)
    assert event_log.query("SELECT count(), uniq(toYYYYMM(ts)) FROM exposures FINAL") == [
        (150, 150)
    ]
    assert event_log.query("SELECT count() FROM outcomes FINAL") == [(150,)]


def _flag_rows(values: Sequence[int]) -> list[dict[str, Any]]:
    return [
        {
            "unit_id": f"f{i}",
            "ts": f"2024-03-01T10:00:{i:02d}Z",
            "variant": "red" if i % 2 else "green",
            "propensity": 0.5,
            "outcome.click": v,
        }
        for i, v in enumerate(values)
    ]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_zero_in_a_flag_column_is_no_outcome(event_log: ClickHouseEventLog, fmt: str) -> None:
    """Regression: a 0/1 outcome.click column made every row a click (conversion 1.0). A 0 there
    is no outcome: 4 clicks of 10 rows give a click rate of 0.4 in the report."""
    values = [1, 0, 0, 1, 0, 0, 1, 0, 1, 0]
    summary = import_decisions(event_log, EXPERIMENT, _encode(_flag_rows(values), fmt), fmt)  # type: ignore[arg-type]
    assert (summary.decisions, summary.outcomes, summary.warnings) == (10, 4, ())
    assert event_log.query("SELECT count(), min(value) FROM outcomes") == [(4, 1.0)]
    report = build_report(event_log, EXPERIMENT, ReportOptions(), now_ms=1_800_000_000_000)
    click = report.metrics[0]
    assert sum(a.converters for a in click.arms) == 4
    assert sum(a.units for a in click.arms) == 10


def test_zero_outcomes_keeps_declared_zeros(event_log: ClickHouseEventLog) -> None:
    """Declared with zero_outcomes, the zeros of a flag column are outcomes of value 0; a column
    with other values (revenue) always keeps its zeros."""
    rows = _flag_rows([1, 0, 0])
    for r, revenue in zip(rows, (0.0, 12.5, 0.0), strict=True):
        r["outcome.purchase"] = revenue
    summary = import_decisions(
        event_log, EXPERIMENT, _encode(rows, "jsonl"), "jsonl", zero_outcomes=("click",)
    )
    assert summary.outcomes == 6
    assert event_log.query(
        "SELECT type, count(), sum(value) FROM outcomes GROUP BY type ORDER BY type"
    ) == [("click", 3, 1.0), ("purchase", 3, 12.5)]


def test_a_flag_column_that_is_always_one_is_warned_about(event_log: ClickHouseEventLog) -> None:
    """Every row 1 in a 0/1 column is imported, with a warning that every decision counts as a
    click (no warning when some row is 0 or empty)."""
    summary = import_decisions(event_log, EXPERIMENT, _encode(_flag_rows([1] * 6), "csv"), "csv")
    assert summary.outcomes == 6
    assert len(summary.warnings) == 1
    assert summary.warnings[0].startswith("outcome.click is 1 on every one of the 6 rows")


@pytest.mark.parametrize(
    "data",
    [
        b"unit_id,variant,ts\n007,a,1709287200\n",
        b"\xef\xbb\xbfunit_id,variant,ts\r\n007,a,1709287200\r\n",  # a BOM, Windows line ends
        b'"unit_id","variant","ts"\n"007","a","1709287200"\n',
    ],
)
def test_csv_cells_stay_text_so_ids_keep_their_leading_zeros(data: bytes) -> None:
    """A CSV unit id "007" is read as "007" (types were inferred and cast back: "7")."""
    assert read_rows(data, "csv") == [{"unit_id": "007", "variant": "a", "ts": "1709287200"}]
