"""The event log's SQL: tables, migrations and the statements the adapters run.

One dialect for both backends (chdb embedded and a ClickHouse server through clickhouse-connect).
Tables are ``ReplacingMergeTree`` keyed on ``event_id``, and inserts carry a deduplication token
within ``non_replicated_deduplication_window``: a replayed batch is dropped on insert, and a row
replayed in a different batch collapses on merge (reports read with ``FINAL``).

A cluster (``TAILOR_EVENT_LOG_CLUSTER``, the name of a ``remote_servers`` cluster) runs the same
migrations rewritten by :func:`cluster_migration`: each table becomes ``<table>_local``, a
``ReplicatedReplacingMergeTree`` on every shard's replicas, and ``<table>`` a ``Distributed``
table over them that every statement above reads and writes unchanged. All DDL runs ``ON
CLUSTER``. Rows are sharded so that one event always lands on one shard (its ``event_id``
collapses there under ``FINAL``): exposures and outcomes by unit (a unit's rows together),
audit by event id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, cast

import msgspec

from event_log.rows import EventRows, Exposure, Table

EXPOSURE_COLUMNS: Final = (
    "event_id",
    "decision_id",
    "ts",
    "unit_id",
    "experiment",
    "experiment_version",
    "placement",
    "variant",
    "propensity",
    "policy",
    "policy_version",
    "reason",
    "holdout",
    "context",
    "campaign",
    "send_at",
    "slot",
    "item",
    "candidates",
)
OUTCOME_COLUMNS: Final = (
    "event_id",
    "ts",
    "decision_id",
    "unit_id",
    "experiment",
    "type",
    "value",
    "properties",
    "slot",
    "item",
)
AUDIT_COLUMNS: Final = (
    "event_id",
    "ts",
    "actor",
    "action",
    "entity",
    "entity_key",
    "version",
    "detail",
)
COLUMNS: Final[dict[Table, tuple[str, ...]]] = {
    "exposures": EXPOSURE_COLUMNS,
    "outcomes": OUTCOME_COLUMNS,
    "audit": AUDIT_COLUMNS,
}

# Inserts travel as JSONCompactEachRow (one JSON array per row, in ``COLUMNS`` order), encoded by
# msgspec in C: clickhouse-connect's Native serialisation runs in Python, holding the GIL for
# about 35 us per exposure row — time taken from the event loop that serves decisions.
INSERT_FORMAT: Final = "JSONCompactEachRow"
# DateTime64(3) columns by position: rows carry epoch milliseconds, the text format takes seconds
# (a decimal fraction parses exactly to the millisecond; a bare integer would read as seconds).
_TIME_COLUMNS: Final[dict[Table, tuple[int, ...]]] = {
    table: tuple(i for i, name in enumerate(columns) if name in ("ts", "send_at"))
    for table, columns in COLUMNS.items()
}
_json = msgspec.json.Encoder()


def encode_rows(table: Table, rows: Sequence[Sequence[object]]) -> bytes:
    """Rows (in ``COLUMNS[table]`` order, times as integer epoch ms) as an ``INSERT_FORMAT`` body.

    UUIDs encode as their text, dicts as JSON objects (``Map``), None as null (``Nullable``).
    Exposures given as :class:`~event_log.rows.EventRows` are encoded from the events
    themselves (one tuple each, times converted as they are read: about half the CPU).
    """
    if table == "exposures" and isinstance(rows, EventRows):
        return _encode_exposures(cast(Sequence[Exposure], rows.events))
    times = _TIME_COLUMNS[table]
    converted: list[list[object]] = []
    append = converted.append
    for row in rows:
        values = list(row)
        for i in times:
            value = values[i]
            if type(value) is int:
                values[i] = value / 1000
        append(values)
    # One C call for every line (not one encode per row and a join): 0.8 instead of 1.3 us a
    # row; encode_lines ends each line with a newline, the body has none after the last.
    return _json.encode_lines(converted)[:-1]


def _encode_exposures(events: Sequence[Exposure]) -> bytes:
    """``encode_rows("exposures", [e.row() for e in events])``, without the row tuples."""
    rows = [
        (
            e.event_id, e.decision_id, e.ts_ms / 1000, e.unit_id, e.experiment,
            e.experiment_version, e.placement, e.variant, e.propensity, e.policy,
            e.policy_version, e.reason, 1 if e.holdout else 0, e.context, e.campaign,
            None if e.send_at_ms is None else e.send_at_ms / 1000, e.slot, e.item, e.candidates,
        )
        for e in events
    ]  # fmt: skip
    return _json.encode_lines(rows)[:-1]


_TABLE_SETTINGS = "SETTINGS non_replicated_deduplication_window = 10000"

CREATE_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32,
    applied_at DateTime DEFAULT now()
) ENGINE = MergeTree ORDER BY version
"""

