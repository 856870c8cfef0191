"""The verdict: a report's statistics read out in plain language.

The headline compares the best treatment with control on the primary metric's conversion rate,
e.g. "B beats A on purchase: +1.8 pp, 95% CI [0.6, 3.0], chance to beat 99%; no sample-ratio
problem". "Beats" / "is worse than" needs the always-valid test to reject after the
multiple-testing correction, so the verdict can be read every day; its interval is that test's
confidence sequence. A sample-ratio mismatch overrides everything (the numbers cannot be
trusted), and a guard-rail harm is called out before a win.

A comparison that is not significant yet but leans one way (chance to beat ≥ 95% or ≤ 5%) is not
read as "no clear difference" or "no significant harm": the sentence says which way it leans and
about how many more units the always-valid test needs to confirm a difference that size at 80%
power (`experiments.reports.plan.more_units_phrase`). Too few outcomes to call anything
(`experiments.statistics.frequentist.enough_outcomes`) is said as such.

An adaptive experiment (a learning policy, :mod:`experiments.reports.adaptive`) is not read as an
A/B test: its headline is the policy's value against the holdout (or, without one, off-policy
against always serving the control) — "The bandit earns +x pp over the holdout, 95% CI [a, b]"
or "no detectable gain over the holdout yet" — and its per-arm comparisons are listed as
descriptive only, never as the verdict.
"""

from __future__ import annotations

import math

from experiments.reports.plan import more_units_phrase
from experiments.reports.results import (
    AdaptiveSection,
    ArmMetric,
    ArmSummary,
    Comparison,
    ExperimentReport,
    MetricReport,
    UpliftSection,
    Verdict,
    VerdictStatus,
)
from experiments.statistics.srm import SrmResult
from tailor_contract.definitions import Experiment

__all__ = [
    "LEAN",
    "adaptive_headline",
    "format_chance",
    "format_points",
    "guardrail_harms",
    "verdict",
]

LEAN = 0.95
"""Posterior chance to beat (or its complement) from which a non-significant comparison is read
as leaning one way rather than as "no clear difference"."""


def _decimals(x: float) -> int:
    return 1 if abs(x) >= 0.1 else 2


def format_points(estimate: float, lower: float, upper: float, level: float) -> str:
    """A rate difference in percentage points with its interval: "+1.8 pp, 95% CI [0.6, 3.0]".

    Interval ends beyond ±100 pp (early confidence sequences) are clipped to the possible range.
    """
    if math.isnan(estimate):
        return "n/a"
    lower, upper = max(lower, -1.0), min(upper, 1.0)
    d = _decimals(estimate * 100)
    return f"{estimate * 100:+.{d}f} pp, {level:.0%} CI [{lower * 100:.{d}f}, {upper * 100:.{d}f}]"


def _format_value(estimate: float, lower: float, upper: float, level: float) -> str:
    return f"{estimate:+.2f}, {level:.0%} CI [{lower:.2f}, {upper:.2f}]"


def format_chance(p: float) -> str:
    """A probability as a percentage that never rounds to a false certainty."""
    if p > 0.999:
        return ">99.9%"
    if p < 0.001:
        return "<0.1%"
    if p >= 0.99 or p <= 0.01:
        return f"{p:.1%}"
    return f"{p:.0%}"


def _arm(report: MetricReport, arm: str) -> ArmMetric | None:
    return next((a for a in report.arms if a.arm == arm), None)


def _not_yet(c: Comparison, report: MetricReport, level: float, family: int) -> str:
    """Why a leaning comparison is not called, and what would settle it."""
    if not c.enough_outcomes:
        return (
            "too few outcomes to call (needs 10 converting and 10 non-converting units over "
            "both arms)"
        )
    control, treatment = _arm(report, c.control), _arm(report, c.variant)
    if control is None or treatment is None:
        return "not significant yet"
    phrase = more_units_phrase(
        control,
        treatment,
        horizon_units=c.sequential.horizon_units,
        alpha=(1.0 - level) / max(family, 1),
    )
    return f"not significant yet; {phrase}"


def _sentence(c: Comparison, report: MetricReport, level: float, family: int) -> str:
    metric = report.metric
    a = c.sequential.absolute
    numbers = format_points(a.estimate, a.lower, a.upper, level)
    p_beat = c.bayesian.chance_to_beat_control
    chance = format_chance(p_beat)
    if c.significant and c.direction != "unclear" and a.lower > 0:
        lead = f"{c.variant} beats {c.control} on {metric}"
    elif c.significant:
        lead = f"{c.variant} is worse than {c.control} on {metric}"
    elif p_beat >= LEAN or p_beat <= 1.0 - LEAN:
        word = "leads" if p_beat >= LEAN else "trails"
        return (
            f"{c.variant} {word} {c.control} on {metric}: {numbers}, chance to beat {chance}; "
            f"{_not_yet(c, report, level, family)}"
        )
    elif family > 1 and (a.lower > 0 or a.upper < 0):
        lead = (
            f"No clear difference between {c.variant} and {c.control} on {metric} yet "
            f"(after correcting for {family} comparisons)"
        )
    else:
        lead = f"No clear difference between {c.variant} and {c.control} on {metric} yet"
    return f"{lead}: {numbers}, chance to beat {chance}"


