"""The report's SQL: named, parameterised queries over the event log (chdb and server alike).

Every query takes ``{name:Type}`` parameters, bound by the engine and never formatted into the
text, and runs through ``EventLog.query``. Times are epoch milliseconds.

``UNIT_METRICS`` — one scan of the experiment's exposures, grouped by unit:

* ``o``: outcomes of the requested ``types`` in ``[start - lookback, end)``, tagged with this
  experiment or with none, deduplicated with ``GROUP BY event_id`` (as fast as ``FINAL`` here and
  also correct across partitions).
* ``orphan_units``: outcomes that name only a decision (``unit_id = ''``) get the unit of that
  decision's exposure. Skipped (``resolve_orphans = 0``) when there are none: it reads every
  decision id.
* ``units``: only exposures with ``reason`` ``split``, ``policy``, ``holdout`` or
  ``global_holdout`` put a unit in the experiment (``not_targeted``, ``no_consent``,
  ``kill_switch``… served a default outside it). A unit's arm is that of its first exposure —
  ``~holdout`` / ``~global_holdout`` for holdout rows, else the variant — and its segment the
  ``segment`` context attribute at that exposure.
* ``per_unit``: per outcome type, the unit's events and value sum over the attribution window
  ``[first exposure, first exposure + window)``, and the same over the pre-period
  ``[first - pre, first)`` (the CUPED covariate).

One row per (arm, segment, day of first exposure, cohort) with per-type arrays (in ``types``
order) of sums over units: converting units, events, value, value², and the pre-period
equivalents and cross products. All are additive: totals, segments and daily series are sums of
rows. ``cohort`` is 1 for units first exposed in ``[start, end)``; earlier units are returned
(cohort 0) only so that nothing is silently mixed in.

``OFF_POLICY`` — logged decisions (non-holdout ``split``/``policy`` exposures) in
``[start, end)`` of a deterministic unit sample (``sample_ppm`` per million units by hash; all of
them at 1,000,000) and the reward each earned under the experiment's rules: an outcome naming a
decision rewards that decision; one naming only the unit rewards the unit's latest decision at or
before it (the live reward join's rule); both within ``reward_window`` after the decision,
combined by ``first`` or ``sum`` and clipped to ``[reward_min, reward_max]``; decisions no outcome
reached get ``reward_base`` (the clipped default). Rows per (part, variant index, segment):
``base`` rows hold n, Σ1/p, Σ1/p², min p, Σp, Σp² over all decisions; ``rewarded`` rows the
corrections Σ(r - r0)/p, Σ(r - r0)/p², Σ(r² - r0²)/p², Σ(r - r0), Σ(r² - r0²), Σ(r - r0)p over
decisions with a reward — together every moment the estimators of
:mod:`experiments.report_off_policy` need.

Exposures are read without ``FINAL`` (2.8x the CPU on a merged table, measured): replayed batches
are dropped on insert by their deduplication token, and a duplicate exposure would not change the
unit-level aggregates (min, argMin) anyway.
"""

from __future__ import annotations

from typing import Final

__all__ = ["LOGGED_DECISIONS", "OFF_POLICY", "ORPHAN_OUTCOMES", "UNIT_METRICS"]

# The context attribute a report is broken down by; constant-folded to '' (and the Map column
# left unread) when no segment is requested.
_SEGMENT = "if({segment:String} = '', '', context[{segment:String}])"
_IN_EXPERIMENT = "reason IN ('split', 'policy', 'holdout', 'global_holdout')"
_LOGGED = "reason IN ('split', 'policy') AND holdout = 0 AND propensity > 0"
_SAMPLED = "cityHash64(unit_id) % 1000000 < {sample_ppm:UInt32}"
_OUTCOMES_IN_RANGE = """experiment IN ('', {experiment:String})
    AND ts >= fromUnixTimestamp64Milli({start_ms:Int64} - {lookback_ms:Int64})
    AND ts < fromUnixTimestamp64Milli({end_ms:Int64})
    AND has({types:Array(String)}, type)"""

ORPHAN_OUTCOMES: Final = f"""
SELECT count() FROM outcomes
WHERE unit_id = '' AND decision_id != '' AND {_OUTCOMES_IN_RANGE}
"""

