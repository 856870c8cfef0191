"""Per-zone hour tables of a send window: when, in UTC, each local hour can be sent.

The types (:class:`~tailor_contract.send_window.SendWindow`, default send times, hour keys) are
part of the contract; this module computes with them (numpy), for the bulk send-time path. For
one zone it answers, for every hour, the earliest UTC instant inside the window at which the
recipient's wall clock shows that hour:

* the start of the local hour, or the window start itself when the window opens mid-hour
  (sending a little late in the hour beats skipping a day);
* a local hour skipped by a spring-forward transition does not exist that day: its next
  occurrence inside the window is used, or none;
* a local hour repeated at fall-back maps to its first occurrence;
* an hour that never occurs inside the window is infeasible (`NO_SEND_AT`, -1).

Instants are integer Unix seconds (`int64`); the window start is rounded *up* to a whole second
so that every returned instant lies inside the window. Zones with sub-hour offsets (Asia/Kolkata
+05:30, Asia/Kathmandu +05:45) and sub-hour transitions (Australia/Lord_Howe) are exact: the
walk follows local hour boundaries and the zone's own transitions, found to the second.

Bulk use: recipients share few zones, so tables are computed once per (zone, window) and cached
(`functools.lru_cache`); `bulk_zone_hours` maps n recipients to those tables by an index, which
costs a dictionary look-up per recipient.

The campaign's default send time (for holdout recipients) is either a `FixedInstant` — the same
UTC instant for everyone, which must lie inside the window — or a `LocalHour` applied in each
recipient's zone: the earliest occurrence of that local hour inside the window, or the window
start when that hour never occurs there for the recipient.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import numpy.typing as npt

from tailor_contract.send_window import (
    EPOCH_WEEKDAY,
    HOURS_PER_DAY,
    HOURS_PER_WEEK,
    NO_SEND_AT,
    SECONDS_PER_DAY,
    SECONDS_PER_HOUR,
    DefaultSendTime,
    FixedInstant,
    HourKind,
    LocalHour,
    SendWindow,
    TzError,
    check_default,
    hours_in,
    resolve_zone,
)

Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class ZoneHours(msgspec.Struct, frozen=True):
    """Per-hour earliest send instants of one zone in one window.

    Attributes:
        zone: IANA zone name.
        kind: hour kind of the tables.
        send_at: shape (H,), int64 Unix seconds, `NO_SEND_AT` where the hour never occurs.
        feasible: shape (H,), bool, `send_at != NO_SEND_AT`. Both arrays are read-only.
    """

    zone: str
    kind: HourKind
    send_at: Int64Array
    feasible: BoolArray


class BulkZoneHours(msgspec.Struct, frozen=True):
    """Hour tables for n recipients, stored once per distinct zone.

    Attributes:
        kind: hour kind of the tables.
        zones: the distinct valid zones, in order of first appearance.
        codes: shape (n,), intp row of each recipient in the tables; recipients with an invalid
            zone point at the last row, which is all infeasible.
        send_at: shape (len(zones) + 1, H), int64 Unix seconds or `NO_SEND_AT`.
        feasible: shape (len(zones) + 1, H), bool.
        errors: the recipients whose zone name is invalid.
    """

    kind: HourKind
    zones: tuple[str, ...]
    codes: npt.NDArray[np.intp]
    send_at: Int64Array
    feasible: BoolArray
    errors: tuple[TzError, ...]

    def feasible_matrix(self) -> BoolArray:
        """Return shape (n, H) bool: which hours each recipient's window allows."""
        return self.feasible[self.codes]

    def send_at_of(self, hours: npt.NDArray[np.integer]) -> Int64Array:
        """Return shape (n,) Unix seconds for each recipient's chosen hour (-1 stays -1).

        Args:
            hours: shape (n,), chosen hour index per recipient, -1 for "no choice".
        """
        chosen = np.asarray(hours)
        if chosen.shape != self.codes.shape:
            raise ValueError(f"hours shape == {chosen.shape}, must be {self.codes.shape}")
        safe = np.where(chosen >= 0, chosen, 0)
        out = self.send_at[self.codes, safe]
        return np.where(chosen >= 0, out, NO_SEND_AT).astype(np.int64)


def _offset(zone: ZoneInfo, t: int) -> int:
    offset = datetime.fromtimestamp(t, zone).utcoffset()
    assert offset is not None  # ZoneInfo always answers for aware datetimes
    return int(offset.total_seconds())


