"""The batching writer and the event log: dedup tokens, spooling while down, ordered replay."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest

from decision_api.metrics import Metrics
from event_log.rows import Exposure, Outcome, Table
from event_log.spool import Spool
from event_log.store import ClickHouseEventLog
from event_log.writer import MAX_STRIKES, EventWriter, now_ms
from tailor_contract.errors import EventLogUnavailable


def exposure(i: int, decision_id: str = "d") -> Exposure:
    """A distinct exposure event."""
    return Exposure(
        event_id=uuid.uuid4(),
        decision_id=f"{decision_id}-{i}",
        ts_ms=now_ms(),
        unit_id=f"u-{i}",
        experiment="hero",
        experiment_version=2,
        placement="home",
        variant="b",
        propensity=0.5,
        policy="fixed",
        policy_version="",
        reason="split",
        holdout=False,
        context={"i": str(i)},
    )


def outcome(i: int) -> Outcome:
    """A distinct outcome event."""
    return Outcome(
        event_id=uuid.uuid4(),
        ts_ms=now_ms(),
        decision_id=f"d-{i}",
        unit_id=f"u-{i}",
        experiment="hero",
        type="purchase",
        value=float(i),
        properties={},
    )


class FlakyLog:
    """A real event log behind a switch: while ``down``, inserts raise and pings fail.

    Records the (table, token, decision ids) of every insert that reached the real log, in order.
    """

    def __init__(self, real: ClickHouseEventLog) -> None:
        self.real = real
        self.down = False
        self.failed_inserts = 0
        self.inserted: list[tuple[str, str, list[str]]] = []

    def insert(self, table: Table, rows: Sequence[tuple[object, ...]], token: str) -> None:
        """Insert through to the real log, unless down."""
        if self.down:
            self.failed_inserts += 1
            raise EventLogUnavailable("injected: event log down")
        self.real.insert(table, rows, token)
        self.inserted.append((table, token, [str(r[1] if table == "exposures" else r[2])
                                             for r in rows]))  # fmt: skip

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Queries go straight to the real log."""
        return self.real.query(sql, parameters)

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Statements go straight to the real log."""
        self.real.command(sql, parameters)

    def ping(self) -> bool:
        """False while down."""
        return not self.down and self.real.ping()

    def close(self) -> None:
        """Nothing to release here (the fixture closes the real log)."""


def count(log: ClickHouseEventLog, table: str, final: bool = False) -> int:
    """Rows in a table (``FINAL`` collapses rows with the same event id)."""
    ((n,),) = log.query(f"SELECT count() FROM {table}{' FINAL' if final else ''}")
    return int(n)


class Parts(NamedTuple):
    """A writer and what it is built from."""

    writer: EventWriter
    flaky: FlakyLog
    spool: Spool
    metrics: Metrics


@pytest.fixture
def parts(event_log: ClickHouseEventLog, tmp_path: Path) -> Parts:
    """A writer over a switchable wrapper of this test's real chdb database (flushed by hand)."""
    flaky = FlakyLog(event_log)
    spool = Spool(tmp_path / "spool", max_bytes=64 << 20, fsync="batch")
    metrics = Metrics()
    writer = EventWriter(
        flaky, spool, batch_size=10_000, flush_interval_s=60.0, max_buffered=100_000,
        metrics=metrics,
    )  # fmt: skip
    return Parts(writer, flaky, spool, metrics)


def test_migrate_is_idempotent(event_log: ClickHouseEventLog) -> None:
    """Migrating an up-to-date database applies nothing and keeps the tables."""
    assert event_log.migrate() == []
    tables = {r[0] for r in event_log.query("SHOW TABLES")}
    assert {"exposures", "outcomes", "audit", "schema_migrations"} <= tables


def test_replayed_batch_token_does_not_double_count(event_log: ClickHouseEventLog) -> None:
    """The same batch inserted twice with its token is stored once; a new token is not deduped."""
    rows = [exposure(i).row() for i in range(50)]
    event_log.insert("exposures", rows, "token-1")
    event_log.insert("exposures", rows, "token-1")
    assert count(event_log, "exposures") == 50
    # Without the token the insert goes through, and the event ids still collapse under FINAL.
    event_log.insert("exposures", rows, "token-2")
    assert count(event_log, "exposures") == 100
    assert count(event_log, "exposures", final=True) == 50


