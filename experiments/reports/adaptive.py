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
from datetime import UTC, datetime

from experiments.reports.arms import arm_totals, personalised, policy_kind, rate, summaries
from experiments.reports.cells import CellMoments
from experiments.reports.data import GLOBAL_HOLDOUT_ARM, HOLDOUT_ARM, ArmGroup, ReportData
from experiments.reports.results import (
    AdaptiveArm,
    AdaptiveSection,
    AdaptiveSource,
    AllocationBucket,
    OffPolicySection,
)
from experiments.statistics.frequentist import enough_outcomes
from experiments.statistics.intervals import Interval, z_critical
from experiments.statistics.sequential import sequential_proportion_test
from tailor_contract.definitions import Experiment

__all__ = ["ALLOCATION_NOTE", "adaptive_section", "bucket_name", "is_adaptive"]

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


def _snips_control(cells: list[CellMoments], control: int) -> tuple[float, float] | None:
    """SNIPS value of always the control and its delta-method variance."""
    mine = [c for c in cells if c.action == control]
    s_w = sum(c.inv_p for c in mine)
    if s_w <= 0:
        return None
    value = sum(c.r_inv_p for c in mine) / s_w
    s_w2 = sum(c.inv_p_sq for c in mine)
    s_w2r = sum(c.r_inv_p_sq for c in mine)
    s_w2r2 = sum(c.r_sq_inv_p_sq for c in mine)
    variance = max(s_w2r2 - 2 * value * s_w2r + value * value * s_w2, 0.0) / (s_w * s_w)
    return value, variance


def _from_off_policy(
    cells: list[CellMoments], control: int, level: float, bounds: tuple[float, float]
) -> tuple[float, float, Interval, bool] | None:
    n = sum(c.n for c in cells)
    ctrl = _snips_control(cells, control)
    if n < 2 or ctrl is None:
        return None
    r, r_sq = sum(c.r for c in cells), sum(c.r_sq for c in cells)
    deployed = r / n
    var_d = max(r_sq - r * r / n, 0.0) / (n - 1) / n
    baseline, var_c = ctrl
    half = z_critical(level) * math.sqrt(var_d + var_c)
    width = bounds[1] - bounds[0]
    diff = deployed - baseline
    gain = Interval(
        estimate=diff,
        lower=max(diff - half, -width),
        upper=min(diff + half, width),
        level=level,
    )
    return deployed, baseline, gain, gain.lower > 0 or gain.upper < 0


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
    for arm, name, label in holdouts:
        holdout = totals.get(arm)
        if holdout is None or holdout.units < 2 or treated.units < 2:
            continue
        policy_value, baseline_value, gain, significant = _from_holdout(
            holdout, treated, metric, horizon_units, level
        )
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
            notes.append(
                "No holdout: the value is estimated off-policy (SNIPS with the logged "
                f"propensities) as the reward per decision against always "
                f"{experiment.default_variant}; the interval adds the two estimates' variances "
                "and is conservative"
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
    )