def _hour_of_week(local: int) -> int:
    weekday = (local // SECONDS_PER_DAY + EPOCH_WEEKDAY) % 7
    return weekday * HOURS_PER_DAY + (local % SECONDS_PER_DAY) // SECONDS_PER_HOUR


@functools.lru_cache(maxsize=4096)
def _week_table(name: str, start_s: int, end_s: int) -> Int64Array:
    """Earliest instant in [start_s, end_s) showing each local hour of week (168,), or -1."""
    zone = resolve_zone(name)
    table = np.full(HOURS_PER_WEEK, NO_SEND_AT, dtype=np.int64)
    t, offset, seen = start_s, _offset(zone, start_s), 0
    while t < end_s and seen < HOURS_PER_WEEK:
        local = t + offset
        hour = _hour_of_week(local)
        if table[hour] == NO_SEND_AT:
            table[hour] = t
            seen += 1
        boundary = (local // SECONDS_PER_HOUR + 1) * SECONDS_PER_HOUR - offset
        if _offset(zone, boundary) == offset:
            t = boundary
            continue
        # A transition lies in (t, boundary]: bisect to the first second of the new offset;
        # the clock there may show any minute (Lord Howe shifts by 30 min), which is fine.
        lo, hi = t, boundary
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _offset(zone, mid) == offset:
                lo = mid
            else:
                hi = mid
        t, offset = hi, _offset(zone, hi)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=4096)
def _zone_table(name: str, start_s: int, end_s: int, kind: HourKind) -> ZoneHours:
    week = _week_table(name, start_s, end_s)
    if kind == "hour_of_week":
        send_at = week
    else:
        days = np.where(week == NO_SEND_AT, np.iinfo(np.int64).max, week).reshape(7, 24)
        earliest = days.min(axis=0)
        send_at = np.where(earliest == np.iinfo(np.int64).max, NO_SEND_AT, earliest)
        send_at.flags.writeable = False
    feasible = send_at != NO_SEND_AT
    feasible.flags.writeable = False
    return ZoneHours(zone=name, kind=kind, send_at=send_at, feasible=feasible)


def zone_hours(window: SendWindow, zone: str, kind: HourKind) -> ZoneHours:
    """Return the earliest in-window send instant of every local hour of `zone`.

    Cached per (zone, window, kind). Raises ValueError for an unknown zone name.
    """
    hours_in(kind)
    return _zone_table(zone, window.start_s, window.end_s, kind)


def send_at_for_hour(window: SendWindow, zone: str, kind: HourKind, hour: int) -> datetime | None:
    """Return the earliest UTC datetime in the window at which `zone` shows `hour`, or None."""
    n_hours = hours_in(kind)
    if not 0 <= hour < n_hours:
        raise ValueError(f"hour == {hour}, must be in [0, {n_hours})")
    instant = int(zone_hours(window, zone, kind).send_at[hour])
    return None if instant == NO_SEND_AT else datetime.fromtimestamp(instant, UTC)


def bulk_zone_hours(window: SendWindow, zones: Sequence[str], kind: HourKind) -> BulkZoneHours:
    """Return hour tables for n recipients given their zone names.

    Invalid zone names do not raise: they are listed in `errors` and their rows are all
    infeasible, so the API can answer a per-recipient error.
    """
    n_hours = hours_in(kind)
    # Distinct names in order of first appearance, then each recipient's code: C-level calls
    # (dict.fromkeys, map over the dict's lookup), no Python frame per recipient.
    index = {name: code for code, name in enumerate(dict.fromkeys(zones))}
    first_codes = np.fromiter(map(index.__getitem__, zones), dtype=np.intp, count=len(zones))
    valid: list[str] = []
    send_rows: list[Int64Array] = []
    bad: dict[int, str] = {}
    remap = np.empty(len(index), dtype=np.intp)
    for name, code in index.items():
        try:
            table = zone_hours(window, name, kind)
        except ValueError as exc:
            bad[code] = str(exc)
            continue
        remap[code] = len(valid)
        valid.append(name)
        send_rows.append(table.send_at)
    remap[list(bad)] = len(valid)  # invalid zones share the trailing all-infeasible row
    send_rows.append(np.full(n_hours, NO_SEND_AT, dtype=np.int64))
    send_at = np.stack(send_rows)
    codes = remap[first_codes]
    errors = tuple(
        TzError(index=int(i), zone=zones[int(i)], message=bad[int(first_codes[i])])
        for i in np.flatnonzero(codes == len(valid))
    )
    return BulkZoneHours(
        kind=kind,
        zones=tuple(valid),
        codes=codes,
        send_at=send_at,
        feasible=send_at != NO_SEND_AT,
        errors=errors,
    )


def _instant_s(window: SendWindow, at: datetime) -> int:
    # Whole seconds, kept inside the window even when its ends are fractional.
    return min(max(math.ceil(at.timestamp()), window.start_s), window.end_s - 1)


def default_send_at(
    window: SendWindow, default: DefaultSendTime, zone: str, kind: HourKind
) -> datetime:
    """Return one recipient's default (holdout) send instant, in UTC, inside the window."""
    check_default(window, default, kind)
    match default:
        case FixedInstant(at=at):
            return datetime.fromtimestamp(_instant_s(window, at), UTC)
        case LocalHour(hour=hour):
            local = send_at_for_hour(window, zone, kind, hour)
            return local if local is not None else datetime.fromtimestamp(window.start_s, UTC)


def default_send_at_many(
    window: SendWindow, default: DefaultSendTime, hours: BulkZoneHours
) -> Int64Array:
    """Return shape (n,) default send instants (Unix seconds); -1 for invalid zones."""
    check_default(window, default, hours.kind)
    invalid = hours.codes == len(hours.zones)
    match default:
        case FixedInstant(at=at):
            out = np.full(hours.codes.shape, _instant_s(window, at), dtype=np.int64)
        case LocalHour(hour=hour):
            out = hours.send_at[hours.codes, hour].copy()
            out[out == NO_SEND_AT] = window.start_s
    out[invalid] = NO_SEND_AT
    return out
