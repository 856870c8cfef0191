"""Report aggregates: run the report SQL on the event log and type its rows.

`fetch_report_data` runs the queries of :mod:`experiments.reports.queries` and returns a
:class:`ReportData`: per (arm, segment, day of first exposure) the unit counts and, per outcome
type, the sums the statistics need; and the off-policy cell sums. Everything downstream is pure
Python on these few hundred rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Literal, TypeVar

import msgspec

from event_log.store import EventLog
from experiments.reports import queries as sql
from experiments.reports.cells import CellMoments
from experiments.reports.queries import GLOBAL_HOLDOUT_CODE, HOLDOUT_CODE

__all__ = [
    "BUCKETS_MS",
    "DAY_MS",
    "GLOBAL_HOLDOUT_ARM",
    "HOLDOUT_ARM",
    "UNCONFIGURED",
    "AllocationCount",
    "ArmGroup",
    "ReportData",
    "ReportQuery",
    "RewardQuery",
    "TypeSums",
    "bucket_for_span",
    "fetch_allocation",
    "fetch_report_data",
    "merge_cells",
    "series_bucket",
    "sum_groups",
]

DAY_MS = 86_400_000
HOLDOUT_ARM = "~holdout"
GLOBAL_HOLDOUT_ARM = "~global_holdout"
UNCONFIGURED = "~unconfigured"
PPM = 1_000_000
BUCKETS_MS = (60_000, 300_000, 900_000, 3_600_000, 6 * 3_600_000, DAY_MS, 7 * DAY_MS)
"""Time buckets for series over time: a minute up to a week."""
MAX_BUCKETS = 60

K = TypeVar("K", bound=Hashable)


class RewardQuery(msgspec.Struct, frozen=True, kw_only=True):
    """The experiment's reward rules as the off-policy query applies them."""

    types: tuple[str, ...]
    rewards: tuple[float, ...]
    per_value: tuple[bool, ...]
    window_ms: int
    aggregation: Literal["first", "sum"]
    default: float
    lo: float
    hi: float

    @property
    def base(self) -> float:
        """The reward of a decision no outcome reached: the default, clipped."""
        return min(self.hi, max(self.lo, self.default))


class ReportQuery(msgspec.Struct, frozen=True, kw_only=True):
    """What to aggregate: an experiment's events in ``[start_ms, end_ms)``.

    Attributes:
        experiment: experiment key.
        variants: the configured variant keys (their order indexes off-policy actions).
        start_ms, end_ms: units first exposed in this range form the report's cohort.
        window_ms: attribution window after a unit's first exposure.
        pre_ms: pre-period before the first exposure (CUPED covariate).
        types: outcome types to measure.
        segment: context attribute to break down by ('' for none).
        reward: reward rules for off-policy evaluation.
        ope_max_decisions: above this many logged decisions, off-policy evaluation uses a
            deterministic sample of units (by hash) holding about this many.
        off_policy: whether to compute the off-policy sums at all.
        open_end: no upper bound was asked for (``end_ms`` is "now"): the exposures' time
            filter folds away.
        allocation: whether to count decisions per arm over time (adaptive policies).
        cap_percentile: winsorise each outcome type's per-unit value at this percentile of its
            positive values (0: no capping; see ``queries._CAPPED_ROWS``).
    """

    experiment: str
    variants: tuple[str, ...]
    start_ms: int
    end_ms: int
    window_ms: int
    pre_ms: int
    types: tuple[str, ...]
    segment: str = ""
    reward: RewardQuery
    ope_max_decisions: int = 1_000_000
    off_policy: bool = True
    open_end: bool = False
    allocation: bool = False
    cap_percentile: float = 0.0


class TypeSums(msgspec.Struct, frozen=True, kw_only=True):
    """Sums over units of one outcome type's per-unit metric (attribution window, pre-period)."""

    converters: int = 0
    events: int = 0
    value: float = 0.0
    value_sq: float = 0.0
    pre_converters: int = 0
    both_converters: int = 0
    pre_value: float = 0.0
    pre_value_sq: float = 0.0
    cross_value: float = 0.0

    def __add__(self, other: TypeSums) -> TypeSums:
        return TypeSums(
            **{
                f: getattr(self, f) + getattr(other, f)
                for f in TypeSums.__struct_fields__  # every field is additive
            }
        )


