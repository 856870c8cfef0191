"""A bounded, append-only disk spool for event batches the event log could not take.

Layout under ``event_log.spool_dir``::

    <n>/lock              flock-ed by the process that owns slot n (one slot per writer)
    <n>/seg-<seq>.bin     segments, replayed in ``seq`` order
    dead/                 batches the event log rejected for good, kept for inspection

A segment is a sequence of records: a 4-byte big-endian length, then the msgpack of
:class:`SpooledBatch`. Appends go to the newest segment until it passes ``SEGMENT_BYTES``; every
process start opens a new one, so a torn record left by a crash (which :meth:`Spool.read`
ignores) is never followed by valid data in the same file. Replay reads a segment's batches,
inserts them with their original deduplication tokens and then deletes the whole segment: a crash
in between re-inserts batches the event log already has, and the tokens (plus event ids under
``ReplacingMergeTree``) make that a no-op.

Several writer processes (``tailor serve --workers N`` with a ClickHouse server) each claim a free
slot with ``flock``; a process that starts also adopts the segments of slots nobody holds (a
worker that exited with events still spooled), so nothing is stranded.

fsync policy (``event_log.spool_fsync``): ``always`` fsyncs after every batch (survives power
loss); ``batch`` (default) fsyncs when the writer has finished spooling a flush's batches, and
the directory when segments appear or go; ``never`` leaves it to the OS (survives a process
crash, not a power cut).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import msgspec

from event_log.rows import Event, Table

_HEADER = struct.Struct(">I")
SEGMENT_BYTES = 16 << 20
FsyncPolicy = Literal["always", "batch", "never"]


class SpooledBatch(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One batch as it would have been inserted."""

    table: Table
    token: str
    events: list[Event]


class SpoolFull(Exception):
    """The spool reached its size bound; the batch was not written."""


