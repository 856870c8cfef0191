"""Truth against findings: what the simulation knew, next to what Tailor's reports say.

:func:`findings` turns the observations and the reports into :class:`Finding` rows grouped by
experiment; :func:`render` prints them. Each row carries up to two checks:

- ``agrees`` — the *key finding* matches the truth: the report calls the real winner a winner
  (and nothing that contradicts the truth significant), the frequency cap is never exceeded, the
  learning policies end up well ahead of uniform play. Effects and sample sizes are chosen so
  that these hold in nearly every run of the default demo; in smaller runs (``--fast``, fewer
  days) only contradictions count, since an effect may not be significant yet.
- ``covered`` — the true value lies inside the report's 95% interval. By design about one such
  interval in twenty misses, so a miss is reported, not treated as a failure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import msgspec
import numpy as np

from demo.records import EmailRecord, Observations, VisitRecord
from demo.reports import ComparisonView, EstimateView, IntervalView, ReportView
from demo.shop import (
    CAROUSEL,
    CAROUSEL_DEFAULT,
    HERO,
    OFFER,
    OFFER_CAP,
    SEND_TIME,
    SUBJECT,
    SUBJECT_DEFAULT,
)
from demo.world import (
    DEVICES,
    SEGMENTS,
    SORTS,
    SUBJECTS,
    Population,
    best_sorts,
    carousel_ctr,
    conversion_probability,
    hero_truth,
    open_probability,
    purchase_probability,
)

__all__ = ["Finding", "Section", "findings", "render"]

LATE_SHARE = 0.25  # "late in the run": the last quarter of the carousel's decisions
LEARNED_GAIN = 0.4  # vw_cb must reach this share of the oracle's gain over uniform play


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One row: a quantity, its truth, Tailor's finding, and the checks (None: not checked)."""

    what: str
    truth: str
    found: str
    agrees: bool | None = None
    covered: bool | None = None


class Section(msgspec.Struct, frozen=True, kw_only=True):
    """One experiment's findings."""

    title: str
    rows: list[Finding]
    notes: list[str] = msgspec.field(default_factory=list)


def mean(values: Sequence[float]) -> float:
    """The mean of ``values``, NaN when there are none."""
    return float(np.mean(values)) if len(values) else float("nan")


def pp(x: float | None) -> str:
    """A difference of rates in signed percentage points."""
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:+.1f} pp"


def pct(x: float | None) -> str:
    """A rate in percent."""
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def ci(interval: IntervalView | None, points: bool = True) -> str:
    """``[lower, upper]`` in signed percentage points, or in percent (``points=False``),
    without the unit (it follows the estimate)."""
    if interval is None or interval.lower is None or interval.upper is None:
        return "[n/a]"
    low, high = 100 * interval.lower, 100 * interval.upper
    return f"[{low:+.1f}, {high:+.1f}]" if points else f"[{low:.1f}, {high:.1f}]"


def lift_finding(
    name: str, truth: float, cmp: ComparisonView | None, *, must_find: bool
) -> Finding:
    """A variant's conversion lift against control.

    ``agrees``: a significant verdict points the way the true effect does; with ``must_find``
    (an effect the demo is sized to detect) the report must also call it significant.
    ``covered``: the fixed-horizon 95% interval holds the true lift.
    """
    if cmp is None:
        return Finding(what=name, truth=pp(truth), found="not in the report", agrees=False)
    lift = cmp.lift.absolute
    verdict = f"significant, {cmp.direction}" if cmp.significant else "not significant yet"
    found = (
        f"{pp(lift.estimate)} {ci(lift)}; always-valid {ci(cmp.sequential.absolute)}; "
        f"P(beat) {pct(cmp.bayesian.chance_to_beat_control)}; {verdict}"
    )
    right_way = (lift.estimate or 0.0) * truth > 0
    agrees = (not cmp.significant or right_way) and (cmp.significant or not must_find)
    return Finding(
        what=name, truth=pp(truth), found=found, agrees=agrees, covered=lift.contains(truth)
    )


def policy_value_finding(name: str, truth: float, estimate: EstimateView | None) -> Finding:
    """An off-policy estimate (doubly robust) of a policy's value next to its true value.

    Coverage is not checked when the report flags low support (few logged decisions resemble
    the policy): the interval is then not to be trusted, as the report says.
    """
    dr = estimate.doubly_robust if estimate is not None else None
    if estimate is None or dr is None:
        return Finding(what=name, truth=pct(truth), found="not in the report")
    found = f"{pct(dr.estimate)} {ci(dr, points=False)}"
    if estimate.low_support:
        warning = " (the report warns: low support, the interval is unreliable)"
        return Finding(what=name, truth=pct(truth), found=found + warning)
    return Finding(what=name, truth=pct(truth), found=found, covered=dr.contains(truth))


