"""What a learning policy prefers per segment now: its recent decisions per attribute value.

A bandit's overall allocation hides what it learned per segment ("c for mobile, b for desktop").
This section reads the policy's *latest* decisions — the last allocation buckets that together
hold at least ``RECENT_SHARE`` (10%) of the period's logged decisions, so the window is neither a
single noisy bucket nor the whole history, most of it from before the policy learned — and, per
value of a few context attributes, each arm's share of the decisions made there and the arm it
chose most. The attributes: the report's ``segment``, the policy's own ``segment_by`` and the
attributes that drive its choice most (`experiments.reports.drivers`, Cramér's V of at least
``MIN_IMPORTANCE``), at most ``MAX_ATTRIBUTES``; per attribute the ``MAX_VALUES`` most frequent
values. Descriptive: it is what the policy does now, the valid measure of what it earns is the
section's value against the holdout or off-policy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

from event_log.store import EventLog
from experiments.reports.results import AllocationBucket, Driver, SegmentPreference
from tailor_contract.definitions import Experiment

__all__ = [
    "PREFERENCES_SQL",
    "preference_attributes",
    "preferences",
    "preferences_from_rows",
    "recent_start",
]

RECENT_SHARE = 0.10
MIN_IMPORTANCE = 0.10
MAX_ATTRIBUTES = 3
MAX_VALUES = 20

PREFERENCES_SQL = """
SELECT k, context[k] AS v, variant, count() AS n
FROM exposures
ARRAY JOIN {attributes:Array(String)} AS k
WHERE experiment = {experiment:String} AND reason = 'policy' AND holdout = 0 AND slot <= 0
  AND mapContains(context, k)
  AND ts >= fromUnixTimestamp64Milli({start_ms:Int64})
  AND ts < fromUnixTimestamp64Milli({end_ms:Int64})
GROUP BY k, v, variant
"""


def _ms(iso: str) -> int:
    return int(
        datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).timestamp() * 1000
    )


def recent_start(allocation: Sequence[AllocationBucket]) -> str | None:
    """The start of the latest buckets that together hold at least 10% of the decisions."""
    total = sum(sum(b.decisions) for b in allocation)
    if total == 0:
        return None
    held = 0
    for bucket in reversed(allocation):
        held += sum(bucket.decisions)
        if held >= RECENT_SHARE * total:
            return bucket.start
    return allocation[0].start


def preference_attributes(
    experiment: Experiment, segment: str, drivers: Sequence[Driver] | None
) -> list[str]:
    """The attributes to break the policy's recent decisions down by, most telling first."""
    wanted = [segment, getattr(experiment.policy, "segment_by", None) or ""]
    wanted += [d.feature for d in drivers or () if d.importance >= MIN_IMPORTANCE]
    out: list[str] = []
    for name in wanted:
        if name and name not in out:
            out.append(name)
    return out[:MAX_ATTRIBUTES]


def preferences_from_rows(
    rows: Sequence[tuple[str, str, str, int]], arms: Sequence[str], attributes: Sequence[str]
) -> list[SegmentPreference]:
    """Per (attribute, value): decisions, each arm's share (``arms`` order), the top arm."""
    counts: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for attribute, value, variant, n in rows:
        per = counts[attribute][value]
        per[variant] = per.get(variant, 0) + int(n)
    out = []
    for attribute in attributes:
        by_value = counts.get(attribute, {})
        ordered = sorted(by_value.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        for value, per in ordered[:MAX_VALUES]:
            decided = [per.get(a, 0) for a in arms]
            total = sum(decided)
            if total == 0:
                continue
            top = max(range(len(arms)), key=lambda i: decided[i])
            out.append(
                SegmentPreference(
                    attribute=attribute,
                    value=value,
                    decisions=total,
                    preferred=arms[top],
                    share=decided[top] / total,
                    shares=[n / total for n in decided],
                )
            )
    return out


def preferences(
    event_log: EventLog,
    experiment: Experiment,
    attributes: Sequence[str],
    since: str,
    end_ms: int,
) -> list[SegmentPreference]:
    """The policy's recent decisions (from ``since``) per value of ``attributes``.

    Raises:
        EventLogUnavailable: when the event log cannot be queried.
    """
    if not attributes:
        return []
    params = {
        "experiment": experiment.key,
        "attributes": list(attributes),
        "start_ms": _ms(since),
        "end_ms": end_ms,
    }
    rows = event_log.query(PREFERENCES_SQL, params)
    arms = [v.key for v in experiment.variants]
    typed = [(str(k), str(v), str(a), int(n)) for k, v, a, n in rows]
    return preferences_from_rows(typed, arms, attributes)
