"""The asynchronous batching writer between the request path and the event log.

Requests call :meth:`EventWriter.submit` (a list append, no I/O). A background task flushes by
size (``batch_size``) and by time (``flush_interval_s``), running the insert in a thread so the
event loop keeps serving. When the event log fails, the batch goes to the disk spool and later
batches follow it there (order is kept); a replay loop re-inserts spooled batches, oldest first,
with their original deduplication tokens, once the log answers again. ``close()`` flushes
everything (to the log, or to the spool when the log is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterable
from typing import Protocol

import structlog

from decision_api.errors import EventLogUnavailable
from decision_api.event_log import EventLog
from decision_api.events import TABLE_OF, Event, Table
from decision_api.spool import Spool, SpooledBatch, SpoolFull

log = structlog.get_logger("tailor.event_writer")


class WriterMetrics(Protocol):
    """What the writer reports (implemented by :class:`decision_api.metrics.Metrics`)."""

    def events_written(self, table: str, count: int) -> None:
        """Rows inserted into the event log."""

    def flush_failed(self, table: str) -> None:
        """An insert failed and its batch was spooled."""

    def events_dropped(self, count: int) -> None:
        """Events lost because the buffer and the spool were both full."""

    def queue_depth(self, depth: int, spooled_bytes: int) -> None:
        """Events buffered in memory, bytes waiting in the spool."""


class EventSink(Protocol):
    """Where the request path hands events (the writer, or a Redis Stream producer)."""

    def submit(self, event: Event) -> None:
        """Accept one event for durable storage; never blocks on I/O."""

    def submit_many(self, events: Iterable[Event]) -> None:
        """Accept several events."""


class EventWriter:
    """Batch events per table and insert them off the request path, spooling on failure."""

    def __init__(
        self,
        event_log: EventLog,
        spool: Spool,
        *,
        batch_size: int,
        flush_interval_s: float,
        max_buffered: int,
        metrics: WriterMetrics,
    ) -> None:
        self._log = event_log
        self._spool = spool
        self._batch_size = batch_size
        self._interval = flush_interval_s
        self._max_buffered = max_buffered
        self._metrics = metrics
        self._buffers: dict[Table, list[Event]] = {"exposures": [], "outcomes": [], "audit": []}
        self._buffered = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._spooling = spool.size() > 0
        self.accepted = 0
        self.dropped = 0

    @property
    def healthy(self) -> bool:
        """False while batches are being diverted to the spool."""
        return not self._spooling

    @property
    def buffered(self) -> int:
        """Events accepted but not yet written anywhere."""
        return self._buffered

    def submit(self, event: Event) -> None:
        """Buffer one event; wakes the flusher when a batch is full."""
        if self._buffered >= self._max_buffered:
            self.dropped += 1
            self._metrics.events_dropped(1)
            log.error("event_dropped", reason="buffer_full", buffered=self._buffered)
            return
        self._buffers[TABLE_OF[type(event)]].append(event)
        self._buffered += 1
        self.accepted += 1
        if self._buffered >= self._batch_size:
            self._wake.set()

    def submit_many(self, events: Iterable[Event]) -> None:
        """Buffer several events."""
        for event in events:
            self.submit(event)

    def start(self) -> None:
        """Start the background flush loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-writer")

    async def close(self) -> None:
        """Stop the loop and write out everything buffered (graceful shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        if self._spooling:
            await self.replay()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()
            await self.flush()
            if self._spooling:
                await self.replay()

    async def flush(self) -> None:
        """Write every buffered event now: to the event log, or to the spool if it fails."""
        async with self._flush_lock:
            batches = []
            for table, buffer in self._buffers.items():
                if buffer:
                    self._buffers[table] = []
                    batches.append(SpooledBatch(table=table, token=uuid.uuid4().hex, events=buffer))
            self._buffered = 0
            spooled = False
            for batch in batches:
                if not self._spooling:
                    try:
                        await asyncio.to_thread(self._insert, batch)
                        continue
                    except EventLogUnavailable as exc:
                        self._spooling = True
                        self._metrics.flush_failed(batch.table)
                        log.warning(
                            "event_log_write_failed",
                            table=batch.table,
                            rows=len(batch.events),
                            error=str(exc),
                        )
                await asyncio.to_thread(self._to_spool, batch)
                spooled = True
            if spooled:
                await asyncio.to_thread(self._spool.sync)
            self._metrics.queue_depth(self._buffered, self._spool.size())

    async def replay(self) -> bool:
        """Re-insert spooled batches in order; returns True when the spool is empty."""
        async with self._flush_lock:
            return await asyncio.to_thread(self._replay)

    def _insert(self, batch: SpooledBatch) -> None:
        self._log.insert(batch.table, [e.row() for e in batch.events], batch.token)
        self._metrics.events_written(batch.table, len(batch.events))

    def _to_spool(self, batch: SpooledBatch) -> None:
        try:
            self._spool.append(batch)
        except SpoolFull as exc:
            self.dropped += len(batch.events)
            self._metrics.events_dropped(len(batch.events))
            log.error("event_dropped", reason="spool_full", rows=len(batch.events), error=str(exc))

    def _replay(self) -> bool:
        consumed = 0
        try:
            for offset, batch in self._spool.batches():
                self._insert(batch)
                consumed = offset
        except EventLogUnavailable as exc:
            if consumed:
                self._spool.consume(consumed)
            log.info("event_log_still_down", error=str(exc), spooled_bytes=self._spool.size())
            return False
        if consumed:
            self._spool.consume(consumed)
            log.info("spool_replayed", bytes=consumed)
        self._spooling = self._spool.size() > 0
        return not self._spooling


def now_ms() -> int:
    """Current time as integer epoch milliseconds."""
    return time.time_ns() // 1_000_000
