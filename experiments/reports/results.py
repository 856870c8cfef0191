"""The experiment report as data: what ``GET /v1/experiments/{key}/report`` returns.

Every section is a msgspec Struct built by a function in :mod:`experiments.reports.build`; the HTML
page and ``tailor report`` render the same Structs. Undefined numbers (a relative lift over a zero
control, a rate with no units) are NaN and encode as JSON ``null``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from experiments.off_policy.estimators import OffPolicyEstimate
from experiments.reports.slates import SlateReport
from experiments.statistics.bayesian import BayesianResult
from experiments.statistics.cuped import CupedResult
from experiments.statistics.frequentist import LiftResult
from experiments.statistics.intervals import Interval
from experiments.statistics.multiple_testing import AdjustedPValues
from experiments.statistics.sequential import SequentialResult
from experiments.statistics.srm import SrmResult
from tailor_contract.definitions import MetricName

__all__ = [
    "AdaptiveArm",
    "AdaptiveSection",
    "AllocationBucket",
    "ApprenticeStatus",
    "ArmMetric",
    "ArmSummary",
    "Comparison",
    "DailyPoint",
    "DailySeries",
    "Driver",
    "ExperimentReport",
    "MetricReport",
    "OffPolicySection",
    "PolicyValue",
    "PowerPlan",
    "ReportOptions",
    "ReportWindow",
    "SegmentComparison",
    "SegmentPreference",
    "SegmentReport",
    "SegmentRow",
    "UpliftEstimate",
    "UpliftSection",
    "ValuePoint",
    "Verdict",
    "VerdictStatus",
]

Measure = Literal["conversion_rate", "value_per_unit"]
Role = Literal["primary", "guardrail", "secondary"]
ArmKind = Literal["variant", "holdout", "global_holdout"]
Direction = Literal["better", "worse", "unclear"]
Correction = Literal["holm", "benjamini_hochberg"]
AdaptiveSource = Literal["holdout", "global_holdout", "off_policy", "none"]
VerdictStatus = Literal[
    "winner", "loser", "no_difference", "guardrail_harm", "sample_ratio_mismatch", "no_data"
]


class ReportOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a caller may choose about a report.

    Attributes:
        start_ms: include units first exposed at or after this time (epoch ms; 0 = all).
        end_ms: data as of this time (epoch ms; None = now).
        segment: context attribute (captured at exposure) to break results down by.
        metrics: outcome types to report besides the primary and guard-rail metrics.
        window_s: attribution window after a unit's first exposure (default: the experiment's
            reward window).
        pre_period_s: CUPED pre-period before the first exposure.
        level: confidence / credible level of every interval.
        correction: multiple-testing correction across variants × metrics.
        horizon_units: planned units (all arms) where the always-valid intervals are tightest;
            set it before the experiment starts — the default comes from a power calculation
            for the always-valid test the verdict uses (5% baseline conversion, 10% relative
            lift, 80% power, α split over the planned comparisons), never from the data.
        mde: relative effect the report's ``plan`` section plans for (0.1 = +10%).
        power: power the ``plan`` section plans for.
        ope_max_decisions: above this many logged decisions off-policy evaluation samples units.
        cap_percentile: winsorise every metric's per-unit value (revenue) at this percentile
            of the metric's own positive per-unit values (e.g. 0.99), in the window and the
            pre-period, so one outlier cannot flip a lift; None: no capping.
        off_policy: compute off-policy estimates; by default only for learning policies (a
            fixed split's variants are compared directly, and the estimates cost a second pass
            over the exposures).
    """

    start_ms: Annotated[int, Meta(ge=0)] = 0
    end_ms: Annotated[int, Meta(ge=0)] | None = None
    segment: Annotated[str, Meta(max_length=64)] = ""
    metrics: Annotated[tuple[MetricName, ...], Meta(max_length=20)] = ()
    window_s: Annotated[int, Meta(ge=1, le=366 * 86400)] | None = None
    pre_period_s: Annotated[int, Meta(ge=0, le=366 * 86400)] = 14 * 86400
    level: Annotated[float, Meta(ge=0.5, le=0.999)] = 0.95
    correction: Correction = "holm"
    horizon_units: Annotated[int, Meta(ge=2)] | None = None
    ope_max_decisions: Annotated[int, Meta(ge=1000)] = 1_000_000
    off_policy: bool | None = None
    mde: Annotated[float, Meta(gt=0.0, le=10.0)] = 0.10
    power: Annotated[float, Meta(ge=0.5, le=0.999)] = 0.8
    cap_percentile: Annotated[float, Meta(ge=0.5, lt=1.0)] | None = None

    def __post_init__(self) -> None:
        if self.end_ms is not None and self.end_ms <= self.start_ms:
            raise ValueError("to: the end of the period must come after its start")


