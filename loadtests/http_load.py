"""A load generator: raw asyncio HTTP/1.1 over keep-alive connections (uvloop).

Closed loop: each connection sends its next request when the answer arrives (the maximum
throughput). Open loop: request ``i`` is due at ``start + i / rate`` and its latency counts from
that due time, so a stalled server is charged for every request it delayed (no coordinated
omission); the generator's own lateness is kept apart as ``send_lag``. Sending stops at the end
of the run: requests still due then (a backlog the server did not absorb) are not sent, and the
shortfall ``rate x duration - sent`` shows that the rate was not sustained. What is sent and
what is done with an answer belong to a :class:`Workload`. One process drives well over 10,000
requests/s (about 60 us of CPU per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from array import array
from collections.abc import Callable, Sequence
from typing import Protocol


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response; returns its status code and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"content-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at)
        return status, await reader.readexactly(int(lower[at + 15 : end]))
    if b"transfer-encoding: chunked" in lower:
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunks.append((await reader.readexactly(size + 2))[:-2])
            if size == 0:
                break
        return status, b"".join(chunks)
    return status, b""


class Workload(Protocol):
    """What a :class:`LoadGenerator` sends and what it does with the answers."""

    @property
    def kinds(self) -> Sequence[str]:
        """Names of the request kinds (latencies are kept per kind)."""
        ...

    def request(self, i: int) -> tuple[int, bytes, int]:
        """The ``i``-th request: its kind (index into ``kinds``), complete HTTP bytes, and a tag
        handed back with the answer (e.g. the unit's number)."""
        ...

    def response(self, kind: int, tag: int, status: int, body: bytes) -> None:
        """Look at an answer (e.g. keep a decision id for a later outcome)."""
        ...


class Sample:
    """Latencies (ns) per request kind, errors and statuses, since the last :meth:`take`."""

    def __init__(self, kinds: int) -> None:
        self.latencies = [array("q") for _ in range(kinds)]
        self.errors = [0] * kinds
        self.statuses: dict[int, int] = {}
        self.send_lag = array("q")  # open loop: how late the generator sent (ns)
        self.sent = 0

    def absorb(self, other: Sample) -> None:
        """Add another sample's figures to this one."""
        for mine, theirs in zip(self.latencies, other.latencies, strict=True):
            mine.extend(theirs)
        self.errors = [a + b for a, b in zip(self.errors, other.errors, strict=True)]
        for status, n in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n
        self.send_lag.extend(other.send_lag)
        self.sent += other.sent


class LoadGenerator:
    """Closed- or open-loop load over keep-alive connections (see the module docstring)."""

    def __init__(self, port: int, workload: Workload, concurrency: int, rate: float) -> None:
        self.port = port
        self.workload = workload
        self.concurrency = concurrency
        self.rate = rate
        self.sample = Sample(len(workload.kinds))
        self._next = 0

    def take(self) -> Sample:
        """What was measured since the previous call (the running measurement continues)."""
        sample, self.sample = self.sample, Sample(len(self.workload.kinds))
        return sample

    async def run(self, duration: float, *, every: float = 0.0,
                  tick: Callable[[], None] | None = None) -> float:  # fmt: skip
        """Drive load for ``duration`` seconds (calling ``tick`` every ``every`` seconds);
        returns the measured wall time. Read the figures with :meth:`take`."""
        conns = [await asyncio.open_connection("127.0.0.1", self.port)
                 for _ in range(self.concurrency)]  # fmt: skip
        self.sample = Sample(len(self.workload.kinds))
        self._next = 0
        start = time.perf_counter_ns()
        stop = start + int(duration * 1e9)
        worker = self._open if self.rate > 0 else self._closed
        ticker = asyncio.create_task(self._ticker(every, tick)) if tick and every else None
        await asyncio.gather(*(worker(r, w, start, stop) for r, w in conns))
        elapsed = (time.perf_counter_ns() - start) / 1e9
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        for _, w in conns:
            w.close()
        return elapsed

    @staticmethod
    async def _ticker(every: float, tick: Callable[[], None]) -> None:
        next_at = time.monotonic() + every
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += every
            tick()

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        data: bytes,
        kind: int,
        tag: int,
    ) -> bool:
        writer.write(data)
        try:
            status, body = await read_response(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.sample.errors[kind] += 1
            return False
        sample = self.sample
        sample.statuses[status] = sample.statuses.get(status, 0) + 1
        if status >= 300:
            sample.errors[kind] += 1
        self.workload.response(kind, tag, status, body)
        return True

    async def _closed(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, start: int, stop: int
    ) -> None:
        clock = time.perf_counter_ns
        request = self.workload.request
        while (t0 := clock()) < stop:
            i = self._next
            self._next = i + 1
            kind, data, tag = request(i)
            self.sample.sent += 1
            if not await self._exchange(reader, writer, data, kind, tag):
                return
            self.sample.latencies[kind].append(clock() - t0)

    async def _open(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, start: int, stop: int
    ) -> None:
        clock = time.perf_counter_ns
        request = self.workload.request
        interval = 1e9 / self.rate
        while True:
            i = self._next
            self._next = i + 1
            scheduled = start + int(i * interval)
            if scheduled >= stop:
                return
            now = clock()
            if now >= stop:  # the backlog left at the end is not sent: counted as not sent
                return
            if scheduled > now:
                await asyncio.sleep((scheduled - now) / 1e9)
            kind, data, tag = request(i)
            self.sample.sent += 1
            self.sample.send_lag.append(clock() - scheduled)
            if not await self._exchange(reader, writer, data, kind, tag):
                return
            # From the scheduled time: a late send is the server's (or the generator's) delay.
            self.sample.latencies[kind].append(clock() - scheduled)
