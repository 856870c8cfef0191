"""The report as a self-contained HTML page: verdict, tables, and charts drawn in the browser.

The server renders the verdict and every table (readable with JavaScript off); the charts —
cumulative conversion rate per arm by day, each lift with its intervals, uplift by segment — are
drawn as inline SVG by ``static/report.js`` from the report JSON embedded in the page. Both
assets are served by the API itself (``/reports/static/...``): the page needs no CDN and works
offline. Every interpolated string is HTML-escaped; the embedded JSON escapes ``<``.
"""

from __future__ import annotations

import functools
import html
import math
from collections.abc import Iterable, Sequence
from importlib import resources

import msgspec

from experiments.reports.arms import arms_note
from experiments.reports.results import (
    AdaptiveSection,
    ApprenticeStatus,
    Comparison,
    Driver,
    ExperimentReport,
    MetricReport,
    OffPolicySection,
    SegmentReport,
    UpliftSection,
)
from experiments.reports.slates import SlateReport
from experiments.reports.verdict import format_chance
from experiments.statistics.intervals import Interval

__all__ = ["ASSETS", "asset", "render_report_page"]

ASSETS = {"report.js": "text/javascript", "report.css": "text/css"}
ARM_LABELS = {"~holdout": "holdout", "~global_holdout": "global holdout"}

_encoder = msgspec.json.Encoder()


@functools.cache
def asset(name: str) -> bytes:
    """The bytes of a static asset shipped in ``experiments/reports/static`` (one of ``ASSETS``).

    Raises:
        KeyError: for any other name.
    """
    if name not in ASSETS:
        raise KeyError(name)
    return resources.files("experiments.reports").joinpath("static", name).read_bytes()


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _arm(name: str) -> str:
    return _e(ARM_LABELS.get(name, name))


def _pct(x: float, digits: int = 2) -> str:
    return "–" if math.isnan(x) else f"{x:.{digits}%}"


def _num(x: float, digits: int = 2) -> str:
    return "–" if math.isnan(x) else f"{x:,.{digits}f}"


def _pp(iv: Interval) -> str:
    # A difference of rates lies in [-1, 1]: wider interval ends are shown clipped there.
    if math.isnan(iv.estimate):
        return "–"
    lo, hi = max(iv.lower, -1.0), min(iv.upper, 1.0)
    return f"{iv.estimate * 100:+.2f} pp [{lo * 100:.2f}, {hi * 100:.2f}]"


def _plain(iv: Interval) -> str:
    if math.isnan(iv.estimate):
        return "–"
    return f"{iv.estimate:+,.2f} [{iv.lower:,.2f}, {iv.upper:,.2f}]"


def _rel(iv: Interval) -> str:
    if math.isnan(iv.estimate):
        return "–"
    return f"{iv.estimate:+.1%} [{iv.lower:.1%}, {iv.upper:.1%}]"


def _p(x: float) -> str:
    return "–" if math.isnan(x) else ("<0.0001" if x < 1e-4 else f"{x:.4f}")


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f'<div class="scroll"><table class="{cls}"><thead><tr>{th}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _arms(report: ExperimentReport) -> str:
    rows = [
        [
            _arm(a.arm),
            _e(a.kind.replace("_", " ")),
            f"{a.units:,}",
            f"{a.exposures:,}",
            _pct(a.share, 1),
            _pct(a.configured_share, 1) if a.configured_share is not None else "–",
        ]
        for a in report.arms
    ]
    srm = report.sample_ratio
    note = "Sample ratio not checked (learning policy or a single variant)."
    if srm is not None:
        verdict = "MISMATCH — do not trust the results" if srm.mismatch else "no problem"
        note = f"Sample-ratio check: χ² = {srm.statistic:.2f}, p = {_p(srm.p_value)} ({verdict})."
    slates = arms_note(report.policy)
    if slates is not None:
        note = f"{slates} {note}"
    head = ["Arm", "Kind", "Units", "Exposures", "Share", "Configured"]
    return _table(head, rows) + f'<p class="note">{_e(note)}</p>'


