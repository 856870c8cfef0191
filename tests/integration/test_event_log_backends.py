"""The event log on both backends — embedded chdb and clickhouse-connect over HTTP — same tests.

The HTTP backend talks to chdb behind the test front (``tests/support/clickhouse_front.py``), a
separate process with its own data directory, exactly as it would talk to a ClickHouse server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
import pytest
from litestar.testing import AsyncTestClient

from decision_api.app import create_app
from decision_api.metrics import Metrics
from decision_api.services import Services
from decision_api.settings import Settings
from event_log.rows import AuditEntry, Exposure, Outcome, Table
from event_log.spool import Spool
from event_log.sql import COLUMNS, MIGRATIONS
from event_log.store import ClickHouseEventLog, open_event_log
from event_log.writer import EventWriter
from tailor_contract.errors import EventLogUnavailable
from tests.support.clickhouse_front import running_clickhouse_front

TS_MS = 1_772_600_767_250  # 2026-03-04T05:06:07.250Z
ALL_MIGRATIONS = [version for version, _ in MIGRATIONS]


@pytest.fixture(scope="module")
def front_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ClickHouse HTTP front over its own chdb directory, for the whole module."""
    with running_clickhouse_front(tmp_path_factory.mktemp("front") / "chdb") as dsn:
        yield dsn


def with_database(dsn: str, database: str) -> str:
    """The DSN with its path set to ``database``."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(params=["chdb", "http"])
def log_url(request: pytest.FixtureRequest, chdb_dir: Path, namespace: str) -> str:
    """This test's own database on one backend."""
    if request.param == "chdb":
        return f"chdb://{chdb_dir}?database={namespace}"
    dsn: str = request.getfixturevalue("front_dsn")
    return with_database(dsn, namespace)


@pytest.fixture
def log(log_url: str) -> Iterator[ClickHouseEventLog]:
    """An opened (not yet migrated) event log on a fresh database."""
    opened = open_event_log(log_url)
    try:
        yield opened
    finally:
        opened.close()


def exposure(i: int) -> Exposure:
    """A distinct exposure with every column set."""
    return Exposure(
        event_id=uuid.uuid4(),
        decision_id=f"d-{i}",
        ts_ms=TS_MS + i,
        unit_id=f"ü-{i}",
        experiment="hero",
        experiment_version=3,
        placement="home",
        variant=["control", "spring"][i % 2],
        propensity=0.25 + i / 100,
        policy="fixed",
        policy_version="v7",
        reason="split",
        holdout=i % 3 == 0,
        context={"device": "mobile", "quote'": "it's \\ ok", "i": str(i)},
        campaign="spring-sale" if i % 2 else "",
        send_at_ms=TS_MS + 3_600_000 if i % 2 else None,
        slot=i - 1,
        item=f"item-{i}" if i else "",
        candidates=10 * i,
    )


def test_migrate_creates_tables_and_is_idempotent(log: ClickHouseEventLog) -> None:
    """The first migrate applies every migration; running it again applies none."""
    assert log.migrate() == ALL_MIGRATIONS
    assert log.migrate() == []
    tables = {row[0] for row in log.query("SHOW TABLES")}
    assert {"exposures", "outcomes", "audit", "schema_migrations"} <= tables
    columns = [row[0] for row in log.query("SELECT name FROM system.columns WHERE "
                                           "database = currentDatabase() AND table = 'exposures' "
                                           "ORDER BY position")]  # fmt: skip
    assert tuple(columns) == COLUMNS["exposures"]


def test_exposures_round_trip_every_column(log: ClickHouseEventLog) -> None:
    """Exposure rows come back with every value intact (UUIDs, ms times, maps, nulls, quotes)."""
    log.migrate()
    events = [exposure(i) for i in range(6)]
    log.insert("exposures", [e.row() for e in events], uuid.uuid4().hex)
    rows = log.query(
        "SELECT event_id, decision_id, toUnixTimestamp64Milli(ts), unit_id, experiment, "
        "experiment_version, placement, variant, propensity, policy, policy_version, reason, "
        "holdout, context, campaign, toUnixTimestamp64Milli(send_at), slot, item, candidates "
        "FROM exposures ORDER BY decision_id"
    )
    expected = [(*e.row()[:12], int(e.holdout), e.context, e.campaign, e.send_at_ms, e.slot,
                 e.item, e.candidates) for e in events]  # fmt: skip
    assert [tuple(r) for r in rows] == expected


