"""What drives a learning policy's choice: per context attribute, how much the chosen variant
depends on it (the report's feature importance, as Personalizer showed).

Read from the logged decisions, not from a model: over the period's exposures a learning policy
chose (reason ``policy``), each context attribute logged with them gets Cramér's V between its
value and the chosen variant — 0 when the policy chooses alike whatever the value, 1 when the
value alone tells the choice. It is descriptive (it says what the policy does, not why the
outcomes differ) and works for every learning policy; of a ranked slate only the item on top
(slot 0) counts as the choice. Sensitive features never appear: they are stripped before a
decision is made and logged.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from event_log.store import EventLog
from experiments.reports.results import Driver

__all__ = ["DRIVERS_SQL", "Driver", "drivers", "drivers_from_rows"]

MAX_DRIVERS = 10
"""At most this many attributes are listed, most important first."""
MAX_VALUES = 50
"""Values of one attribute beyond the most frequent ``MAX_VALUES`` are pooled (ids, timestamps
make every value unique and say nothing about a policy)."""

DRIVERS_SQL = """
SELECT k, context[k] AS v, variant, count() AS n
FROM exposures
ARRAY JOIN mapKeys(context) AS k
WHERE experiment = {experiment:String} AND reason = 'policy' AND slot <= 0
  AND ({start_ms:Int64} <= 0 OR ts >= fromUnixTimestamp64Milli({start_ms:Int64}))
  AND ts < fromUnixTimestamp64Milli({end_ms:Int64})
GROUP BY k, v, variant
"""


def _cramers_v(table: np.ndarray) -> float:
    """Cramér's V of a contingency table, shape ``(values, variants)``; 0 when degenerate."""
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    n = table.sum()
    k = min(table.shape) - 1
    if n == 0 or k <= 0:
        return 0.0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return math.sqrt(chi2 / (n * k))


def drivers_from_rows(rows: list[tuple[str, str, str, int]]) -> list[Driver]:
    """Drivers from ``(attribute, value, variant, decisions)`` rows, most important first."""
    counts: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for attribute, value, variant, n in rows:
        counts[attribute][value][variant] = int(n)
    out = []
    for attribute, by_value in counts.items():
        ordered = sorted(by_value.items(), key=lambda kv: -sum(kv[1].values()))
        kept, pooled = ordered[:MAX_VALUES], ordered[MAX_VALUES:]
        variants = sorted({v for _, per in ordered for v in per})
        table = np.array([[per.get(v, 0) for v in variants] for _, per in kept], dtype=float)
        if pooled:
            rest = [sum(per.get(v, 0) for _, per in pooled) for v in variants]
            table = np.vstack([table, np.array(rest, dtype=float)])
        out.append(
            Driver(
                feature=attribute,
                importance=round(_cramers_v(table), 4),
                decisions=int(table.sum()),
            )
        )
    out.sort(key=lambda d: (-d.importance, d.feature))
    return out[:MAX_DRIVERS]


def drivers(event_log: EventLog, experiment: str, start_ms: int, end_ms: int) -> list[Driver]:
    """The drivers of ``experiment``'s learning-policy decisions in ``[start_ms, end_ms)``.

    Raises:
        EventLogUnavailable: when the event log cannot be queried.
    """
    rows = event_log.query(
        DRIVERS_SQL, {"experiment": experiment, "start_ms": start_ms, "end_ms": end_ms}
    )
    return drivers_from_rows([(str(k), str(v), str(a), int(n)) for k, v, a, n in rows])
