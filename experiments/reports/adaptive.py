"""The report of an adaptive experiment: what the policy earns, and where it sends traffic.

A learning policy (thompson, vw_cb, epsilon_greedy, send-time Thompson) moves traffic to the arms
that look good, so comparing its arms with each other as in an A/B test is biased: an arm's units
were served at other times and to other people than its rivals', and the early, unlucky arms keep
their early, noisy numbers. What is randomised is the holdout (assigned by hash, independently of
the policy), so the policy's value is read as all of its traffic against the holdout:

* ``holdout`` / ``global_holdout`` — conversion rate per unit (within the attribution window of
  the unit's first exposure) of every non-holdout unit against the holdout's, with the
  always-valid interval of `experiments.statistics.sequential.sequential_proportion_test` (the
  report can be read every day). A unit seen many times (a carousel) counts once.
* ``off_policy`` — without a holdout: the mean reward per logged decision of the deployed policy
  against "always the control", SNIPS with the logged propensities. The variance of the
  difference is the sum of the two variances, an overstatement (the two estimates share the
  control's decisions and are positively correlated), so the interval is conservative.

Per arm, the section gives descriptive numbers (decisions, shares, first-exposure conversion
rates, labelled as such) and the valid per-arm estimate: the off-policy value of always choosing
that arm. Units exposed to several arms are counted and disclosed. The allocation over time is
each arm's share of the logged decisions per time bucket (a minute up to a week, sized to the
span: `experiments.reports.data.bucket_for_span`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from experiments.reports.arms import (
    arm_kind,
    arm_totals,
    personalised,
    policy_kind,
    rate,
    summaries,
)
from experiments.reports.cells import CellMoments
from experiments.reports.data import (
    GLOBAL_HOLDOUT_ARM,
    HOLDOUT_ARM,
    ArmGroup,
    ReportData,
    merge_cells,
)
from experiments.reports.results import (
    AdaptiveArm,
    AdaptiveSection,
    AdaptiveSource,
    AllocationBucket,
    OffPolicySection,
    ValuePoint,
)
from experiments.statistics.frequentist import enough_outcomes
from experiments.statistics.intervals import Interval, newcombe_difference
from experiments.statistics.sequential import sequential_proportion_test
from tailor_contract.definitions import Experiment

__all__ = [
    "ALLOCATION_NOTE",
    "adaptive_section",
    "bucket_name",
    "is_adaptive",
    "off_policy_gain",
]

ALLOCATION_NOTE = (
    "Per-arm numbers are descriptive: the policy changed the allocation over time, so arms were "
    "served at different times and to different units, which biases comparisons between them; "
    "the per-arm values are inverse-propensity (SNIPS) estimates of always serving that arm"
)

_BUCKET_NAMES = {
    60_000: "minute",
    300_000: "5 minutes",
    900_000: "15 minutes",
    3_600_000: "hour",
    21_600_000: "6 hours",
    86_400_000: "day",
    604_800_000: "week",
}


def is_adaptive(experiment: Experiment) -> bool:
    """Whether the experiment's policy learns (moves traffic between arms by itself)."""
    return policy_kind(experiment) != "fixed"


def bucket_name(bucket_ms: int) -> str:
    """A bucket width in words ("hour", "15 minutes")."""
    return _BUCKET_NAMES.get(bucket_ms, f"{bucket_ms // 1000} s")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _allocation(data: ReportData, arms: list[str]) -> list[AllocationBucket]:
    by_bucket: dict[int, dict[str, int]] = {}
    for c in data.allocation:
        by_bucket.setdefault(c.bucket, {})[c.arm] = c.decisions
    out = []
    for bucket in sorted(by_bucket):
        counts = [by_bucket[bucket].get(a, 0) for a in arms]
        total = sum(counts)
        out.append(
            AllocationBucket(
                start=_iso(bucket * data.allocation_bucket_ms),
                decisions=counts,
                shares=[n / total if total else math.nan for n in counts],
            )
        )
    return out


def _from_holdout(
    holdout: ArmGroup, treated: ArmGroup, metric: str, horizon_units: int, level: float
) -> tuple[float, float, Interval, bool]:
    h, _ = summaries(holdout, metric, "conversion_rate")
    t, _ = summaries(treated, metric, "conversion_rate")
    seq = sequential_proportion_test(h, t, horizon_units=horizon_units, level=level)
    gain = seq.absolute
    significant = enough_outcomes(h, t) and (gain.lower > 0 or gain.upper < 0)
    return t.rate, h.rate, gain, significant