def test_outcomes_and_audit_round_trip(log: ClickHouseEventLog) -> None:
    """Outcome and audit rows come back intact."""
    log.migrate()
    outcome = Outcome(event_id=uuid.uuid4(), ts_ms=TS_MS, decision_id="d-1", unit_id="u-1",
                      experiment="hero", type="purchase", value=42.5,
                      properties={"sku": "A-1"}, slot=2, item="sku-9")  # fmt: skip
    audit = AuditEntry(event_id=uuid.uuid4(), ts_ms=TS_MS, actor="key_abc", action="start",
                       entity="experiment", entity_key="hero", version=2,
                       detail='{"key":"hero"}')  # fmt: skip
    log.insert("outcomes", [outcome.row()], "t-outcome")
    log.insert("audit", [audit.row()], "t-audit")
    (o,) = log.query("SELECT event_id, toUnixTimestamp64Milli(ts), decision_id, unit_id, "
                     "experiment, type, value, properties, slot, item FROM outcomes")  # fmt: skip
    assert tuple(o) == outcome.row()
    (a,) = log.query("SELECT event_id, toUnixTimestamp64Milli(ts), actor, action, entity, "
                     "entity_key, version, detail FROM audit")  # fmt: skip
    assert tuple(a) == audit.row()


def test_dedup_token_drops_a_replayed_batch(log: ClickHouseEventLog) -> None:
    """A batch re-inserted with its token is dropped; under a new token only FINAL collapses it."""
    log.migrate()
    rows = [exposure(i).row() for i in range(20)]
    log.insert("exposures", rows, "batch-1")
    log.insert("exposures", rows, "batch-1")
    assert log.query("SELECT count() FROM exposures") == [(20,)]
    log.insert("exposures", rows, "batch-2")
    assert log.query("SELECT count() FROM exposures") == [(40,)]
    assert log.query("SELECT count() FROM exposures FINAL") == [(20,)]


class LostAnswerLog:
    """An event log whose first insert is stored but answers with an error (a lost response)."""

    def __init__(self, real: ClickHouseEventLog) -> None:
        self.real = real
        self.tokens: list[str] = []

    def insert(self, table: Table, rows: Sequence[tuple[object, ...]], token: str) -> None:
        """Insert through; the first call then fails as a timed-out answer would."""
        self.real.insert(table, rows, token)
        self.tokens.append(token)
        if len(self.tokens) == 1:
            raise EventLogUnavailable("injected: answer lost after the insert")

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Straight to the real log."""
        return self.real.query(sql, parameters)

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Straight to the real log."""
        self.real.command(sql, parameters)

    def ping(self) -> bool:
        """The real log's answer."""
        return self.real.ping()

    def close(self) -> None:
        """The fixture closes the real log."""


async def test_a_batch_retried_after_a_lost_answer_is_stored_once(
    log: ClickHouseEventLog, tmp_path: Path
) -> None:
    """The writer spools a batch whose insert answered with an error although it was stored,
    replays it with the same token, and the table holds it once (no FINAL needed)."""
    log.migrate()
    lossy = LostAnswerLog(log)
    spool = Spool(tmp_path / "spool", max_bytes=16 << 20, fsync="never")
    writer = EventWriter(lossy, spool, batch_size=10_000, flush_interval_s=60.0,
                         max_buffered=100_000, metrics=Metrics())  # fmt: skip
    writer.submit_many(exposure(i) for i in range(50))
    await writer.flush()
    assert log.query("SELECT count() FROM exposures") == [(50,)]  # stored, though it "failed"
    assert await writer.replay(max_segments=None)
    assert len(lossy.tokens) == 2 and lossy.tokens[0] == lossy.tokens[1]
    assert log.query("SELECT count() FROM exposures") == [(50,)]


def test_cluster_inserts_carry_their_token_and_wait_for_the_shards(
    front_dsn: str, namespace: str
) -> None:
    """Through the HTTP front, an event log configured for a cluster inserts with the batch's
    token and ``insert_distributed_sync`` (accepted as a real setting): a retry is stored once."""
    single = open_event_log(with_database(front_dsn, namespace))
    try:
        single.migrate()  # chdb has no cluster to run ON CLUSTER DDL: single-node tables
    finally:
        single.close()
    client = clickhouse_connect.get_client(dsn=with_database(front_dsn, namespace))
    log = ClickHouseEventLog(client, embedded=False, cluster="tailor_test", database=namespace)
    try:
        rows = [exposure(i).row() for i in range(30)]
        log.insert("exposures", rows, "cluster-batch-1")
        log.insert("exposures", rows, "cluster-batch-1")  # the retry
        assert log.query("SELECT count() FROM exposures") == [(30,)]
        (setting,) = log.query(
            "SELECT value FROM system.settings WHERE name = 'insert_distributed_sync'"
        )
        assert setting == ("0",)  # per request only: the front restored the default after it
    finally:
        log.close()


def test_query_with_parameters(log: ClickHouseEventLog) -> None:
    """Server-side parameters bind strings, integers, arrays and times, with quoting handled."""
    log.migrate()
    events = [exposure(i) for i in range(6)]
    log.insert("exposures", [e.row() for e in events], "params")
    sql = (
        "SELECT decision_id FROM exposures WHERE variant = {variant:String} "
        "AND experiment_version >= {version:UInt32} AND event_id IN {ids:Array(UUID)} "
        "AND ts >= {since:DateTime64(3, 'UTC')} AND context[{key:String}] = {value:String} "
        "ORDER BY decision_id"
    )
    params = {
        "variant": "spring",
        "version": 3,
        "ids": [str(e.event_id) for e in events[:4]],
        "since": datetime.fromtimestamp((TS_MS + 1) / 1000, UTC),
        "key": "quote'",
        "value": "it's \\ ok",
    }
    assert log.query(sql, params) == [("d-1",), ("d-3",)]


