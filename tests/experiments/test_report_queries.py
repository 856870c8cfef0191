"""The report SQL returns exactly what a row-by-row pandas computation gives on the same rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from event_log.store import ClickHouseEventLog, open_event_log
from experiments.off_policy.estimators import evaluate_policy
from experiments.off_policy.reward_models import cell_mean_rewards
from experiments.off_policy.target_policies import uniform_policy
from experiments.reports.cells import cell_moments, evaluate_constant_target, reward_table
from experiments.reports.data import ReportData, ReportQuery, RewardQuery, fetch_report_data
from experiments.reports.queries import EMPTY_SEGMENT_HASH
from tests.experiments.report_rows import (
    DAY,
    EXPERIMENT,
    T0,
    TYPES,
    VARIANTS,
    Log,
    expected_groups,
    expected_rewards,
    insert_log,
    random_log,
)

START, END, WINDOW, PRE = T0 + DAY, T0 + 6 * DAY, DAY, 2 * DAY
RULES = {"purchase": (1.0, True), "click": (0.25, False)}


def _query(
    segment: str,
    aggregation: str = "sum",
    ope_max: int = 1_000_000,
    off_policy: bool = True,
    cap: float = 0.0,
) -> ReportQuery:
    return ReportQuery(
        experiment=EXPERIMENT,
        variants=VARIANTS,
        start_ms=START,
        end_ms=END,
        window_ms=WINDOW,
        pre_ms=PRE,
        types=TYPES,
        segment=segment,
        reward=RewardQuery(
            types=tuple(RULES),
            rewards=tuple(r for r, _ in RULES.values()),
            per_value=tuple(v for _, v in RULES.values()),
            window_ms=DAY,
            aggregation="sum" if aggregation == "sum" else "first",
            default=0.0,
            lo=0.0,
            hi=60.0,
        ),
        ope_max_decisions=ope_max,
        off_policy=off_policy,
        cap_percentile=cap,
    )


@pytest.fixture(scope="module")
def module_log(chdb_dir: Path) -> Iterator[tuple[ClickHouseEventLog, Log]]:
    """A random log inserted once into a database of this module's own."""
    event_log = open_event_log(f"chdb://{chdb_dir}?database=r{uuid.uuid4().hex[:12]}")
    event_log.migrate()
    log = random_log(np.random.default_rng(11))
    insert_log(event_log, log)
    try:
        yield event_log, log
    finally:
        event_log.close()


@pytest.fixture
def event_log(module_log: tuple[ClickHouseEventLog, Log]) -> ClickHouseEventLog:
    """The module's event log (shadows the per-test one: these tests only read)."""
    return module_log[0]


@pytest.fixture
def logged(module_log: tuple[ClickHouseEventLog, Log]) -> Log:
    """The rows in the module's event log."""
    return module_log[1]


def _observed(data: ReportData) -> pd.DataFrame:
    rows = []
    for g in data.groups:
        for t in TYPES:
            s = g.sums(t)
            rows.append(
                dict(
                    arm=g.arm, seg=g.segment, day=g.day, cohort=True, type=t, units=g.units,
                    converters=s.converters, events=s.events, value=s.value, value_sq=s.value_sq,
                    pre_converters=s.pre_converters, both_converters=s.both_converters,
                    pre_value=s.pre_value, pre_value_sq=s.pre_value_sq, cross_value=s.cross_value,
                )
            )  # fmt: skip
    return pd.DataFrame(rows).set_index(["arm", "seg", "day", "cohort", "type"]).sort_index()


@pytest.mark.parametrize("segment", ["", "device"])
def test_capped_values_match_pandas(
    event_log: ClickHouseEventLog, logged: Log, segment: str
) -> None:
    """``cap_percentile``: per outcome type, every unit's value (window and pre-period) is
    winsorised at that percentile of the cohort's positive per-unit values, as pandas computes
    it; units and conversions do not change, the value sums shrink."""
    capped = fetch_report_data(event_log, _query(segment, off_policy=False, cap=0.8))
    expected = expected_groups(
        logged, start=START, end=END, window=WINDOW, pre=PRE, segment=bool(segment), cap=0.8
    )
    cohort = expected.xs(True, level="cohort", drop_level=False).sort_index()
    observed = _observed(capped)
    assert list(observed.index) == list(cohort.index)
    pd.testing.assert_frame_equal(
        observed[cohort.columns].astype(float), cohort.astype(float), rtol=1e-9
    )
    plain = _observed(fetch_report_data(event_log, _query(segment, off_policy=False)))
    assert (plain.units == observed.units).all()
    assert observed.value.sum() < plain.value.sum()
    assert observed.value_sq.sum() < 0.9 * plain.value_sq.sum()


