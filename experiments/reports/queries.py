"""The report's SQL: named, parameterised queries over the event log (chdb and server alike).

Every query takes ``{name:Type}`` parameters, bound by the engine and never formatted into the
text, and runs through ``EventLog.query``. Times are epoch milliseconds. Arms travel as codes:
``1..K`` the configured variants in order, ``0`` a variant no longer configured, ``254`` the
experiment's holdout, ``255`` the global holdout. ``UNIT_METRICS`` names each row's segment;
``OFF_POLICY`` names them too, with their ``cityHash64``.

``UNIT_METRICS`` — one scan of the experiment's exposures, grouped by unit:

* ``o``: outcomes of the requested ``types`` in ``[start - lookback, end)``, tagged with this
  experiment or with none, deduplicated with ``GROUP BY event_id`` (as fast as ``FINAL`` here,
  and correct across partitions too).
* ``orphan_units``: outcomes that name only a decision (``unit_id = ''``) get the unit of that
  decision's exposure. Skipped (``resolve_orphans = 0``) when ``ORPHAN_OUTCOMES`` finds none:
  it reads every decision id (32 hex digits each), the costliest column of the table.
* ``units``: only exposures with ``reason`` ``split``, ``policy``, ``holdout`` or
  ``global_holdout`` put a unit in the experiment (``not_targeted``, ``no_consent``,
  ``kill_switch``… served a default outside it). A unit's arm is that of its first exposure
  (``min`` of time and arm code packed into one integer), its segment the ``segment`` context
  attribute at that exposure (its value, so that no other scan is needed to name the segments:
  the by-segment report used to read every exposure's context a second time for the names,
  ``EXPOSURE_SUMMARY``, 0.8 of its 3.3 s; ``argMin`` of the value costs what ``argMin`` of its
  hash did, measured).
* ``unit_types``: units ⟕ outcomes, summed per (unit, outcome type) over the attribution window
  ``[first exposure, first exposure + window)`` and over the pre-period ``[first - pre, first)``
  (the CUPED covariate). Units without outcomes collapse into one group per (arm, segment, day);
  a unit with outcomes is counted once, in the group of its lowest outcome type.

Rows per (arm, segment, time bucket of first exposure — ``bucket_ms`` wide, a day unless the
exposures span less than two days —, cohort, type index) — index 0 holds units without
outcomes — with additive sums: units, converting units, events, value, value², the pre-period
equivalents and cross products, and the units' exposures. ``cohort`` is 1 for units first
exposed in ``[start, end)``.

``ALLOCATION_SPAN`` and ``ALLOCATION`` — the allocation over time of an adaptive policy: the first
and last logged decision (non-holdout ``split``/``policy`` exposures) in ``[start, end)``, then
decisions per (time bucket of ``bucket_ms``, variant index), buckets counted from the epoch.

``OFF_POLICY_BY_BUCKET`` — ``OFF_POLICY`` with the time bucket of each decision (``bucket_ms``
wide) in place of the segment: the adaptive report's value over time, cumulated bucket by
bucket. Without a segment the report runs it instead of ``OFF_POLICY`` and adds the buckets up.

``EXPOSURE_SUMMARY`` — exposures per (arm code, variant, segment) in ``[start, end)``.

``EXPOSURE_ARMS`` — exposures per (arm code, variant) in ``[start, end)``: the variants no longer
configured, when a report by segment skips off-policy evaluation (no context read: 5 ms where
``EXPOSURE_SUMMARY`` takes 0.6–0.9 s on the benchmark's 10M exposures).

``OFF_POLICY`` — ``base`` rows (the summary's columns and more): per (arm code, variant,
segment) of in-experiment exposures in ``[start, end)``, the exposures and, over logged
decisions (non-holdout ``split``/``policy`` rows) of a deterministic unit sample
(``sample_ppm`` per million units by hash), n, Σ1/p, Σ1/p², min p, Σp, Σp². ``rewarded`` rows:
per (variant index, segment) of logged decisions that earned a reward under the experiment's
rules — an outcome naming a decision rewards that decision, one naming only the unit rewards the
unit's latest logged decision at or before it (the live reward join's rule), within
``reward_window``; rewards combine by ``first`` or ``sum`` and are clipped to
``[reward_min, reward_max]`` — the corrections Σ(r - r0)/p, Σ(r - r0)/p², Σ(r² - r0²)/p²,
Σ(r - r0), Σ(r² - r0²), Σ(r - r0)p against the clipped default r0 every other decision gets.
Together these are every moment :mod:`experiments.reports.cells` needs. Outcomes with a
unit id are matched inside the unit's decisions (by decision id hash, else last touch);
decision-only outcomes need a scan of decision ids (``by_decision``, skipped when there are none).

Exposures are read without ``FINAL`` (2.8x the CPU on a merged table, measured): replayed
batches are dropped on insert by their deduplication token, and a duplicate exposure would not
change the unit-level aggregates (min, argMin) anyway.

A per-unit pre-aggregate does not pay (measured on ``loadtests/bench_report.py``'s 10M exposures
of 2M units, the ``units`` step alone, CPU seconds): the raw scan takes 0.86–1.0 s; an
``AggregatingMergeTree`` keyed on (experiment, unit hash) holding ``argMinState`` of (variant,
reason, holdout) takes 6.9–7.6 s (5M unmerged rows); one holding ``SimpleAggregateFunction(min,
Tuple(ts, code, variant))`` 1.9–3.8 s, 1.1–1.2 s even after ``OPTIMIZE FINAL``. Ten exposures
per unit is too little reduction to beat the LowCardinality dictionary tricks above.

Also measured on that benchmark and left out (A/B in one process, median of 3, load 1.5–10):
one pass with no join — exposures ``UNION ALL`` outcomes grouped by unit, outcomes kept as
arrays and ``ARRAY JOIN``-ed per type — gives the same rows at the same cost (CPU 1.24 vs 1.22 s
without a segment, 1.81 vs 1.66 s with one); ``join_algorithm = 'parallel_hash'`` changes
nothing; grouping the units step by ``unit_id`` instead of its hash costs 1.4x (CPU, that step
alone), 2.7x with ``optimize_aggregation_in_order``; one-level aggregation 1.5x. Dropping the
window that finds a unit's lowest outcome type would save at most 9% of ``UNIT_METRICS``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ALLOCATION",
    "ALLOCATION_SPAN",
    "EXPOSURE_ARMS",
    "EXPOSURE_COUNT",
    "EXPOSURE_SPAN",
    "EXPOSURE_SUMMARY",
    "OFF_POLICY",
    "OFF_POLICY_BY_BUCKET",
    "ORPHAN_OUTCOMES",
    "UNIT_METRICS",
    "UNIT_METRICS_BY_SEGMENT",
    "UNIT_METRICS_CAPPED",
    "UNIT_METRICS_CAPPED_BY_SEGMENT",
]

GLOBAL_HOLDOUT_CODE = 255
HOLDOUT_CODE = 254
EMPTY_SEGMENT_HASH = 11160318154034397263  # cityHash64(''): OFF_POLICY's sv_hash of no segment

# The context attribute a report is broken down by; constant-folded to '' (and the Map column
# left unread) when no segment is requested.
_SEGMENT = "if({segment:String} = '', '', context[{segment:String}])"
# 1-based position of the variant among the configured ones, 0 when not configured
# (``transform`` works on the LowCardinality dictionary; ``indexOf`` costs 4x here, measured).
_VARIANT_INDEX = (
    "transform(variant, {variants:Array(String)}, arrayEnumerate({variants:Array(String)}), 0)"
)
_TYPE_INDEX = "transform(o_type, {types:Array(String)}, arrayEnumerate({types:Array(String)}), 0)"
_ARM_CODE = f"multiIf(reason = 'global_holdout', 255, holdout = 1, 254, {_VARIANT_INDEX})"
# A ranked slate logs one row per slot (``slot`` 0, 1, …; -1 for any other exposure): the per-arm
# queries read only its slot-0 row, so a slate counts once, in the arm of the item on top.
_IN_EXPERIMENT = "reason IN ('split', 'policy', 'holdout', 'global_holdout') AND slot <= 0"
_LOGGED = "reason IN ('split', 'policy') AND holdout = 0 AND propensity > 0 AND slot <= 0"
# Constant-folded away (no unit id hashed) when nothing is sampled.
_SAMPLED = "({sample_ppm:UInt32} >= 1000000 OR cityHash64(unit_id) % 1000000 < {sample_ppm:UInt32})"
# An open period (from 0, to "now") folds to true: the ts column is then read only if needed.
_BEFORE_END = "({open_end:UInt8} = 1 OR ts < fromUnixTimestamp64Milli({end_ms:Int64}))"
_IN_RANGE = f"""({{start_ms:Int64}} <= 0 OR ts >= fromUnixTimestamp64Milli({{start_ms:Int64}}))
    AND {_BEFORE_END}"""
_OUTCOMES_IN_RANGE = """experiment IN ('', {experiment:String})
    AND ts >= fromUnixTimestamp64Milli({start_ms:Int64} - {lookback_ms:Int64})
    AND ts < fromUnixTimestamp64Milli({end_ms:Int64})
    AND has({types:Array(String)}, type)"""

ORPHAN_OUTCOMES: Final = """
SELECT count() FROM outcomes
WHERE unit_id = '' AND decision_id != '' AND experiment IN ('', {experiment:String})
  AND ts >= fromUnixTimestamp64Milli({start_ms:Int64} - {lookback_ms:Int64})
  AND ts < fromUnixTimestamp64Milli({end_ms:Int64})
