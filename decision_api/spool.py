"""A bounded, append-only disk spool for event batches the event log could not take.

Each batch is one record: a 4-byte big-endian length, then the msgpack of :class:`SpooledBatch`.
Records are appended to ``spool.bin`` in order; replay reads them back in the same order and the
writer re-inserts each with its original deduplication token, so a batch that reached ClickHouse
before the failure is not counted twice. A torn record at the end (crash mid-write) is ignored.

fsync policy (``event_log.spool_fsync``): ``always`` fsyncs after every batch (survives power
loss); ``batch`` (default) fsyncs when the writer has finished spooling a flush's batches; ``never``
leaves it to the OS (survives a process crash, not a power cut).
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import msgspec

from decision_api.events import Event, Table

_HEADER = struct.Struct(">I")


class SpooledBatch(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One batch as it would have been inserted."""

    table: Table
    token: str
    events: list[Event]


class SpoolFull(Exception):
    """The spool reached its size bound; the batch was not written."""


class Spool:
    """Append batches to disk; read them back in order; clear once replayed."""

    def __init__(
        self, directory: Path, max_bytes: int, fsync: Literal["always", "batch", "never"]
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._path = directory / "spool.bin"
        self._max_bytes = max_bytes
        self._fsync = fsync
        self._lock = threading.Lock()
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(SpooledBatch)

    @property
    def path(self) -> Path:
        """The spool file."""
        return self._path

    def size(self) -> int:
        """Bytes currently spooled."""
        try:
            return self._path.stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, batch: SpooledBatch) -> None:
        """Append one batch; raises :class:`SpoolFull` when it would pass the size bound."""
        body = self._encoder.encode(batch)
        with self._lock:
            if self.size() + len(body) + _HEADER.size > self._max_bytes:
                raise SpoolFull(f"spool at {self._path} is full ({self._max_bytes} bytes)")
            with self._path.open("ab") as fh:
                fh.write(_HEADER.pack(len(body)) + body)
                fh.flush()
                if self._fsync == "always":
                    os.fsync(fh.fileno())

    def sync(self) -> None:
        """fsync the spool (the ``batch`` policy calls this after a flush's batches)."""
        if self._fsync == "never":
            return
        with self._lock:
            try:
                fd = os.open(self._path, os.O_RDONLY)
            except FileNotFoundError:
                return
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def batches(self) -> Iterator[tuple[int, SpooledBatch]]:
        """Spooled batches in append order, each with the file offset just past it."""
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return
        offset = 0
        while offset + _HEADER.size <= len(data):
            (length,) = _HEADER.unpack_from(data, offset)
            end = offset + _HEADER.size + length
            if end > len(data):
                break  # torn tail from a crash mid-append
            yield end, self._decoder.decode(data[offset + _HEADER.size : end])
            offset = end

    def consume(self, offset: int) -> None:
        """Drop everything before ``offset`` (batches that have been replayed)."""
        with self._lock:
            try:
                data = self._path.read_bytes()
            except FileNotFoundError:
                return
            rest = data[offset:]
            tmp = self._path.with_suffix(".tmp")
            tmp.write_bytes(rest)
            if self._fsync != "never":
                with tmp.open("rb") as fh:
                    os.fsync(fh.fileno())
            if rest:
                tmp.replace(self._path)
            else:
                tmp.unlink()
                self._path.unlink(missing_ok=True)