def bandit_verdict_finding(report: ReportView, truth: float, *, points: bool) -> Finding:
    """A bandit experiment's verdict — the policy's value against the holdout (or off-policy
    against always the control) — next to the true difference.

    ``agrees``: a significant verdict points the way the truth does (a bandit's gain is not
    sized to be found, so "not significant yet" is no contradiction). ``covered``: the
    verdict's interval holds the truth. ``points``: rates in percentage points (a holdout's
    conversion rates), else rewards per decision.
    """
    a = report.adaptive
    name = "the verdict: the policy's value against "
    if a is None or a.gain is None:
        return Finding(what=name + "its baseline", truth=pp(truth), found="not in the report")
    gain = a.gain
    shown = pp(gain.estimate) if points else f"{(gain.estimate or 0.0):+.4f}"
    bounds = ci(gain) if points else f"[{(gain.lower or 0.0):+.4f}, {(gain.upper or 0.0):+.4f}]"
    state = "significant" if a.significant else "not significant yet"
    right_way = (gain.estimate or 0.0) * truth > 0
    return Finding(
        what=name
        + a.baseline
        + (" (from the holdout)" if a.source != "off_policy" else " (off-policy)"),
        truth=pp(truth) if points else f"{truth:+.4f}",
        found=f"{shown} {bounds}; {state}",
        agrees=not a.significant or right_way,
        covered=gain.contains(truth),
    )


def hero_section(obs: Observations, report: ReportView, expect_found: bool) -> Section:
    """Hero banner: the true lift in per-shopper purchase rate against the report's."""
    offers: dict[int, list[str]] = defaultdict(list)
    for v in obs.visits:
        if v.hero_reason == "split":
            offers[v.unit].append(v.offer)
    truth = hero_truth(list(offers.values()))
    row = lift_finding(
        "spring vs control: purchase rate per shopper",
        truth["spring"] - truth["control"],
        report.comparison("purchase", "spring"),
        must_find=expect_found,
    )
    arms = ", ".join(f"{a.arm} {a.units:,}" for a in report.arms)
    return Section(
        title=f"Home-page hero banner ({HERO}: A/B test, fixed split, 10% holdout, purchase)",
        rows=[row],
        notes=[f"shoppers per arm: {arms}", f'report verdict: "{report.verdict.headline}"'],
    )


def carousel_section(
    population: Population, obs: Observations, report: ReportView, expect_found: bool
) -> Section:
    """Carousel: did vw_cb learn each (segment, device)'s best sort; off-policy values."""
    ctr, best = carousel_ctr(), best_sorts()
    logged = [v for v in obs.visits if v.sort_reason == "policy"]
    title = f"Product carousel ({CAROUSEL}: vw_cb over {len(SORTS)} sorts, click)"
    if not logged:
        return Section(title=title, rows=[], notes=["no decisions by the policy"])
    seg = np.array([population.segment[v.unit] for v in logged])
    dev = np.array([v.device for v in logged])
    chosen = np.array([SORTS.index(v.sort) for v in logged])
    tables = ctr[seg, dev]  # shape (decisions, sorts): each visitor's true click rates
    picked = tables[np.arange(len(logged)), chosen]
    late = slice(int(len(logged) * (1 - LATE_SHARE)), None)
    model, uniform = float(picked[late].mean()), float(tables[late].mean())
    oracle = float(tables[late].max(axis=1).mean())
    gain = (model - uniform) / (oracle - uniform)
    hits = chosen == best[seg, dev]
    shares = ", ".join(
        f"{SEGMENTS[s]} {hits[late][seg[late] == s].mean():.0%}"
        for s in range(len(SEGMENTS))
        if (seg[late] == s).any()
    )
    rows = [
        Finding(
            what="click rate of the sorts chosen in the last quarter of visits",
            truth=f"uniform choice {pct(uniform)}, best per visitor {pct(oracle)}",
            found=f"vw_cb {pct(model)}: {gain:.0%} of the way from uniform to the best",
            agrees=gain >= LEARNED_GAIN if expect_found else None,
        ),
        Finding(
            what="visits shown their segment and device's best sort (last quarter)",
            truth=f"uniform choice {1 / len(SORTS):.0%}",
            found=f"{hits[late].mean():.0%} ({shares})",
        ),
    ]
    ope = report.off_policy
    single = int(tables.mean(axis=0).argmax())
    targets = {
        "deployed": ("the policy as it ran", float(picked.mean())),
        "uniform": ("uniform choice", float(tables.mean())),
        f"always:{SORTS[single]}": (
            f"'{SORTS[single]}' for everyone",
            float(tables[:, single].mean()),
        ),
    }
    for policy, (label, truth) in targets.items():
        estimate = ope.policy(policy) if ope is not None else None
        rows.append(policy_value_finding(f"off-policy click rate of {label} (DR)", truth, estimate))
    control = SORTS.index(CAROUSEL_DEFAULT)
    rows.append(
        bandit_verdict_finding(
            report, float(picked.mean() - tables[:, control].mean()), points=False
        )
    )
    bests = ", ".join(
        f"{segment} {'/'.join(SORTS[best[s, d]] for d in range(len(DEVICES)))}"
        for s, segment in enumerate(SEGMENTS)
    )
    notes = [f"true best sorts ({'/'.join(DEVICES)}): {bests}"]
    if any("low support" in row.found for row in rows):
        notes.append(
            "SquareCB explores less as it grows sure, so these logs say little about other "
            "policies: the report flags it rather than guess"
        )
    notes.append(f'report verdict: "{report.verdict.headline}"')
    return Section(title=title, rows=rows, notes=notes)