# Append-only list: (version, statement). Never edit an applied entry; add a new one.
MIGRATIONS: Final[tuple[tuple[int, str], ...]] = (
    (
        1,
        f"""
CREATE TABLE IF NOT EXISTS exposures (
    event_id UUID,
    decision_id String,
    ts DateTime64(3, 'UTC'),
    unit_id String,
    experiment LowCardinality(String),
    experiment_version UInt32,
    placement LowCardinality(String),
    variant LowCardinality(String),
    propensity Float64,
    policy LowCardinality(String),
    policy_version String,
    reason LowCardinality(String),
    holdout UInt8,
    context Map(String, String),
    campaign String DEFAULT '',
    send_at Nullable(DateTime64(3, 'UTC'))
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (experiment, unit_id, event_id)
{_TABLE_SETTINGS}
""",
    ),
    (
        2,
        f"""
CREATE TABLE IF NOT EXISTS outcomes (
    event_id UUID,
    ts DateTime64(3, 'UTC'),
    decision_id String,
    unit_id String,
    experiment LowCardinality(String),
    type LowCardinality(String),
    value Float64,
    properties Map(String, String)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (unit_id, type, event_id)
{_TABLE_SETTINGS}
""",
    ),
    (
        3,
        f"""
CREATE TABLE IF NOT EXISTS audit (
    event_id UUID,
    ts DateTime64(3, 'UTC'),
    actor String,
    action LowCardinality(String),
    entity LowCardinality(String),
    entity_key String,
    version UInt32,
    detail String
) ENGINE = ReplacingMergeTree
ORDER BY (entity, entity_key, ts, event_id)
{_TABLE_SETTINGS}
""",
    ),
    # Ranked slates: one exposure per slot, and outcomes that name the slot (or item) earning
    # them. -1 / '' on every row that is not about a slate.
    (
        4,
        """
ALTER TABLE exposures ADD COLUMN IF NOT EXISTS slot Int16 DEFAULT -1,
    ADD COLUMN IF NOT EXISTS item String DEFAULT ''
""",
    ),
    (
        5,
        """
ALTER TABLE outcomes ADD COLUMN IF NOT EXISTS slot Int16 DEFAULT -1,
    ADD COLUMN IF NOT EXISTS item String DEFAULT ''
""",
    ),
    # How many items a slate's slots were drawn from (what "random order" is evaluated
    # against off-policy); 0 on every row that is not about a slate.
    (
        6,
        """
ALTER TABLE exposures ADD COLUMN IF NOT EXISTS candidates UInt16 DEFAULT 0
""",
    ),
)

CLUSTER_NAME: Final = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
"""A cluster name (as a bare identifier in DDL and in ``Distributed``'s first argument)."""

SHARDING_KEYS: Final[dict[str, str]] = {
    "exposures": "cityHash64(unit_id)",
    "outcomes": "cityHash64(unit_id)",
    "audit": "cityHash64(event_id)",
}
"""How a cluster's ``Distributed`` table spreads a table's rows over shards.

A replayed event carries the same ``event_id`` and ``unit_id``, so it reaches the shard of its
first copy and collapses there. Outcomes reported by decision id alone (``unit_id = ''``) all go
to one shard."""

