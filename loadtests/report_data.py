"""Synthetic experiment traffic for the report benchmark, generated inside ClickHouse.

``generate`` fills the event log with ``exposures`` exposure rows and about ``outcomes`` outcome
rows by ``INSERT ... SELECT ... FROM numbers(n)``: Python never touches a row (chdb inserts
230k–530k rows/s from Python; the engine writes millions per second from SQL).

The traffic: experiment ``bench`` on placement ``home``; ``units`` units, each exposed
``exposures / units`` times over ``days`` days (decision ids are 32-hex-digit strings like real
ones); 5% of units in the experiment's holdout, 1% in the global holdout, the rest split evenly
over ``control``, ``b`` and ``c`` (propensity 1/3); a context Map of ``device`` and ``country``.
Outcomes go to a fifth of the units (the active ones, about 2.5 each): purchases (40%, with a
value), clicks (50%) and unsubscribes (10%), from three days before a unit's first exposure to
two days after; ``b`` and ``c`` convert about 10% more often than ``control``. Every outcome
names its unit; ``with_decision`` of them also the decision (the unit's first), and
``decision_only`` of them name only the decision (what a caller that keeps no unit id sends).
"""

from __future__ import annotations

import time

import msgspec

from event_log.store import ClickHouseEventLog

__all__ = ["BENCH_EXPERIMENT", "GeneratedData", "generate"]

BENCH_EXPERIMENT = "bench"
START_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
DAY_MS = 86_400_000

_UNIT = "number % {units:UInt64}"
# Per unit: h in [0, 1000) decides its arm; a in [0, 100) whether it is active (has outcomes).
_ARM = (
    "multiIf(h < 50, 'holdout', h < 60, 'global_holdout', 'split')",
    "if(h < 60, 'control', ['control', 'b', 'c'][h % 3 + 1])",
)

EXPOSURES_SQL = f"""
INSERT INTO exposures (event_id, decision_id, ts, unit_id, experiment, experiment_version,
  placement, variant, propensity, policy, policy_version, reason, holdout, context)
SELECT generateUUIDv4(number), lower(hex(MD5(toString(number)))),
  fromUnixTimestamp64Milli(toInt64({{start_ms:Int64}} + first + j * gap)),
  concat('visitor-', toString(k)), '{BENCH_EXPERIMENT}', 1, 'home',
  {_ARM[1]}, if(h < 60, 1.0, 1 / 3), if(h < 60, 'default', 'fixed'), '',
  {_ARM[0]}, h < 60,
  map('device', ['mobile', 'desktop', 'tablet'][cityHash64(k, 3) % 3 + 1],
      'country', ['fr', 'de', 'uk', 'us'][cityHash64(k, 4) % 4 + 1])
FROM (
  SELECT number, {_UNIT} AS k, intDiv(number, {{units:UInt64}}) AS j,
    cityHash64(k, 2) % 1000 AS h,
    cityHash64(k, 1) % ({{days:UInt64}} * {DAY_MS} * 8 / 10) AS first,
    cityHash64(k, 5) % (6 * 3600000) AS gap
  FROM numbers({{exposures:UInt64}})
)
"""

OUTCOMES_SQL = f"""
INSERT INTO outcomes (event_id, ts, decision_id, unit_id, experiment, type, value, properties)
SELECT generateUUIDv4(number),
  fromUnixTimestamp64Milli(toInt64({{start_ms:Int64}} + first + offset)),
  if(x < {{with_decision:Float64}} + {{decision_only:Float64}}, lower(hex(MD5(toString(k)))), ''),
  if(x < {{decision_only:Float64}}, '', concat('visitor-', toString(k))), '',
  multiIf(t < 40, 'purchase', t < 90, 'click', 'unsubscribe'),
  if(t < 40, 20 + (cityHash64(number, 7) % 8000) / 100, 0), map()
FROM (
  SELECT number,
    (cityHash64(number, 4) % intDiv({{units:UInt64}}, 5)) * 5 AS k,
    cityHash64(k, 2) % 1000 AS h,
    cityHash64(number, 6) % 100 AS t,
    cityHash64(k, 1) % ({{days:UInt64}} * {DAY_MS} * 8 / 10) AS first,
    toInt64(cityHash64(number, 5) % (5 * {DAY_MS})) - 3 * {DAY_MS} AS offset,
    (cityHash64(number, 9) % 1000) / 1000 AS x
  FROM numbers({{draws:UInt64}})
)
WHERE NOT (h >= 60 AND h % 3 = 0 AND cityHash64(number, 8) % 11 = 0)
"""


class GeneratedData(msgspec.Struct, frozen=True, kw_only=True):
    """What `generate` wrote and how long it took."""

    exposures: int
    outcomes: int
    units: int
    seconds: float


def generate(
    event_log: ClickHouseEventLog,
    *,
    exposures: int = 10_000_000,
    outcomes: int = 1_000_000,
    units: int = 2_000_000,
    days: int = 28,
    with_decision: float = 0.5,
    decision_only: float = 0.0,
    outcomes_only: bool = False,
) -> GeneratedData:
    """Replace the event log's exposures (unless ``outcomes_only``) and outcomes with synthetic
    traffic (see the module docstring)."""
    started = time.perf_counter()
    event_log.migrate()
    params = {"start_ms": START_MS, "units": units, "days": days}
    if not outcomes_only:
        event_log.command("TRUNCATE TABLE exposures")
        event_log.command(EXPOSURES_SQL, {**params, "exposures": exposures})
    event_log.command("TRUNCATE TABLE outcomes")
    # About 1/11 of the control-arm draws are dropped (the effect): draw a little more.
    event_log.command(
        OUTCOMES_SQL,
        {
            **params,
            "draws": int(outcomes * 1.031),
            "with_decision": with_decision,
            "decision_only": decision_only,
        },
    )
    counts = event_log.query(
        "SELECT (SELECT count() FROM exposures), (SELECT count() FROM outcomes)"
    )[0]
    return GeneratedData(
        exposures=int(counts[0]),
        outcomes=int(counts[1]),
        units=units,
        seconds=time.perf_counter() - started,
    )