def offer_section(obs: Observations, report: ReportView) -> Section:
    """Offer: the frequency cap held; the discount's lift on purchases."""
    shown: dict[int, int] = defaultdict(int)
    capped_units: set[int] = set()
    capped = 0
    by_unit: dict[int, list[VisitRecord]] = defaultdict(list)
    for v in obs.visits:
        by_unit[v.unit].append(v)
        shown[v.unit] += v.offer == "ten_off"
        if v.offer_reason == "frequency_capped":
            capped += 1
            capped_units.add(v.unit)
    most = max(shown.values(), default=0)
    treated = [vs for vs in by_unit.values() if vs[0].offer == "ten_off"]
    lift = mean(
        [
            conversion_probability([purchase_probability(v.hero, v.offer) for v in vs])
            - conversion_probability([purchase_probability(v.hero, "none") for v in vs])
            for vs in treated
        ]
    )
    rows = [
        Finding(
            what="most 10%-off exposures of one shopper within the 7-day window",
            truth=f"at most {OFFER_CAP}",
            found=f"{most} (then the default: {capped:,} answers frequency_capped, "
            f"for {len(capped_units):,} shoppers)",
            agrees=most <= OFFER_CAP,
        ),
        lift_finding(
            "ten_off vs none: purchase rate per shopper",
            lift,
            report.comparison("purchase", "ten_off"),
            must_find=False,
        ),
    ]
    return Section(
        title=f"Discount offer ({OFFER}: fixed 50/50, at most {OFFER_CAP} per 7 days)", rows=rows
    )


def subject_section(population: Population, obs: Observations, report: ReportView) -> Section:
    """Subject lines: Thompson's last-campaign shares; off-policy value of each subject."""
    title = f"Newsletter subject line ({SUBJECT}: thompson, email_open)"
    logged = [e for e in obs.emails if e.subject_reason == "policy"]
    if not logged:
        return Section(title=title, rows=[])
    last_day = max(e.day for e in logged)
    last = [e for e in logged if e.day == last_day]
    best = max(SUBJECTS, key=lambda s: SUBJECTS[s])
    share = {s: sum(e.subject == s for e in last) / len(last) for s in SUBJECTS}
    rows = [
        Finding(
            what=f"share of the last newsletter (day {last_day}) per subject",
            truth=f"best: {best}",
            found=", ".join(f"{s} {share[s]:.0%}" for s in SUBJECTS),
            agrees=max(share, key=lambda s: share[s]) == best if last_day > 1 else None,
        )
    ]
    ope = report.off_policy
    for subject in SUBJECTS:
        truth = mean(
            [
                open_probability(e.local_hour, int(population.peak_hour[e.unit]), subject)
                for e in logged
            ]
        )
        estimate = ope.policy(f"always:{subject}") if ope is not None else None
        rows.append(
            policy_value_finding(
                f"open rate had every email said '{subject}' (DR)", truth, estimate
            )
        )
    chosen = mean(
        [
            open_probability(e.local_hour, int(population.peak_hour[e.unit]), e.subject)
            for e in logged
        ]
    )
    control = mean(
        [
            open_probability(e.local_hour, int(population.peak_hour[e.unit]), SUBJECT_DEFAULT)
            for e in logged
        ]
    )
    rows.append(bandit_verdict_finding(report, chosen - control, points=False))
    return Section(title=title, rows=rows, notes=[f'report verdict: "{report.verdict.headline}"'])


