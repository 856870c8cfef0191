"""Event ids: random version-4 UUIDs, the same objects as ``uuid.UUID`` builds."""

from __future__ import annotations

import pickle
import uuid

import msgspec

from event_log.rows import new_event_id


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
