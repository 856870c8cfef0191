"""The verdict of a ranked-slates experiment's report, from its slates section.

The per-arm verdict of other adaptive policies would read each slot's item as an arm; a slate's
value is its clicks over all slots, so the verdict compares whole slates: against the holdout's
default order (measured, units split by hash) where there is a holdout, else off-policy against
random order and the learned ranking (:mod:`experiments.reports.slates`).
"""

from __future__ import annotations

from experiments.reports.results import Verdict, VerdictStatus
from experiments.reports.slates import SlateReport

__all__ = ["slate_verdict"]


def slate_verdict(section: SlateReport, level: float) -> Verdict:
    """The report's verdict for a ranked-slates experiment: the learned ranking against the
    holdout's default order (measured, randomised by unit) where there is a holdout, else
    what the policy's slates earn next to random order and the learned ranking off-policy."""
    pct = f"{level:.0%}"
    details = [
        f"Slot {e.slot}: the policy's click rate {e.logged:.2%}; off-policy, random order "
        f"{e.random_snips.estimate:.2%} [{e.random_snips.lower:.2%}, {e.random_snips.upper:.2%}]"
        + (
            f", the learned ranking {e.learned_snips.estimate:.2%} "
            f"[{e.learned_snips.lower:.2%}, {e.learned_snips.upper:.2%}]"
            if e.learned_snips is not None
            else ""
        )
        + f" (SNIPS, {pct} CI)."
        for e in section.estimates
    ]
    details += section.notes
    gain = section.gain_over_holdout
    if gain is not None and section.holdout_clicks_per_slate is not None:
        if gain.lower > 0:
            status: VerdictStatus = "winner"
            said = "earn more clicks than"
        elif gain.upper < 0:
            status = "loser"
            said = "earn fewer clicks than"
        else:
            status = "no_difference"
            said = "show no clear difference in clicks from"
        headline = (
            f"The ranked slates {said} the holdout's default order: "
            f"{section.clicks_per_slate:.3f} vs {section.holdout_clicks_per_slate:.3f} clicks "
            f"per slate, {gain.estimate:+.3f} ({pct} CI [{gain.lower:+.3f}, {gain.upper:+.3f}])."
        )
        return Verdict(status=status, headline=headline, details=details)
    headline = f"The ranked slates earn {section.clicks_per_slate:.3f} clicks per slate"
    if section.random_clicks_per_slate is not None:
        headline += f"; off-policy, random order {section.random_clicks_per_slate:.3f}"
    if section.learned_clicks_per_slate is not None:
        headline += f" and the learned ranking {section.learned_clicks_per_slate:.3f}"
    headline += " (no holdout to measure against)."
    return Verdict(status="no_difference", headline=headline, details=details)
