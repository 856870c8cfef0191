"""The report as plain text: what ``tailor report KEY`` prints (and ``?format=text`` returns).

The same verdict and tables as the HTML page — the adaptive policy's section, metrics, uplift,
segments and off-policy values — in fixed-width columns for a terminal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from experiments.reports.arms import arms_note
from experiments.reports.results import (
    AdaptiveSection,
    Comparison,
    ExperimentReport,
    MetricReport,
)
from experiments.reports.slates import SlateReport
from experiments.reports.verdict import format_chance
from experiments.statistics.intervals import Interval

__all__ = ["render_report_text"]

_ARM_LABELS = {"~holdout": "holdout", "~global_holdout": "global holdout"}


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), max((len(r[i]) for r in rows), default=0)) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    return [line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2%}"


def _num(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:,.2f}"


def _iv(iv: Interval, rate: bool) -> str:
    if math.isnan(iv.estimate):
        return "-"
    k = 100.0 if rate else 1.0
    unit = " pp" if rate else ""
    lo, hi = (max(iv.lower, -1.0), min(iv.upper, 1.0)) if rate else (iv.lower, iv.upper)
    return f"{iv.estimate * k:+.2f}{unit} [{lo * k:.2f}, {hi * k:.2f}]"


def _value_iv(iv: Interval) -> str:
    """A difference of rewards per decision, to four decimals (click rates are small)."""
    if math.isnan(iv.estimate):
        return "-"
    return f"{iv.estimate:+.4f} [{iv.lower:.4f}, {iv.upper:.4f}]"


def _rate_iv(iv: Interval | None) -> str:
    """A click rate with its interval, in percent."""
    if iv is None or math.isnan(iv.estimate):
        return "-"
    return f"{iv.estimate:.2%} [{iv.lower:.2%}, {iv.upper:.2%}]"


def _slates(s: SlateReport) -> list[str]:
    """Click rate per slot (policy and holdout), off-policy per slot, the top item-slots."""
    lines = ["", f"slates ({s.decisions:,} decisions; a click = a {s.metric} naming the slot)"]
    lines.append("  clicks per slate: " + s.clicks_per_slate_summary())
    lines += _table(
        ["slot", "exposures", "click rate", "holdout exposures", "holdout click rate"],
        [
            [str(r.slot), f"{r.exposures:,}", _pct(r.click_rate), f"{r.holdout_exposures:,}",
             "-" if r.holdout_click_rate is None else _pct(r.holdout_click_rate)]
            for r in s.slots
        ],
    )  # fmt: skip
    if s.estimates:
        lines += ["", "off-policy click rate per slot (IPS, SNIPS; 95% CI)"]
        lines += _table(
            ["slot", "n", "logged", "random IPS", "random SNIPS", "learned IPS", "learned SNIPS"],
            [
                [str(e.slot), f"{e.n:,}", _pct(e.logged), _rate_iv(e.random_ips),
                 _rate_iv(e.random_snips), _rate_iv(e.learned_ips), _rate_iv(e.learned_snips)]
                for e in s.estimates
            ],
        )  # fmt: skip
    if s.items:
        lines += ["", "items by slot (most shown first)"]
        lines += _table(
            ["item", "slot", "exposures", "clicks", "click rate"],
            [
                [r.item, str(r.slot), f"{r.exposures:,}", f"{r.clicks:,}", _pct(r.click_rate)]
                for r in s.items[:20]
            ],
        )
    lines += [f"  {note}" for note in s.notes]
    return lines


def _comparison(c: Comparison) -> list[str]:
    rate = c.measure == "conversion_rate"
    return [
        c.variant,
        "rate" if rate else "value/unit",
        _iv(c.lift.absolute, rate),
        _iv(c.sequential.absolute, rate),
        format_chance(c.bayesian.chance_to_beat_control),
        "-" if c.cuped is None else _iv(c.cuped.adjusted.absolute, rate),
        f"{c.p_adjusted:.4f}",
        c.direction,
    ]


def _metric(m: MetricReport) -> list[str]:
    out = ["", f"{m.metric} ({m.role})"]
    rows = [
        [
            _ARM_LABELS.get(a.arm, a.arm),
            f"{a.units:,}",
            f"{a.converters:,}",
            _pct(a.conversion_rate),
            f"{a.events:,}",
            _num(a.value_per_unit) if m.valued else "-",
            _num(a.average_order_value) if m.valued else "-",
        ]
        for a in m.arms
    ]
    out += _table(["arm", "units", "converted", "rate", "events", "value/unit", "AOV"], rows)
    if m.comparisons:
        head = [
            "variant",
            "measure",
            "lift (fixed CI)",
            "lift (always-valid CI)",
            "P(beat)",
            "CUPED lift",
            "p adj.",
            "reading",
        ]
        out += ["", *_table(head, [_comparison(c) for c in m.comparisons])]
    return out


def _adaptive(a: AdaptiveSection) -> list[str]:
    gain = "-" if a.gain is None else _iv(a.gain, a.source != "off_policy")
    out = [
        "",
        f"adaptive policy: {a.measure} against {a.baseline}: {gain}"
        f"{' (significant)' if a.significant else ''}",
    ]
    out += _table(
        [
            "arm",
            "decisions",
            "share",
            f"last {a.bucket}",
            "units",
            "rate (descr.)",
            "always (SNIPS)",
        ],
        [
            [
                x.arm,
                f"{x.decisions:,}",
                _pct(x.share),
                _pct(x.last_share),
                f"{x.units:,}",
                _pct(x.conversion_rate),
                "-" if x.value is None else _iv(x.value, False),
            ]
            for x in a.arms
        ],
    )
    out += [f"  * {n}" for n in a.notes]
    if a.value_over_time:
        rate = a.source != "off_policy"
        side = "units" if rate else "decisions"
        out += ["", f"value over time against {a.baseline} (cumulative, per {a.value_bucket})"]
        out += _table(
            ["from", side, "baseline n", "policy", a.baseline, "gain"],
            [
                [
                    v.start,
                    f"{v.count:,}",
                    f"{v.baseline_count:,}",
                    _pct(v.policy_value) if rate else f"{v.policy_value:.4f}",
                    _pct(v.baseline_value) if rate else f"{v.baseline_value:.4f}",
                    _iv(v.gain, True) if rate else _value_iv(v.gain),
                ]
                for v in a.value_over_time
            ],
        )
    if a.preferences:
        out += [
            "",
            f"what the policy prefers now, per segment (its decisions since "
            f"{a.preferences_since}; descriptive)",
        ]
        out += _table(
            ["segment", "decisions", "prefers", *(x.arm for x in a.arms)],
            [
                [
                    f"{p.attribute}={p.value}",
                    f"{p.decisions:,}",
                    f"{p.preferred} ({p.share:.0%})",
                    *(_pct(x) for x in p.shares),
                ]
                for p in a.preferences
            ],
        )
    if a.allocation:
        out += ["", f"allocation per {a.bucket} (share of decisions)"]
        out += _table(
            ["from", *(x.arm for x in a.arms)],
            [[b.start, *(_pct(s) for s in b.shares)] for b in a.allocation],
        )
    return out


def _segments(report: ExperimentReport) -> list[str]:
    """The primary metric per segment value, and the uplift over holdout per segment."""
    out: list[str] = []
    s = report.segments
    if s is not None and s.rows:
        out += ["", f"by segment: {s.attribute} ({s.metric}, lifts BH-adjusted)"]
        rows = []
        for row in s.rows:
            rates = ", ".join(
                f"{_ARM_LABELS.get(a.arm, a.arm)} {_pct(a.conversion_rate)}" for a in row.arms
            )
            lifts = "; ".join(
                f"{c.variant} {_iv(c.lift, True)} (p adj. {c.p_adjusted:.4f})"
                for c in row.comparisons
            )
            rows.append([row.segment, f"{row.units:,}", rates, lifts or "-"])
        out += _table([s.attribute, "units", "rates", "lift vs control"], rows)
    if report.uplift.by_segment:
        out += ["", "uplift over holdout by segment"]
        out += _table(
            ["segment", "holdout", "units (holdout/personalised)", "lift per unit"],
            [
                [
                    u.segment or "",
                    u.holdout,
                    f"{u.holdout_units:,}/{u.personalised_units:,}",
                    _iv(u.rate_lift, True),
                ]
                for u in report.uplift.by_segment
            ],
        )
    return out


def render_report_text(report: ExperimentReport) -> str:
    """The verdict, traffic, one table per metric, uplift and off-policy values, as text."""
    lines = [
        f"{report.name or report.experiment} [{report.experiment} v{report.version}, "
        f"{report.status}, policy {report.policy}]",
        f"{report.window.start} -> {report.window.end}, control {report.control}",
        "",
        report.verdict.headline,
        *(f"  - {d}" for d in report.verdict.details),
        "",
        "traffic",
    ]
    lines += _table(
        ["arm", "units", "exposures", "share"],
        [
            [_ARM_LABELS.get(a.arm, a.arm), f"{a.units:,}", f"{a.exposures:,}", _pct(a.share)]
            for a in report.arms
        ],
    )
    note = arms_note(report.policy)
    if note is not None:
        lines.append(f"  {note}")
    if report.apprentice is not None:
        lines += ["", "apprentice", f"  {report.apprentice.sentence}"]
    if report.slates is not None:
        lines += _slates(report.slates)
    if report.adaptive is not None:
        lines += _adaptive(report.adaptive)
    for m in report.metrics:
        lines += _metric(m)
    if report.uplift.overall:
        lines += ["", "uplift over holdout"]
        lines += _table(
            ["holdout", "metric", "lift per unit", "incremental conversions"],
            [
                [
                    u.holdout,
                    u.metric,
                    _iv(u.rate_lift, True),
                    f"{u.incremental_conversions.estimate:+,.0f} "
                    f"[{u.incremental_conversions.lower:,.0f}, "
                    f"{u.incremental_conversions.upper:,.0f}]",
                ]
                for u in report.uplift.overall
            ],
        )
    lines += _segments(report)
    if report.off_policy is not None:
        lines += ["", f"off-policy value (reward: {report.off_policy.reward})"]
        lines += _table(
            ["policy", "IPS", "SNIPS", "DR", "ESS"],
            [
                [
                    p.policy,
                    _iv(p.estimate.ips, False),
                    _iv(p.estimate.snips, False),
                    "-"
                    if p.estimate.doubly_robust is None
                    else _iv(p.estimate.doubly_robust, False),
                    f"{p.estimate.effective_sample_size:,.0f}",
                ]
                for p in report.off_policy.policies
            ],
        )
    if report.drivers:
        lines += ["", "what drives the choice (Cramér's V, chosen variant vs attribute)"]
        lines += [
            f"  {d.feature:<24} {d.importance:.2f}  ({d.decisions:,} decisions)"
            for d in report.drivers
        ]
    if report.warnings:
        lines += ["", "warnings", *(f"  ! {w}" for w in report.warnings)]
    return "\n".join(lines) + "\n"