"""

EXPOSURE_COUNT: Final = f"""
SELECT count() FROM exposures
WHERE experiment = {{experiment:String}} AND {_IN_RANGE}
"""

EXPOSURE_SPAN: Final = f"""
SELECT count(), min(toUnixTimestamp64Milli(ts)), max(toUnixTimestamp64Milli(ts))
FROM exposures
WHERE experiment = {{experiment:String}} AND {_IN_EXPERIMENT} AND {_IN_RANGE}
"""

_UNIT_METRICS = f"""
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
    AND decision_id IN (SELECT o_dec FROM o WHERE o_unit = '' AND o_dec != '')
  GROUP BY decision_id
),
o_flat AS (
  SELECT f_uh, f_ms, f_k, f_v, min(f_k) OVER (PARTITION BY f_uh) AS f_min_k
  FROM (
    SELECT if(o_unit != '', cityHash64(o_unit), d_uh) AS f_uh, o_ms AS f_ms,
      toUInt8({_TYPE_INDEX}) AS f_k,
      o_value AS f_v
    FROM o LEFT JOIN orphan_units ON orphan_units.d_id = o.o_dec
    WHERE o_unit != '' OR d_uh != 0)
),
units AS (
  SELECT cityHash64(unit_id) AS uh,
    min(bitShiftLeft(toUInt64(toUnixTimestamp64Milli(ts)), 8) + {_ARM_CODE}) AS first,
    {{segment_hash}} AS seg,
    minIf({_VARIANT_INDEX}, holdout = 0) != maxIf({_VARIANT_INDEX}, holdout = 0) AS mixed,
    count() AS n_exp
  FROM exposures
  WHERE experiment = {{experiment:String}} AND {_IN_EXPERIMENT}
    AND {_BEFORE_END}
  GROUP BY uh
),
unit_types AS (
  SELECT if(f_k = 0, toUInt64(0), uh) AS key_uh, f_k AS k,
    toUInt8(bitAnd(first, 255)) AS arm, seg,
    intDiv(t0, {{bucket_ms:Int64}}) AS day, toUInt8(t0 >= {{start_ms:Int64}}) AS cohort,
    count() AS n_rows, countIf(mixed) AS n_mixed, any(mixed) AS u_mixed, any(f_min_k) AS min_k,
    sum(n_exp) AS sum_exp, any(n_exp) AS u_exp,
    countIf(f_k != 0 AND f_ms >= t0 AND f_ms < t0 + {{window_ms:Int64}}) AS cnt,
    sumIf(f_v, f_k != 0 AND f_ms >= t0 AND f_ms < t0 + {{window_ms:Int64}}) AS val,
    countIf(f_k != 0 AND f_ms < t0 AND f_ms >= t0 - {{pre_ms:Int64}}) AS pre_cnt,
    sumIf(f_v, f_k != 0 AND f_ms < t0 AND f_ms >= t0 - {{pre_ms:Int64}}) AS pre_val
  FROM (SELECT *, toInt64(bitShiftRight(first, 8)) AS t0 FROM units) AS u
  LEFT JOIN o_flat ON o_flat.f_uh = u.uh
  GROUP BY key_uh, k, arm, seg, day, cohort
)
SELECT arm, seg, day, cohort, k AS type_index,
  sum(if(key_uh = 0, n_rows, k = min_k)) AS units,
  sum(if(key_uh = 0, n_mixed, k = min_k AND u_mixed)) AS mixed_units,
  countIf(cnt > 0) AS converters,
  sum(cnt) AS events,
  sum(val) AS value,
  sum(val * val) AS value_sq,
  countIf(pre_cnt > 0) AS pre_converters,
  countIf(cnt > 0 AND pre_cnt > 0) AS both_converters,
  sum(pre_val) AS pre_value,
  sum(pre_val * pre_val) AS pre_value_sq,
  sum(val * pre_val) AS cross_value,
  sum(if(key_uh = 0, sum_exp, if(k = min_k, u_exp, 0))) AS exposures