def _srm_phrase(srm: SrmResult | None) -> str:
    if srm is None:
        return "sample ratio not checked (learning policy or a single variant)"
    if srm.mismatch:
        observed = "/".join(f"{s:.1%}" for s in srm.observed_share)
        expected = "/".join(f"{s:.1%}" for s in srm.expected_share)
        return (
            f"SAMPLE-RATIO MISMATCH: units split {observed} against a configured {expected} "
            f"(p = {srm.p_value:.2g}) — assignment or logging is broken, do not trust these numbers"
        )
    return "no sample-ratio problem"


def _best(comparisons: list[Comparison]) -> Comparison:
    winners = [c for c in comparisons if c.significant and c.sequential.absolute.lower > 0]
    if winners:
        return max(winners, key=lambda c: c.sequential.absolute.estimate)
    return max(comparisons, key=lambda c: c.bayesian.chance_to_beat_control)


def _guardrail_numbers(c: Comparison, level: float) -> str:
    a = c.sequential.absolute
    if c.measure == "conversion_rate":
        return format_points(a.estimate, a.lower, a.upper, level)
    return _format_value(a.estimate, a.lower, a.upper, level)


def _guardrail_harms(metrics: list[MetricReport], level: float) -> list[str]:
    out = []
    for report in metrics:
        if report.role != "guardrail":
            continue
        for c in report.comparisons:
            if c.direction != "worse":
                continue
            what = report.metric if c.measure == "conversion_rate" else f"{report.metric} value"
            out.append(f"Guard-rail {what}: {c.variant} raises it ({_guardrail_numbers(c, level)})")
    return out


def guardrail_harms(report: ExperimentReport) -> list[str]:
    """The report's significant guard-rail harms, one sentence each (empty: none).

    A harm is a guard-rail comparison whose always-valid test rejects after the report's
    multiple-testing correction with the metric going up (``direction == "worse"``) — the same
    sentences the verdict lists, for fixed splits and (descriptively) for learning policies.
    """
    return _guardrail_harms(report.metrics, report.level)


def _guardrail_leans(metrics: list[MetricReport], level: float, family: int) -> list[str]:
    """Guard-rail rates that probably rose (chance ≥ LEAN) without being significant yet."""
    out = []
    for report in metrics:
        if report.role != "guardrail":
            continue
        for c in report.comparisons:
            if c.significant or c.measure != "conversion_rate":
                continue
            if c.bayesian.chance_to_beat_control < LEAN:
                continue
            out.append(
                f"Guard-rail {report.metric}: {c.variant} probably raises it "
                f"({_guardrail_numbers(c, level)}, chance of an increase "
                f"{format_chance(c.bayesian.chance_to_beat_control)}); "
                f"{_not_yet(c, report, level, family)}"
            )
    return out


def _uplift_sentences(uplift: UpliftSection, primary: str, level: float) -> list[str]:
    out = []
    for u in uplift.overall:
        if u.metric != primary:
            continue
        who = "the experiment's holdout" if u.holdout == "experiment" else "the global holdout"
        inc = u.incremental_conversions
        out.append(
            f"Personalisation against {who} on {primary}: "
            f"{format_points(u.rate_lift.estimate, u.rate_lift.lower, u.rate_lift.upper, level)}"
            f" per unit, about {inc.estimate:+.0f} conversions in total "
            f"[{inc.lower:.0f}, {inc.upper:.0f}]"
        )
    return out


def _gain_text(
    section: AdaptiveSection, gain: float, lower: float, upper: float, level: float
) -> str:
    if section.source != "off_policy":
        return format_points(gain, lower, upper, level)
    return _format_value(gain, lower, upper, level)


def _preferred(section: AdaptiveSection) -> str:
    """Where the policy sends traffic now: "it now sends 92% of decisions to b"."""
    shares = [(a.last_share, a.arm) for a in section.arms if not math.isnan(a.last_share)]
    if not shares:
        return ""
    share, arm = max(shares)
    return f"; in the last {section.bucket} it sent {share:.0%} of decisions to {arm}"


