"""Report sections that break results down: by day, by holdout, by segment.

* `daily_series` — cumulative conversion rate per arm by day of first exposure (cohorts).
* `uplift` — the incremental effect of personalisation: all non-holdout traffic against the
  experiment's holdout and against the global holdout, per unit and in total (incremental
  conversions and value), overall and per segment.
* `segment_report` — the primary metric per segment value, each variant against control.

Segments are the values of the report's ``segment`` context attribute at each unit's first
exposure; the largest ``MAX_SEGMENTS`` are shown and the rest pooled as ``(other)``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import msgspec

from experiments.reports.arms import (
    arm_metric,
    arm_totals,
    ordered_arms,
    personalised,
    rate,
    summaries,
)
from experiments.reports.data import (
    DAY_MS,
    GLOBAL_HOLDOUT_ARM,
    HOLDOUT_ARM,
    ArmGroup,
    ReportData,
    sum_groups,
)
from experiments.reports.results import (
    DailyPoint,
    DailySeries,
    SegmentComparison,
    SegmentReport,
    SegmentRow,
    UpliftEstimate,
    UpliftSection,
)
from experiments.statistics.frequentist import mean_lift, proportion_lift
from experiments.statistics.intervals import Interval
from experiments.statistics.multiple_testing import benjamini_hochberg
from tailor_contract.definitions import Experiment

__all__ = ["MAX_SEGMENTS", "daily_series", "segment_groups", "segment_report", "uplift"]

MAX_SEGMENTS = 20
OTHER_SEGMENT = "(other)"
NO_SEGMENT = "(none)"


def _iso_day(day: int, bucket_ms: int = DAY_MS) -> str:
    """A bucket's start: the date for day buckets, else the UTC time to the minute."""
    if bucket_ms == DAY_MS:
        return (date(1970, 1, 1) + timedelta(days=day)).isoformat()
    moment = datetime(1970, 1, 1) + timedelta(milliseconds=day * bucket_ms)
    return moment.strftime("%Y-%m-%dT%H:%MZ")


def daily_series(data: ReportData, experiment: Experiment, metric: str) -> list[DailySeries]:
    """Per arm and day: units first exposed up to that day and how many of them converted.

    Every arm gets a point for every day between the first and the last day with units. When
    the period's exposures span less than two days the "days" are finer buckets
    (``data.day_ms``: hours, or minutes for a very short experiment), labelled with their UTC
    start time ("2026-12-07T04:00Z"), so a one-day experiment still has a curve.
    """
    by_day = sum_groups(data.groups, lambda g: (g.arm, g.day))
    if not by_day:
        return []
    days = range(min(d for _, d in by_day), max(d for _, d in by_day) + 1)
    out = []
    for arm in ordered_arms(data, experiment):
        units = converters = 0
        points = []
        for day in days:
            group = by_day.get((arm, day))
            if group is not None:
                units += group.units
                converters += group.sums(metric).converters
            points.append(
                DailyPoint(
                    day=_iso_day(day, data.day_ms),
                    units=units,
                    converters=converters,
                    rate=rate(converters, units),
                )
            )
        out.append(DailySeries(arm=arm, metric=metric, points=points))
    return out


def _scaled(interval: Interval, factor: float) -> Interval:
    return Interval(
        estimate=interval.estimate * factor,
        lower=interval.lower * factor,
        upper=interval.upper * factor,
        level=interval.level,
    )


def _uplift_one(
    holdout: ArmGroup,
    treated: ArmGroup,
    metric: str,
    segment: str | None,
    level: float,
) -> UpliftEstimate | None:
    if holdout.units < 2 or treated.units < 2:
        return None
    h_rate, _ = summaries(holdout, metric, "conversion_rate")
    p_rate, _ = summaries(treated, metric, "conversion_rate")
    lift = proportion_lift(h_rate, p_rate, level=level)
    value_lift = incremental_value = None
    if holdout.sums(metric).value_sq > 0 or treated.sums(metric).value_sq > 0:
        h_val, _ = summaries(holdout, metric, "value_per_unit")
        p_val, _ = summaries(treated, metric, "value_per_unit")
        value_lift = mean_lift(h_val, p_val, level=level).absolute
        incremental_value = _scaled(value_lift, treated.units)
    return UpliftEstimate(
        holdout="experiment" if holdout.arm == HOLDOUT_ARM else "global",
        metric=metric,
        segment=segment,
        holdout_units=holdout.units,
        personalised_units=treated.units,
        holdout_rate=h_rate.rate,
        personalised_rate=p_rate.rate,
        rate_lift=lift.absolute,
        relative_lift=lift.relative,
        incremental_conversions=_scaled(lift.absolute, treated.units),
        value_lift=value_lift,
        incremental_value=incremental_value,
    )


