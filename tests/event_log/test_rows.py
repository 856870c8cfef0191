"""Event ids (random v4 UUIDs, the same objects as ``uuid.UUID`` builds) and insert bodies."""

from __future__ import annotations

import pickle
import uuid

import msgspec

from event_log.rows import EventRows, Exposure, new_event_id
from event_log.sql import EXPOSURE_COLUMNS, encode_rows


def test_event_ids_are_version_4_uuids_equal_to_their_parsed_text() -> None:
    """An event id built without ``UUID.__init__`` is a valid v4 UUID that equals, hashes,
    encodes and round-trips (msgpack for the spool, pickle) like ``uuid.UUID(text)``."""
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    for made in ids[:50]:
        parsed = uuid.UUID(str(made))
        assert (made == parsed, hash(made) == hash(parsed)) == (True, True)
        assert (made.version, made.variant) == (4, uuid.RFC_4122)
        assert msgspec.json.encode(made) == msgspec.json.encode(parsed)
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(made), type=uuid.UUID) == made
        assert pickle.loads(pickle.dumps(made)) == made
        assert made.is_safe is uuid.SafeUUID.unknown


def test_insert_bodies_are_one_json_array_per_row_with_times_in_seconds() -> None:
    """``encode_rows`` writes a row per line (no newline after the last), in column order,
    epoch-ms times as exact decimal seconds, a missing send time as null."""
    rows = [
        Exposure(
            event_id=new_event_id(), decision_id=f"d{i}", ts_ms=1_700_000_000_123 + i,
            unit_id=f"u{i}", experiment="hero", experiment_version=2, placement="home",
            variant="b", propensity=0.25, policy="thompson", policy_version="7",
            reason="policy", holdout=False, context={"device": "mobile"}, campaign="",
            send_at_ms=1_700_000_360_000 if i else None,
        ).row()
        for i in range(3)
    ]  # fmt: skip
    body = encode_rows("exposures", rows)
    lines = body.split(b"\n")
    assert len(lines) == 3 and not body.endswith(b"\n")
    decoded = [msgspec.json.decode(line) for line in lines]
    for i, (row, values) in enumerate(zip(rows, decoded, strict=True)):
        assert len(values) == len(EXPOSURE_COLUMNS)
        assert values[2] == (1_700_000_000_123 + i) / 1000
        assert values[EXPOSURE_COLUMNS.index("send_at")] == (1_700_000_360.0 if i else None)
        assert values[0] == str(row[0]) and values[1] == f"d{i}"


def test_exposures_encode_from_their_events_as_from_their_rows() -> None:
    """A batch handed over as ``EventRows`` encodes exactly as its rows do (slates, holdouts,
    send times or none), and reads as those rows to anyone else."""
    events = [
        Exposure(
            event_id=new_event_id(), decision_id=f"d{i}", ts_ms=1_700_000_000_123 + 7 * i,
            unit_id=f"u{i}", experiment="hero", experiment_version=i, placement="home",
            variant=f"v{i % 3}", propensity=1 / (i + 1), policy="thompson",
            policy_version=str(i), reason="policy", holdout=i % 4 == 0,
            context={"device": "mobile", "n": str(i)} if i % 2 else {}, campaign=f"c{i % 2}",
            send_at_ms=1_700_000_360_001 + i if i % 3 else None, slot=i % 5 - 1,
            item=f"v{i % 3}" if i % 5 else "", candidates=i % 5,
        )
        for i in range(40)
    ]  # fmt: skip
    rows = [e.row() for e in events]
    batch = EventRows(events)
    assert encode_rows("exposures", batch) == encode_rows("exposures", rows)
    assert (list(batch), batch[3], batch[1:4], len(batch)) == (rows, rows[3], rows[1:4], 40)
    assert encode_rows("exposures", EventRows([])) == b""