def adaptive_headline(section: AdaptiveSection, level: float) -> tuple[VerdictStatus, str]:
    """The verdict of an adaptive experiment: the policy's value against its baseline."""
    gain = section.gain
    if gain is None:
        return "no_data", (
            "No holdout and no logged decisions to evaluate off-policy: the policy's value "
            f"cannot be estimated yet{_preferred(section)}."
        )
    numbers = _gain_text(section, gain.estimate, gain.lower, gain.upper, level)
    what = section.metric if section.source != "off_policy" else "reward per decision"
    where = section.baseline
    amount, _, interval = numbers.partition(", ")
    if section.significant and gain.lower > 0:
        status: VerdictStatus = "winner"
        text = f"The bandit earns {amount} over {where} on {what}, {interval}"
    elif section.significant:
        status = "loser"
        text = f"The bandit does worse than {where} on {what}: {numbers}"
    else:
        status = "no_difference"
        text = f"No detectable gain over {where} yet on {what}: {numbers}"
    return status, f"{text}{_preferred(section)}."


def _adaptive_verdict(
    section: AdaptiveSection, primary: MetricReport, metrics: list[MetricReport], level: float
) -> Verdict:
    status, headline = adaptive_headline(section, level)
    family = sum(len(m.comparisons) for m in metrics)
    details = [n + "." for n in section.notes]
    for a in section.arms:
        value = (
            ""
            if a.value is None or math.isnan(a.value.estimate)
            else f"; off-policy value of always {a.arm}: {a.value.estimate:.4g} per decision "
            f"[{a.value.lower:.4g}, {a.value.upper:.4g}]"
        )
        details.append(
            f"Arm {a.arm} (descriptive): {a.share:.0%} of decisions, {a.units:,} units first "
            f"served it, {a.conversion_rate:.2%} of them converted{value}."
        )
    for c in primary.comparisons:
        if c.measure == "conversion_rate":
            details.append(
                "Descriptive per-arm comparison, not a test (adaptive allocation): "
                + _sentence(c, primary, level, family)
                + "."
            )
    details += [
        "Descriptive, per arm: " + h + "."
        for h in _guardrail_harms(metrics, level) + _guardrail_leans(metrics, level, family)
    ]
    return Verdict(status=status, headline=headline, details=details)


def verdict(
    experiment: Experiment,
    arms: list[ArmSummary],
    srm: SrmResult | None,
    metrics: list[MetricReport],
    uplift: UpliftSection,
    level: float,
    adaptive: AdaptiveSection | None = None,
) -> Verdict:
    """The headline and supporting sentences of a report (of `adaptive` when given)."""
    primary = next(m for m in metrics if m.role == "primary")
    rate_comparisons = [c for c in primary.comparisons if c.measure == "conversion_rate"]
    if sum(a.units for a in arms if a.kind == "variant") == 0:
        return Verdict(
            status="no_data",
            headline=f"No units have entered {experiment.key} in this period yet.",
            details=[],
        )
    if adaptive is not None:
        return _adaptive_verdict(adaptive, primary, metrics, level)
    srm_text = _srm_phrase(srm)
    if not rate_comparisons:
        return Verdict(
            status="no_data",
            headline=f"Not enough units to compare variants on {primary.metric} yet; {srm_text}.",
            details=[],
        )
    best = _best(rate_comparisons)
    family = sum(len(m.comparisons) for m in metrics)
    headline = f"{_sentence(best, primary, level, family)}; {srm_text}."
    details = [
        _sentence(c, primary, level, family) + "." for c in rate_comparisons if c is not best
    ]
    for c in primary.comparisons:
        if c.measure == "value_per_unit":
            a = c.sequential.absolute
            details.append(
                f"{c.variant} vs {c.control}, {primary.metric} value per unit: "
                f"{_format_value(a.estimate, a.lower, a.upper, level)}"
                f"{' (significant)' if c.significant else ''}."
            )
    harms = _guardrail_harms(metrics, level)
    leans = _guardrail_leans(metrics, level, family)
    details += [h + "." for h in harms + leans]
    if not harms and not leans and any(m.role == "guardrail" for m in metrics):
        details.append("Guard-rails: no significant harm.")
    details += [s + "." for s in _uplift_sentences(uplift, primary.metric, level)]
    details.append(
        "Intervals in these sentences stay valid however often the report is read "
        "(confidence sequences), after the multiple-testing correction."
    )
    status: VerdictStatus
    if srm is not None and srm.mismatch:
        status = "sample_ratio_mismatch"
    elif harms:
        status = "guardrail_harm"
    elif best.significant:
        status = "winner" if best.sequential.absolute.lower > 0 else "loser"
    else:
        status = "no_difference"
    return Verdict(status=status, headline=headline, details=details)