def uplift(
    data: ReportData, experiment: Experiment, metrics: list[str], level: float, by_segment: bool
) -> UpliftSection:
    """Personalised traffic (every non-holdout arm) against each holdout that has units.

    Overall for ``metrics``; per segment (when ``by_segment``) for the primary metric.
    Intervals are fixed-horizon (two-proportion z, Welch for value).
    """
    totals = arm_totals(data)
    treated = personalised(list(totals.values()))
    overall, per_segment = [], []
    for kind in (HOLDOUT_ARM, GLOBAL_HOLDOUT_ARM):
        if kind not in totals:
            continue
        for metric in metrics:
            est = _uplift_one(totals[kind], treated, metric, None, level)
            if est is not None:
                overall.append(est)
        if not by_segment:
            continue
        for segment, groups in segment_groups(data).items():
            holdout = next((g for g in groups if g.arm == kind), None)
            if holdout is None:
                continue
            est = _uplift_one(
                holdout, personalised(groups), experiment.primary_metric, segment, level
            )
            if est is not None:
                per_segment.append(est)
    return UpliftSection(overall=overall, by_segment=per_segment)


def segment_groups(data: ReportData) -> dict[str, list[ArmGroup]]:
    """Arm groups per segment value: the largest MAX_SEGMENTS, the rest pooled as '(other)'."""
    by_seg = sum_groups(data.groups, lambda g: (g.segment or NO_SEGMENT, g.arm))
    size: dict[str, int] = {}
    for (seg, _), g in by_seg.items():
        size[seg] = size.get(seg, 0) + g.units
    keep = set(sorted(size, key=lambda s: (-size[s], s))[:MAX_SEGMENTS])
    out: dict[str, dict[str, ArmGroup]] = {}
    for (seg, arm), g in sorted(by_seg.items()):
        name = seg if seg in keep else OTHER_SEGMENT
        bucket = out.setdefault(name, {})
        relabelled = msgspec.structs.replace(g, segment=name)
        bucket[arm] = bucket[arm].merged(relabelled) if arm in bucket else relabelled
    return {s: list(arms.values()) for s, arms in out.items()}


def segment_report(
    data: ReportData, experiment: Experiment, attribute: str, level: float
) -> SegmentReport | None:
    """The primary metric by segment: arms and each variant's lift over control.

    Exploratory: p-values are Benjamini–Hochberg adjusted across every segment × variant.
    None when the report has no segment attribute.
    """
    if not attribute:
        return None
    metric = experiment.primary_metric
    order = {a: i for i, a in enumerate(ordered_arms(data, experiment))}
    rows: list[SegmentRow] = []
    raw: list[tuple[int, int, float]] = []
    segments = segment_groups(data)
    for segment in sorted(segments, key=lambda s: (-sum(g.units for g in segments[s]), s)):
        groups = sorted(segments[segment], key=lambda g: order[g.arm])
        by_arm = {g.arm: g for g in groups}
        control = by_arm.get(experiment.default_variant)
        comparisons: list[SegmentComparison] = []
        for v in experiment.variants:
            treated = by_arm.get(v.key)
            if v.key == experiment.default_variant or treated is None or control is None:
                continue
            c, _ = summaries(control, metric, "conversion_rate")
            t, _ = summaries(treated, metric, "conversion_rate")
            lift = proportion_lift(c, t, level=level)
            raw.append((len(rows), len(comparisons), lift.p_value))
            comparisons.append(
                SegmentComparison(
                    variant=v.key,
                    lift=lift.absolute,
                    relative=lift.relative,
                    p_value=lift.p_value,
                    p_adjusted=lift.p_value,
                )
            )
        rows.append(
            SegmentRow(
                segment=segment,
                units=sum(g.units for g in groups),
                arms=[arm_metric(g, metric) for g in groups],
                comparisons=comparisons,
            )
        )
    if raw:
        adjusted = benjamini_hochberg([p for _, _, p in raw], alpha=1.0 - level)
        for (ri, ci, _), p_adj in zip(raw, adjusted.adjusted, strict=True):
            fixed = list(rows[ri].comparisons)
            fixed[ci] = msgspec.structs.replace(fixed[ci], p_adjusted=p_adj)
            rows[ri] = msgspec.structs.replace(rows[ri], comparisons=fixed)
    return SegmentReport(attribute=attribute, metric=metric, rows=rows)