def send_time_section(obs: Observations, report: ReportView, expect_found: bool) -> Section:
    """Send times: optimised hours against the default 10h, per email and per recipient."""
    title = f"Newsletter send time ({SEND_TIME}: send_time_thompson, 10% holdout at 10h)"
    emails = obs.emails
    if not emails:
        return Section(title=title, rows=[])
    rows: list[Finding] = []
    last_day = max(e.day for e in emails)
    optimised = [e for e in emails if e.day == last_day and e.send_reason == "policy"]
    held = [e for e in emails if e.day == last_day and e.send_reason == "holdout"]
    if optimised:
        rows.append(
            Finding(
                what=f"open rate per email of the last newsletter (day {last_day})",
                truth=f"at the hours chosen {pct(mean([e.p_open for e in optimised]))}, "
                f"had they gone at 10h {pct(mean([e.p_default_hour for e in optimised]))}",
                found=f"opened: optimised {pct(mean([e.opened for e in optimised]))} "
                f"of {len(optimised):,}, holdout at 10h {pct(mean([e.opened for e in held]))} "
                f"of {len(held):,}",
            )
        )
    per_unit: dict[int, list[EmailRecord]] = defaultdict(list)
    for e in emails:
        if e.send_reason == "policy":
            per_unit[e.unit].append(e)
    truth = mean(
        [
            conversion_probability([e.p_open for e in es])
            - conversion_probability([e.p_default_hour for e in es])
            for es in per_unit.values()
        ]
    )
    uplift = next(
        (
            u
            for u in report.uplift.overall
            if u.holdout == "experiment" and u.metric == "email_open"
        ),
        None,
    )
    if uplift is None:
        rows.append(
            Finding(
                what="uplift over the holdout",
                truth=pp(truth),
                found="not in the report",
                agrees=False,
            )
        )
    else:
        lift = uplift.rate_lift
        rows.append(
            Finding(
                what="uplift over the holdout: recipients who opened any newsletter",
                truth=pp(truth),
                found=f"{pp(lift.estimate)} {ci(lift)} ({pct(uplift.personalised_rate)} of "
                f"{uplift.personalised_units:,} optimised vs {pct(uplift.holdout_rate)} of "
                f"{uplift.holdout_units:,} held out)",
                # Significantly positive; in a smaller run, at least not significantly negative.
                agrees=(lift.lower or 0.0) > 0 if expect_found else (lift.upper or 0.0) >= 0,
                covered=lift.contains(truth),
            )
        )
    rows.append(bandit_verdict_finding(report, truth, points=True))
    return Section(title=title, rows=rows, notes=[f'report verdict: "{report.verdict.headline}"'])


def findings(
    population: Population,
    obs: Observations,
    reports: dict[str, ReportView],
    *,
    expect_found: bool = True,
) -> list[Section]:
    """Every section of the summary, in the order the shop was described.

    ``expect_found``: the run has the default size, which the effects were chosen for, so the
    reports must find them (significant, learned); in smaller runs only contradictions count.
    """
    return [
        hero_section(obs, reports[HERO], expect_found),
        carousel_section(population, obs, reports[CAROUSEL], expect_found),
        offer_section(obs, reports[OFFER]),
        subject_section(population, obs, reports[SUBJECT]),
        send_time_section(obs, reports[SEND_TIME], expect_found),
    ]


def render(sections: Sequence[Section]) -> str:
    """The sections as text, then the two tallies: key findings and interval coverage."""
    lines: list[str] = []
    for number, section in enumerate(sections, 1):
        lines.append(f"{number}. {section.title}")
        for row in section.rows:
            mark = {True: "  [agrees]", False: "  [DISAGREES]", None: ""}[row.agrees]
            lines.append(f"   - {row.what}{mark}")
            lines.append(f"       truth: {row.truth}")
            inside = {
                True: "  (truth inside the 95% interval)",
                False: "  (truth OUTSIDE the 95% interval)",
                None: "",
            }[row.covered]
            lines.append(f"       found: {row.found}{inside}")
        lines.extend(f"   {note}" for note in section.notes)
        lines.append("")
    rows = [row for section in sections for row in section.rows]
    checked = [r.agrees for r in rows if r.agrees is not None]
    covered = [r.covered for r in rows if r.covered is not None]
    lines.append(
        f"Key findings agreeing with the simulated truth: {sum(checked)} of {len(checked)}."
    )
    lines.append(
        f"True values inside the reports' 95% intervals: {sum(covered)} of {len(covered)} "
        "(by design about 1 interval in 20 misses)."
    )
    return "\n".join(lines)