UNIT_METRICS: Final = f"""
WITH
o AS (
  SELECT event_id,
    any(unit_id) AS o_unit, any(decision_id) AS o_dec, any(toUnixTimestamp64Milli(ts)) AS o_ms,
    any(type) AS o_type, any(value) AS o_value
  FROM outcomes
  WHERE {_OUTCOMES_IN_RANGE}
  GROUP BY event_id
),
orphan_units AS (
  SELECT decision_id AS d_id, any(cityHash64(unit_id)) AS d_uh
  FROM exposures
  WHERE {{resolve_orphans:UInt8}} = 1 AND experiment = {{experiment:String}}
    AND decision_id IN (
      SELECT decision_id FROM outcomes
      WHERE unit_id = '' AND decision_id != '' AND {_OUTCOMES_IN_RANGE})
  GROUP BY decision_id
),
by_unit AS (
  SELECT uh, groupArray(o_ms) AS u_t, groupArray(o_k) AS u_k, groupArray(o_value) AS u_v
  FROM (
    SELECT if(o_unit != '', cityHash64(o_unit), d_uh) AS uh, o_ms,
      indexOf({{types:Array(String)}}, o_type) AS o_k, o_value
    FROM o LEFT JOIN orphan_units ON orphan_units.d_id = o.o_dec
    WHERE o_unit != '' OR d_uh != 0)
  GROUP BY uh
),
units AS (
  SELECT cityHash64(unit_id) AS uh,
    min(toUnixTimestamp64Milli(ts)) AS first_ms,
    argMin(multiIf(reason = 'global_holdout', '~global_holdout',
                   holdout = 1, '~holdout', toString(variant)), ts) AS arm,
    argMin({_SEGMENT}, ts) AS seg,
    count() AS n_exposures,
    minIf(variant, holdout = 0) != maxIf(variant, holdout = 0) AS mixed
  FROM exposures
  WHERE experiment = {{experiment:String}} AND {_IN_EXPERIMENT}
    AND ts < fromUnixTimestamp64Milli({{end_ms:Int64}})
  GROUP BY uh
),
per_unit AS (
  SELECT arm, seg, intDiv(first_ms, 86400000) AS first_day,
    toUInt8(first_ms >= {{start_ms:Int64}}) AS cohort, n_exposures, mixed,
    range(1, length({{types:Array(String)}}) + 1) AS type_ids,
    arrayMap((t, k) -> if(t >= first_ms AND t < first_ms + {{window_ms:Int64}}, k, 0), u_t, u_k)
      AS in_k,
    arrayMap((t, k) -> if(t < first_ms AND t >= first_ms - {{pre_ms:Int64}}, k, 0), u_t, u_k)
      AS pre_k,
    arrayMap(k -> countEqual(in_k, k), type_ids) AS cnt,
    arrayMap(k -> arraySum(arrayFilter((v, kk) -> kk = k, u_v, in_k)), type_ids) AS val,
    arrayMap(k -> countEqual(pre_k, k), type_ids) AS pre_cnt,
    arrayMap(k -> arraySum(arrayFilter((v, kk) -> kk = k, u_v, pre_k)), type_ids) AS pre_val
  FROM units LEFT JOIN by_unit USING (uh)
)
SELECT arm, seg, first_day, cohort,
  count() AS units,
  sum(n_exposures) AS exposures,
  sum(mixed) AS mixed_units,
  sumForEach(arrayMap(c -> toUInt64(c > 0), cnt)) AS converters,
  sumForEach(cnt) AS events,
  sumForEach(val) AS value,
  sumForEach(arrayMap(v -> v * v, val)) AS value_sq,
  sumForEach(arrayMap(c -> toUInt64(c > 0), pre_cnt)) AS pre_converters,
  sumForEach(arrayMap((a, b) -> toUInt64(a > 0 AND b > 0), cnt, pre_cnt)) AS both_converters,
  sumForEach(pre_val) AS pre_value,
  sumForEach(arrayMap(v -> v * v, pre_val)) AS pre_value_sq,
  sumForEach(arrayMap((a, b) -> a * b, val, pre_val)) AS cross_value
FROM per_unit
GROUP BY arm, seg, first_day, cohort
"""