def off_policy_gain(
    cells: Sequence[CellMoments], control: int, level: float, bounds: tuple[float, float]
) -> tuple[float, float, Interval] | None:
    """The deployed policy's reward per decision, always-``control``'s, and the difference.

    The deployed value is the mean reward of the logged decisions; always-control's is SNIPS
    over the decisions that chose the control, Σ(r/p) / Σ(1/p). The interval is Newcombe's
    hybrid score interval for the difference (`newcombe_difference`) on rewards rescaled to
    [0, 1] by ``bounds``, each side's Wilson interval at its effective size: the number of
    decisions for the deployed mean, Kish's (Σ1/p)² / Σ1/p² for SNIPS. The plug-in
    ``d ± z sqrt(V_d + V_c)`` it replaces covered a simulated truth in only 90% of logs of
    1,000 decisions: an adaptive policy serves the control rarely once it has learned, so that
    side rests on a few heavily weighted decisions with a badly estimated variance. None
    without two decisions or one of the control.
    """
    n = sum(c.n for c in cells)
    mine = [c for c in cells if c.action == control]
    s_w = sum(c.inv_p for c in mine)
    s_w2 = sum(c.inv_p_sq for c in mine)
    lo, hi = bounds
    if n < 2 or s_w <= 0 or s_w2 <= 0 or hi <= lo:
        return None
    deployed = sum(c.r for c in cells) / n
    baseline = sum(c.r_inv_p for c in mine) / s_w
    width = hi - lo
    iv = newcombe_difference(
        (deployed - lo) / width, n, (baseline - lo) / width, s_w * s_w / s_w2, level
    )
    gain = Interval(
        estimate=deployed - baseline, lower=iv.lower * width, upper=iv.upper * width, level=level
    )
    return deployed, baseline, gain


def _from_off_policy(
    cells: list[CellMoments], control: int, level: float, bounds: tuple[float, float]
) -> tuple[float, float, Interval, bool] | None:
    found = off_policy_gain(cells, control, level, bounds)
    if found is None:
        return None
    deployed, baseline, gain = found
    return deployed, baseline, gain, gain.lower > 0 or gain.upper < 0


def _holdout_over_time(
    data: ReportData, holdout_arm: str, metric: str, horizon_units: int, level: float
) -> list[ValuePoint]:
    """The holdout comparison cumulated over the buckets of first exposure (``day_ms``)."""
    by_bucket: dict[int, tuple[list[ArmGroup], list[ArmGroup]]] = {}
    for g in data.groups:
        if g.arm == holdout_arm or arm_kind(g.arm) == "variant":
            side = by_bucket.setdefault(g.day, ([], []))
            side[0 if g.arm == holdout_arm else 1].append(g)
    holdout, treated = ArmGroup(arm=holdout_arm), ArmGroup(arm="personalised")
    out = []
    for bucket in sorted(by_bucket):
        for g in by_bucket[bucket][0]:
            holdout = holdout.merged(g)
        for g in by_bucket[bucket][1]:
            treated = treated.merged(g)
        if holdout.units < 2 or treated.units < 2:
            continue
        t_value, h_value, gain, _ = _from_holdout(holdout, treated, metric, horizon_units, level)
        out.append(
            ValuePoint(
                start=_iso(bucket * data.day_ms),
                count=treated.units,
                baseline_count=holdout.units,
                policy_value=t_value,
                baseline_value=h_value,
                gain=gain,
            )
        )
    return out


def _off_policy_over_time(
    data: ReportData, control: int, level: float, bounds: tuple[float, float]
) -> list[ValuePoint]:
    """The off-policy comparison cumulated over the decisions' time buckets."""
    so_far: list[CellMoments] = []
    out = []
    for bucket, cells in data.value_cells.items():
        so_far = merge_cells([*so_far, *cells])
        found = off_policy_gain(so_far, control, level, bounds)
        if found is None:
            continue
        deployed, baseline, gain = found
        out.append(
            ValuePoint(
                start=_iso(bucket * data.allocation_bucket_ms),
                count=sum(c.n for c in so_far),
                baseline_count=sum(c.n for c in so_far if c.action == control),
                policy_value=deployed,
                baseline_value=baseline,
                gain=gain,
            )
        )
    return out


