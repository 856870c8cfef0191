"""Truth against findings: what the simulation knew, next to what Tailor's reports say.

:func:`findings` turns the observations and the reports into :class:`Finding` rows — a
quantity, its true value, what Tailor reported (with its interval) and whether the two agree —
grouped by experiment; :func:`render` prints them as plain text.

Agreement means: the report's 95% interval holds the true value (a statistical statement — about
one row in twenty may miss by chance), a significant verdict exactly where the truth has a
large effect, the frequency cap never exceeded, and the learning policies ahead of uniform play.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import msgspec
import numpy as np

from decision_api.demo.driver import EmailRecord, Observations, VisitRecord
from decision_api.demo.reports import ComparisonView, IntervalView, ReportView
from decision_api.demo.shop import CAROUSEL, HERO, OFFER, OFFER_CAP, SEND_TIME, SUBJECT
from decision_api.demo.world import (
    DEVICES,
    HERO_VARIANTS,
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
    """One line of the table: a quantity, its truth, Tailor's finding and whether they agree.

    ``agrees`` is None for lines that only inform (nothing to check).
    """

    what: str
    truth: str
    found: str
    agrees: bool | None = None


class Section(msgspec.Struct, frozen=True, kw_only=True):
    """One experiment's findings."""

    title: str
    rows: list[Finding]
    notes: list[str] = msgspec.field(default_factory=list)


def pp(x: float | None) -> str:
    """A difference of rates in percentage points, signed."""
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:+.1f} pp"


def pct(x: float | None) -> str:
    """A rate in percent."""
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def ci(interval: IntervalView | None, points: bool = True) -> str:
    """``[lower, upper]`` in percentage points (or percent)."""
    if interval is None or interval.lower is None or interval.upper is None:
        return "[n/a]"
    scale = 100
    unit = " pp" if points else "%"
    return (
        f"[{scale * interval.lower:+.1f}, {scale * interval.upper:+.1f}]{unit}"
        if points
        else f"[{scale * interval.lower:.1f}, {scale * interval.upper:.1f}]{unit}"
    )


def _lift_finding(name: str, truth: float, cmp: ComparisonView | None) -> Finding:
    """A variant's conversion lift: CI covers the truth, and significance matches the truth."""
    if cmp is None:
        return Finding(what=name, truth=pp(truth), found="not in the report", agrees=False)
    lift = cmp.lift.absolute
    chance = cmp.bayesian.chance_to_beat_control
    verdict = cmp.direction if cmp.significant else "no significant difference"
    found = (
        f"{pp(lift.estimate)} {ci(lift)}; always-valid {ci(cmp.sequential.absolute)}; "
        f"P(beat) {pct(chance)}; {verdict}"
    )
    large = abs(truth) >= 0.02
    agrees = lift.contains(truth) and (cmp.significant == large)
    return Finding(what=name, truth=pp(truth), found=found, agrees=agrees)


def hero_section(obs: Observations, report: ReportView) -> Section:
    """Hero banner: each variant's true lift in per-shopper purchase rate vs the report's."""
    offers: dict[int, list[str]] = defaultdict(list)
    for v in obs.visits:
        if v.hero_reason == "split":
            offers[v.unit].append(v.offer)
    truth = hero_truth(list(offers.values()))
    rows = [
        _lift_finding(
            f"{variant} vs control, purchase rate per shopper",
            truth[variant] - truth["control"],
            report.comparison("purchase", variant),
        )
        for variant in HERO_VARIANTS[1:]
    ]
    arms = ", ".join(f"{a.arm} {a.units:,}" for a in report.arms)
    return Section(
        title=f"Home-page hero banner ({HERO}: fixed split, 10% holdout, purchase)",
        rows=rows,
        notes=[f"shoppers per arm: {arms}", f'report verdict: "{report.verdict.headline}"'],
    )


