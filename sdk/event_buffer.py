"""A bounded in-memory buffer for events on their way to the API (outcomes, local exposures).

Events wait here until a background flush sends them. A flush *takes* a batch (which is then
in flight), and either *settles* it (sent, or refused by the API for good) or *requeues* it at
the front, oldest first, to be sent again with the same client-generated event ids — so a
retried batch cannot be counted twice by the event log. The buffer holds at most ``capacity``
events, in flight included; beyond that the oldest waiting events are dropped and counted,
which is the only way an event is lost before ``close()``.

Thread-safe: the sync client's caller threads add while its flusher thread takes and settles.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Generic, TypeVar

import msgspec

__all__ = ["BufferStats", "EventBuffer"]

T = TypeVar("T")


class BufferStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counts since the buffer was made; ``pending`` = waiting + in flight."""

    pending: int
    in_flight: int
    sent: int
    dropped: int
    rejected: int
    failed_flushes: int


class EventBuffer(Generic[T]):
    """Events waiting to be sent: bounded, oldest dropped first, batches retried in order."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity == {capacity}, must be >= 1")
        self.capacity = capacity
        self._waiting: deque[T] = deque()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._sent = 0
        self._dropped = 0
        self._rejected = 0
        self._failed = 0

    def __len__(self) -> int:
        """Events waiting (not in flight)."""
        return len(self._waiting)

    @property
    def pending(self) -> int:
        """Events not yet settled: waiting plus in flight."""
        with self._lock:
            return len(self._waiting) + self._in_flight

    def add(self, item: T) -> None:
        """Queue one event; when full, the oldest waiting event is dropped (and counted)."""
        with self._lock:
            self._waiting.append(item)
            self._trim()

    def take(self, limit: int) -> list[T]:
        """Up to ``limit`` oldest waiting events, now in flight until settled or requeued."""
        with self._lock:
            count = min(limit, len(self._waiting))
            batch = [self._waiting.popleft() for _ in range(count)]
            self._in_flight += count
            return batch

    def settle(self, batch: Sequence[T], *, rejected: int = 0) -> None:
        """A batch is done: ``len(batch) - rejected`` were accepted, ``rejected`` refused."""
        with self._lock:
            self._in_flight -= len(batch)
            self._sent += len(batch) - rejected
            self._rejected += rejected

    def requeue(self, batch: Sequence[T]) -> None:
        """Put a batch that failed back at the front, in its original order."""
        with self._lock:
            self._in_flight -= len(batch)
            self._failed += 1
            self._waiting.extendleft(reversed(batch))
            self._trim()

    def stats(self) -> BufferStats:
        """A snapshot of the counters."""
        with self._lock:
            return BufferStats(
                pending=len(self._waiting) + self._in_flight,
                in_flight=self._in_flight,
                sent=self._sent,
                dropped=self._dropped,
                rejected=self._rejected,
                failed_flushes=self._failed,
            )

    def _trim(self) -> None:
        excess = len(self._waiting) + self._in_flight - self.capacity
        for _ in range(max(0, min(excess, len(self._waiting)))):
            self._waiting.popleft()
            self._dropped += 1
