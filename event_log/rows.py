"""Event records: what the decision path appends to the durable event log.

Records are msgspec Structs (``array_like`` so the disk spool stays compact); ``row()`` gives the
tuple in the column order of :mod:`event_log.sql`. Times are integer epoch milliseconds
(ClickHouse ``DateTime64(3)`` ticks), so no conversion happens on the hot path.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, overload

import msgspec

Table = Literal["exposures", "outcomes", "audit"]

_V4_CLEAR = ~(0xF000 << 64 | 0xC000 << 48) & ((1 << 128) - 1)
_V4_SET = 0x4000 << 64 | 0x8000 << 48


_UUID = uuid.UUID
_UNKNOWN = uuid.SafeUUID.unknown
_new_object = object.__new__
_set_slot = object.__setattr__
_bits = random.getrandbits


def new_event_id() -> uuid.UUID:
    """A random (version 4) UUID for an event row.

    Drawn from ``random`` rather than ``os.urandom``: ids need uniqueness, not secrecy, and
    urandom costs several microseconds per call on the bulk path. ``random`` is reseeded in
    forked workers, so processes never share a sequence. The UUID is built without
    ``UUID.__init__`` (its argument checks cost twice the rest; the value here is a 128-bit
    integer with the version 4 bits set by construction), equal to ``UUID(int=...)``: two
    exposures per recipient make this a per-row cost of the bulk path.
    """
    made = _new_object(_UUID)
    _set_slot(made, "int", (_bits(128) & _V4_CLEAR) | _V4_SET)
    _set_slot(made, "is_safe", _UNKNOWN)
    return made


def event_time_problem(
    ts_ms: int,
    now_ms: int,
    *,
    max_age_s: int,
    max_lead_s: int,
    age_setting: str = "event_log.max_event_age_s",
) -> str | None:
    """Why a client-given event time is refused, or None when it lies in the accepted window.

    The window is ``[now - max_age_s, now + max_lead_s]`` (``event_log.max_event_age_s`` and
    ``max_event_lead_s``): event tables are partitioned by month, so times far apart would
    make one insert span too many partitions.
    """
    if ts_ms < now_ms - max_age_s * 1000:
        return f"must be at most {max_age_s} s in the past ({age_setting})"
    if ts_ms > now_ms + max_lead_s * 1000:
        return f"must be at most {max_lead_s} s in the future (event_log.max_event_lead_s)"
    return None


def new_decision_id() -> str:
    """A decision id: 32 hex characters."""
    return f"{random.getrandbits(128):032x}"


class Exposure(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    array_like=True,
    tag_field="kind",
    tag="exposure",
    gc=False,
):
    """A variant served to a unit (every decision, including defaults and holdouts).

    A ranked slate logs one exposure per slot: ``slot`` its position (0 first; -1 for a
    placement that is not a slate), ``item`` the item shown there (also in ``variant``) and
    ``propensity`` the slot's conditional probability; ``candidates`` how many items the slate
    was drawn from (0 when not a slate).
    """

    event_id: uuid.UUID
    decision_id: str
    ts_ms: int
    unit_id: str
    experiment: str
    experiment_version: int
    placement: str
    variant: str
    propensity: float
    policy: str
    policy_version: str
    reason: str
    holdout: bool
    context: dict[str, str]
    campaign: str = ""
    send_at_ms: int | None = None
    slot: int = -1
    item: str = ""
    candidates: int = 0

    def row(self) -> tuple[object, ...]:
        """Values in ``EXPOSURE_COLUMNS`` order."""
        return (
            self.event_id,
            self.decision_id,
            self.ts_ms,
            self.unit_id,
            self.experiment,
            self.experiment_version,
            self.placement,
            self.variant,
            self.propensity,
            self.policy,
            self.policy_version,
            self.reason,
            1 if self.holdout else 0,
            self.context,
            self.campaign,
            self.send_at_ms,
            self.slot,
            self.item,
            self.candidates,
        )


class Outcome(
    msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag_field="kind", tag="outcome"
):
    """Something a unit did after a decision: a click, open, purchase (with value).

    ``slot``/``item`` name the slot of a slate that earned it (-1 / empty when not said).
    """

    event_id: uuid.UUID
    ts_ms: int
    decision_id: str
    unit_id: str
    experiment: str
    type: str
    value: float
    properties: dict[str, str]
    slot: int = -1
    item: str = ""

    def row(self) -> tuple[object, ...]:
        """Values in ``OUTCOME_COLUMNS`` order."""
        return (
            self.event_id,
            self.ts_ms,
            self.decision_id,
            self.unit_id,
            self.experiment,
            self.type,
            self.value,
            self.properties,
            self.slot,
            self.item,
        )


class AuditEntry(
    msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag_field="kind", tag="audit"
):
    """A configuration change or data-rights action, for the audit table."""

    event_id: uuid.UUID
    ts_ms: int
    actor: str
    action: str
    entity: str
    entity_key: str
    version: int
    detail: str

    def row(self) -> tuple[object, ...]:
        """Values in ``AUDIT_COLUMNS`` order."""
        return (
            self.event_id,
            self.ts_ms,
            self.actor,
            self.action,
            self.entity,
            self.entity_key,
            self.version,
            self.detail,
        )


Event = Exposure | Outcome | AuditEntry

TABLE_OF: dict[type[Event], Table] = {
    Exposure: "exposures",
    Outcome: "outcomes",
    AuditEntry: "audit",
}


class EventRows(Sequence[tuple[object, ...]]):
    """A batch of events seen as their rows (each ``row()``, made only when read).

    What the batching writer hands the event log: an insert encodes the events themselves
    (:func:`event_log.sql.encode_rows` reads exposures field by field, one tuple each), while
    any other reader sees the plain rows.
    """

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = events

    def __len__(self) -> int:
        return len(self.events)

    @overload
    def __getitem__(self, index: int) -> tuple[object, ...]: ...

    @overload
    def __getitem__(self, index: slice) -> list[tuple[object, ...]]: ...

    def __getitem__(self, index: int | slice) -> tuple[object, ...] | list[tuple[object, ...]]:
        if isinstance(index, slice):
            return [e.row() for e in self.events[index]]
        return self.events[index].row()

    def __iter__(self) -> Iterator[tuple[object, ...]]:
        return (e.row() for e in self.events)


_json = msgspec.json.Encoder()


def stringify(attributes: Mapping[str, Any]) -> dict[str, str]:
    """The context Map logged with an exposure (lists as JSON, booleans as 0/1)."""
    out: dict[str, str] = {}
    for name, value in attributes.items():
        if isinstance(value, str):
            out[name] = value
        elif isinstance(value, bool):
            out[name] = "1" if value else "0"
        elif isinstance(value, int | float):
            out[name] = repr(value)
        else:
            out[name] = _json.encode(value).decode()
    return out


_json_decoder = msgspec.json.Decoder()


def parse_context_value(raw: str) -> str | int | float | list[str]:
    """Undo :func:`stringify` for a logged context value: JSON lists, numbers, else the string
    itself (booleans come back as ``0``/``1``)."""
    if raw.startswith("["):
        try:
            items = _json_decoder.decode(raw)
        except msgspec.DecodeError:
            return raw
        return [str(i) for i in items] if isinstance(items, list) else raw
    try:
        number = float(raw)
    except ValueError:
        return raw
    return int(number) if number.is_integer() and "." not in raw and "e" not in raw else number