def carousel_section(population: Population, obs: Observations, report: ReportView) -> Section:
    """Carousel: did vw_cb learn each (segment, device)'s best sort; off-policy values."""
    ctr, best = carousel_ctr(), best_sorts()
    logged = [v for v in obs.visits if v.sort_reason == "policy"]
    if not logged:
        return Section(
            title=f"Product carousel ({CAROUSEL})", rows=[], notes=["no decisions by the policy"]
        )
    seg = np.array([population.segment[v.unit] for v in logged])
    dev = np.array([v.device for v in logged])
    chosen = np.array([SORTS.index(v.sort) for v in logged])
    tables = ctr[seg, dev]  # (decisions, sorts)
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
            what="click rate of the sorts chosen, last quarter of visits",
            truth=f"uniform {pct(uniform)}, oracle {pct(oracle)}",
            found=f"vw_cb {pct(model)} = {gain:.0%} of the oracle's gain over uniform",
            agrees=gain >= LEARNED_GAIN,
        ),
        Finding(
            what="best sort for the visitor's segment and device chosen",
            truth=f"uniform {1 / len(SORTS):.0%}",
            found=f"{hits[late].mean():.0%} ({shares})",
        ),
    ]
    ope = report.off_policy
    best_overall = int(tables.mean(axis=0).argmax())
    targets = {
        "deployed": float(picked.mean()),
        "uniform": float(tables.mean()),
        f"always:{SORTS[best_overall]}": float(tables[:, best_overall].mean()),
    }
    for name, truth in targets.items():
        estimate = ope.policy(name) if ope is not None else None
        dr = estimate.doubly_robust if estimate is not None else None
        rows.append(
            Finding(
                what=f"off-policy value of '{name}' (clicks per decision, DR)",
                truth=pct(truth),
                found="not in the report" if dr is None else f"{pct(dr.estimate)} {ci(dr, False)}",
                agrees=dr is not None and dr.contains(truth),
            )
        )
    bests = ", ".join(
        f"{SEGMENTS[s]}/{DEVICES[d]}: {SORTS[best[s, d]]}"
        for s in range(len(SEGMENTS))
        for d in range(len(DEVICES))
    )
    return Section(
        title=f"Product carousel ({CAROUSEL}: vw_cb over {len(SORTS)} sorts, click)",
        rows=rows,
        notes=[f"true best sorts: {bests}"],
    )


def offer_section(obs: Observations, report: ReportView) -> Section:
    """Offer: the frequency cap held; the discount's lift on purchases."""
    shown: dict[int, int] = defaultdict(int)
    capped_units: set[int] = set()
    capped = 0
    by_unit: dict[int, list[VisitRecord]] = defaultdict(list)
    for v in obs.visits:
        by_unit[v.unit].append(v)
        if v.offer == "ten_off":
            shown[v.unit] += 1
        if v.offer_reason == "frequency_capped":
            capped += 1
            capped_units.add(v.unit)
    most = max(shown.values(), default=0)
    treated = [
        vs for vs in by_unit.values() if vs[0].offer_reason == "split" and vs[0].offer == "ten_off"
    ]
    lift = (
        float(
            np.mean(
                [
                    conversion_probability([purchase_probability(v.hero, v.offer) for v in vs])
                    - conversion_probability([purchase_probability(v.hero, "none") for v in vs])
                    for vs in treated
                ]
            )
        )
        if treated
        else float("nan")
    )
    rows = [
        Finding(
            what="most 10%-off exposures of one shopper in the 7-day window",
            truth=f"at most {OFFER_CAP}",
            found=f"{most} (over {len(shown):,} shoppers; {capped:,} answers were "
            f"frequency_capped, for {len(capped_units):,} shoppers)",
            agrees=most <= OFFER_CAP,
        ),
        _lift_finding(
            "ten_off vs none, purchase rate per shopper",
            lift,
            report.comparison("purchase", "ten_off"),
        ),
    ]
    return Section(
        title=f"Discount offer ({OFFER}: fixed 50/50, cap {OFFER_CAP} per 7 days)", rows=rows
    )


def subject_section(population: Population, obs: Observations, report: ReportView) -> Section:
    """Subject lines: Thompson's last-campaign shares; off-policy value of each subject."""
    logged = [e for e in obs.emails if e.subject_reason == "policy"]
    rows: list[Finding] = []
    if not logged:
        return Section(title=f"Newsletter subject ({SUBJECT})", rows=rows)
    last_day = max(e.day for e in logged)
    last = [e for e in logged if e.day == last_day]
    best = max(SUBJECTS, key=lambda s: SUBJECTS[s])
    share = {s: sum(e.subject == s for e in last) / len(last) for s in SUBJECTS}
    rows.append(
        Finding(
            what=f"share of the last newsletter (day {last_day}) per subject",
            truth=f"best: {best}",
            found=", ".join(f"{s} {share[s]:.0%}" for s in SUBJECTS),
            agrees=max(share, key=lambda s: share[s]) == best if last_day > 1 else None,
        )
    )
    ope = report.off_policy
    for subject in SUBJECTS:
        truth = float(
            np.mean(
                [
                    open_probability(e.local_hour, int(population.peak_hour[e.unit]), subject)
                    for e in logged
                ]
            )
        )
        estimate = ope.policy(f"always:{subject}") if ope is not None else None
        dr = estimate.doubly_robust if estimate is not None else None
        rows.append(
            Finding(
                what=f"open rate had every email used '{subject}' (off-policy, DR)",
                truth=pct(truth),
                found="not in the report" if dr is None else f"{pct(dr.estimate)} {ci(dr, False)}",
                agrees=dr is not None and dr.contains(truth),
            )
        )
    return Section(title=f"Newsletter subject line ({SUBJECT}: thompson, email_open)", rows=rows)