FROM {{unit_rows}}
GROUP BY arm, seg, day, cohort, type_index
"""

# Revenue capping (``cap_percentile`` > 0): each outcome type's per-unit value — in the window
# and in the pre-period — is winsorised at that percentile (R7, linear interpolation, as
# numpy's default) of the cohort's positive per-unit values of the type (a type without any is
# left as it is). A window function over
# the unit rows, in its own variant of the query so an uncapped report does not pay for it.
_CAPPED_ROWS = """(
  SELECT * REPLACE (if(isFinite(cap), least(val, cap), val) AS val,
    if(isFinite(cap), least(pre_val, cap), pre_val) AS pre_val)
  FROM (
    SELECT *, quantileExactInclusiveIf({cap_percentile:Float64})(val, val > 0 AND cohort = 1)
      OVER (PARTITION BY k) AS cap
    FROM unit_types))"""

# Two variants of one query: the per-unit segment costs a column read and an aggregate, so the
# report without a segment leaves both out (its one segment is '').
_UNCAPPED = _UNIT_METRICS.replace("{unit_rows}", "unit_types")
_CAPPED = _UNIT_METRICS.replace("{unit_rows}", _CAPPED_ROWS)
_NO_SEGMENT = "''"
_BY_SEGMENT = "argMin(context[{segment:String}], ts)"
UNIT_METRICS: Final = _UNCAPPED.replace("{segment_hash}", _NO_SEGMENT)
UNIT_METRICS_BY_SEGMENT: Final = _UNCAPPED.replace("{segment_hash}", _BY_SEGMENT)
UNIT_METRICS_CAPPED: Final = _CAPPED.replace("{segment_hash}", _NO_SEGMENT)
UNIT_METRICS_CAPPED_BY_SEGMENT: Final = _CAPPED.replace("{segment_hash}", _BY_SEGMENT)

_REWARD_OF = (
    "{reward_of:Array(Float64)}[indexOf({reward_types:Array(String)}, type)]"
    " * if({reward_per_value:Array(UInt8)}[indexOf({reward_types:Array(String)}, type)] = 1,"
    " value, 1.0)"
)
_DECISIONS = f"""
  FROM exposures
  WHERE experiment = {{experiment:String}} AND {_LOGGED} AND {_SAMPLED} AND {_IN_RANGE}"""

OFF_POLICY: Final = f"""
WITH
ro AS (
  SELECT event_id, any(unit_id) AS r_unit, any(decision_id) AS r_dec,
    any(toUnixTimestamp64Milli(ts)) AS r_t, any({_REWARD_OF}) AS r_value
  FROM outcomes
  WHERE experiment IN ('', {{experiment:String}}) AND has({{reward_types:Array(String)}}, type)
    AND {_IN_RANGE}
  GROUP BY event_id
),
by_decision AS (
  SELECT cityHash64(cityHash64(e.unit_id), toUnixTimestamp64Milli(e.ts)) AS h_id,
    e.propensity AS h_p, {_VARIANT_INDEX.replace("(variant", "(e.variant")} AS h_vi,
    {_SEGMENT} AS h_sv, r.r_t AS h_t, r.r_value AS h_r
  FROM exposures AS e
  INNER JOIN (SELECT r_dec, r_t, r_value FROM ro WHERE r_unit = '' AND r_dec != '') AS r
    ON r.r_dec = e.decision_id
  WHERE {{by_decision:UInt8}} = 1 AND e.experiment = {{experiment:String}}
    AND e.reason IN ('split', 'policy') AND e.holdout = 0 AND e.propensity > 0 AND e.slot <= 0
    AND ({{sample_ppm:UInt32}} >= 1000000
         OR cityHash64(e.unit_id) % 1000000 < {{sample_ppm:UInt32}})
    AND {_IN_RANGE.replace("ts ", "e.ts ")}
    AND e.decision_id IN (SELECT r_dec FROM ro WHERE r_unit = '' AND r_dec != '')
    AND r.r_t >= toUnixTimestamp64Milli(e.ts)
    AND r.r_t <= toUnixTimestamp64Milli(e.ts) + {{reward_window_ms:Int64}}
),
unit_outcomes AS (
  SELECT cityHash64(r_unit) AS uh, groupArray(r_t) AS u_t, groupArray(r_value) AS u_r,
    groupArray(if(r_dec = '', toUInt64(0), cityHash64(r_dec))) AS u_d
  FROM ro
  WHERE r_unit != ''
    AND ({{sample_ppm:UInt32}} >= 1000000 OR uh % 1000000 < {{sample_ppm:UInt32}})
  GROUP BY uh
),
unit_decisions AS (
  SELECT cityHash64(unit_id) AS uh,
    groupArray(toUnixTimestamp64Milli(ts)) AS e_t, groupArray(propensity) AS e_p,
    groupArray({_VARIANT_INDEX}) AS e_v,
    groupArray({_SEGMENT}) AS e_s, groupArray(cityHash64(decision_id)) AS e_d
  {_DECISIONS}
    AND cityHash64(unit_id) IN (SELECT uh FROM unit_outcomes)
  GROUP BY uh
),
by_unit AS (
  SELECT cityHash64(uh, e_t[j]) AS h_id, e_p[j] AS h_p, e_v[j] AS h_vi, e_s[j] AS h_sv,
    t AS h_t, r AS h_r
  FROM (
    SELECT d.uh AS uh, d.e_t AS e_t, d.e_p AS e_p, d.e_v AS e_v, d.e_s AS e_s,
      arrayMap((x, dh) -> if(dh != 0, indexOf(d.e_d, dh),
          indexOf(d.e_t, arrayMax(arrayFilter(z -> z <= x, d.e_t)))), o.u_t, o.u_d) AS js,
      o.u_t AS ts_, o.u_r AS rs_
    FROM unit_outcomes AS o INNER JOIN unit_decisions AS d ON d.uh = o.uh
  )
  ARRAY JOIN js AS j, ts_ AS t, rs_ AS r
  WHERE j > 0 AND t >= e_t[j] AND t <= e_t[j] + {{reward_window_ms:Int64}}
),
rewarded AS (
  SELECT any(h_p) AS p, any(h_vi) AS vi, any(h_sv) AS sv,
    greatest({{reward_min:Float64}}, least({{reward_max:Float64}},
      if({{reward_sum:UInt8}} = 1, sum(h_r), argMin(h_r, h_t)))) AS r,
    {{reward_base:Float64}} AS r0
  FROM (SELECT * FROM by_decision UNION ALL SELECT * FROM by_unit)
  GROUP BY h_id
)
SELECT 'base' AS part, {_ARM_CODE} AS code, variant AS name,
  {_SEGMENT} AS sv, cityHash64(sv) AS sv_hash, count() AS exposures,
  countIf({_LOGGED} AND {_SAMPLED}) AS n,
  sumIf(1 / propensity, {_LOGGED} AND {_SAMPLED}) AS a1,
  sumIf(1 / (propensity * propensity), {_LOGGED} AND {_SAMPLED}) AS a2,
  minIf(propensity, {_LOGGED} AND {_SAMPLED}) AS a3,
  sumIf(propensity, {_LOGGED} AND {_SAMPLED}) AS a4,
  sumIf(propensity * propensity, {_LOGGED} AND {_SAMPLED}) AS a5,
  0.0 AS a6
