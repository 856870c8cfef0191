"""Experiment reports: the event log's aggregates turned into statistics marketers can read.

`build_report` runs the report SQL once (:func:`experiments.reports.data.fetch_report_data`)
and calls one function per section: `arm_summaries` and `sample_ratio`, `metric_reports`
(fixed-horizon, Bayesian, always-valid and CUPED lifts per metric), `correct_for_multiplicity`,
then the breakdowns (:mod:`experiments.reports.breakdowns`), off-policy estimates
(:mod:`experiments.reports.off_policy`) and the verdict (:mod:`experiments.reports.verdict`).

Conventions: the control is the experiment's ``default_variant``; a unit belongs to the arm of
its first exposure; an outcome type's per-unit metric is "converted" (any event within the
attribution window) and, when the type carries values, the value sum ("revenue per unit").
Guard-rail types (unsubscribe, complaint…) are harms: an increase is "worse".
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
import numpy as np

from event_log.store import EventLog
from experiments.reports.adaptive import adaptive_section, is_adaptive
from experiments.reports.arms import (
    arm_kind,
    arm_metric,
    arm_totals,
    ordered_arms,
    policy_kind,
    summaries,
)
from experiments.reports.breakdowns import daily_series, segment_report, uplift
from experiments.reports.data import (
    ArmGroup,
    ReportData,
    ReportQuery,
    RewardQuery,
    fetch_report_data,
)
from experiments.reports.drivers import drivers
from experiments.reports.off_policy import off_policy
from experiments.reports.plan import default_horizon_units, planned_comparisons, power_plan
from experiments.reports.preferences import preference_attributes, preferences, recent_start
from experiments.reports.results import (
    ArmSummary,
    Comparison,
    ExperimentReport,
    Measure,
    MetricReport,
    ReportOptions,
    ReportWindow,
    Role,
)
from experiments.reports.verdict import verdict
from experiments.statistics.bayesian import beta_binomial_comparison, normal_comparison
from experiments.statistics.cuped import cuped_lift
from experiments.statistics.frequentist import enough_outcomes, mean_lift, proportion_lift
from experiments.statistics.multiple_testing import AdjustedPValues, benjamini_hochberg, holm
from experiments.statistics.sequential import sequential_mean_test, sequential_proportion_test
from experiments.statistics.srm import SrmResult, sample_ratio_mismatch
from tailor_contract.definitions import Experiment

__all__ = [
    "arm_summaries",
    "build_report",
    "correct_for_multiplicity",
    "default_horizon_units",
    "metric_reports",
    "metric_roles",
    "report_from_data",
    "report_query",
    "sample_ratio",
]


def metric_roles(experiment: Experiment, options: ReportOptions) -> list[tuple[str, Role]]:
    """The reported outcome types in order: primary, guard-rails, then requested extras."""
    seen: dict[str, Role] = {experiment.primary_metric: "primary"}
    for name in experiment.guardrail_metrics:
        seen.setdefault(name, "guardrail")
    for name in options.metrics:
        seen.setdefault(name, "secondary")
    return list(seen.items())


def report_query(experiment: Experiment, options: ReportOptions, now_ms: int) -> ReportQuery:
    """The aggregation a report needs: period, windows, outcome types and reward rules."""
    rules = experiment.reward_rules
    spec = experiment.reward
    window_s = options.window_s if options.window_s is not None else experiment.reward_window_s
    return ReportQuery(
        experiment=experiment.key,
        variants=tuple(v.key for v in experiment.variants),
        start_ms=options.start_ms,
        end_ms=options.end_ms if options.end_ms is not None else now_ms,
        window_ms=window_s * 1000,
        pre_ms=options.pre_period_s * 1000,
        types=tuple(name for name, _ in metric_roles(experiment, options)),
        segment=options.segment,
        reward=RewardQuery(
            types=tuple(r.type for r in rules),
            rewards=tuple(r.reward for r in rules),
            per_value=tuple(r.per_value for r in rules),
            window_ms=experiment.reward_window_s * 1000,
            aggregation=spec.aggregation,
            default=spec.default,
            lo=spec.min_reward,
            hi=spec.max_reward,
        ),
        ope_max_decisions=options.ope_max_decisions,
        open_end=options.end_ms is None,
        allocation=is_adaptive(experiment),
        cap_percentile=options.cap_percentile or 0.0,
        off_policy=(
            options.off_policy
            if options.off_policy is not None
            else policy_kind(experiment) != "fixed"
        ),
    )


def arm_summaries(data: ReportData, experiment: Experiment) -> list[ArmSummary]:
    """Units and exposures per arm, with observed and configured shares of non-holdout units."""
    totals = arm_totals(data)
    weights = {v.key: v.weight for v in experiment.variants}
    weight_sum = sum(weights.values())
    in_split = sum(g.units for a, g in totals.items() if arm_kind(a) == "variant")
    out = []
    for arm in ordered_arms(data, experiment):
        group = totals.get(arm, ArmGroup(arm=arm))
        kind = arm_kind(arm)
        out.append(
            ArmSummary(
                arm=arm,
                kind=kind,
                units=group.units,
                exposures=data.exposures.get(arm, 0),
                share=group.units / in_split if kind == "variant" and in_split else float("nan"),
                configured_share=weights[arm] / weight_sum if arm in weights else None,
            )
        )
    return out


def sample_ratio(data: ReportData, experiment: Experiment) -> SrmResult | None:
    """Chi-square of units per variant against the configured weights (holdouts excluded).

    Only for fixed splits — a learning policy moves traffic on purpose — and only with two or
    more weighted variants and some units.
    """
    if policy_kind(experiment) != "fixed":
        return None
    totals = arm_totals(data)
    arms = [v for v in experiment.variants if v.weight > 0]
    counts = [totals[v.key].units if v.key in totals else 0 for v in arms]
    if len(arms) < 2 or sum(counts) == 0:
        return None
    return sample_ratio_mismatch(counts, [v.weight for v in arms])


def _compare(
    control: ArmGroup,
    treatment: ArmGroup,
    metric: str,
    measure: Measure,
    *,
    level: float,
    horizon_units: int,
    rng: np.random.Generator,
) -> Comparison:
    c, c_cov = summaries(control, metric, measure)
    t, t_cov = summaries(treatment, metric, measure)
    c_rate, _ = summaries(control, metric, "conversion_rate")
    t_rate, _ = summaries(treatment, metric, "conversion_rate")
    if measure == "conversion_rate":
        lift = proportion_lift(c, t, level=level)
        bayes = beta_binomial_comparison(c, t, rng, level=level)
        seq = sequential_proportion_test(c, t, horizon_units=horizon_units, level=level)
    else:
        lift = mean_lift(c, t, level=level)
        bayes = normal_comparison(c, t, level=level)
        seq = sequential_mean_test(c, t, horizon_units=horizon_units, level=level)
    has_covariate = c_cov.covariate_total_sq > 0 or t_cov.covariate_total_sq > 0
    return Comparison(
        variant=treatment.arm,
        control=control.arm,
        metric=metric,
        measure=measure,
        lift=lift,
        bayesian=bayes,
        sequential=seq,
        cuped=cuped_lift(c_cov, t_cov, level=level) if has_covariate else None,
        p_adjusted=seq.p_value,
        fixed_p_adjusted=lift.p_value,
        significant=False,
        direction="unclear",
        enough_outcomes=enough_outcomes(c_rate, t_rate),
    )


def _rng_for(experiment: Experiment) -> np.random.Generator:
    # A fixed seed per experiment: the same data always gives the same chance to beat.
    return np.random.default_rng(zlib.crc32(experiment.key.encode()))


def metric_reports(
    data: ReportData,
    experiment: Experiment,
    options: ReportOptions,
    *,
    horizon_units: int,
    rng: np.random.Generator,
) -> list[MetricReport]:
    """Per metric: per-arm numbers and each variant against control (p-values unadjusted).

    Comparisons need at least two units in both arms; the value measure appears when the
    outcome type carries values.
    """
    totals = arm_totals(data)
    arms = [totals[a] for a in ordered_arms(data, experiment) if a in totals]
    control = totals.get(experiment.default_variant)
    treatments = [
        totals[v.key]
        for v in experiment.variants
        if v.key != experiment.default_variant and v.key in totals and totals[v.key].units >= 2
    ]
    out = []
    for metric, role in metric_roles(experiment, options):
        valued = any(g.sums(metric).value_sq > 0 for g in arms)
        measures: list[Measure] = ["conversion_rate"]
        if valued:
            measures.append("value_per_unit")
        comparisons = []
        if control is not None and control.units >= 2:
            comparisons = [
                _compare(
                    control, t, metric, m, level=options.level, horizon_units=horizon_units, rng=rng
                )
                for m in measures
                for t in treatments
            ]
        out.append(
            MetricReport(
                metric=metric,
                role=role,
                valued=valued,
                arms=[arm_metric(g, metric) for g in arms],
                comparisons=comparisons,
            )
        )
    return out


def correct_for_multiplicity(
    reports: Sequence[MetricReport], options: ReportOptions
) -> tuple[list[MetricReport], AdjustedPValues | None]:
    """Adjust every comparison's p-values (Holm or BH across variants × metrics × measures).

    A comparison is ``significant`` when its adjusted always-valid p-value is at most
    α = 1 - level and it has enough outcomes (`enough_outcomes`); its direction is the side of 0
    its confidence sequence lies on, read for the metric's role (guard-rail increases are worse).
    Returns the reports and the adjustment of the always-valid p-values, in report order.
    """
    flat = [c for r in reports for c in r.comparisons]
    if not flat:
        return list(reports), None
    alpha = 1.0 - options.level
    adjust = holm if options.correction == "holm" else benjamini_hochberg
    seq = adjust([c.sequential.p_value for c in flat], alpha=alpha)
    fixed = adjust([c.lift.p_value for c in flat], alpha=alpha)
    out, i = [], 0
    for report in reports:
        comparisons = []
        for c in report.comparisons:
            significant = seq.rejected[i] and c.enough_outcomes
            up = c.sequential.absolute.lower > 0
            good = up if report.role != "guardrail" else not up
            comparisons.append(
                msgspec.structs.replace(
                    c,
                    p_adjusted=seq.adjusted[i],
                    fixed_p_adjusted=fixed.adjusted[i],
                    significant=significant,
                    direction=("better" if good else "worse") if significant else "unclear",
                )
            )
            i += 1
        out.append(msgspec.structs.replace(report, comparisons=comparisons))
    return out, seq


def _warnings(data: ReportData, experiment: Experiment) -> list[str]:
    out = []
    totals = arm_totals(data)
    mixed = sum(g.mixed_units for g in totals.values())
    if mixed and policy_kind(experiment) == "fixed":
        out.append(
            f"{mixed} units saw more than one variant (weights or salt changed mid-run?): "
            "each counts in the arm of its first exposure"
        )
    for name in data.unconfigured:
        out.append(f"exposures of variant {name!r}, which is no longer configured")
    if data.earlier_units:
        out.append(f"{data.earlier_units} units first exposed before the period are left out")
    if experiment.paused_reason is not None:
        out.append(f"paused automatically by the guard-rail check: {experiment.paused_reason}")
    return out


def _first_ms(data: ReportData) -> int:
    """The period's start: the requested one, or the first day with units when open-ended."""
    if data.query.start_ms > 0 or not data.groups:
        return data.query.start_ms
    return min(g.day for g in data.groups) * data.day_ms


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def report_from_data(
    data: ReportData, experiment: Experiment, options: ReportOptions, *, now_ms: int
) -> ExperimentReport:
    """Every section of the report from already fetched aggregates (pure computation)."""
    query = data.query
    horizon = options.horizon_units or default_horizon_units(
        len(experiment.variants), planned_comparisons(experiment), options.level
    )
    srm = sample_ratio(data, experiment)
    raw_metrics = metric_reports(
        data, experiment, options, horizon_units=horizon, rng=_rng_for(experiment)
    )
    metrics, adjusted = correct_for_multiplicity(raw_metrics, options)
    arms = arm_summaries(data, experiment)
    headline_metrics = [m for m, role in metric_roles(experiment, options) if role != "secondary"]
    uplift_section = uplift(
        data, experiment, headline_metrics, options.level, by_segment=bool(options.segment)
    )
    off_policy_section = off_policy(data, experiment, segment=options.segment, level=options.level)
    adaptive = adaptive_section(
        data, experiment, off_policy_section, horizon_units=horizon, level=options.level
    )
    return ExperimentReport(
        experiment=experiment.key,
        name=experiment.name,
        hypothesis=experiment.hypothesis,
        status=str(experiment.status),
        version=experiment.version,
        policy=policy_kind(experiment),
        control=experiment.default_variant,
        primary_metric=experiment.primary_metric,
        guardrail_metrics=list(experiment.guardrail_metrics),
        window=ReportWindow(
            start=_iso(_first_ms(data)),
            end=_iso(query.end_ms),
            attribution_window_s=query.window_ms // 1000,
            pre_period_s=options.pre_period_s,
        ),
        level=options.level,
        correction=options.correction,
        horizon_units=horizon,
        generated_at=_iso(now_ms),
        verdict=verdict(
            experiment, arms, srm, metrics, uplift_section, options.level, adaptive=adaptive
        ),
        plan=power_plan(
            next(m for m in metrics if m.role == "primary"),
            experiment.default_variant,
            [v.key for v in experiment.variants if v.key != experiment.default_variant],
            horizon_units=horizon,
            comparisons=max(sum(len(m.comparisons) for m in metrics), 1),
            level=options.level,
            mde=options.mde,
            power=options.power,
        ),
        arms=arms,
        sample_ratio=srm,
        metrics=metrics,
        multiple_testing=adjusted,
        daily=daily_series(data, experiment, experiment.primary_metric),
        uplift=uplift_section,
        segments=segment_report(data, experiment, options.segment, options.level),
        off_policy=off_policy_section,
        warnings=_warnings(data, experiment),
        adaptive=adaptive,
        auto_paused=experiment.paused_reason,
    )


def build_report(
    event_log: EventLog,
    experiment: Experiment,
    options: ReportOptions,
    *,
    now_ms: int | None = None,
) -> ExperimentReport:
    """The whole report of one experiment, computed from the event log.

    Raises:
        EventLogUnavailable: when the event log cannot be queried.
    """
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    query = report_query(experiment, options, now)
    data = fetch_report_data(event_log, query)
    report = report_from_data(data, experiment, options, now_ms=now)
    if not is_adaptive(experiment):
        return report
    found = drivers(event_log, experiment.key, query.start_ms, query.end_ms)
    report = msgspec.structs.replace(report, drivers=found)
    adaptive = report.adaptive
    since = recent_start(adaptive.allocation) if adaptive is not None else None
    if adaptive is None or since is None:
        return report
    attributes = preference_attributes(experiment, options.segment, found)
    preferred = preferences(event_log, experiment, attributes, since, query.end_ms)
    adaptive = msgspec.structs.replace(adaptive, preferences_since=since, preferences=preferred)
    return msgspec.structs.replace(report, adaptive=adaptive)