class ArmGroup(msgspec.Struct, frozen=True, kw_only=True):
    """Units of one arm (variant, ``~holdout`` or ``~global_holdout``), summed over a group."""

    arm: str
    units: int = 0
    exposures: int = 0
    mixed_units: int = 0
    by_type: dict[str, TypeSums] = msgspec.field(default_factory=dict)
    segment: str = ""
    day: int = 0

    def merged(self, other: ArmGroup) -> ArmGroup:
        """The sum of two groups of the same arm (segment and day of ``self``)."""
        types = self.by_type.keys() | other.by_type.keys()
        return ArmGroup(
            arm=self.arm,
            units=self.units + other.units,
            exposures=self.exposures + other.exposures,
            mixed_units=self.mixed_units + other.mixed_units,
            by_type={
                t: self.by_type.get(t, TypeSums()) + other.by_type.get(t, TypeSums()) for t in types
            },
            segment=self.segment,
            day=self.day,
        )

    def sums(self, outcome_type: str) -> TypeSums:
        """The sums of one outcome type (zeros when none was seen)."""
        return self.by_type.get(outcome_type, TypeSums())


class AllocationCount(msgspec.Struct, frozen=True, kw_only=True):
    """Logged decisions of one arm in one time bucket (``bucket`` counts buckets from the epoch)."""

    bucket: int
    arm: str
    decisions: int