def _loss(x: float, rate: bool) -> str:
    return _num(x * 100, 3) + " pp" if rate else _num(x, 3)


def _comparison_row(c: Comparison) -> list[str]:
    rate = c.measure == "conversion_rate"
    fmt = _pp if rate else _plain
    cuped = "–"
    if c.cuped is not None:
        cuped = (
            f"{fmt(c.cuped.adjusted.absolute)} "
            f"(variance −{max(c.cuped.variance_reduction, 0.0):.0%})"
        )
    mark = {"better": "▲ better", "worse": "▼ worse", "unclear": "no clear difference"}
    return [
        _e(c.variant),
        _e("conversion rate" if rate else "value per unit"),
        fmt(c.lift.absolute),
        fmt(c.sequential.absolute),
        _rel(c.lift.relative),
        format_chance(c.bayesian.chance_to_beat_control),
        _loss(c.bayesian.expected_loss_treatment, rate),
        cuped,
        _p(c.p_adjusted),
        f'<span class="{c.direction}">{mark[c.direction]}</span>',
    ]


def _metric(m: MetricReport) -> str:
    rows = [
        [
            _arm(a.arm),
            f"{a.units:,}",
            f"{a.converters:,}",
            _pct(a.conversion_rate),
            f"{a.events:,}",
            _num(a.value_per_unit) if m.valued else "–",
            _num(a.average_order_value) if m.valued else "–",
        ]
        for a in m.arms
    ]
    head = ["Arm", "Units", "Converted", "Rate", "Events", "Value / unit", "Avg order value"]
    out = f'<h3>{_e(m.metric)} <span class="role">{_e(m.role)}</span></h3>' + _table(head, rows)
    if m.comparisons:
        head = [
            "Variant",
            "Measure",
            "Lift (fixed CI)",
            "Lift (always-valid CI)",
            "Relative",
            "Chance to beat",
            "Expected loss",
            "CUPED lift",
            "p (adj.)",
            "Reading",
        ]
        out += _table(head, [_comparison_row(c) for c in m.comparisons], "comparisons")
    return out


def _uplift(u: UpliftSection) -> str:
    if not u.overall:
        return '<p class="note">No holdout traffic in this period.</p>'
    rows = [
        [
            _e(x.holdout),
            _e(x.metric),
            f"{x.holdout_units:,} / {x.personalised_units:,}",
            f"{_pct(x.holdout_rate)} → {_pct(x.personalised_rate)}",
            _pp(x.rate_lift),
            _plain(x.incremental_conversions),
            _plain(x.incremental_value) if x.incremental_value is not None else "–",
        ]
        for x in u.overall
    ]
    head = [
        "Holdout",
        "Metric",
        "Units (holdout / personalised)",
        "Rate",
        "Lift per unit",
        "Incremental conversions",
        "Incremental value",
    ]
    return _table(head, rows)


def _segments(s: SegmentReport | None) -> str:
    if s is None:
        return (
            '<p class="note">Add <code>?segment=&lt;context attribute&gt;</code> '
            "to break results down.</p>"
        )
    rows = []
    for row in s.rows:
        rates = ", ".join(f"{_arm(a.arm)} {_pct(a.conversion_rate)}" for a in row.arms)
        lifts = "; ".join(
            f"{_e(c.variant)} {_pp(c.lift)} (p adj. {_p(c.p_adjusted)})" for c in row.comparisons
        )
        rows.append([_e(row.segment), f"{row.units:,}", rates, lifts or "–"])
    head = [s.attribute, "Units", f"{s.metric} rate", "Lift vs control (BH-adjusted)"]
    return _table(head, rows)


