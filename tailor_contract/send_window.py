"""Send windows, default send times and hour actions: the send-time types of the contract.

A `send_time` placement chooses an *hour* in the recipient's own time zone: hour of day (0–23)
or hour of week (0–167, Monday 00h = 0). A campaign may only send inside its `SendWindow`
(UTC, start inclusive, end exclusive). Hour actions are variants named by :func:`hour_key`
(``h00``..``h23`` or ``h000``..``h167``). When, in UTC, each local hour can be sent is computed
from these types by ``bandits.send_time.zones`` (numpy; the server's bulk path).

The campaign's default send time (for holdout recipients) is either a `FixedInstant` — the same
UTC instant for everyone, which must lie inside the window — or a `LocalHour` applied in each
recipient's zone: the earliest occurrence of that local hour inside the window, or the window
start when that hour never occurs there for the recipient.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Annotated, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

HourKind = Literal["hour_of_day", "hour_of_week"]

HOURS_PER_DAY: Final = 24
HOURS_PER_WEEK: Final = 168
NO_SEND_AT: Final = -1
MAX_WINDOW: Final = timedelta(days=14)
MIN_WINDOW: Final = timedelta(minutes=1)

SECONDS_PER_HOUR: Final = 3600
SECONDS_PER_DAY: Final = 86_400
EPOCH_WEEKDAY: Final = 3  # 1970-01-01 was a Thursday (Monday = 0)


def hours_in(kind: HourKind) -> int:
    """Return the number of actions of an hour kind: 24 for hour_of_day, 168 for hour_of_week."""
    match kind:
        case "hour_of_day":
            return HOURS_PER_DAY
        case "hour_of_week":
            return HOURS_PER_WEEK
    raise ValueError(f"hour kind == {kind!r}, must be 'hour_of_day' or 'hour_of_week'")


class SendWindow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A campaign's send window: aware datetimes, start inclusive, end exclusive, 1 min–14 days."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for name, value in (("start", self.start), ("end", self.end)):
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(
                    f"send window {name} == {value.isoformat()}, must be timezone-aware"
                )
        if self.start >= self.end:
            raise ValueError(
                f"send window start == {self.start.isoformat()}, must be before end "
                f"== {self.end.isoformat()}"
            )
        length = self.end - self.start
        if not MIN_WINDOW <= length <= MAX_WINDOW:
            raise ValueError(
                f"send window length == {length}, must be in [{MIN_WINDOW}, {MAX_WINDOW}]"
            )

    @property
    def start_s(self) -> int:
        """Window start in Unix seconds, rounded up so that it lies inside the window."""
        return math.ceil(self.start.timestamp())

    @property
    def end_s(self) -> int:
        """Window end in Unix seconds (exclusive), rounded up: the last whole second is inside."""
        return math.ceil(self.end.timestamp())

    def contains(self, instant: datetime) -> bool:
        """Return whether an aware instant lies in [start, end)."""
        return self.start <= instant < self.end


class TzError(msgspec.Struct, frozen=True):
    """A recipient whose time zone could not be resolved (position in the input list)."""

    index: int
    zone: str
    message: str


def resolve_zone(name: str) -> ZoneInfo:
    """Return the IANA zone called `name`, or raise ValueError naming it."""
    if not name:
        raise ValueError("time zone == '', must be an IANA name such as 'Europe/London'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"time zone == {name!r}, not a known IANA time zone") from exc


class FixedInstant(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag="fixed_instant",
    tag_field="kind",
):
    """Default send time: the same aware UTC instant for every recipient; must be in the window."""

    at: datetime


class LocalHour(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag="local_hour",
    tag_field="kind",
):
    """Default send time: this local hour in each recipient's zone (window start if absent).

    0–23 for ``hour_of_day`` experiments, 0–167 for ``hour_of_week`` (checked against the
    experiment by :func:`check_default`).
    """

    hour: Annotated[int, msgspec.Meta(ge=0, le=HOURS_PER_WEEK - 1)]


DefaultSendTime = FixedInstant | LocalHour


def check_default(window: SendWindow, default: DefaultSendTime, kind: HourKind) -> None:
    """Raise ValueError unless `default` can serve as the window's default send time."""
    match default:
        case FixedInstant(at=at):
            if at.tzinfo is None or at.utcoffset() is None:
                raise ValueError(f"default send time == {at.isoformat()}, must be timezone-aware")
            if not window.contains(at):
                raise ValueError(
                    f"default send time == {at.isoformat()}, must lie in the send window "
                    f"[{window.start.isoformat()}, {window.end.isoformat()})"
                )
        case LocalHour(hour=hour):
            n_hours = hours_in(kind)
            if not 0 <= hour < n_hours:
                raise ValueError(f"default local hour == {hour}, must be in [0, {n_hours})")


def hour_key(hour: int, n_hours: int) -> str:
    """The variant key of an hour action: ``h07`` (hour of day) or ``h031`` (hour of week)."""
    return f"h{hour:02d}" if n_hours == 24 else f"h{hour:03d}"


def hour_of(key: str) -> int:
    """The hour an action key stands for."""
    return int(key[1:])