_CREATE_TABLE = re.compile(r"\A\s*CREATE TABLE IF NOT EXISTS (\w+) \(")
_ALTER_TABLE = re.compile(r"\A\s*ALTER TABLE (\w+) (ADD|DROP|MODIFY|RENAME|COMMENT) COLUMN ")
_ENGINE = "ENGINE = ReplacingMergeTree\n"


def cluster_migration(version: int, statement: str, cluster: str, database: str) -> tuple[str, ...]:
    """A single-node migration rewritten for a replicated, sharded cluster (run in order).

    ``CREATE TABLE t`` becomes ``t_local`` (``ReplicatedReplacingMergeTree`` under
    ``/clickhouse/tables/{shard}/<database>/t_local``, replica ``{replica}``: the two macros
    each server's config defines) and ``t``, a ``Distributed`` table over it sharded by
    :data:`SHARDING_KEYS`. Replicated tables deduplicate inserts by token through Keeper,
    within ``replicated_deduplication_window`` blocks. ``ALTER TABLE t ... COLUMN`` alters both.

    Raises:
        ValueError: a bad cluster or database name, or a statement with no cluster form (a new
            kind of migration must say how it runs on a cluster).
    """
    for name, value in (("cluster", cluster), ("database", database)):
        if not CLUSTER_NAME.match(value):
            raise ValueError(f"{name} name {value!r} must be letters, digits and underscores")
    on = f"ON CLUSTER {cluster}"
    created = _CREATE_TABLE.match(statement)
    if created is not None and _ENGINE in statement:
        table = created.group(1)
        local = f"{table}_local"
        path = f"/clickhouse/tables/{{shard}}/{database}/{local}"
        body = statement[created.end() :]
        body = body.replace(
            _ENGINE, f"ENGINE = ReplicatedReplacingMergeTree('{path}', '{{replica}}')\n"
        ).replace("non_replicated_deduplication_window", "replicated_deduplication_window")
        key = SHARDING_KEYS.get(table, "cityHash64(event_id)")
        return (
            f"CREATE TABLE IF NOT EXISTS {database}.{local} {on} ({body}",
            f"CREATE TABLE IF NOT EXISTS {database}.{table} {on} AS {database}.{local}\n"
            f"ENGINE = Distributed({cluster}, {database}, {local}, {key})",
        )
    altered = _ALTER_TABLE.match(statement)
    if altered is not None:
        table = altered.group(1)
        rest = statement[altered.end(1) :]
        return (
            f"ALTER TABLE {database}.{table}_local {on}{rest}",
            f"ALTER TABLE {database}.{table} {on}{rest}",
        )
    raise ValueError(f"migration {version} has no cluster form: {statement.strip()[:60]!r}")


def cluster_migrations(cluster: str, database: str) -> tuple[tuple[int, tuple[str, ...]], ...]:
    """Every migration's statements for ``cluster`` (see :func:`cluster_migration`)."""
    return tuple(
        (version, cluster_migration(version, statement, cluster, database))
        for version, statement in MIGRATIONS
    )


CLUSTER_INSERT_SETTINGS: Final = {"insert_distributed_sync": 1}
"""An insert into a ``Distributed`` table returns once every shard stored its part (with the
batch's token), not when it is queued on the receiving node: a failure is seen and retried."""

APPLIED_MIGRATIONS = "SELECT version FROM schema_migrations"
RECORD_MIGRATION = "INSERT INTO schema_migrations (version) VALUES ({version:UInt32})"

COUNT_ROWS = "SELECT count() FROM {table:Identifier} FINAL"
COUNT_DISTINCT_EVENTS = "SELECT count(), uniqExact(event_id) FROM {table:Identifier}"

