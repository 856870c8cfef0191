"""Report aggregates: run the report SQL on the event log and type its rows.

`fetch_report_data` runs the queries of :mod:`experiments.report_queries` and returns a
:class:`ReportData`: per (arm, segment, day of first exposure) the unit counts and, per outcome
type, the sums the statistics need; and the off-policy cell sums. Everything downstream is pure
Python on these few hundred rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Literal, TypeVar

import msgspec

from decision_api.event_log import EventLog
from experiments import report_queries as sql
from experiments.report_off_policy import CellMoments

__all__ = [
    "DAY_MS",
    "GLOBAL_HOLDOUT_ARM",
    "HOLDOUT_ARM",
    "ArmGroup",
    "ReportData",
    "ReportQuery",
    "RewardQuery",
    "TypeSums",
    "fetch_report_data",
    "sum_groups",
]

DAY_MS = 86_400_000
HOLDOUT_ARM = "~holdout"
GLOBAL_HOLDOUT_ARM = "~global_holdout"
PPM = 1_000_000

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


class ReportData(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the report sections compute from.

    Attributes:
        query: what was aggregated.
        groups: cohort units per (arm, segment, day of first exposure).
        earlier_units: units first exposed before the range (left out of the cohort).
        orphan_outcomes: outcomes naming only a decision (resolved to its unit).
        logged_decisions: logged decisions (non-holdout split/policy exposures) in the range.
        ope_fraction: share of units the off-policy sums cover (1 unless sampled).
        ope_cells: off-policy sums per (segment, action).
        ope_unknown_variants: logged decisions of variants no longer configured (ignored).
    """

    query: ReportQuery
    groups: list[ArmGroup]
    earlier_units: int
    orphan_outcomes: int
    logged_decisions: int
    ope_fraction: float
    ope_cells: list[CellMoments]
    ope_unknown_variants: int


def sum_groups(groups: Iterable[ArmGroup], key: Callable[[ArmGroup], K]) -> dict[K, ArmGroup]:
    """Merge groups by ``key`` (e.g. arm, (arm, segment) or (arm, day))."""
    out: dict[K, ArmGroup] = {}
    for group in groups:
        k = key(group)
        out[k] = out[k].merged(group) if k in out else group
    return out


def _type_sums(row: Sequence[Any], types: Sequence[str]) -> dict[str, TypeSums]:
    columns = [list(c) for c in row[7:16]]
    out = {}
    for i, name in enumerate(types):
        values = [c[i] if i < len(c) else 0 for c in columns]
        out[name] = TypeSums(
            converters=int(values[0]),
            events=int(values[1]),
            value=float(values[2]),
            value_sq=float(values[3]),
            pre_converters=int(values[4]),
            both_converters=int(values[5]),
            pre_value=float(values[6]),
            pre_value_sq=float(values[7]),
            cross_value=float(values[8]),
        )
    return out


def _unit_parameters(query: ReportQuery, resolve_orphans: bool) -> dict[str, object]:
    return {
        "experiment": query.experiment,
        "start_ms": query.start_ms,
        "end_ms": query.end_ms,
        "lookback_ms": query.pre_ms,
        "pre_ms": query.pre_ms,
        "window_ms": query.window_ms,
        "segment": query.segment,
        "types": list(query.types),
        "resolve_orphans": 1 if resolve_orphans else 0,
    }


def _ope_parameters(query: ReportQuery, sample_ppm: int) -> dict[str, object]:
    reward = query.reward
    return {
        "experiment": query.experiment,
        "start_ms": query.start_ms,
        "end_ms": query.end_ms,
        "segment": query.segment,
        "variants": list(query.variants),
        "sample_ppm": sample_ppm,
        "reward_types": list(reward.types),
        "reward_of": list(reward.rewards),
        "reward_per_value": [1 if v else 0 for v in reward.per_value],
        "reward_window_ms": reward.window_ms,
        "reward_sum": 1 if reward.aggregation == "sum" else 0,
        "reward_min": reward.lo,
        "reward_max": reward.hi,
        "reward_base": reward.base,
    }


def _cells(rows: Sequence[Sequence[Any]], r0: float) -> tuple[list[CellMoments], int]:
    base: dict[tuple[int, str], Sequence[Any]] = {}
    corrections: dict[tuple[int, str], Sequence[Any]] = {}
    for row in rows:
        key = (int(row[1]), str(row[2]))
        (base if row[0] == "base" else corrections)[key] = row
    cells, unknown = [], 0
    for (vi, seg), b in sorted(base.items()):
        n = int(b[3])
        if vi == 0:
            unknown += n
            continue
        c = corrections.get((vi, seg))
        d = [float(x) for x in c[4:10]] if c is not None else [0.0] * 6
        inv_p, inv_p_sq, p1 = float(b[4]), float(b[5]), float(b[7])
        cells.append(
            CellMoments(
                segment=seg,
                action=vi - 1,
                n=n,
                inv_p=inv_p,
                inv_p_sq=inv_p_sq,
                min_p=float(b[6]),
                p=p1,
                p_sq=float(b[8]),
                r=r0 * n + d[3],
                r_sq=r0 * r0 * n + d[4],
                r_inv_p=r0 * inv_p + d[0],
                r_inv_p_sq=r0 * inv_p_sq + d[1],
                r_sq_inv_p_sq=r0 * r0 * inv_p_sq + d[2],
                r_p=r0 * p1 + d[5],
            )
        )
    return cells, unknown


def fetch_report_data(event_log: EventLog, query: ReportQuery) -> ReportData:
    """Aggregate an experiment's exposures and outcomes (4 queries, one unit-level scan).

    Raises:
        EventLogUnavailable: when the event log cannot be queried.
    """
    unit_params = _unit_parameters(query, resolve_orphans=True)
    orphans = int(event_log.query(sql.ORPHAN_OUTCOMES, unit_params)[0][0])
    rows = event_log.query(sql.UNIT_METRICS, _unit_parameters(query, orphans > 0))
    groups, earlier = [], 0
    for row in rows:
        if not row[3]:
            earlier += int(row[4])
            continue
        groups.append(
            ArmGroup(
                arm=str(row[0]),
                segment=str(row[1]),
                day=int(row[2]),
                units=int(row[4]),
                exposures=int(row[5]),
                mixed_units=int(row[6]),
                by_type=_type_sums(row, query.types),
            )
        )
    logged = int(event_log.query(sql.LOGGED_DECISIONS, _ope_parameters(query, PPM))[0][0])
    cells: list[CellMoments] = []
    unknown = 0
    fraction = 1.0
    if logged > 0 and query.variants:
        ppm = PPM
        if logged > query.ope_max_decisions:
            ppm = max(1, math.ceil(PPM * query.ope_max_decisions / logged))
        fraction = ppm / PPM
        ope_rows = event_log.query(sql.OFF_POLICY, _ope_parameters(query, ppm))
        cells, unknown = _cells(ope_rows, query.reward.base)
    return ReportData(
        query=query,
        groups=groups,
        earlier_units=earlier,
        orphan_outcomes=orphans,
        logged_decisions=logged,
        ope_fraction=fraction,
        ope_cells=cells,
        ope_unknown_variants=unknown,
    )