def send_time_section(obs: Observations, report: ReportView) -> Section:
    """Send times: optimised hours against the default 10h, per email and per recipient."""
    emails = obs.emails
    rows: list[Finding] = []
    if not emails:
        return Section(title=f"Newsletter send time ({SEND_TIME})", rows=rows)
    last_day = max(e.day for e in emails)
    last = [e for e in emails if e.day == last_day]
    optimised = [e for e in last if e.send_reason == "policy"]
    held = [e for e in last if e.send_reason == "holdout"]
    if optimised:
        expected = float(np.mean([e.p_open for e in optimised]))
        at_default = float(np.mean([e.p_default_hour for e in optimised]))
        realised = float(np.mean([e.opened for e in optimised]))
        held_rate = float(np.mean([e.opened for e in held])) if held else float("nan")
        rows.append(
            Finding(
                what=f"open rate per email, last newsletter (day {last_day})",
                truth=f"optimised hours {pct(expected)} vs 10h local {pct(at_default)}",
                found=f"opened: optimised {pct(realised)} ({len(optimised):,} emails), "
                f"holdout at 10h {pct(held_rate)} ({len(held):,})",
                agrees=expected > at_default,
            )
        )
    per_unit: dict[int, list[EmailRecord]] = defaultdict(list)
    for e in emails:
        if e.send_reason == "policy":
            per_unit[e.unit].append(e)
    truth = (
        float(
            np.mean(
                [
                    conversion_probability([e.p_open for e in es])
                    - conversion_probability([e.p_default_hour for e in es])
                    for es in per_unit.values()
                ]
            )
        )
        if per_unit
        else float("nan")
    )
    uplift = next(
        (
            u
            for u in report.uplift.overall
            if u.holdout == "experiment" and u.metric == "email_open"
        ),
        None,
    )
    rows.append(
        Finding(
            what="uplift over the holdout: recipients who opened any newsletter",
            truth=pp(truth),
            found="not in the report"
            if uplift is None
            else (
                f"{pp(uplift.rate_lift.estimate)} {ci(uplift.rate_lift)} "
                f"({pct(uplift.personalised_rate)} of {uplift.personalised_units:,} vs "
                f"{pct(uplift.holdout_rate)} of {uplift.holdout_units:,} held out)"
            ),
            agrees=uplift is not None and uplift.rate_lift.contains(truth),
        )
    )
    return Section(
        title=f"Newsletter send time ({SEND_TIME}: send_time_thompson, 10% holdout at 10h)",
        rows=rows,
    )


def findings(
    population: Population, obs: Observations, reports: dict[str, ReportView]
) -> list[Section]:
    """Every section of the summary, in the order the shop was described."""
    return [
        hero_section(obs, reports[HERO]),
        carousel_section(population, obs, reports[CAROUSEL]),
        offer_section(obs, reports[OFFER]),
        subject_section(population, obs, reports[SUBJECT]),
        send_time_section(obs, reports[SEND_TIME]),
    ]


def render(sections: Sequence[Section]) -> str:
    """The sections as text: one block per experiment, truth and finding on their own lines."""
    lines: list[str] = []
    checked = agreed = 0
    for number, section in enumerate(sections, 1):
        lines.append(f"{number}. {section.title}")
        for row in section.rows:
            mark = {True: "agrees", False: "DISAGREES", None: "info"}[row.agrees]
            lines.append(f"   - {row.what}  [{mark}]")
            lines.append(f"       truth: {row.truth}")
            lines.append(f"       found: {row.found}")
            if row.agrees is not None:
                checked += 1
                agreed += int(row.agrees)
        lines.extend(f"   {note}" for note in section.notes)
        lines.append("")
    lines.append(f"{agreed} of {checked} findings agree with the simulated truth.")
    return "\n".join(lines)