def _arms(
    data: ReportData,
    experiment: Experiment,
    allocation: list[AllocationBucket],
    off_policy: OffPolicySection | None,
) -> list[AdaptiveArm]:
    keys = [v.key for v in experiment.variants]
    totals = arm_totals(data)
    decisions = [sum(b.decisions[i] for b in allocation) for i in range(len(keys))]
    all_decisions = sum(decisions)
    last = allocation[-1].shares if allocation else [math.nan] * len(keys)
    values = {p.policy: p.estimate.snips for p in off_policy.policies} if off_policy else {}
    out = []
    for i, key in enumerate(keys):
        group = totals.get(key, ArmGroup(arm=key))
        out.append(
            AdaptiveArm(
                arm=key,
                decisions=decisions[i],
                share=rate(decisions[i], all_decisions),
                last_share=last[i],
                units=group.units,
                conversion_rate=rate(group.sums(experiment.primary_metric).converters, group.units),
                value=values.get(f"always:{key}"),
            )
        )
    return out


def adaptive_section(
    data: ReportData,
    experiment: Experiment,
    off_policy: OffPolicySection | None,
    *,
    horizon_units: int,
    level: float,
) -> AdaptiveSection | None:
    """The adaptive report of a learning policy; None for a fixed split."""
    if not is_adaptive(experiment):
        return None
    metric = experiment.primary_metric
    totals = arm_totals(data)
    treated = personalised(list(totals.values()))
    keys = [v.key for v in experiment.variants]
    allocation = _allocation(data, keys)
    notes = [ALLOCATION_NOTE]
    source: AdaptiveSource = "none"
    measure, baseline = f"{metric} conversion rate per unit", "nothing"
    policy_value = baseline_value = math.nan
    gain: Interval | None = None
    significant = False
    holdouts: tuple[tuple[str, AdaptiveSource, str], ...] = (
        (HOLDOUT_ARM, "holdout", "the holdout"),
        (GLOBAL_HOLDOUT_ARM, "global_holdout", "the global holdout"),
    )
    over_time: list[ValuePoint] = []
    value_bucket = ""
    for arm, name, label in holdouts:
        holdout = totals.get(arm)
        if holdout is None or holdout.units < 2 or treated.units < 2:
            continue
        policy_value, baseline_value, gain, significant = _from_holdout(
            holdout, treated, metric, horizon_units, level
        )
        over_time = _holdout_over_time(data, arm, metric, horizon_units, level)
        value_bucket = bucket_name(data.day_ms)
        source, baseline = name, label
        notes.append(
            f"The value comes from {label} ({holdout.units:,} units, randomised independently "
            f"of the policy) against all {treated.units:,} units the policy served; each unit "
            "counts once, with outcomes within the attribution window of its first exposure; "
            "the interval is always-valid"
        )
        break
    else:
        control = keys.index(experiment.default_variant)
        bounds = (experiment.reward.min_reward, experiment.reward.max_reward)
        found = _from_off_policy(data.ope_cells, control, level, bounds)
        if found is not None:
            policy_value, baseline_value, gain, significant = found
            source = "off_policy"
            measure = "reward per decision"
            baseline = f"always {experiment.default_variant}"
            over_time = _off_policy_over_time(data, control, level, bounds)
            value_bucket = bucket_name(data.allocation_bucket_ms)
            notes.append(
                "No holdout: the value is estimated off-policy (SNIPS with the logged "
                f"propensities) as the reward per decision against always "
                f"{experiment.default_variant}, with a score (Newcombe) interval for the "
                "difference; over time the intervals hold for each point, not for all at once"
            )
    mixed = sum(g.mixed_units for a, g in totals.items() if a in keys)
    per_unit = rate(treated.exposures, treated.units)
    if mixed:
        notes.append(
            f"{mixed:,} of {treated.units:,} units saw more than one arm ({per_unit:.1f} "
            "exposures per unit): per-arm units count each unit in the arm of its first exposure"
        )
    return AdaptiveSection(
        source=source,
        metric=metric,
        measure=measure,
        baseline=baseline,
        policy_value=policy_value,
        baseline_value=baseline_value,
        gain=gain,
        significant=significant,
        bucket=bucket_name(data.allocation_bucket_ms) if data.allocation_bucket_ms else "",
        allocation=allocation,
        arms=_arms(data, experiment, allocation, off_policy),
        units_in_several_arms=mixed,
        decisions_per_unit=per_unit,
        notes=notes,
        value_bucket=value_bucket,
        value_over_time=over_time,
    )