@pytest.mark.parametrize("segment", ["", "device"])
def test_unit_metrics_match_pandas(
    event_log: ClickHouseEventLog, logged: Log, segment: str
) -> None:
    """Per arm, segment, day and outcome type: units, conversions, events, value and the
    CUPED sums equal the pandas computation (replayed outcomes counted once, decision-only
    outcomes resolved to their unit, other experiments and reasons left out)."""
    data = fetch_report_data(event_log, _query(segment))
    expected = expected_groups(
        logged, start=START, end=END, window=WINDOW, pre=PRE, segment=bool(segment)
    )
    cohort = expected.xs(True, level="cohort", drop_level=False).sort_index()
    observed = _observed(data)
    assert list(observed.index) == list(cohort.index)
    pd.testing.assert_frame_equal(
        observed[cohort.columns].astype(float), cohort.astype(float), rtol=1e-9
    )
    earlier = expected.xs(False, level="cohort").xs(TYPES[0], level="type").units.sum()
    assert data.earlier_units == earlier > 0
    assert data.orphan_outcomes > 0
    summary = fetch_report_data(event_log, _query(segment, off_policy=False))
    assert summary.groups == data.groups and summary.exposures == data.exposures
    assert summary.ope_cells == []
    ex = logged.exposures
    mine = ex[
        (ex.experiment == EXPERIMENT)
        & ex.reason.isin(["split", "policy", "holdout", "global_holdout"])
        & (ex.ts < END)
    ].sort_values(["unit_id", "ts"], kind="stable")
    first = mine.groupby("unit_id").first()
    arm = np.where(
        first.reason == "global_holdout",
        "~global_holdout",
        np.where(first.holdout == 1, "~holdout", first.variant),
    )
    cohort = pd.Series(arm, index=first.index)[first.ts >= START]
    per_unit = mine.groupby("unit_id").size()
    expected_exposures = per_unit[cohort.index].groupby(cohort).sum().to_dict()
    assert data.exposures == expected_exposures


@pytest.mark.parametrize("aggregation", ["sum", "first"])
def test_off_policy_sums_match_pandas(
    event_log: ClickHouseEventLog, logged: Log, aggregation: str
) -> None:
    """The off-policy cell sums equal those of the rewards assigned row by row in pandas, so
    the estimates equal `evaluate_policy` on the rows."""
    data = fetch_report_data(event_log, _query("device", aggregation))
    rows = expected_rewards(
        logged, start=START, end=END, rewards=RULES, window=DAY, aggregation=aggregation,
        default=0.0, lo=0.0, hi=60.0,
    )  # fmt: skip
    assert data.logged_decisions == len(rows) and data.ope_fraction == 1.0
    expected = cell_moments(rows.reward, rows.propensity, rows.action, list(rows.device))
    got_cells = {(c.segment, c.action): c for c in data.ope_cells}
    assert set(got_cells) == {(c.segment, c.action) for c in expected}
    for want in expected:
        got = got_cells[(want.segment, want.action)]
        assert got.n == want.n
        for field in ("inv_p", "inv_p_sq", "min_p", "p", "p_sq", "r", "r_sq", "r_inv_p"):
            assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-9, abs=1e-9)
    codes = {s: i for i, s in enumerate(sorted(set(rows.device)))}
    segments = np.array([codes[s] for s in rows.device])
    model = cell_mean_rewards(rows.reward, rows.action.to_numpy(), 3, segments=segments)
    ref = evaluate_policy(
        rows.reward, rows.propensity, rows.action.to_numpy(), uniform_policy(len(rows), 3),
        reward_model=model,
    )  # fmt: skip
    got_est = evaluate_constant_target(
        data.ope_cells, np.full(3, 1 / 3), reward_model=reward_table(data.ope_cells, 3)
    )
    assert got_est.ips.estimate == pytest.approx(ref.ips.estimate, rel=1e-9)
    assert got_est.doubly_robust is not None and ref.doubly_robust is not None
    assert got_est.doubly_robust.upper == pytest.approx(ref.doubly_robust.upper, rel=1e-9)


def test_off_policy_samples_units_beyond_the_cap(
    event_log: ClickHouseEventLog, logged: Log
) -> None:
    """Above ``ope_max_decisions`` the off-policy sums cover a deterministic sample of units
    (sized by the period's exposures) and say so; traffic numbers stay complete."""
    full = fetch_report_data(event_log, _query(""))
    cap = full.logged_decisions // 2
    capped = fetch_report_data(event_log, _query("", ope_max=cap))
    ex = logged.exposures
    in_period = ex[(ex.experiment == EXPERIMENT) & (ex.ts >= START) & (ex.ts < END)]
    assert capped.ope_fraction == pytest.approx(cap / len(in_period), abs=1e-5)
    used = sum(c.n for c in capped.ope_cells)
    assert 0 < used < full.logged_decisions
    assert capped.logged_decisions == full.logged_decisions
    assert capped.exposures == full.exposures


def test_empty_segment_hash_is_the_engines(event_log: ClickHouseEventLog) -> None:
    """The constant naming the segment of reports without one is ClickHouse's cityHash64('')."""
    assert event_log.query("SELECT cityHash64('')") == [(EMPTY_SEGMENT_HASH,)]