class ReportWindow(msgspec.Struct, frozen=True, kw_only=True):
    """The period and windows a report covers (ISO 8601 UTC times)."""

    start: str
    end: str
    attribution_window_s: int
    pre_period_s: int


class ArmSummary(msgspec.Struct, frozen=True, kw_only=True):
    """Units and exposures of one arm; shares are of non-holdout units."""

    arm: str
    kind: ArmKind
    units: int
    exposures: int
    share: float
    configured_share: float | None = None


class ArmMetric(msgspec.Struct, frozen=True, kw_only=True):
    """One arm's numbers for one outcome type over the attribution window."""

    arm: str
    units: int
    converters: int
    conversion_rate: float
    events: int
    value: float
    value_per_unit: float
    average_order_value: float


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    """A treatment variant against control on one measure of one metric.

    ``lift`` is the fixed-horizon test (valid at one planned look), ``sequential`` the
    always-valid one (valid however often the report is read) that decides ``significant`` after
    the multiple-testing correction; ``cuped`` appears when a pre-period covariate exists.
    ``significant`` also needs ``enough_outcomes``: at least 10 converting and 10
    non-converting units in the two arms together
    (`experiments.statistics.frequentist.enough_outcomes`).
    """

    variant: str
    control: str
    metric: str
    measure: Measure
    lift: LiftResult
    bayesian: BayesianResult
    sequential: SequentialResult
    cuped: CupedResult | None
    p_adjusted: float
    fixed_p_adjusted: float
    significant: bool
    direction: Direction
    enough_outcomes: bool = True


class MetricReport(msgspec.Struct, frozen=True, kw_only=True):
    """One outcome type: per-arm numbers and comparisons against control."""

    metric: str
    role: Role
    valued: bool
    arms: list[ArmMetric]
    comparisons: list[Comparison]


class DailyPoint(msgspec.Struct, frozen=True, kw_only=True):
    """Cumulative units first exposed up to ``day`` and how many of them converted."""

    day: str
    units: int
    converters: int
    rate: float


class DailySeries(msgspec.Struct, frozen=True, kw_only=True):
    """Cumulative conversion rate of one arm by day of first exposure."""

    arm: str
    metric: str
    points: list[DailyPoint]


class UpliftEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """Personalised traffic against a holdout on one metric (overall or in one segment).

    ``rate_lift`` is per unit (personalised rate - holdout rate), ``incremental_conversions`` the
    same times the personalised units; likewise for value when the metric carries one.
    """

    holdout: Literal["experiment", "global"]
    metric: str
    segment: str | None
    holdout_units: int
    personalised_units: int
    holdout_rate: float
    personalised_rate: float
    rate_lift: Interval
    relative_lift: Interval
    incremental_conversions: Interval
    value_lift: Interval | None = None
    incremental_value: Interval | None = None


class UpliftSection(msgspec.Struct, frozen=True, kw_only=True):
    """The incremental effect of personalisation, overall and per segment."""

    overall: list[UpliftEstimate]
    by_segment: list[UpliftEstimate]


class SegmentComparison(msgspec.Struct, frozen=True, kw_only=True):
    """A treatment against control within one segment (primary metric)."""

    variant: str
    lift: Interval
    relative: Interval
    p_value: float
    p_adjusted: float


class SegmentRow(msgspec.Struct, frozen=True, kw_only=True):
    """One segment value: its arms and lifts on the primary metric."""

    segment: str
    units: int
    arms: list[ArmMetric]
    comparisons: list[SegmentComparison]


class SegmentReport(msgspec.Struct, frozen=True, kw_only=True):
    """Results by a context attribute; p-values adjusted by Benjamini–Hochberg across rows."""

    attribute: str
    metric: str
    rows: list[SegmentRow]


class PolicyValue(msgspec.Struct, frozen=True, kw_only=True):
    """The estimated value (mean reward per decision) of one target policy."""

    policy: str
    description: str
    estimate: OffPolicyEstimate


class OffPolicySection(msgspec.Struct, frozen=True, kw_only=True):
    """Off-policy estimates from logged propensities (non-holdout split/policy decisions)."""

    logged_decisions: int
    decisions_used: int
    sampled_fraction: float
    reward: str
    segment: str
    policies: list[PolicyValue]
    warnings: list[str]