def _seq(path: Path) -> int:
    return int(path.stem.removeprefix("seg-"))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _try_lock(slot: Path) -> int | None:
    """An fd holding an exclusive flock on ``slot/lock``, or None when another process has it."""
    slot.mkdir(parents=True, exist_ok=True)
    fd = os.open(slot / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class Spool:
    """Append batches to disk segments; read them back in order; delete replayed segments."""

    def __init__(self, directory: Path, max_bytes: int, fsync: FsyncPolicy) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._root = directory
        self._max_bytes = max_bytes
        self._fsync = fsync
        self._lock = threading.Lock()
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(SpooledBatch)
        self._dir, self._lock_fd = self._claim_slot()
        self._adopt_orphans()
        self._segments = sorted(self._dir.glob("seg-*.bin"), key=_seq)
        self._bytes = sum(p.stat().st_size for p in self._segments)
        self._next = (_seq(self._segments[-1]) + 1) if self._segments else 1
        self._current: Path | None = None
        self._current_bytes = 0

    def _claim_slot(self) -> tuple[Path, int]:
        n = 0
        while True:
            slot = self._root / str(n)
            fd = _try_lock(slot)
            if fd is not None:
                return slot, fd
            n += 1

    def _adopt_orphans(self) -> None:
        """Move the segments of slots no live process holds into this slot (oldest first)."""
        mine = sorted(self._dir.glob("seg-*.bin"), key=_seq)
        seq = (_seq(mine[-1]) + 1) if mine else 1
        for slot in sorted(p for p in self._root.iterdir() if p.name.isdigit()):
            if slot == self._dir:
                continue
            fd = _try_lock(slot)
            if fd is None:
                continue
            try:
                for segment in sorted(slot.glob("seg-*.bin"), key=_seq):
                    segment.rename(self._dir / f"seg-{seq:08d}.bin")
                    seq += 1
            finally:
                os.close(fd)
        if self._fsync != "never":
            _fsync_dir(self._dir)

    @property
    def directory(self) -> Path:
        """This process's slot directory."""
        return self._dir

    def size(self) -> int:
        """Bytes currently spooled (every segment of this slot)."""
        return self._bytes

    def segments(self) -> list[Path]:
        """Segments waiting for replay, oldest first."""
        with self._lock:
            return list(self._segments)

    def append(self, batch: SpooledBatch) -> None:
        """Append one batch; raises :class:`SpoolFull` when it would pass the size bound.

        Raises ``OSError`` when the disk refuses the write; a failed append leaves no trace a
        later one could trip over: a segment is recorded only once it exists, and a partly
        written record is cut off again (or, if even that fails, its segment gets no more
        appends, so the torn record stays a tail that :meth:`read` ignores).
        """
        body = self._encoder.encode(batch)
        record = _HEADER.pack(len(body)) + body
        with self._lock:
            if self._bytes + len(record) > self._max_bytes:
                raise SpoolFull(f"spool at {self._root} is full ({self._max_bytes} bytes)")
            if self._current is None or self._current_bytes >= SEGMENT_BYTES:
                self._open_segment()
            current = self._current
            assert current is not None
            try:
                with current.open("ab") as fh:
                    fh.write(record)
                    fh.flush()
                    if self._fsync == "always":
                        os.fsync(fh.fileno())
            except OSError:
                self._abandon_current()
                raise
            self._current_bytes += len(record)
            self._bytes += len(record)

    def _open_segment(self) -> None:
        """Create the next segment and make it current (recorded only once it exists)."""
        path = self._dir / f"seg-{self._next:08d}.bin"
        self._dir.mkdir(parents=True, exist_ok=True)  # the slot may have been removed
        path.touch(exist_ok=False)
        self._next += 1
        self._segments.append(path)
        self._current, self._current_bytes = path, 0
        if self._fsync != "never":
            _fsync_dir(self._dir)

    def _abandon_current(self) -> None:
        """After a failed write: cut the torn record off, and append to a new segment next."""
        current = self._current
        self._current = None
        if current is None:
            return
        # Should the cut fail too, the torn record stays the last one of its segment (no more
        # appends go there), and read() skips a torn tail.
        with contextlib.suppress(OSError):
            os.truncate(current, self._current_bytes)

    def sync(self) -> None:
        """fsync the segment being appended (the ``batch`` policy calls this after a flush)."""
        with self._lock:
            current = self._current
        if self._fsync == "never" or current is None:
            return
        fd = os.open(current, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, segment: Path) -> list[SpooledBatch]:
        """The batches of one segment in order; a torn or corrupt tail is set aside in ``dead/``."""
        try:
            data = segment.read_bytes()
        except FileNotFoundError:
            return []  # removed behind our back: nothing to replay, and drop() forgets it
        batches = []
        offset = 0
        while offset + _HEADER.size <= len(data):
            (length,) = _HEADER.unpack_from(data, offset)
            end = offset + _HEADER.size + length
            if end > len(data):
                break  # torn tail from a crash mid-append: the batch was never acknowledged
            try:
                batches.append(self._decoder.decode(data[offset + _HEADER.size : end]))
            except msgspec.DecodeError:
                self._set_aside(f"{segment.stem}-corrupt.bin", data[offset:])
                break
            offset = end
        return batches

    def drop(self, segment: Path) -> None:
        """Delete a segment whose batches have all been replayed."""
        with self._lock:
            size = segment.stat().st_size if segment.exists() else 0
            segment.unlink(missing_ok=True)
            self._segments = [s for s in self._segments if s != segment]
            self._bytes = max(0, self._bytes - size)
            if self._current == segment:
                self._current = None
            if self._fsync != "never":
                _fsync_dir(self._dir)

    def quarantine(self, batch: SpooledBatch) -> Path:
        """Keep a batch the event log keeps rejecting in ``dead/`` (not replayed again)."""
        name = f"{batch.table}-{batch.token}-{time.time_ns()}.bin"
        return self._set_aside(name, self._encoder.encode(batch))

    def _set_aside(self, name: str, data: bytes) -> Path:
        dead = self._root / "dead"
        dead.mkdir(exist_ok=True)
        path = dead / name
        path.write_bytes(data)
        return path

    def rewrite(self, keep: Callable[[Event], bool]) -> list[Event]:
        """Drop every spooled event ``keep`` rejects (data erasure); returns the dropped events."""
        dropped: list[Event] = []
        for segment in self.segments():
            kept_batches = []
            before = len(dropped)
            for batch in self.read(segment):
                kept: list[Event] = []
                for event in batch.events:
                    (kept if keep(event) else dropped).append(event)
                if kept:
                    kept_batches.append(
                        SpooledBatch(table=batch.table, token=batch.token, events=kept)
                    )
            if len(dropped) == before:
                continue
            body = b"".join(
                _HEADER.pack(len(b)) + b for b in map(self._encoder.encode, kept_batches)
            )
            tmp = segment.with_suffix(".tmp")
            tmp.write_bytes(body)
            if self._fsync != "never":
                with tmp.open("rb") as fh:
                    os.fsync(fh.fileno())
            with self._lock:
                self._bytes += len(body) - segment.stat().st_size
                tmp.replace(segment)
        return dropped

    def close(self) -> None:
        """Release this process's slot (its segments stay for the next owner)."""
        os.close(self._lock_fd)