FROM exposures
WHERE experiment = {{experiment:String}} AND {_IN_EXPERIMENT} AND {_IN_RANGE}
GROUP BY code, name, sv
UNION ALL
SELECT 'rewarded', vi, '', sv, cityHash64(sv), 0, count(),
  sum((r - r0) / p), sum((r - r0) / (p * p)), sum((r * r - r0 * r0) / (p * p)),
  sum(r - r0), sum(r * r - r0 * r0), sum((r - r0) * p)
FROM rewarded GROUP BY vi, sv
"""

# The same sums per time bucket of the decision (``bucket_ms`` wide, counted from the epoch)
# instead of per segment: the "segment" of each row is the bucket's number, as text.
_BUCKET = "toString(intDiv(toUnixTimestamp64Milli(ts), {bucket_ms:Int64}))"
OFF_POLICY_BY_BUCKET: Final = OFF_POLICY.replace(_SEGMENT, _BUCKET)

EXPOSURE_SUMMARY: Final = f"""
SELECT {_ARM_CODE} AS code, variant AS name, {_SEGMENT} AS sv, cityHash64(sv) AS sv_hash,
  count() AS exposures
FROM exposures
WHERE experiment = {{experiment:String}} AND {_IN_EXPERIMENT} AND {_IN_RANGE}
GROUP BY code, name, sv
"""

EXPOSURE_ARMS: Final = f"""
SELECT {_ARM_CODE} AS code, variant AS name, count() AS exposures
FROM exposures
WHERE experiment = {{experiment:String}} AND {_IN_EXPERIMENT} AND {_IN_RANGE}
GROUP BY code, name
"""

_DECIDED = "reason IN ('split', 'policy') AND holdout = 0 AND slot <= 0"

ALLOCATION_SPAN: Final = f"""
SELECT count(), min(toUnixTimestamp64Milli(ts)), max(toUnixTimestamp64Milli(ts))
FROM exposures
WHERE experiment = {{experiment:String}} AND {_DECIDED} AND {_IN_RANGE}
"""

ALLOCATION: Final = f"""
SELECT intDiv(toUnixTimestamp64Milli(ts), {{bucket_ms:Int64}}) AS bucket,
  {_VARIANT_INDEX} AS vi, count() AS decisions