def _off_policy(o: OffPolicySection | None) -> str:
    if o is None:
        return (
            '<p class="note">Not computed: off-policy estimates come with learning policies, '
            "or on request (<code>?off_policy=true</code>); they need logged decisions.</p>"
        )
    rows = []
    for pv in o.policies:
        est = pv.estimate
        rows.append(
            [
                _e(pv.policy),
                _plain(est.ips),
                _plain(est.snips),
                _plain(est.doubly_robust) if est.doubly_robust is not None else "–",
                f"{est.effective_sample_size:,.0f}",
                _e("; ".join(est.warnings)) or "–",
            ]
        )
    head = ["Policy", "IPS", "SNIPS", "Doubly robust", "ESS", "Warnings"]
    notes = "".join(f'<p class="note">{_e(w)}</p>' for w in o.warnings)
    return (
        f'<p class="note">Reward: {_e(o.reward)}. {o.decisions_used:,} logged decisions.</p>'
        + _table(head, rows)
        + notes
    )


def _rate_iv(iv: Interval | None) -> str:
    if iv is None or math.isnan(iv.estimate):
        return "–"
    return f"{iv.estimate:.2%} [{iv.lower:.2%}, {iv.upper:.2%}]"


def _slates(s: SlateReport | None) -> str:
    """Click rate per slot (policy, holdout), off-policy per slot, the most shown item-slots."""
    if s is None:
        return ""
    slots = _table(
        ["Slot", "Exposures", "Click rate", "Holdout exposures", "Holdout click rate"],
        [
            [str(r.slot), f"{r.exposures:,}", _pct(r.click_rate), f"{r.holdout_exposures:,}",
             "–" if r.holdout_click_rate is None else _pct(r.holdout_click_rate)]
            for r in s.slots
        ],
        "slots",
    )  # fmt: skip
    estimates = _table(
        ["Slot", "n", "Logged", "Random order IPS", "Random SNIPS", "Learned ranking IPS",
         "Learned SNIPS"],
        [
            [str(e.slot), f"{e.n:,}", _pct(e.logged), _rate_iv(e.random_ips),
             _rate_iv(e.random_snips), _rate_iv(e.learned_ips), _rate_iv(e.learned_snips)]
            for e in s.estimates
        ],
        "slot-estimates",
    )  # fmt: skip
    items = _table(
        ["Item", "Slot", "Exposures", "Clicks", "Click rate"],
        [
            [_e(r.item), str(r.slot), f"{r.exposures:,}", f"{r.clicks:,}", _pct(r.click_rate)]
            for r in s.items
        ],
        "slot-items",
    )
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in s.notes)
    return (
        f'<section class="slates"><h2>Slates</h2><p class="note">{s.decisions:,} decisions; '
        f"a click is a {_e(s.metric)} outcome naming its slot or item. Clicks per slate: "
        f"{_e(s.clicks_per_slate_summary())}.</p>{slots}"
        "<h3>Off-policy click rate per slot (95% CI)</h3>"
        f"{estimates}<h3>Items by slot</h3>{items}{notes}</section>"
    )


def _apprentice(a: ApprenticeStatus | None) -> str:
    """Who serves an apprentice experiment, the learner's estimate, and the takeover."""
    if a is None:
        return ""
    serving = a.policy if a.serving == "policy" else f"{a.rule} (apprentice mode)"
    gain = "–" if a.gain is None else _value(a.gain)
    rows = [
        ["Serving", _e(serving)],
        ["Decisions learned", f"{a.decisions_learned:,}"],
        [f"{_e(a.policy)}'s own choices (off-policy)", _num(a.own_value, 4)],
        [_e(a.rule), _num(a.rule_value, 4)],
        ["Gain (95% CI)", gain],
        ["Takeover", _e(_takeover(a))],
        [
            "Logged decisions (apprentice / policy)",
            f"{a.rule_decisions:,} / {a.policy_decisions:,}",
        ],
    ]
    return (
        f'<section class="apprentice"><h2>Apprentice</h2><p>{_e(a.sentence)}</p>'
        + _table(["", ""], rows, "apprentice")
        + "</section>"
    )