# Logged decisions of the sampled units, with what OFF_POLICY needs of each.
_DECISIONS = f"""
    SELECT decision_id, cityHash64(unit_id) AS uh, cityHash64(decision_id) AS dh,
      toUnixTimestamp64Milli(ts) AS t, propensity AS p,
      indexOf({{variants:Array(String)}}, variant) AS vi, {_SEGMENT} AS sv
    FROM exposures
    WHERE experiment = {{experiment:String}} AND {_LOGGED} AND {_SAMPLED}
      AND ts >= fromUnixTimestamp64Milli({{start_ms:Int64}})
      AND ts < fromUnixTimestamp64Milli({{end_ms:Int64}})"""

_REWARD_OUTCOMES = """
    SELECT event_id,
      any(unit_id) AS r_unit, any(decision_id) AS r_dec, any(toUnixTimestamp64Milli(ts)) AS r_t,
      any({reward_of:Array(Float64)}[indexOf({reward_types:Array(String)}, type)]
          * if({reward_per_value:Array(UInt8)}[indexOf({reward_types:Array(String)}, type)] = 1,
               value, 1.0)) AS r_value
    FROM outcomes
    WHERE experiment IN ('', {experiment:String}) AND has({reward_types:Array(String)}, type)
      AND ts >= fromUnixTimestamp64Milli({start_ms:Int64})
      AND ts < fromUnixTimestamp64Milli({end_ms:Int64})
    GROUP BY event_id"""

OFF_POLICY: Final = f"""
WITH
ro AS ({_REWARD_OUTCOMES}
),
hits AS (
  SELECT e.dh AS h_dh, e.p AS h_p, e.vi AS h_vi, e.sv AS h_sv, ro.r_t AS h_t, ro.r_value AS h_r
  FROM ro INNER JOIN ({_DECISIONS}
      AND decision_id IN (SELECT r_dec FROM ro WHERE r_dec != '')
  ) AS e ON e.decision_id = ro.r_dec
  WHERE ro.r_t >= e.t AND ro.r_t <= e.t + {{reward_window_ms:Int64}}
  UNION ALL
  SELECT e.dh, e.p, e.vi, e.sv, u.r_t, u.r_value
  FROM (SELECT cityHash64(r_unit) AS uh, r_t, r_value FROM ro WHERE r_dec = '' AND r_unit != '')
    AS u
  ASOF INNER JOIN ({_DECISIONS}
      AND cityHash64(unit_id) IN (SELECT cityHash64(r_unit) FROM ro WHERE r_dec = '')
  ) AS e ON u.uh = e.uh AND u.r_t >= e.t
  WHERE u.r_t <= e.t + {{reward_window_ms:Int64}}
),
rewarded AS (
  SELECT any(h_p) AS p, any(h_vi) AS vi, any(h_sv) AS sv,
    greatest({{reward_min:Float64}}, least({{reward_max:Float64}},
      if({{reward_sum:UInt8}} = 1, sum(h_r), argMin(h_r, h_t)))) AS r,
    {{reward_base:Float64}} AS r0
  FROM hits GROUP BY h_dh
)
SELECT 'base' AS part, vi, sv, count() AS n,
  sum(1 / p) AS a1, sum(1 / (p * p)) AS a2, min(p) AS a3, sum(p) AS a4, sum(p * p) AS a5, 0. AS a6
FROM ({_DECISIONS}) GROUP BY vi, sv
UNION ALL
SELECT 'rewarded', vi, sv, count(),
  sum((r - r0) / p), sum((r - r0) / (p * p)), sum((r * r - r0 * r0) / (p * p)),
  sum(r - r0), sum(r * r - r0 * r0), sum((r - r0) * p)
FROM rewarded GROUP BY vi, sv
"""

LOGGED_DECISIONS: Final = f"""
SELECT count() FROM exposures
WHERE experiment = {{experiment:String}} AND {_LOGGED}
  AND ts >= fromUnixTimestamp64Milli({{start_ms:Int64}})
  AND ts < fromUnixTimestamp64Milli({{end_ms:Int64}})
"""