class PowerPlan(msgspec.Struct, frozen=True, kw_only=True):
    """How many more units the verdict's test needs to detect an effect on the primary metric.

    Planned for the always-valid test with the report's horizon, at α / ``comparisons`` (Holm's
    first step over the report's family). ``units_per_arm_needed`` is per compared arm;
    ``more_units`` is what all variant arms still need together (0 when there already).

    Attributes:
        metric: the primary metric.
        test: the test planned for: the verdict's always-valid test.
        baseline_rate: control's observed rate, or the planning default (5%) before it has one.
        effect: absolute rate increase to detect.
        relative_effect: the same relative to the baseline.
        power: target power.
        alpha: level per comparison (1 - level, divided by ``comparisons``).
        comparisons: size of the multiple-testing family.
        horizon_units: the always-valid test's horizon.
        units_per_arm_needed: units per arm at which the power is reached.
        units_per_arm: units in the smallest compared arm so far.
        more_units: about this many more units (all variant arms) to reach the power.
        power_now: the test's power for this effect at the current size.
        sentence: the plan in words.
    """

    metric: str
    test: Literal["always_valid"] = "always_valid"
    baseline_rate: float
    effect: float
    relative_effect: float
    power: float
    alpha: float
    comparisons: int
    horizon_units: int
    units_per_arm_needed: int
    units_per_arm: int
    more_units: int
    power_now: float
    sentence: str


class AllocationBucket(msgspec.Struct, frozen=True, kw_only=True):
    """One time bucket of an adaptive policy's allocation (arms in `AdaptiveSection.arms` order).

    Attributes:
        start: the bucket's start (ISO 8601, UTC).
        decisions: logged decisions in the bucket, per arm.
        shares: each arm's share of the bucket's decisions.
    """

    start: str
    decisions: list[int]
    shares: list[float]


class ValuePoint(msgspec.Struct, frozen=True, kw_only=True):
    """The policy's value up to the end of one time bucket, against its baseline (cumulative).

    Attributes:
        start: the bucket's start (ISO 8601, UTC); the point covers everything before its end.
        count: the policy's side so far: units first exposed (holdout) or logged decisions
            (off-policy).
        baseline_count: the baseline's: holdout units, or decisions that chose the control.
        policy_value, baseline_value: the two sides' means so far.
        gain: their difference with its interval: always-valid from a holdout (every point may
            be read), a pointwise Newcombe score interval off-policy.
    """

    start: str
    count: int
    baseline_count: int
    policy_value: float
    baseline_value: float
    gain: Interval


class AdaptiveArm(msgspec.Struct, frozen=True, kw_only=True):
    """One arm of an adaptive experiment, described rather than compared.

    Attributes:
        arm: variant key.
        decisions: logged decisions that chose it.
        share: its share of all logged decisions; ``last_share`` in the latest bucket.
        units: units whose first exposure was this arm, and ``conversion_rate`` theirs on the
            primary metric — descriptive only: the policy sent it traffic when (and to whom) it
            looked good.
        value: the off-policy (SNIPS, logged propensities) value per decision of always
            choosing this arm, the valid per-arm estimate; None without logged decisions.
    """

    arm: str
    decisions: int
    share: float
    last_share: float
    units: int
    conversion_rate: float
    value: Interval | None = None


class SegmentPreference(msgspec.Struct, frozen=True, kw_only=True):
    """What an adaptive policy chose lately for one value of a context attribute.

    Attributes:
        attribute, value: the segment (e.g. ``device`` = ``mobile``).
        decisions: the policy's decisions there since `AdaptiveSection.preferences_since`.
        preferred: the arm it chose most; ``share`` its share of those decisions.
        shares: each arm's share, in `AdaptiveSection.arms` order.
    """

    attribute: str
    value: str
    decisions: int
    preferred: str
    share: float
    shares: list[float]


