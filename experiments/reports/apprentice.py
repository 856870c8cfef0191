"""The report of an apprentice (``policy.apprentice``): who serves, how the learner would do,
and whether (and when) it took over.

While apprenticing, a learning policy serves the experiment's rule — its fixed split, or the
default variant alone when all weight is there — mixed with a little exploration, learns from
every decision, and keeps an off-policy estimate of its own value against the rule's
(:mod:`bandits.apprentice`, progressive validation: each decision scored by the model before it
learned it). The estimate lives with the model (Redis); the report's caller reads it and passes
it here. When the takeover happened is read from the log: decisions name the policy
``apprentice:<kind>`` while the rule serves and ``<kind>`` once the policy does, so the first
decision logged under the policy's own name after the first apprenticed one dates the takeover
(with several workers a few apprenticed decisions may follow it, while they load the new model).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Literal

from bandits.apprentice import ApprenticeEstimate
from event_log.store import EventLog
from experiments.reports.arms import policy_kind
from experiments.reports.results import ApprenticeStatus
from experiments.statistics.intervals import Interval
from tailor_contract.definitions import Experiment
from tailor_contract.policies import Apprentice

__all__ = ["APPRENTICE_SQL", "apprentice_status", "rule_name"]

APPRENTICE_SQL = """
WITH d AS (
  SELECT startsWith(policy, 'apprentice:') AS a, toUnixTimestamp64Milli(ts) AS t
  FROM exposures
  WHERE experiment = {experiment:String} AND reason = 'policy' AND holdout = 0
    AND ts < fromUnixTimestamp64Milli({end_ms:Int64})
)
SELECT countIf(a), countIf(NOT a), minIf(t, a),
  minIf(t, NOT a AND t > (SELECT minIf(t, a) FROM d))
FROM d
"""


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def rule_name(experiment: Experiment) -> str:
    """What the apprentice serves until it takes over, in words."""
    weighted = [v.key for v in experiment.variants if v.weight > 0]
    if weighted == [experiment.default_variant]:
        return f"always {experiment.default_variant}"
    return "the fixed split"


def _sentence(
    experiment: Experiment,
    mode: Apprentice,
    estimate: ApprenticeEstimate | None,
    taken_over_at: str | None,
) -> str:
    kind = policy_kind(experiment)
    rule = rule_name(experiment)
    if estimate is None:
        return (
            f"Apprentice mode: {rule} serves while {kind} learns; it has learned nothing yet "
            f"(takeover: {mode.takeover})."
        )
    numbers = (
        f"its own choices would earn {estimate.own:.4f} per decision against {rule}'s "
        f"{estimate.split:.4f}: {estimate.gain:+.4f}, 95% CI [{estimate.gain_lower:.4f}, "
        f"{estimate.gain_upper:.4f}] over {estimate.n:,} decisions learned (off-policy)"
        if estimate.n >= 2
        else f"it has learned {estimate.n} decision(s), too few to estimate"
    )
    if estimate.serving == "policy":
        by = "automatically" if estimate.taken_over_by == "auto" else "by an admin"
        when = f" at {taken_over_at}" if taken_over_at else ""
        return f"Apprentice mode: {kind} took over from {rule} {by}{when}; before, {numbers}."
    if mode.takeover == "auto":
        rule_of = (
            f"it takes over once the lower bound is above 0, after {mode.min_decisions:,} decisions"
        )
    else:
        rule_of = "it takes over when an admin says so (POST /v1/experiments/{key}/takeover)"
    return f"Apprentice mode: {rule} serves while {kind} learns; {numbers}; {rule_of}."


def apprentice_status(
    event_log: EventLog,
    experiment: Experiment,
    estimate: ApprenticeEstimate | None,
    *,
    end_ms: int,
    model_unavailable: bool = False,
) -> ApprenticeStatus | None:
    """The apprentice section of ``experiment``'s report (None without apprentice mode).

    ``estimate`` is the published model's (None before it learned anything, or when the model
    store could not be read: then ``model_unavailable``).

    Raises:
        EventLogUnavailable: when the event log cannot be queried.
    """
    mode: Apprentice | None = getattr(experiment.policy, "apprentice", None)
    if mode is None:
        return None
    rows = event_log.query(APPRENTICE_SQL, {"experiment": experiment.key, "end_ms": end_ms})
    as_rule, own, _, first_own = (int(x) for x in rows[0])
    taken_over_at = _iso(first_own) if own and first_own else None
    gain = None
    if estimate is not None and estimate.n >= 2 and not math.isnan(estimate.gain_lower):
        gain = Interval(
            estimate=estimate.gain,
            lower=estimate.gain_lower,
            upper=estimate.gain_upper,
            level=0.95,
        )
    serving: Literal["rule", "policy"] = (
        "policy" if estimate is not None and estimate.serving == "policy" else "rule"
    )
    sentence = _sentence(experiment, mode, estimate, taken_over_at)
    if model_unavailable:
        sentence += " (The model store could not be read: the estimate is missing.)"
    return ApprenticeStatus(
        policy=policy_kind(experiment),
        rule=rule_name(experiment),
        takeover=mode.takeover,
        explore=mode.explore,
        min_decisions=mode.min_decisions,
        serving=serving,
        decisions_learned=estimate.n if estimate is not None else 0,
        own_value=estimate.own if estimate is not None else math.nan,
        rule_value=estimate.split if estimate is not None else math.nan,
        gain=gain,
        taken_over_by=estimate.taken_over_by if estimate is not None else "",
        taken_over_at=taken_over_at if serving == "policy" else None,
        rule_decisions=as_rule,
        policy_decisions=own,
        model_unavailable=model_unavailable,
        sentence=sentence,
    )