def _takeover(a: ApprenticeStatus) -> str:
    if a.serving == "policy":
        by = {"auto": "automatically", "admin": "by an admin"}.get(a.taken_over_by, "")
        return f"done {by}" + (f" at {a.taken_over_at}" if a.taken_over_at else "")
    if a.takeover == "auto":
        return f"automatic, once the lower bound is above 0 after {a.min_decisions:,} decisions"
    return "manual (POST /v1/experiments/{key}/takeover)"


def _value(iv: Interval) -> str:
    if math.isnan(iv.estimate):
        return "–"
    return f"{iv.estimate:+.4f} [{iv.lower:.4f}, {iv.upper:.4f}]"


def _value_caption(a: AdaptiveSection) -> str:
    if a.source == "off_policy":
        return (
            f"Value over time: reward per decision against {a.baseline}, cumulative per "
            f"{a.value_bucket} of decision (off-policy; a score interval at each point)"
        )
    return (
        f"Value over time: {a.measure} against {a.baseline}, cumulative per {a.value_bucket} "
        "of first exposure (always-valid interval: every point may be read)"
    )


def _preferences(a: AdaptiveSection) -> str:
    """What the policy chose lately per segment value (descriptive)."""
    if not a.preferences:
        return ""
    rows = [
        [
            f"{_e(p.attribute)} = {_e(p.value)}",
            f"{p.decisions:,}",
            f"<strong>{_e(p.preferred)}</strong> ({p.share:.0%})",
            *(_pct(x, 1) for x in p.shares),
        ]
        for p in a.preferences
    ]
    head = ["Segment", "Decisions", "Prefers", *(x.arm for x in a.arms)]
    return (
        f'<h3>What the policy prefers now, per segment</h3><p class="note">Its decisions since '
        f"{_e(a.preferences_since)} (the latest buckets holding at least 10% of all decisions), "
        "per segment: each arm's share. Descriptive: what it does now, not what it earns.</p>"
        + _table(head, rows, "preferences")
    )


def _adaptive(a: AdaptiveSection | None) -> str:
    """The adaptive policy's value, its arms (descriptive) and the allocation chart."""
    if a is None:
        return ""
    gain = "–" if a.gain is None else (_pp(a.gain) if a.source != "off_policy" else _plain(a.gain))
    value = (
        f"<p>Policy value ({_e(a.measure)}) against {_e(a.baseline)}: <strong>{gain}</strong>"
        f"{' (significant)' if a.significant else ''}.</p>"
    )
    rows = [
        [
            _e(x.arm),
            f"{x.decisions:,}",
            _pct(x.share, 1),
            _pct(x.last_share, 1),
            f"{x.units:,}",
            _pct(x.conversion_rate),
            "–" if x.value is None else _plain(x.value),
        ]
        for x in a.arms
    ]
    head = [
        "Arm",
        "Decisions",
        "Share",
        f"Share, last {a.bucket}",
        "Units (first arm)",
        "Rate (descriptive)",
        "Always this arm (SNIPS)",
    ]
    notes = "".join(f'<p class="note">{_e(n)}.</p>' for n in a.notes)
    return (
        '<section class="adaptive"><h2>Adaptive policy</h2>'
        + value
        + _table(head, rows)
        + notes
        + _preferences(a)
        + f"<figure><figcaption>{_e(_value_caption(a))}</figcaption>"
        '<div class="chart" id="chart-value"></div></figure>'
        + f"<figure><figcaption>Allocation: share of decisions per arm per {_e(a.bucket)}"
        '</figcaption><div class="chart" id="chart-allocation"></div></figure></section>'
    )