def bucket_for_span(span_ms: int) -> int:
    """The smallest of `BUCKETS_MS` that splits ``span_ms`` into at most `MAX_BUCKETS` buckets."""
    return next((b for b in BUCKETS_MS if span_ms // b < MAX_BUCKETS), BUCKETS_MS[-1])


class ReportData(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the report sections compute from.

    Attributes:
        query: what was aggregated.
        groups: cohort units per (arm, segment, day of first exposure).
        exposures: in-experiment exposures (up to the period's end) of each arm's cohort units.
        earlier_units: units first exposed before the range (left out of the cohort).
        unconfigured: variants seen in the log but no longer configured (arm ``UNCONFIGURED``).
        orphan_outcomes: outcomes naming only a decision (resolved to its unit).
        logged_decisions: logged decisions (non-holdout split/policy exposures) in the range.
        ope_fraction: share of units the off-policy sums cover (1 unless sampled).
        ope_cells: off-policy sums per (segment, action).
        ope_unknown_variants: logged decisions of variants no longer configured (ignored).
        allocation_bucket_ms: the width of the allocation's time buckets (0: not counted).
        allocation: logged decisions per (time bucket, arm), when the query asked for them.
        day_ms: the width of the groups' ``day`` buckets of first exposure: a day, finer when
            the period's exposures span less than two days (`series_bucket`).
        value_cells: off-policy sums per allocation time bucket (``allocation_bucket_ms``
            wide, numbered from the epoch), each bucket's cells with segment ''; filled for
            adaptive policies when off-policy sums are computed.
    """

    query: ReportQuery
    groups: list[ArmGroup]
    exposures: dict[str, int]
    earlier_units: int
    unconfigured: list[str]
    orphan_outcomes: int
    logged_decisions: int
    ope_fraction: float
    ope_cells: list[CellMoments]
    ope_unknown_variants: int
    allocation_bucket_ms: int = 0
    day_ms: int = DAY_MS
    allocation: list[AllocationCount] = msgspec.field(default_factory=list)
    value_cells: dict[int, list[CellMoments]] = msgspec.field(default_factory=dict)


def sum_groups(groups: Iterable[ArmGroup], key: Callable[[ArmGroup], K]) -> dict[K, ArmGroup]:
    """Merge groups by ``key`` (e.g. arm, (arm, segment) or (arm, day))."""
    out: dict[K, ArmGroup] = {}
    for group in groups:
        k = key(group)
        out[k] = out[k].merged(group) if k in out else group
    return out


def _arm_names(variants: Sequence[str]) -> dict[int, str]:
    names = {i + 1: v for i, v in enumerate(variants)}
    names.update(
        {0: UNCONFIGURED, HOLDOUT_CODE: HOLDOUT_ARM, GLOBAL_HOLDOUT_CODE: GLOBAL_HOLDOUT_ARM}
    )
    return names


def _type_sums(row: Sequence[Any]) -> TypeSums:
    return TypeSums(
        converters=int(row[7]),
        events=int(row[8]),
        value=float(row[9]),
        value_sq=float(row[10]),
        pre_converters=int(row[11]),
        both_converters=int(row[12]),
        pre_value=float(row[13]),
        pre_value_sq=float(row[14]),
        cross_value=float(row[15]),
    )


def _groups(rows: Sequence[Sequence[Any]], query: ReportQuery) -> tuple[list[ArmGroup], int]:
    """Cohort groups from UNIT_METRICS rows (one per type index), and the earlier units."""
    names = _arm_names(query.variants)
    merged: dict[tuple[int, str, int], ArmGroup] = {}
    earlier = 0
    for row in rows:
        arm, seg, day, cohort, k = int(row[0]), str(row[1]), int(row[2]), row[3], int(row[4])
        units, mixed = int(row[5]), int(row[6])
        if not cohort:
            earlier += units
            continue
        by_type = {query.types[k - 1]: _type_sums(row)} if 1 <= k <= len(query.types) else {}
        group = ArmGroup(
            arm=names.get(arm, UNCONFIGURED),
            segment=seg,
            day=day,
            units=units,
            exposures=int(row[16]),
            mixed_units=mixed,
            by_type=by_type,
        )
        key = (arm, seg, day)
        merged[key] = merged[key].merged(group) if key in merged else group
    return list(merged.values()), earlier


def _unit_parameters(
    query: ReportQuery, resolve_orphans: bool, bucket_ms: int = DAY_MS
) -> dict[str, object]:
    return {
        "bucket_ms": bucket_ms,
        "experiment": query.experiment,
        "variants": list(query.variants),
        "start_ms": query.start_ms,
        "end_ms": query.end_ms,
        "lookback_ms": query.pre_ms,
        "pre_ms": query.pre_ms,
        "window_ms": query.window_ms,
        "segment": query.segment,
        "types": list(query.types),
        "resolve_orphans": 1 if resolve_orphans else 0,
        "open_end": 1 if query.open_end else 0,
        "cap_percentile": query.cap_percentile,
    }


def _unit_sql(query: ReportQuery) -> str:
    if query.cap_percentile > 0:
        return sql.UNIT_METRICS_CAPPED_BY_SEGMENT if query.segment else sql.UNIT_METRICS_CAPPED
    return sql.UNIT_METRICS_BY_SEGMENT if query.segment else sql.UNIT_METRICS


def _ope_parameters(
    query: ReportQuery, sample_ppm: int, by_decision: bool = True
) -> dict[str, object]:
    reward = query.reward
    return {
        "experiment": query.experiment,
        "start_ms": query.start_ms,
        "end_ms": query.end_ms,
        "segment": query.segment,
        "variants": list(query.variants),
        "sample_ppm": sample_ppm,
        "by_decision": 1 if by_decision else 0,
        "open_end": 1 if query.open_end else 0,
        "reward_types": list(reward.types),
        "reward_of": list(reward.rewards),
        "reward_per_value": [1 if v else 0 for v in reward.per_value],
        "reward_window_ms": reward.window_ms,
        "reward_sum": 1 if reward.aggregation == "sum" else 0,
        "reward_min": reward.lo,
        "reward_max": reward.hi,
        "reward_base": reward.base,
    }


class _OffPolicyRows(msgspec.Struct, frozen=True, kw_only=True):
    """What OFF_POLICY's rows say, typed."""

    cells: list[CellMoments]
    exposures: dict[str, int]
    segments: dict[int, str]
    unconfigured: list[str]
    unknown_decisions: int
    logged: int


def _off_policy_rows(
    rows: Sequence[Sequence[Any]], query: ReportQuery, r0: float
) -> _OffPolicyRows:
    names = _arm_names(query.variants)
    exposures: dict[str, int] = {}
    segments: dict[int, str] = {}
    unconfigured: set[str] = set()
    base: dict[tuple[int, str], list[float]] = {}
    corrections: dict[tuple[int, str], list[float]] = {}
    unknown = logged = 0
    for row in rows:
        code, name, seg, seg_hash = int(row[1]), str(row[2]), str(row[3]), int(row[4])
        segments[seg_hash] = seg
        n = int(row[6])
        moments = [float(x) for x in row[7:13]]
        if row[0] == "rewarded":
            corrections[(code, seg)] = moments
            continue
        arm = names.get(code, UNCONFIGURED)
        exposures[arm] = exposures.get(arm, 0) + int(row[5])
        if code <= len(query.variants):
            logged += int(row[5])
        if code == 0:
            unconfigured.add(name)
            unknown += n
        elif 1 <= code <= len(query.variants) and n > 0:
            base[(code, seg)] = [float(n), *moments]
    cells = []
    for (code, seg), b in sorted(base.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        n, inv_p, inv_p_sq, min_p, p1, p2 = int(b[0]), b[1], b[2], b[3], b[4], b[5]
        d = corrections.get((code, seg), [0.0] * 6)
        cells.append(
            CellMoments(
                segment=seg,
                action=code - 1,
                n=n,
                inv_p=inv_p,
                inv_p_sq=inv_p_sq,
                min_p=min_p,
                p=p1,
                p_sq=p2,
                r=r0 * n + d[3],
                r_sq=r0 * r0 * n + d[4],
                r_inv_p=r0 * inv_p + d[0],
                r_inv_p_sq=r0 * inv_p_sq + d[1],
                r_sq_inv_p_sq=r0 * r0 * inv_p_sq + d[2],
                r_p=r0 * p1 + d[5],
            )
        )
    return _OffPolicyRows(
        cells=cells,
        exposures=exposures,
        segments=segments,
        unconfigured=sorted(unconfigured),
        unknown_decisions=unknown,
        logged=logged,
    )


def merge_cells(cells: Iterable[CellMoments], segment: str = "") -> list[CellMoments]:
    """Cells of several segments (or time buckets) added up per action, as ``segment``."""
    out: dict[int, CellMoments] = {}
    for c in cells:
        was = out.get(c.action)
        if was is None:
            out[c.action] = msgspec.structs.replace(c, segment=segment)
            continue
        out[c.action] = CellMoments(
            segment=segment,
            action=c.action,
            n=was.n + c.n,
            min_p=min(was.min_p, c.min_p),
            **{
                f: getattr(was, f) + getattr(c, f)
                for f in CellMoments.__struct_fields__
                if f not in ("segment", "action", "n", "min_p")
            },
        )
    return [out[a] for a in sorted(out)]


def _by_bucket(cells: Iterable[CellMoments]) -> dict[int, list[CellMoments]]:
    """Cells whose segment is a time bucket's number, per bucket (in order)."""
    out: dict[int, list[CellMoments]] = {}
    for c in cells:
        out.setdefault(int(c.segment), []).append(msgspec.structs.replace(c, segment=""))
    return dict(sorted(out.items()))


def _holdout_rows(rows: Sequence[Sequence[Any]]) -> bool:
    """Whether OFF_POLICY's base rows count exposures of a holdout."""
    return any(
        r[0] == "base" and int(r[1]) in (HOLDOUT_CODE, GLOBAL_HOLDOUT_CODE) and int(r[5]) > 0
        for r in rows
    )


def series_bucket(event_log: EventLog, query: ReportQuery) -> int:
    """The width of the cohort series' buckets: a day, or finer when the exposures in the
    period span less than two days (an hour, minutes for a very short experiment)."""
    params = _ope_parameters(query, PPM)
    count, first, last = event_log.query(sql.EXPOSURE_SPAN, params)[0]
    span = int(last) - int(first) if int(count) else 0
    return DAY_MS if span >= 2 * DAY_MS else min(bucket_for_span(span), DAY_MS)


def fetch_allocation(event_log: EventLog, query: ReportQuery) -> tuple[int, list[AllocationCount]]:
    """Logged decisions per (time bucket, arm), buckets sized to the decisions' span."""
    params: dict[str, object] = {
        "experiment": query.experiment,
        "start_ms": query.start_ms,
        "end_ms": query.end_ms,
        "open_end": 1 if query.open_end else 0,
        "variants": list(query.variants),
    }
    count, first, last = event_log.query(sql.ALLOCATION_SPAN, params)[0]
    if int(count) == 0:
        return 0, []
    bucket_ms = bucket_for_span(int(last) - int(first))
    rows = event_log.query(sql.ALLOCATION, {**params, "bucket_ms": bucket_ms})
    names = _arm_names(query.variants)
    return bucket_ms, [
        AllocationCount(bucket=int(b), arm=names.get(int(vi), UNCONFIGURED), decisions=int(n))
        for b, vi, n in rows
    ]


def fetch_report_data(event_log: EventLog, query: ReportQuery) -> ReportData:
    """Aggregate an experiment's exposures and outcomes (four queries, one unit-level scan).

    Off-policy sums cover all logged decisions up to ``ope_max_decisions``; beyond that a
    deterministic sample of units holding about that many (by exposure count, an upper bound).

    Raises:
        EventLogUnavailable: when the event log cannot be queried.
    """
    unit_params = _unit_parameters(query, resolve_orphans=True)
    orphans = int(event_log.query(sql.ORPHAN_OUTCOMES, unit_params)[0][0])
    bucket_ms, allocation = fetch_allocation(event_log, query) if query.allocation else (0, [])
    ppm = PPM
    ope_rows: Sequence[Sequence[Any]] = []
    value_cells: dict[int, list[CellMoments]] = {}
    by_bucket = query.off_policy and bucket_ms > 0
    if query.off_policy:
        total = int(event_log.query(sql.EXPOSURE_COUNT, unit_params)[0][0])
        if total > query.ope_max_decisions:
            ppm = max(1, math.ceil(PPM * query.ope_max_decisions / total))
        ope_params = _ope_parameters(query, ppm, by_decision=orphans > 0)
        bucketed: Sequence[Sequence[Any]] = []
        if query.segment or not by_bucket:
            ope_rows = event_log.query(sql.OFF_POLICY, ope_params)
        if by_bucket and (not query.segment or not _holdout_rows(ope_rows)):
            # Without a segment one pass serves both (the report's cells are the buckets' added
            # up); with one, the value over time is read off-policy only without a holdout.
            params = {**ope_params, "bucket_ms": bucket_ms}
            bucketed = event_log.query(sql.OFF_POLICY_BY_BUCKET, params)
            value_cells = _by_bucket(_off_policy_rows(bucketed, query, query.reward.base).cells)
        if not query.segment and by_bucket:
            ope_rows = bucketed
    elif query.segment:  # the variants no longer configured, as base rows without a segment
        arms = event_log.query(sql.EXPOSURE_ARMS, _ope_parameters(query, 0))
        ope_rows = [("base", code, name, "", 0, n, 0, *([0.0] * 6)) for code, name, n in arms]
    ope = _off_policy_rows(ope_rows, query, query.reward.base)
    if by_bucket and not query.segment:
        ope = msgspec.structs.replace(ope, cells=merge_cells(ope.cells), segments={})
    unit_sql = _unit_sql(query)
    day_ms = series_bucket(event_log, query)
    rows = event_log.query(unit_sql, _unit_parameters(query, orphans > 0, day_ms))
    groups, earlier = _groups(rows, query)
    exposures: dict[str, int] = {}
    for g in groups:
        exposures[g.arm] = exposures.get(g.arm, 0) + g.exposures
    return ReportData(
        query=query,
        groups=groups,
        exposures=exposures,
        earlier_units=earlier,
        unconfigured=ope.unconfigured,
        orphan_outcomes=orphans,
        logged_decisions=ope.logged,
        ope_fraction=ppm / PPM,
        ope_cells=ope.cells,
        ope_unknown_variants=ope.unknown_decisions,
        allocation_bucket_ms=bucket_ms,
        day_ms=day_ms,
        allocation=allocation,
        value_cells=value_cells,
    )
