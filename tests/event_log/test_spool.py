"""The disk spool and the writer's failure rules: outages, order, replay, shutdown, poison, slots.

The event log here is a small in-memory fake (these are the writer's own rules; the real
backends are exercised by the multi-process tests in tests/integration/test_failures.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from decision_api.metrics import Metrics
from event_log import spool as spool_module
from event_log.rows import Event, Outcome, Table
from event_log.spool import Spool, SpooledBatch, SpoolFull
from event_log.writer import MAX_STRIKES, EventWriter
from tailor_contract.errors import EventLogUnavailable


class FakeLog:
    """An event log that can be down, slow, or reject one token; dedups by token."""

    def __init__(self) -> None:
        self.down = False
        self.delay_s = 0.0
        self.poison: set[str] = set()
        self.rows: list[tuple[Table, tuple[object, ...]]] = []
        self.tokens: list[str] = []
        self._lock = threading.Lock()

    def insert(self, table: Table, rows: Sequence[tuple[object, ...]], token: str) -> None:
        """Store rows unless down, poisoned, or the token was seen."""
        time.sleep(self.delay_s)
        if self.down:
            raise EventLogUnavailable("down (test)")
        if any(str(r[0]) in self.poison for r in rows):
            raise EventLogUnavailable("Code: 53. Type mismatch (test)")
        with self._lock:
            if token in self.tokens:
                return
            self.tokens.append(token)
            self.rows.extend((table, r) for r in rows)

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[Any]:
        """Unused."""
        return []

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Unused."""

    def ping(self) -> bool:
        """Up unless down."""
        return not self.down

    def close(self) -> None:
        """Nothing to release."""


def outcome(n: int, unit: str = "u") -> Outcome:
    """A numbered outcome (its value carries the number, to check order)."""
    return Outcome(
        event_id=uuid.uuid4(), ts_ms=n, decision_id="", unit_id=unit, experiment="e",
        type="click", value=float(n), properties={},
    )  # fmt: skip


def writer_for(log: FakeLog, directory: Path, **kwargs: Any) -> EventWriter:
    """A writer with a small batch and a fast flush interval."""
    spool = Spool(directory, kwargs.pop("max_bytes", 1 << 24), "batch")
    return EventWriter(
        log, spool, batch_size=kwargs.pop("batch_size", 50),
        flush_interval_s=kwargs.pop("interval", 0.01), max_buffered=10_000,
        metrics=kwargs.pop("metrics", None) or Metrics(),
    )  # fmt: skip


def values(log: FakeLog) -> list[float]:
    """The outcome numbers stored, in insert order."""
    return [float(r[6]) for _, r in log.rows]  # type: ignore[arg-type]


async def until(predicate: Any, timeout: float = 5.0) -> None:
    """Wait for a predicate to hold."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_outage_spools_and_replays_in_order(tmp_path: Path) -> None:
    """Events accepted during an outage are spooled and replayed in order, each exactly once."""
    log = FakeLog()
    writer = writer_for(log, tmp_path)
    writer.start()
    for n in range(100):
        writer.submit(outcome(n))
    await until(lambda: len(log.rows) == 100)
    log.down = True
    for n in range(100, 400):
        writer.submit(outcome(n))
        if n % 50 == 0:
            await asyncio.sleep(0.02)
    await until(lambda: writer.buffered == 0 and not writer.healthy)
    assert len(log.rows) == 100
    log.down = False
    await until(lambda: writer.healthy and len(log.rows) == 400)
    await writer.close()
    assert values(log) == [float(n) for n in range(400)]
    assert len(set(log.tokens)) == len(log.tokens)


async def test_replay_after_partial_replay_does_not_duplicate(tmp_path: Path) -> None:
    """A segment replayed twice (crash between insert and delete) stores its rows once: the
    batches keep their deduplication tokens."""
    log = FakeLog()
    spool = Spool(tmp_path, 1 << 24, "batch")
    batches = [SpooledBatch(table="outcomes", token=f"t{i}", events=[outcome(i)]) for i in range(3)]
    for batch in batches:
        spool.append(batch)
    for batch in spool.read(spool.segments()[0])[:2]:  # inserted, then "crashed"
        log.insert(batch.table, [e.row() for e in batch.events], batch.token)
    spool.close()
    writer = writer_for(log, tmp_path)
    assert not writer.healthy  # leftovers found at start
    await writer.close()
    assert values(log) == [0.0, 1.0, 2.0]
    assert writer_for(log, tmp_path).healthy  # the spool is empty now


async def test_close_during_a_slow_insert_loses_nothing(tmp_path: Path) -> None:
    """Shutdown while an insert is in flight waits for it and writes the rest (no cancel)."""
    log = FakeLog()
    log.delay_s = 0.2
    writer = writer_for(log, tmp_path, batch_size=10)
    writer.start()
    for n in range(30):
        writer.submit(outcome(n))
    await asyncio.sleep(0.05)  # the flusher is inside an insert now
    for n in range(30, 60):
        writer.submit(outcome(n))
    await writer.close()
    assert sorted(values(log)) == [float(n) for n in range(60)]


async def test_close_with_the_log_down_keeps_events_on_disk(tmp_path: Path) -> None:
    """Shutdown during an outage leaves the events in the spool; the next process replays them."""
    log = FakeLog()
    log.down = True
    writer = writer_for(log, tmp_path)
    writer.start()
    for n in range(20):
        writer.submit(outcome(n))
    await writer.close()
    assert log.rows == []
    log.down = False
    restarted = writer_for(log, tmp_path)
    restarted.start()
    await until(lambda: len(log.rows) == 20)
    await restarted.close()
    assert values(log) == [float(n) for n in range(20)]


async def test_poison_batch_is_set_aside(tmp_path: Path) -> None:
    """A batch the log keeps rejecting while it answers pings goes to dead/ after MAX_STRIKES
    attempts; later events still get through."""
    log = FakeLog()
    writer = writer_for(log, tmp_path, batch_size=1)
    writer.start()
    bad = outcome(0)
    log.poison.add(str(bad.event_id))
    writer.submit(bad)
    await asyncio.sleep(0.05)
    for n in range(1, 4):
        writer.submit(outcome(n))
    await until(lambda: len(log.rows) == 3)
    await writer.close()
    assert writer.quarantined == 1
    assert values(log) == [1.0, 2.0, 3.0]
    dead = list((tmp_path / "dead").iterdir())
    assert len(dead) == 1
    assert MAX_STRIKES > 1


async def test_forget_drops_a_units_buffered_and_spooled_events(tmp_path: Path) -> None:
    """Erasure removes a unit's events from memory and from the spool, keeping the others."""
    log = FakeLog()
    log.down = True
    writer = writer_for(log, tmp_path)
    for n in range(4):
        writer.submit(outcome(n, unit="gone" if n % 2 else "kept"))
    await writer.flush()  # to the spool (the log is down)
    writer.submit(outcome(4, unit="gone"))
    writer.submit(outcome(5, unit="kept"))
    dropped = await writer.forget(frozenset({"gone"}))
    assert sorted(e.ts_ms for e in dropped) == [1, 3, 4]
    log.down = False
    await writer.close()
    assert sorted(values(log)) == [0.0, 2.0, 5.0]