def _drivers(drivers: list[Driver] | None) -> str:
    """What drives a learning policy's choice: each attribute's Cramér's V, with a bar."""
    if drivers is None:
        return ""
    if not drivers:
        body = '<p class="note">No context attributes logged with the policy\'s decisions.</p>'
    else:
        rows = [
            [
                _e(d.feature),
                f"{d.importance:.2f}",
                f'<span class="bar" style="width:{max(0.0, min(d.importance, 1.0)) * 100:.0f}%">'
                "</span>",
                f"{d.decisions:,}",
            ]
            for d in drivers
        ]
        body = _table(["Attribute", "Importance (Cramér's V)", "", "Decisions"], rows, "drivers")
    return (
        '<section class="drivers"><h2>What drives the choice</h2>'
        '<p class="note">How much the chosen variant depends on each context attribute logged '
        "with the policy's decisions (0: chosen alike whatever the value; 1: the value alone "
        "tells the choice). Descriptive: it says what the policy does, not why outcomes differ."
        f"</p>{body}</section>"
    )


def _filters(report: ExperimentReport, segment: str) -> str:
    return (
        '<form class="filters" method="get">'
        f'<label>From <input name="from" value="{_e(report.window.start[:10])}"></label>'
        f'<label>To <input name="to" value="{_e(report.window.end[:10])}"></label>'
        f'<label>Segment <input name="segment" value="{_e(segment)}" '
        'placeholder="context attribute"></label>'
        '<button type="submit">Update</button></form>'
    )


def render_report_page(report: ExperimentReport, *, static_base: str = "/reports/static") -> str:
    """The report page: server-rendered text and tables, charts drawn by ``report.js``."""
    v = report.verdict
    details = "".join(f"<li>{_e(d)}</li>" for d in v.details)
    warnings = "".join(f"<li>{_e(w)}</li>" for w in report.warnings)
    data = _encoder.encode(report).decode().replace("<", "\\u003c")
    segment = report.segments.attribute if report.segments is not None else ""
    title = report.name or report.experiment
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} — Tailor report</title>
<link rel="stylesheet" href="{_e(static_base)}/report.css">
</head><body>
<header><h1>{_e(title)}</h1>
<p class="meta">{_e(report.experiment)} · v{report.version} · {_e(report.status)} ·
policy {_e(report.policy)} · control {_e(report.control)} ·
{_e(report.window.start)} → {_e(report.window.end)} ·
attribution window {report.window.attribution_window_s // 3600} h</p>
<p class="hypothesis">{_e(report.hypothesis)}</p>
{_filters(report, segment)}</header>
<main>
<section class="verdict status-{_e(v.status)}"><p class="headline">{_e(v.headline)}</p>
<ul>{details}</ul></section>
{_apprentice(report.apprentice)}
{_slates(report.slates)}
{_adaptive(report.adaptive)}
{_drivers(report.drivers)}
<section><h2>Traffic</h2>{_arms(report)}</section>
<section class="charts"><h2>Charts</h2>
<figure><figcaption>Cumulative {_e(report.primary_metric)} conversion rate by time of first
exposure (by day; by hour or minutes when the data spans less than two days)</figcaption>
<div class="chart" id="chart-daily"></div></figure>
<figure><figcaption>Lift over {_e(report.control)} (thick: fixed-horizon CI, thin: always-valid
CI)</figcaption><div class="chart" id="chart-lift"></div></figure>
<figure><figcaption>Uplift by segment</figcaption><div class="chart" id="chart-segments"></div>
</figure></section>
<section><h2>Metrics</h2>{"".join(_metric(m) for m in report.metrics)}</section>
<section><h2>Uplift over holdout</h2>{_uplift(report.uplift)}</section>
<section><h2>By segment</h2>{_segments(report.segments)}</section>
<section><h2>Off-policy estimates</h2>{_off_policy(report.off_policy)}</section>
{f'<section class="warnings"><h2>Warnings</h2><ul>{warnings}</ul></section>' if warnings else ""}
</main>
<footer>Generated {_e(report.generated_at)} · {report.level:.0%} intervals ·
{_e(report.correction)} correction · planned {report.horizon_units:,} units</footer>
<script type="application/json" id="report-data">{data}</script>
<script src="{_e(static_base)}/report.js" defer></script>
</body></html>
"""