FROM exposures
WHERE experiment = {{experiment:String}} AND {_DECIDED} AND {_IN_RANGE}
GROUP BY bucket, vi
ORDER BY bucket, vi
"""


# Ranked slates (experiments.reports.slates): the latest slot exposures of the experiment in
# [start, end), newest decision first, and the outcomes of one type naming a slot or an item
# of those decisions (by decision id).
SLATE_EXPOSURES: Final = """
SELECT decision_id, slot, item, propensity, reason, holdout, candidates, context,
       toUnixTimestamp64Milli(ts) AS ts_ms
FROM exposures FINAL
WHERE experiment = {experiment:String} AND slot >= 0
  AND ts >= fromUnixTimestamp64Milli({start_ms:Int64})
  AND ts < fromUnixTimestamp64Milli({end_ms:Int64})
ORDER BY ts DESC, decision_id, slot
LIMIT {limit:UInt32}
"""
SLATE_OUTCOMES: Final = """
SELECT decision_id, slot, item, toUnixTimestamp64Milli(ts) AS ts_ms
FROM outcomes FINAL
WHERE type = {metric:String} AND experiment IN ('', {experiment:String})
  AND (slot >= 0 OR item != '') AND decision_id != ''
  AND ts >= fromUnixTimestamp64Milli({start_ms:Int64})
  AND decision_id IN (
    SELECT decision_id FROM exposures
    WHERE experiment = {experiment:String} AND slot >= 0
      AND ts >= fromUnixTimestamp64Milli({start_ms:Int64})
      AND ts < fromUnixTimestamp64Milli({end_ms:Int64})
  )
"""