async def test_writer_flushes_batches_per_table(parts: Parts) -> None:
    """A flush writes one batch per table, and close() writes whatever is still buffered."""
    writer, flaky = parts.writer, parts.flaky
    writer.submit_many([exposure(0), outcome(0), exposure(1)])
    assert writer.buffered == 3
    await writer.flush()
    assert writer.buffered == 0
    assert [(t, ids) for t, _, ids in flaky.inserted] == [
        ("exposures", ["d-0", "d-1"]),
        ("outcomes", ["d-0"]),
    ]
    writer.submit(exposure(2))
    await writer.close()
    assert count(flaky.real, "exposures") == 3
    assert count(flaky.real, "outcomes") == 1


async def test_writer_spools_while_down_and_replays_in_order(parts: Parts) -> None:
    """When inserts fail, batches go to disk in order; once the log is back they replay in order."""
    writer, flaky = parts.writer, parts.flaky
    flaky.down = True
    writer.submit_many([exposure(i, "first") for i in range(3)])
    await writer.flush()
    assert flaky.failed_inserts == 1
    assert not writer.healthy
    # Later batches go straight to the spool behind the first one (no insert attempted).
    writer.submit_many([exposure(i, "second") for i in range(2)])
    writer.submit(outcome(7))
    await writer.flush()
    assert flaky.failed_inserts == 1
    assert await writer.replay() is False  # still down: nothing leaves the spool
    assert flaky.inserted == []
    assert count(flaky.real, "exposures") == 0

    flaky.down = False
    assert await writer.replay() is True
    assert writer.healthy
    assert [(t, ids) for t, _, ids in flaky.inserted] == [
        ("exposures", ["first-0", "first-1", "first-2"]),
        ("exposures", ["second-0", "second-1"]),
        ("outcomes", ["d-7"]),
    ]
    assert count(flaky.real, "exposures") == 5
    assert count(flaky.real, "outcomes") == 1
    assert parts.spool.size() == 0
    sample = parts.metrics.registry.get_sample_value
    assert sample("tailor_event_flush_errors_total", {"table": "exposures"}) == 1
    assert sample("tailor_events_written_total", {"table": "exposures"}) == 5
    await writer.close()


async def test_replay_after_a_crash_mid_replay_does_not_double_count(
    parts: Parts, tmp_path: Path
) -> None:
    """A spooled batch that reached the log before a crash is deduplicated when replayed again."""
    writer, flaky = parts.writer, parts.flaky
    flaky.down = True
    writer.submit_many([exposure(i, "crash") for i in range(4)])
    await writer.flush()
    spool = Spool(tmp_path / "copy", max_bytes=64 << 20, fsync="never")
    (segment,) = parts.spool.segments()
    (batch,) = parts.spool.read(segment)
    spool.append(batch)  # keep a copy of the spooled batch, as a crash would leave it
    flaky.down = False
    assert await writer.replay() is True
    (again,) = spool.read(spool.segments()[0])
    flaky.real.insert(again.table, [e.row() for e in again.events], again.token)
    assert count(flaky.real, "exposures") == 4
    spool.close()
    await writer.close()


class BrokenSlot:
    """Make a spool's slot unwritable by putting a file where its directory is (root ignores
    chmod), and put the directory back on ``restore()``."""

    def __init__(self, spool: Spool, aside: Path) -> None:
        self.slot, self.aside = spool.directory, aside

    def __enter__(self) -> BrokenSlot:
        self.slot.rename(self.aside)
        self.slot.write_bytes(b"")
        return self

    def restore(self) -> None:
        """Put the slot directory back."""
        self.slot.unlink()
        self.aside.rename(self.slot)

    def __exit__(self, *exc: object) -> None:
        if self.slot.is_file():
            self.restore()