def test_concurrent_inserts_and_queries(log: ClickHouseEventLog) -> None:
    """One event log serves inserts and queries from several threads at once (writer + pings)."""
    log.migrate()

    def insert(i: int) -> None:
        log.insert("exposures", [exposure(i).row()], f"concurrent-{i}")

    def ping(_: int) -> bool:
        return log.ping() and log.query("SELECT count() FROM exposures")[0][0] >= 0

    with ThreadPoolExecutor(max_workers=6) as pool:
        inserts = [pool.submit(insert, i) for i in range(30)]
        pings = [pool.submit(ping, i) for i in range(30)]
        for future in inserts:
            future.result()
        assert all(future.result() for future in pings)
    assert log.query("SELECT count() FROM exposures") == [(30,)]


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("SELECT * FROM no_such_table", r"\Aevent log error: code 60 \(UNKNOWN_TABLE\)\Z"),
        ("SELEC 1", r"\Aevent log error: code 62 \(SYNTAX_ERROR\)\Z"),
    ],
)
def test_errors_surface_as_event_log_unavailable(
    log: ClickHouseEventLog, sql: str, match: str
) -> None:
    """Engine errors reach callers as EventLogUnavailable with ClickHouse's error code and name
    only: its message quotes the query (and can quote bound values), which 503 bodies must not."""
    with pytest.raises(EventLogUnavailable, match=match):
        log.query(sql)
    assert log.ping() is True


def test_errors_do_not_quote_bound_values(log: ClickHouseEventLog) -> None:
    """A value ClickHouse quotes in its error message (a unit id it could not parse) is not in
    the EventLogUnavailable that reaches the API's 503 answers."""
    with pytest.raises(EventLogUnavailable) as raised:
        log.query("SELECT toUInt64({unit:String})", {"unit": "leaky-unit-17"})
    assert "leaky-unit-17" not in str(raised.value)
    assert "SELECT" not in str(raised.value)
    assert str(raised.value) == "event log error: code 6 (CANNOT_PARSE_TEXT)"


def test_unreachable_server_is_event_log_unavailable() -> None:
    """A URL with nothing listening fails to open with EventLogUnavailable, not a raw error."""
    from decision_api.redis_server import free_port

    with pytest.raises(EventLogUnavailable, match="cannot reach ClickHouse"):
        open_event_log(f"http://default:@127.0.0.1:{free_port()}/tailor")


async def test_app_logs_exposures_through_the_configured_backend(
    log_url: str, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    """With TAILOR_EVENT_LOG_URL on this backend, a decision's exposure row lands there."""
    settings = Settings.from_env(
        {
            "TAILOR_EVENT_LOG_URL": log_url,
            "TAILOR_EVENT_LOG_FLUSH_INTERVAL_S": "0.05",
            "TAILOR_EVENT_LOG_SPOOL_DIR": str(tmp_path / "spool"),
            "TAILOR_REDIS_URL": redis_url,
            "TAILOR_REDIS_KEY_PREFIX": namespace,
            "TAILOR_DATA_DIR": str(tmp_path),
            "TAILOR_LOG_FORMAT": "console",
            "TAILOR_LOG_LEVEL": "warning",
        }
    )
    assert settings.event_log.url == log_url
    async with AsyncTestClient(app=create_app(settings)) as client:
        spec = {"key": "hero", "placement": "home", "variants": [{"key": "a"}, {"key": "b"}],
                "default_variant": "a"}  # fmt: skip
        assert (await client.post("/v1/experiments", json=spec)).status_code == 201
        assert (await client.post("/v1/experiments/hero/start")).status_code == 200
        decided = await client.post("/v1/decide", json={"unit_id": "u-1", "placements": ["home"]})
        decision = decided.json()
        services: Services = client.app.state.services
        sql = (
            "SELECT unit_id, experiment, variant, reason FROM exposures "
            "WHERE decision_id = {d:String}"
        )
        deadline = time.monotonic() + 10
        rows: list[tuple[object, ...]] = []
        while not rows and time.monotonic() < deadline:
            rows = await asyncio.to_thread(
                services.event_log.query, sql, {"d": decision["decision_id"]}
            )
            await asyncio.sleep(0.02)
        assert rows == [("u-1", "hero", decision["decisions"][0]["variant"], "split")]
        audit = await asyncio.to_thread(services.event_log.query,
                                        "SELECT action FROM audit ORDER BY version")  # fmt: skip
        assert [a for (a,) in audit] == ["create", "start"]
