"""The asynchronous batching writer between the request path and the event log.

Requests call :meth:`EventWriter.submit` (a list append, no I/O). A background task flushes by
size (``batch_size``) and by time (``flush_interval_s``), running the insert in a thread so the
event loop keeps serving. When the event log fails, the batch goes to the disk spool and later
batches follow it there (order is kept); a replay loop re-inserts spooled batches, oldest first,
with their original deduplication tokens, once the log answers again. ``close()`` stops the loop
between steps (never mid-insert) and flushes everything (to the log, or to the spool when the log
is down). A batch the log keeps rejecting while it answers pings is split in halves after
``MAX_STRIKES`` attempts, down to single rows (an :class:`EventLogUnreachable` error is the log
being down, never a strike), and only the rows still rejected are set aside in
the spool's ``dead/`` (counted and logged; see :meth:`EventWriter._replay_batch`): one bad row
cannot hold back, or take down, the rows batched with it.

No event is dropped while there is room for it: a batch that neither the log nor the spool takes
(disk full or unwritable) is held in memory, within ``max_buffered``, and offered to the spool and
the log again at every flush; a failed spool write leaves nothing behind that could fail later
ones. Only what passes ``max_buffered`` is dropped, and counted. :attr:`EventWriter.durable` is
false while events are held in memory only (``/readyz`` reports it).

Before a batch is inserted (or spooled) its events about a unit erased within the tombstone TTL
are dropped (``screen``, a :class:`UnitScreen`: the server's erasure tombstones): a decision or
an outcome racing an erasure, on this worker or another, does not bring the unit's rows back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Protocol

import msgspec
import structlog
from redis.exceptions import RedisError

from event_log.rows import TABLE_OF, Event, EventRows, Table
from event_log.spool import Spool, SpooledBatch, SpoolFull
from event_log.store import EventLog
from event_log.throttle import Throttle
from tailor_contract.errors import EventLogUnavailable, EventLogUnreachable


class UnitScreen(Protocol):
    """Drops events about units erased moments ago (the server's erasure tombstones)."""

    async def screen(self, items: list[Event], unit_of: Callable[[Event], str]) -> list[Event]:
        """``items`` without those whose unit is screened out; raises ``RedisError``."""
        ...


log = structlog.get_logger("tailor.event_writer")

MAX_STRIKES = 5
_DOWN = "event log down"  # _try_insert's answer when the log does not even answer pings


class WriterMetrics(Protocol):
    """What the writer reports (implemented by :class:`decision_api.metrics.Metrics`)."""

    def events_written(self, table: str, count: int) -> None:
        """Rows inserted into the event log."""

    def flush_failed(self, table: str) -> None:
        """An insert failed and its batch was spooled."""

    def events_dropped(self, count: int) -> None:
        """Events lost because the buffer and the spool were both full."""

    def events_dead_lettered(self, table: str, count: int) -> None:
        """Rows the event log rejected for good, set aside in the spool's ``dead/``."""

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
        self._closing = False
        self._strikes: dict[str, int] = {}
        # Batches neither the log nor the spool took, oldest first; offered again every flush.
        self._held: list[SpooledBatch] = []
        self._held_events = 0
        self._warn = Throttle(log, every_s=10.0)
        self.accepted = 0
        self.dropped = 0
        self.quarantined = 0
        self.erased = 0
        self.screen: UnitScreen | None = None
        """Drops events of units erased a moment ago (set by the app; None: keep all)."""

    @property
    def healthy(self) -> bool:
        """False while batches are being diverted to the spool."""
        return not self._spooling

    @property
    def durable(self) -> bool:
        """False while accepted events are held in memory because neither the event log nor
        the spool could take them (a crash now would lose them)."""
        return not self._held

    @property
    def buffered(self) -> int:
        """Events accepted but not yet written anywhere (including those held for a retry)."""
        return self._buffered + self._held_events

    def submit(self, event: Event) -> None:
        """Buffer one event; wakes the flusher when a batch is full."""
        if self.buffered >= self._max_buffered:
            self.dropped += 1
            self._metrics.events_dropped(1)
            self._warn.error("event_dropped", reason="buffer_full", buffered=self.buffered)
            return
        self._buffers[TABLE_OF[type(event)]].append(event)
        self._buffered += 1
        self.accepted += 1
        if self._buffered >= self._batch_size:
            self._wake.set()

    def submit_many(self, events: Iterable[Event]) -> None:
        """Buffer several events (as many ``submit`` calls, in one step)."""
        batch = list(events)
        room = self._max_buffered - self.buffered
        if len(batch) > room:
            lost = len(batch) - max(room, 0)
            batch = batch[: max(room, 0)]
            self.dropped += lost
            self._metrics.events_dropped(lost)
            self._warn.error("event_dropped", reason="buffer_full", buffered=self.buffered,
                             count=lost)  # fmt: skip
        buffers = self._buffers
        for event in batch:
            buffers[TABLE_OF[type(event)]].append(event)
        self._buffered += len(batch)
        self.accepted += len(batch)
        if self._buffered >= self._batch_size:
            self._wake.set()

    def start(self) -> None:
        """Start the background flush loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-writer")

    async def close(self) -> None:
        """Stop the loop after its current step and write out everything (graceful shutdown).

        The loop is never cancelled mid-insert: a cancelled flush would lose the batches it had
        taken from the buffers. What the event log cannot take stays in the spool on disk.
        """
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()
        if self._spooling:
            await self.replay(max_segments=None)
            if self._held and not self._spooling:
                await self.flush()  # the log came back during the replay: write what was held
        if self._held:
            self.dropped += self._held_events
            self._metrics.events_dropped(self._held_events)
            log.error("event_dropped", reason="shutdown_unwritable", count=self._held_events)
        self._spool.close()

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()
            try:
                await self.flush()
                if self._spooling:
                    await self.replay()
            except Exception:  # keep the only flusher alive; the events are spooled or counted
                log.exception("event_writer_step_failed")
                await asyncio.sleep(self._interval)

    def _take_batches(self) -> list[SpooledBatch]:
        # At most ``batch_size`` events per insert: a writer that fell behind a bulk campaign
        # would otherwise build one huge insert, whose transient memory tops the server's RSS.
        batches = []
        size = self._batch_size
        for table, buffer in self._buffers.items():
            if buffer:
                self._buffers[table] = []
                for start in range(0, len(buffer), size):
                    batches.append(
                        SpooledBatch(
                            table=table,
                            token=uuid.uuid4().hex,
                            events=buffer if len(buffer) <= size else buffer[start : start + size],
                        )
                    )
        self._buffered = 0
        return batches

    async def flush(self) -> None:
        """Write every buffered event now: to the event log, or to the spool if it fails.

        Batches held back by an earlier flush go first (order is kept). When the spool refuses
        a batch too, that batch and every later one are held in memory for the next flush.
        """
        async with self._flush_lock:
            batches = self._held + await self._screened(self._take_batches())
            self._held, self._held_events = [], 0
            spooled = False
            for index, batch in enumerate(batches):
                if not self._spooling:
                    try:
                        await asyncio.to_thread(self._insert, batch)
                        continue
                    except Exception as exc:  # any failure: the batch must reach the spool
                        self._spooling = True
                        self._metrics.flush_failed(batch.table)
                        self._warn.warning(
                            "event_log_write_failed",
                            table=batch.table,
                            rows=len(batch.events),
                            error=str(exc)[:300],
                        )
                if not await asyncio.to_thread(self._to_spool, batch):
                    self._held = batches[index:]
                    self._held_events = sum(len(b.events) for b in self._held)
                    break
                spooled = True
            if spooled:
                await asyncio.to_thread(self._sync_spool)
            self._metrics.queue_depth(self.buffered, self._spool.size())

    async def _screened(self, batches: list[SpooledBatch]) -> list[SpooledBatch]:
        """The batches without events about just-erased units (all of them if the screen
        cannot be asked: no event is lost to a Redis failure)."""
        if self.screen is None:
            return batches
        kept_batches = []
        for batch in batches:
            if batch.table == "audit":  # entries name pseudonyms, never unit ids
                kept_batches.append(batch)
                continue
            try:
                kept = await self.screen.screen(batch.events, _unit_of)
            except RedisError as exc:
                log.warning("erasure_screen_failed", table=batch.table, error=str(exc)[:300])
                kept = batch.events
            if len(kept) < len(batch.events):
                self.erased += len(batch.events) - len(kept)
                log.info("erased_events_dropped", table=batch.table,
                         count=len(batch.events) - len(kept))  # fmt: skip
            if kept:
                kept_batches.append(msgspec.structs.replace(batch, events=kept))
        return kept_batches

    async def replay(self, max_segments: int | None = 4) -> bool:
        """Re-insert spooled segments in order; returns True when the spool is empty.

        At most ``max_segments`` segments per call (None: all), so flushes are not held up
        behind a long replay; new batches keep going to the spool meanwhile, keeping order.
        """
        async with self._flush_lock:
            return await asyncio.to_thread(self._replay, max_segments)

    async def forget(self, unit_ids: frozenset[str]) -> list[Event]:
        """Drop every buffered and spooled event about these units (erasure); returns them."""

        def keep(event: Event) -> bool:
            return getattr(event, "unit_id", None) not in unit_ids

        async with self._flush_lock:
            dropped: list[Event] = []
            for table, buffer in self._buffers.items():
                kept: list[Event] = []
                for event in buffer:
                    (kept if keep(event) else dropped).append(event)
                self._buffers[table] = kept
            self._buffered -= len(dropped)
            dropped += await asyncio.to_thread(self._spool.rewrite, keep)
            return dropped

    def _insert(self, batch: SpooledBatch) -> None:
        self._log.insert(batch.table, EventRows(batch.events), batch.token)
        self._metrics.events_written(batch.table, len(batch.events))

    def _to_spool(self, batch: SpooledBatch) -> bool:
        """Append a batch to the spool; False (logged) when the spool is full or unwritable."""
        try:
            self._spool.append(batch)
        except (SpoolFull, OSError) as exc:
            self._warn.error(
                "event_spool_write_failed",
                rows=len(batch.events),
                held=self.buffered + len(batch.events),
                error=str(exc)[:300],
            )
            return False
        return True

    def _sync_spool(self) -> None:
        try:
            self._spool.sync()
        except OSError as exc:
            self._warn.error("event_spool_sync_failed", error=str(exc)[:300])

    def _replay(self, max_segments: int | None) -> bool:
        segments = self._spool.segments()
        for segment in segments if max_segments is None else segments[:max_segments]:
            for batch in self._spool.read(segment):
                if not self._replay_batch(batch):
                    log.debug("event_log_still_down", spooled_bytes=self._spool.size())
                    return False
            self._spool.drop(segment)
            log.info("spool_replayed", segment=segment.name)
        self._spooling = self._spool.size() > 0
        return not self._spooling

    def _replay_batch(self, batch: SpooledBatch) -> bool:
        """Insert one spooled batch; False while the event log is down.

        A batch the event log rejects while it answers pings (or that cannot even be encoded)
        is retried up to ``MAX_STRIKES`` times, then split (see :meth:`_insert_halves`): the
        rows the log takes are written and only those it still rejects are dead-lettered, so
        one bad row can neither hold every later event back nor take its batch with it.
        """
        error = self._try_insert(batch)
        if error is None:
            self._strikes.pop(batch.token, None)
            return True
        if error is _DOWN:
            return False
        strikes = self._strikes[batch.token] = self._strikes.get(batch.token, 0) + 1
        if strikes < MAX_STRIKES:
            return False
        done = self._insert_halves(batch, error)
        if done:
            self._strikes.pop(batch.token, None)
        return done

    def _try_insert(self, batch: SpooledBatch) -> str | None:
        """Insert a batch: None when written, ``_DOWN`` when the log is down, else the error."""
        try:
            self._insert(batch)
        except EventLogUnreachable:
            return _DOWN  # nothing judged the batch (the relay's Redis refused it)
        except EventLogUnavailable as exc:
            return _DOWN if not self._log.ping() else str(exc)
        except Exception as exc:  # encoding errors: the batch itself is bad
            return f"{type(exc).__name__}: {exc}"
        return None

    def _insert_halves(self, batch: SpooledBatch, error: str) -> bool:
        """Write a rejected batch as two halves, recursively; dead-letter single rejected rows.

        Halves carry tokens derived from the batch's (``<token>.0``, ``<token>.1``), so a
        split interrupted by an outage and done again later does not insert a half twice.
        Returns False when the event log went down meanwhile (the batch stays spooled).
        """
        if len(batch.events) <= 1:
            self._dead_letter(batch, error)
            return True
        middle = len(batch.events) // 2
        for part, events in enumerate((batch.events[:middle], batch.events[middle:])):
            half = SpooledBatch(table=batch.table, token=f"{batch.token}.{part}", events=events)
            half_error = self._try_insert(half)
            if half_error is _DOWN:
                return False
            if half_error is not None and not self._insert_halves(half, half_error):
                return False
        return True

    def _dead_letter(self, batch: SpooledBatch, error: str) -> None:
        """Set rows the event log rejects for good aside in ``dead/``; count and log them."""
        try:
            where = str(self._spool.quarantine(batch))
        except OSError as exc:
            where = f"not kept: {exc}"
        self.quarantined += len(batch.events)
        self._metrics.events_dead_lettered(batch.table, len(batch.events))
        log.error("event_batch_quarantined", table=batch.table, rows=len(batch.events),
                  path=where, error=error[:300])  # fmt: skip


def _unit_of(event: Event) -> str:
    unit: str = getattr(event, "unit_id", "")
    return unit


def now_ms() -> int:
    """Current time as integer epoch milliseconds."""
    return time.time_ns() // 1_000_000