async def test_a_failed_spool_write_loses_nothing_once_the_spool_is_back(
    parts: Parts, tmp_path: Path
) -> None:
    """With the log down and the spool unwritable, events are held in memory (not durable, not
    dropped); once the spool is back they are spooled, and once the log is back every one of
    them lands in the event log and the writer leaves spooling mode."""
    writer, flaky = parts.writer, parts.flaky
    flaky.down = True
    with BrokenSlot(parts.spool, tmp_path / "aside") as broken:
        writer.submit_many([exposure(i, "a") for i in range(100)])
        await writer.flush()
        assert writer.dropped == 0 and writer.buffered == 100
        assert not writer.durable
        writer.submit_many([exposure(i, "b") for i in range(50)])
        await writer.flush()
        await writer.replay()
        assert writer.dropped == 0 and writer.buffered == 150 and not writer.durable
        broken.restore()
    writer.submit_many([exposure(i, "c") for i in range(25)])
    await writer.flush()  # the spool takes everything again
    assert writer.durable and writer.buffered == 0
    flaky.down = False
    assert await writer.replay() is True
    assert writer.healthy
    writer.submit(exposure(0, "after"))
    await writer.flush()
    assert count(flaky.real, "exposures", final=True) == 176
    assert writer.dropped == 0
    assert parts.metrics.registry.get_sample_value("tailor_events_dropped_total") == 0
    await writer.close()


async def test_held_events_go_to_the_log_when_it_is_back_before_the_spool(
    parts: Parts, tmp_path: Path
) -> None:
    """Events held in memory while both stores failed reach the event log as soon as it is back,
    even if the spool is still unwritable: the writer retries the log and leaves spooling."""
    writer, flaky = parts.writer, parts.flaky
    flaky.down = True
    with BrokenSlot(parts.spool, tmp_path / "aside"):
        writer.submit_many([outcome(i) for i in range(40)])
        await writer.flush()
        assert not writer.durable
        flaky.down = False
        await writer.replay()  # nothing spooled: the writer stops spooling
        await writer.flush()
        assert writer.durable and writer.healthy and writer.buffered == 0
        assert count(flaky.real, "outcomes", final=True) == 40


async def test_events_beyond_the_memory_bound_are_dropped_and_counted(
    event_log: ClickHouseEventLog, tmp_path: Path
) -> None:
    """Held events count against max_buffered: what does not fit is dropped and counted, the
    rest is kept and written later."""
    flaky = FlakyLog(event_log)
    spool = Spool(tmp_path / "spool", max_bytes=64 << 20, fsync="batch")
    metrics = Metrics()
    writer = EventWriter(flaky, spool, batch_size=500, flush_interval_s=60.0, max_buffered=1000,
                         metrics=metrics)  # fmt: skip
    flaky.down = True
    with BrokenSlot(spool, tmp_path / "aside"):
        writer.submit_many([outcome(i) for i in range(800)])
        await writer.flush()
        writer.submit_many([outcome(i) for i in range(800, 1100)])
        assert writer.dropped == 100 and writer.buffered == 1000
        assert metrics.registry.get_sample_value("tailor_events_dropped_total") == 100
    flaky.down = False
    await writer.replay()
    await writer.flush()
    assert count(event_log, "outcomes", final=True) == 1000
    await writer.close()


async def test_a_batch_over_too_many_partitions_is_split_not_dead_lettered(parts: Parts) -> None:
    """A batch the real event log rejects (rows over more than 100 monthly partitions) is
    bisected after MAX_STRIKES tries: every row lands, nothing is dead-lettered."""
    writer, flaky = parts.writer, parts.flaky
    month_ms = 31 * 86400 * 1000
    spread = [msgspec.structs.replace(exposure(i, "old"), ts_ms=now_ms() - i * month_ms)
              for i in range(150)]  # fmt: skip
    writer.submit_many([exposure(i, "other") for i in range(20)] + spread)
    await writer.flush()
    assert not writer.healthy  # the log refused the batch: spooled
    for _ in range(MAX_STRIKES):
        await writer.replay()
    assert writer.healthy
    assert count(flaky.real, "exposures", final=True) == 170
    assert writer.quarantined == 0
    await writer.close()