def test_spool_segments_rotate_and_keep_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appends roll over to new segments; reading them back gives every batch in order."""
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 300)
    spool = Spool(tmp_path, 1 << 20, "always")
    for i in range(10):
        spool.append(SpooledBatch(table="outcomes", token=f"t{i}", events=[outcome(i)]))
    segments = spool.segments()
    assert len(segments) > 1
    assert spool.size() == sum(s.stat().st_size for s in segments)
    tokens = [b.token for s in segments for b in spool.read(s)]
    assert tokens == [f"t{i}" for i in range(10)]
    for segment in segments:
        spool.drop(segment)
    assert spool.size() == 0 and spool.segments() == []


def test_spool_is_bounded(tmp_path: Path) -> None:
    """An append that would pass max_bytes raises SpoolFull and writes nothing."""
    spool = Spool(tmp_path, 1 << 20, "never")
    big: list[Event] = [outcome(i) for i in range(20_000)]
    with pytest.raises(SpoolFull, match="is full"):
        spool.append(SpooledBatch(table="outcomes", token="big", events=big))
    assert spool.size() == 0


def test_torn_tail_is_ignored_and_never_followed(tmp_path: Path) -> None:
    """A record cut short by a crash is skipped; the next process appends to a new segment."""
    spool = Spool(tmp_path, 1 << 20, "batch")
    spool.append(SpooledBatch(table="outcomes", token="whole", events=[outcome(1)]))
    segment = spool.segments()[0]
    with segment.open("ab") as fh:
        fh.write(b"\x00\x00\x01\x00partial")
    spool.close()
    again = Spool(tmp_path, 1 << 20, "batch")
    again.append(SpooledBatch(table="outcomes", token="after", events=[outcome(2)]))
    tokens = [b.token for s in again.segments() for b in again.read(s)]
    assert tokens == ["whole", "after"]
    assert len(again.segments()) == 2


def test_corrupt_record_is_set_aside(tmp_path: Path) -> None:
    """A record that does not decode ends its segment's replay and is kept in dead/."""
    spool = Spool(tmp_path, 1 << 20, "batch")
    spool.append(SpooledBatch(table="outcomes", token="ok", events=[outcome(1)]))
    segment = spool.segments()[0]
    with segment.open("ab") as fh:
        fh.write(b"\x00\x00\x00\x04\xc1\xc1\xc1\xc1")
    assert [b.token for b in spool.read(segment)] == ["ok"]
    assert len(list((tmp_path / "dead").iterdir())) == 1


def test_processes_get_their_own_slot_and_adopt_orphans(tmp_path: Path) -> None:
    """Two live spools on one directory never share a slot; a spool started later adopts the
    segments of a slot whose owner has gone."""
    one = Spool(tmp_path, 1 << 20, "batch")
    two = Spool(tmp_path, 1 << 20, "batch")
    assert one.directory != two.directory
    two.append(SpooledBatch(table="outcomes", token="from-two", events=[outcome(7)]))
    two.close()
    three = Spool(tmp_path, 1 << 20, "batch")
    tokens = [b.token for s in three.segments() for b in three.read(s)]
    assert tokens == ["from-two"]
    assert three.size() > 0
    one.close()
    three.close()


async def test_one_poison_row_is_dead_lettered_alone(tmp_path: Path) -> None:
    """A rejected batch is bisected: the other rows of its batch are written, only the poison
    row goes to dead/, and the tailor_events_dead_lettered metric counts it."""
    log = FakeLog()
    metrics = Metrics()
    writer = writer_for(log, tmp_path, batch_size=100, metrics=metrics)
    events = [outcome(n) for n in range(10)]
    log.poison.add(str(events[6].event_id))
    writer.submit_many(events)
    await writer.flush()
    for _ in range(MAX_STRIKES):
        await writer.replay()
    assert writer.healthy
    assert sorted(values(log)) == [float(n) for n in range(10) if n != 6]
    assert writer.quarantined == 1
    assert len(list((tmp_path / "dead").iterdir())) == 1
    sample = metrics.registry.get_sample_value
    assert sample("tailor_events_dead_lettered_total", {"table": "outcomes"}) == 1
    await writer.close()