# Warm start: logged decisions of one experiment (newest first) and the outcomes after them.
# A slate's slot rows are not one-variant decisions (their propensities are conditional on the
# slots above): they are read as slates, by WARM_START_SLATES.
WARM_START_EXPOSURES = """
SELECT decision_id, unit_id, variant, propensity, context, toUnixTimestamp64Milli(ts) AS ts_ms
FROM exposures FINAL
WHERE experiment = {experiment:String}
  AND reason IN ('policy', 'split') AND holdout = 0 AND propensity > 0 AND slot < 0
ORDER BY ts DESC
LIMIT {limit:UInt32}
"""
WARM_START_SLATES = """
SELECT decision_id, slot, item, propensity, context, toUnixTimestamp64Milli(ts) AS ts_ms
FROM exposures FINAL
WHERE experiment = {experiment:String}
  AND reason = 'policy' AND holdout = 0 AND propensity > 0 AND slot >= 0
ORDER BY ts DESC, decision_id, slot
LIMIT {limit:UInt32}
"""
WARM_START_SLOT_OUTCOMES = """
SELECT decision_id, slot, item, type, value, toUnixTimestamp64Milli(ts) AS ts_ms
FROM outcomes FINAL
WHERE type IN {types:Array(String)}
  AND ts >= fromUnixTimestamp64Milli({since_ms:Int64})
  AND (experiment = '' OR experiment = {experiment:String})
  AND decision_id != '' AND (slot >= 0 OR item != '')
"""
WARM_START_OUTCOMES = """
SELECT decision_id, unit_id, type, value, toUnixTimestamp64Milli(ts) AS ts_ms
FROM outcomes FINAL
WHERE type IN {types:Array(String)}
  AND ts >= fromUnixTimestamp64Milli({since_ms:Int64})
  AND (experiment = '' OR experiment = {experiment:String})
"""

# Data rights (decision_api.privacy.data_rights): a table holds personal data when it has a unit_id
# column;
# rows are the unit's by unit_id (raw or pseudonym) or, where the table has one, by the decision
# ids of the unit's exposures (outcomes reported by decision id carry no unit id).
UNIT_TABLES = """
SELECT table, countIf(name = 'decision_id') > 0 AS by_decision FROM system.columns
WHERE database = currentDatabase() AND name IN ('unit_id', 'decision_id')
GROUP BY table HAVING countIf(name = 'unit_id') > 0
ORDER BY table
"""
_UNIT_ROWS = "unit_id IN {units:Array(String)}"
_UNIT_OR_DECISION_ROWS = (
    "(unit_id IN {units:Array(String)} OR decision_id IN {decisions:Array(String)})"
)
COUNT_UNIT_ROWS = f"SELECT count() FROM {{table:Identifier}} WHERE {_UNIT_ROWS}"
COUNT_UNIT_OR_DECISION_ROWS = (
    f"SELECT count() FROM {{table:Identifier}} WHERE {_UNIT_OR_DECISION_ROWS}"
)
DELETE_UNIT_ROWS = (
    f"ALTER TABLE {{table:Identifier}} DELETE WHERE {_UNIT_ROWS} SETTINGS mutations_sync = 2"
)
DELETE_UNIT_OR_DECISION_ROWS = (
    f"ALTER TABLE {{table:Identifier}} DELETE WHERE {_UNIT_OR_DECISION_ROWS} "
    "SETTINGS mutations_sync = 2"
)
UNIT_DECISION_IDS = (
    "SELECT DISTINCT decision_id FROM exposures WHERE unit_id IN {units:Array(String)}"
)
UNIT_EXPOSURES = f"""
SELECT {", ".join(EXPOSURE_COLUMNS[:14])} FROM exposures FINAL
WHERE unit_id IN {{units:Array(String)}}
ORDER BY ts, event_id LIMIT {{limit:UInt32}}
"""
UNIT_OUTCOMES = f"""
SELECT {", ".join(OUTCOME_COLUMNS[:8])} FROM outcomes FINAL
WHERE {_UNIT_OR_DECISION_ROWS}
ORDER BY ts, event_id LIMIT {{limit:UInt32}}
"""