class AdaptiveSection(msgspec.Struct, frozen=True, kw_only=True):
    """What an adaptive policy (thompson, vw_cb, epsilon_greedy, send time) earns, and how.

    Attributes:
        source: where the policy's value comes from: ``holdout`` (the experiment's randomised
            holdout), ``global_holdout``, ``off_policy`` (SNIPS with the logged propensities
            against always serving the control) or ``none`` (neither is available).
        metric: the primary metric.
        measure: what ``gain`` measures, in words.
        baseline: what the policy is compared with.
        policy_value, baseline_value: the two sides' means.
        gain: the policy's value minus the baseline's, with its interval (always-valid for a
            holdout; for ``off_policy`` Newcombe's score interval for the difference, see
            `experiments.reports.adaptive.off_policy_gain`).
        significant: the interval excludes 0.
        bucket: the allocation's bucket width in words; ``allocation`` the buckets.
        arms: the arms, descriptive (see `AdaptiveArm`).
        units_in_several_arms: units exposed to more than one arm (each counts in the arm of
            its first exposure in the per-arm numbers).
        decisions_per_unit: logged exposures per unit of the policy's traffic.
        notes: disclosures that go with the numbers.
        value_bucket: the width of ``value_over_time``'s buckets in words.
        value_over_time: the gain cumulated bucket by bucket (the last point is ``gain``):
            by time of first exposure from a holdout, by time of decision off-policy.
        preferences_since: the start of the latest allocation buckets holding at least 10% of
            the decisions ('' without decisions); ``preferences`` what the policy chose there
            per segment (see `experiments.reports.preferences`).
    """

    source: AdaptiveSource
    metric: str
    measure: str
    baseline: str
    policy_value: float
    baseline_value: float
    gain: Interval | None
    significant: bool
    bucket: str
    allocation: list[AllocationBucket]
    arms: list[AdaptiveArm]
    units_in_several_arms: int
    decisions_per_unit: float
    notes: list[str]
    value_bucket: str = ""
    value_over_time: list[ValuePoint] = msgspec.field(default_factory=list)
    preferences_since: str = ""
    preferences: list[SegmentPreference] = msgspec.field(default_factory=list)


class ApprenticeStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Apprentice mode: who serves, the policy's own estimate against the rule, the takeover.

    Attributes:
        policy: the learning policy's kind.
        rule: what it serves until it takes over ("the fixed split", "always a").
        takeover: ``auto`` or ``manual``; ``explore`` and ``min_decisions`` as configured.
        serving: ``rule`` while apprenticing, ``policy`` after the takeover.
        decisions_learned: decisions the model learned (and scored before learning).
        own_value, rule_value: off-policy (IPS) values per decision of the policy's own choices
            and of the rule, on the decisions it learned (NaN before any).
        gain: own − rule with its 95% interval (None below two decisions).
        taken_over_by: ``auto``, ``admin`` or ''.
        taken_over_at: the first decision the policy served itself (from the log), if it did.
        rule_decisions, policy_decisions: logged decisions served as apprentice (the rule plus
            exploration) and by the policy itself, up to the report's end.
        model_unavailable: the model store could not be read (the estimate is missing).
        sentence: all of it in words.
    """

    policy: str
    rule: str
    takeover: str
    explore: float
    min_decisions: int
    serving: Literal["rule", "policy"]
    decisions_learned: int
    own_value: float
    rule_value: float
    gain: Interval | None
    taken_over_by: str
    taken_over_at: str | None
    rule_decisions: int
    policy_decisions: int
    model_unavailable: bool = False
    sentence: str


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """The plain-language reading of the report."""

    status: VerdictStatus
    headline: str
    details: list[str]


class Driver(msgspec.Struct, frozen=True, kw_only=True):
    """One context attribute and how strongly a learning policy's choice depends on it
    (Cramér's V between its value and the chosen variant; see experiments.reports.drivers)."""

    feature: str
    importance: float
    decisions: int


class ExperimentReport(msgspec.Struct, frozen=True, kw_only=True):
    """A whole experiment report."""

    experiment: str
    name: str
    hypothesis: str
    status: str
    version: int
    policy: str
    control: str
    primary_metric: str
    guardrail_metrics: list[str]
    window: ReportWindow
    level: float
    correction: Correction
    horizon_units: int
    generated_at: str
    verdict: Verdict
    plan: PowerPlan | None
    arms: list[ArmSummary]
    sample_ratio: SrmResult | None
    metrics: list[MetricReport]
    multiple_testing: AdjustedPValues | None
    daily: list[DailySeries]
    uplift: UpliftSection
    segments: SegmentReport | None
    off_policy: OffPolicySection | None
    warnings: list[str]
    adaptive: AdaptiveSection | None = None
    auto_paused: str | None = None
    drivers: list[Driver] | None = None
    """Learning policies: what drives the choice, most important first (feature importance)."""
    apprentice: ApprenticeStatus | None = None
    """Apprentice mode: who serves, the policy's estimate against the rule, the takeover."""
    slates: SlateReport | None = None
    """Ranked slates: click rates per slot and item, off-policy estimates per slot."""
    """Why the guard-rail check paused the experiment (``auto_pause_on_harm``), if it did."""
