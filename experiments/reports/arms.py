"""The arms of a report: which exist, in what order, and their numbers per metric.

An arm is a configured variant, a variant seen in the log but no longer configured, or one of the
two holdouts (``~holdout``, ``~global_holdout``). Helpers here turn an arm's summed
:class:`~experiments.reports.data.ArmGroup` into the sufficient statistics of the estimators.
"""

from __future__ import annotations

import math

from experiments.reports.data import (
    GLOBAL_HOLDOUT_ARM,
    HOLDOUT_ARM,
    ArmGroup,
    ReportData,
    sum_groups,
)
from experiments.reports.results import ArmKind, ArmMetric, Measure
from experiments.statistics.summaries import CupedSummary, MetricSummary
from tailor_contract.definitions import Experiment

__all__ = [
    "arm_kind",
    "arm_metric",
    "arm_totals",
    "arms_note",
    "ordered_arms",
    "personalised",
    "policy_kind",
    "rate",
    "summaries",
]


def policy_kind(experiment: Experiment) -> str:
    """The experiment's policy tag: ``fixed``, ``thompson``, ``vw_cb``…"""
    return str(type(experiment.policy).__struct_config__.tag)


def arms_note(policy: str) -> str | None:
    """What the per-arm tables count when that is not what their names say, else None.

    A ranked slate logs one exposure per slot; the per-arm queries read only slot 0, so a
    slate counts once and a unit belongs to the arm of the item on top of its first slate.
    """
    if policy != "vw_slates":
        return None
    return (
        "Ranked slates: an arm is the item in slot 0 (the top) of the unit's first slate, and "
        "exposures count slates, not slots; a click on any slot converts the unit. Per-slot "
        "and per-item click rates are in the slates section."
    )


def arm_kind(arm: str) -> ArmKind:
    """Whether an arm is a variant or a holdout."""
    if arm == HOLDOUT_ARM:
        return "holdout"
    if arm == GLOBAL_HOLDOUT_ARM:
        return "global_holdout"
    return "variant"


def ordered_arms(data: ReportData, experiment: Experiment) -> list[str]:
    """Configured variants in order (control always), unknown variants, then holdouts."""
    present = {g.arm for g in data.groups}
    configured = [v.key for v in experiment.variants]
    order = [a for a in configured if a in present or a == experiment.default_variant]
    order += sorted(present - set(configured) - {HOLDOUT_ARM, GLOBAL_HOLDOUT_ARM})
    order += [a for a in (HOLDOUT_ARM, GLOBAL_HOLDOUT_ARM) if a in present]
    return order


def arm_totals(data: ReportData) -> dict[str, ArmGroup]:
    """Each arm's groups summed over segments and days."""
    return sum_groups(data.groups, lambda g: g.arm)


def personalised(groups: list[ArmGroup]) -> ArmGroup:
    """Every non-holdout arm together: the traffic personalisation reached."""
    merged = ArmGroup(arm="personalised")
    for g in groups:
        if arm_kind(g.arm) == "variant":
            merged = merged.merged(g)
    return merged


def rate(num: float, den: float) -> float:
    """num / den, NaN when den is 0."""
    return num / den if den else math.nan


def arm_metric(group: ArmGroup, metric: str) -> ArmMetric:
    """An arm's numbers for one outcome type."""
    s = group.sums(metric)
    return ArmMetric(
        arm=group.arm,
        units=group.units,
        converters=s.converters,
        conversion_rate=rate(s.converters, group.units),
        events=s.events,
        value=s.value,
        value_per_unit=rate(s.value, group.units),
        average_order_value=rate(s.value, s.events),
    )


def summaries(group: ArmGroup, metric: str, measure: Measure) -> tuple[MetricSummary, CupedSummary]:
    """Sufficient statistics of one measure: the metric alone and with its CUPED covariate.

    The covariate is the same measure over the pre-period (converted before, value before).
    """
    s = group.sums(metric)
    if measure == "conversion_rate":
        y, y_sq = float(s.converters), float(s.converters)
        x, x_sq, xy = float(s.pre_converters), float(s.pre_converters), float(s.both_converters)
    else:
        y, y_sq = s.value, s.value_sq
        x, x_sq, xy = s.pre_value, s.pre_value_sq, s.cross_value
    return MetricSummary(n=group.units, total=y, total_sq=y_sq), CupedSummary(
        n=group.units,
        total=y,
        total_sq=y_sq,
        covariate_total=x,
        covariate_total_sq=x_sq,
        cross_total=xy,
    )
