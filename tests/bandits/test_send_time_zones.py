"""Send windows across time zones: feasibility, DST, hour of week, bulk tables and defaults."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import pytest

from bandits.send_time.zones import (
    bulk_zone_hours,
    default_send_at,
    default_send_at_many,
    send_at_for_hour,
    zone_hours,
)
from tailor_contract.send_window import (
    NO_SEND_AT,
    DefaultSendTime,
    FixedInstant,
    HourKind,
    LocalHour,
    SendWindow,
    check_default,
    hours_in,
    resolve_zone,
)

ZONES = [
    "Pacific/Auckland",
    "Asia/Kolkata",
    "America/New_York",
    "Europe/London",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "UTC",
]


def utc(*args: int) -> datetime:
    """Build an aware UTC datetime."""
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def window(start: datetime, end: datetime) -> SendWindow:
    """Build a send window."""
    return SendWindow(start=start, end=end)


def local_hour(t: int, zone: str, kind: HourKind) -> int:
    """Return the local hour (of day or of week) shown in `zone` at Unix second t."""
    local = datetime.fromtimestamp(t, ZoneInfo(zone))
    return local.hour if kind == "hour_of_day" else local.weekday() * 24 + local.hour


def brute_force(w: SendWindow, zone: str, kind: HourKind) -> np.ndarray:
    """Earliest whole minute in the window showing each local hour, by scanning every minute."""
    table = np.full(hours_in(kind), NO_SEND_AT, dtype=np.int64)
    for t in range(w.start_s, w.end_s, 60):
        h = local_hour(t, zone, kind)
        if table[h] == NO_SEND_AT:
            table[h] = t
    return table


# Windows around the 2026 DST transitions: US (8 Mar, 1 Nov), EU (29 Mar, 25 Oct),
# New Zealand and Chatham (5 Apr back, 27 Sep forward; Chatham switches at hh:45 local),
# Lord Howe (5 Apr, 4 Oct, half-hour shifts).
DST_WINDOWS = [
    window(utc(2026, 3, 7, 0), utc(2026, 3, 10, 0)),
    window(utc(2026, 10, 31, 0), utc(2026, 11, 3, 0)),
    window(utc(2026, 3, 28, 0), utc(2026, 3, 30, 12)),
    window(utc(2026, 10, 24, 0), utc(2026, 10, 26, 12)),
    window(utc(2026, 4, 3, 0), utc(2026, 4, 6, 0)),
    window(utc(2026, 9, 26, 0), utc(2026, 9, 28, 0)),
    window(utc(2026, 10, 3, 0), utc(2026, 10, 5, 0)),
    window(utc(2026, 6, 1, 9, 17), utc(2026, 6, 2, 3, 41)),  # odd minutes, no DST
]


@pytest.mark.parametrize("w", DST_WINDOWS, ids=lambda w: w.start.date().isoformat())
@pytest.mark.parametrize("zone", ZONES)
def test_matches_minute_scan_oracle(w: SendWindow, zone: str) -> None:
    """Every hour's send instant equals the earliest minute of the window showing that hour."""
    got = zone_hours(w, zone, "hour_of_day")
    np.testing.assert_array_equal(got.send_at, brute_force(w, zone, "hour_of_day"))
    np.testing.assert_array_equal(got.feasible, got.send_at != NO_SEND_AT)


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "America/New_York", "Pacific/Auckland"])
def test_hour_of_week_matches_oracle(zone: str) -> None:
    """Hour-of-week tables over 8 days (crossing a DST change) match the minute scan."""
    w = window(utc(2026, 3, 25, 6, 30), utc(2026, 4, 2, 6, 30))
    got = zone_hours(w, zone, "hour_of_week")
    np.testing.assert_array_equal(got.send_at, brute_force(w, zone, "hour_of_week"))
    assert got.feasible.all()


@pytest.mark.parametrize("w", DST_WINDOWS[:4], ids=lambda w: w.start.date().isoformat())
@pytest.mark.parametrize("kind", ["hour_of_day", "hour_of_week"])
def test_every_send_at_is_inside_window_and_shows_its_hour(w: SendWindow, kind: HourKind) -> None:
    """Each feasible hour's instant is in [start, end) and the local clock shows that hour."""
    for zone in ZONES:
        table = zone_hours(w, zone, kind)
        for hour in np.flatnonzero(table.feasible):
            t = int(table.send_at[hour])
            assert w.start <= datetime.fromtimestamp(t, UTC) < w.end
            assert local_hour(t, zone, kind) == hour


@pytest.mark.parametrize(
    ("zone", "expected_hours"),
    [
        ("America/New_York", set(range(5, 13))),  # EDT: 05:00–13:00 local
        ("Asia/Kolkata", set(range(14, 23))),  # IST: 14:30–22:30 local
        ("Pacific/Auckland", {21, 22, 23, 0, 1, 2, 3, 4}),  # NZST: 21:00–05:00 local
        ("Europe/London", set(range(10, 18))),  # BST: 10:00–18:00 local
    ],
)
def test_hours_outside_window_are_infeasible(zone: str, expected_hours: set[int]) -> None:
    """A 09:00–17:00 UTC window allows exactly the local hours it overlaps, per zone."""
    table = zone_hours(window(utc(2026, 6, 1, 9), utc(2026, 6, 1, 17)), zone, "hour_of_day")
    assert set(np.flatnonzero(table.feasible).tolist()) == expected_hours
    assert (table.send_at[~table.feasible] == NO_SEND_AT).all()


def test_window_opening_mid_hour_sends_at_window_start() -> None:
    """Kolkata's 14h starts at 08:30 UTC, but a 09:00 UTC window sends it at 09:00 UTC."""
    w = window(utc(2026, 6, 1, 9), utc(2026, 6, 1, 17))
    assert send_at_for_hour(w, "Asia/Kolkata", "hour_of_day", 14) == utc(2026, 6, 1, 9)
    assert send_at_for_hour(w, "Asia/Kolkata", "hour_of_day", 15) == utc(2026, 6, 1, 9, 30)
    assert send_at_for_hour(w, "Asia/Kolkata", "hour_of_day", 23) is None


def test_fractional_window_start_rounds_up_inside_window() -> None:
    """A window starting at x.5 s sends its first hour at the next whole second."""
    w = window(utc(2026, 6, 1, 9) + timedelta(microseconds=500_000), utc(2026, 6, 1, 10))
    assert send_at_for_hour(w, "UTC", "hour_of_day", 9) == utc(2026, 6, 1, 9, 0, 1)


@pytest.mark.parametrize(
    ("zone", "w", "hour", "expected"),
    [
        # US spring-forward 2026-03-08 02:00 EST -> 03:00 EDT (07:00 UTC): 2h skipped that day.
        ("America/New_York", (utc(2026, 3, 8, 5), utc(2026, 3, 9, 5)), 2, None),
        ("America/New_York", (utc(2026, 3, 8, 5), utc(2026, 3, 9, 12)), 2, utc(2026, 3, 9, 6)),
        ("America/New_York", (utc(2026, 3, 8, 5), utc(2026, 3, 9, 5)), 3, utc(2026, 3, 8, 7)),
        ("America/New_York", (utc(2026, 3, 8, 5), utc(2026, 3, 9, 5)), 1, utc(2026, 3, 8, 6)),
        # US fall-back 2026-11-01 02:00 EDT -> 01:00 EST (06:00 UTC): 1h's first run is EDT.
        ("America/New_York", (utc(2026, 11, 1, 4), utc(2026, 11, 2, 4)), 1, utc(2026, 11, 1, 5)),
        ("America/New_York", (utc(2026, 11, 1, 4), utc(2026, 11, 2, 4)), 2, utc(2026, 11, 1, 7)),
        # Window opening inside the repeated hour's second run: that run is the first in-window.
        ("America/New_York", (utc(2026, 11, 1, 6), utc(2026, 11, 2, 4)), 1, utc(2026, 11, 1, 6)),
        # EU spring-forward 2026-03-29 01:00 UTC: London's 1h does not exist that day.
        ("Europe/London", (utc(2026, 3, 29, 0), utc(2026, 3, 30, 0)), 1, None),
        ("Europe/London", (utc(2026, 3, 29, 0), utc(2026, 3, 30, 0)), 2, utc(2026, 3, 29, 1)),
        ("Europe/London", (utc(2026, 3, 29, 0), utc(2026, 3, 30, 1)), 1, utc(2026, 3, 30, 0)),
        # EU fall-back 2026-10-25 01:00 UTC: London's 1h runs twice, first at 00:00 UTC.
        ("Europe/London", (utc(2026, 10, 24, 23), utc(2026, 10, 25, 23)), 1, utc(2026, 10, 25, 0)),
        ("Europe/London", (utc(2026, 10, 24, 23), utc(2026, 10, 25, 23)), 2, utc(2026, 10, 25, 2)),
        # NZ fall-back 2026-04-05 03:00 NZDT -> 02:00 NZST (14:00 UTC on 4 Apr).
        ("Pacific/Auckland", (utc(2026, 4, 4, 10), utc(2026, 4, 5, 10)), 2, utc(2026, 4, 4, 13)),
        ("Pacific/Auckland", (utc(2026, 4, 4, 10), utc(2026, 4, 5, 10)), 3, utc(2026, 4, 4, 15)),
        # NZ spring-forward 2026-09-27 02:00 NZST -> 03:00 NZDT (14:00 UTC on 26 Sep).
        ("Pacific/Auckland", (utc(2026, 9, 26, 10), utc(2026, 9, 27, 10)), 2, None),
        ("Pacific/Auckland", (utc(2026, 9, 26, 10), utc(2026, 9, 27, 10)), 3, utc(2026, 9, 26, 14)),
    ],
)
def test_dst_transitions(
    zone: str, w: tuple[datetime, datetime], hour: int, expected: datetime | None
) -> None:
    """Skipped hours move to their next occurrence (or none); repeated hours take the first."""
    assert send_at_for_hour(window(*w), zone, "hour_of_day", hour) == expected


def test_transition_in_the_middle_of_a_local_hour() -> None:
    """Chatham jumps 02:45 → 03:45 (+12:45 → +13:45): 3h first shows at the jump, mid-hour."""
    w = window(utc(2026, 9, 26, 12), utc(2026, 9, 26, 18))
    assert send_at_for_hour(w, "Pacific/Chatham", "hour_of_day", 2) == utc(2026, 9, 26, 13, 15)
    assert send_at_for_hour(w, "Pacific/Chatham", "hour_of_day", 3) == utc(2026, 9, 26, 14)
    assert send_at_for_hour(w, "Pacific/Chatham", "hour_of_day", 4) == utc(2026, 9, 26, 14, 15)


def test_hour_of_week_is_monday_based_in_local_time() -> None:
    """Hour of week 0 is Monday 00h local: London's falls at Sunday 23:00 UTC in summer."""
    w = window(utc(2026, 6, 1, 0), utc(2026, 6, 8, 0))  # Monday 1 June to Monday 8 June
    london = zone_hours(w, "Europe/London", "hour_of_week")
    assert london.feasible.all()
    assert send_at_for_hour(w, "Europe/London", "hour_of_week", 0) == utc(2026, 6, 7, 23)
    assert send_at_for_hour(w, "Europe/London", "hour_of_week", 1) == utc(2026, 6, 1, 0)
    assert send_at_for_hour(w, "Europe/London", "hour_of_week", 167) == utc(2026, 6, 7, 22)
    # Auckland (UTC+12) is on Monday noon when the window opens; Monday 11h comes a week on.
    assert send_at_for_hour(w, "Pacific/Auckland", "hour_of_week", 12) == utc(2026, 6, 1, 0)
    assert send_at_for_hour(w, "Pacific/Auckland", "hour_of_week", 11) == utc(2026, 6, 7, 23)
    short = window(utc(2026, 6, 1, 0), utc(2026, 6, 4, 0))
    assert send_at_for_hour(short, "Pacific/Auckland", "hour_of_week", 11) is None
    assert zone_hours(short, "Pacific/Auckland", "hour_of_week").feasible.sum() == 72


def test_bulk_matches_single_zone_tables_and_reports_bad_zones() -> None:
    """Bulk tables equal per-zone tables; invalid names become per-recipient errors."""
    w = window(utc(2026, 3, 28, 0), utc(2026, 3, 30, 12))
    names = ["Asia/Kolkata", "Mars/Olympus", "Europe/London", "Asia/Kolkata", "", "UTC"]
    bulk = bulk_zone_hours(w, names, "hour_of_day")
    assert bulk.zones == ("Asia/Kolkata", "Europe/London", "UTC")
    assert [(e.index, e.zone) for e in bulk.errors] == [(1, "Mars/Olympus"), (4, "")]
    assert "not a known IANA time zone" in bulk.errors[0].message
    feasible = bulk.feasible_matrix()
    assert feasible.shape == (6, 24)
    assert not feasible[[1, 4]].any()
    for i in (0, 2, 3, 5):
        np.testing.assert_array_equal(feasible[i], zone_hours(w, names[i], "hour_of_day").feasible)
    chosen = np.array([20, 3, 1, -1, 0, 5])
    expected = [
        zone_hours(w, "Asia/Kolkata", "hour_of_day").send_at[20],
        NO_SEND_AT,
        zone_hours(w, "Europe/London", "hour_of_day").send_at[1],
        NO_SEND_AT,
        NO_SEND_AT,
        zone_hours(w, "UTC", "hour_of_day").send_at[5],
    ]
    np.testing.assert_array_equal(bulk.send_at_of(chosen), expected)


def test_bulk_of_100k_recipients_is_fast() -> None:
    """100,000 recipients over a dozen zones get correct tables; the time is printed (no limit)."""
    rng = np.random.default_rng(3)
    zones = [*ZONES, "America/Los_Angeles", "Europe/Berlin", "Asia/Tokyo", "America/Sao_Paulo"]
    names = [zones[i] for i in rng.integers(0, len(zones), 100_000)]
    w = window(utc(2026, 7, 1, 6, 15), utc(2026, 7, 3, 6, 15))
    started = time.perf_counter()
    bulk = bulk_zone_hours(w, names, "hour_of_day")
    cold = time.perf_counter() - started
    started = time.perf_counter()
    bulk = bulk_zone_hours(w, names, "hour_of_day")
    feasible = bulk.feasible_matrix()
    warm = time.perf_counter() - started
    print(f"\nbulk_zone_hours 100k recipients: cold {cold * 1e3:.1f} ms, warm {warm * 1e3:.1f} ms")
    assert feasible.shape == (100_000, 24)
    assert bulk.errors == ()
    picks = rng.integers(0, len(names), 50)
    for i in picks:
        np.testing.assert_array_equal(feasible[i], zone_hours(w, names[i], "hour_of_day").feasible)


@pytest.mark.parametrize(
    ("start", "end", "match"),
    [
        (datetime(2026, 6, 1, 9), utc(2026, 6, 1, 17), "start .* must be timezone-aware"),
        (utc(2026, 6, 1, 9), datetime(2026, 6, 1, 17), "end .* must be timezone-aware"),
        (utc(2026, 6, 1, 17), utc(2026, 6, 1, 9), "must be before end"),
        (utc(2026, 6, 1, 9), utc(2026, 6, 1, 9), "must be before end"),
        (utc(2026, 6, 1, 9), utc(2026, 6, 1, 9, 0, 30), "must be in"),
        (utc(2026, 6, 1, 9), utc(2026, 6, 15, 9, 0, 1), "must be in"),
    ],
)
def test_invalid_windows(start: datetime, end: datetime, match: str) -> None:
    """Naive, reversed, empty, too short and too long windows are rejected with a message."""
    with pytest.raises(ValueError, match=match):
        SendWindow(start=start, end=end)


def test_window_decodes_from_json_and_rejects_bad_input() -> None:
    """A JSON window decodes to aware datetimes; a reversed one is a msgspec ValidationError."""
    ok = msgspec.json.decode(
        b'{"start": "2026-06-01T09:00:00Z", "end": "2026-06-01T17:00:00+02:00"}', type=SendWindow
    )
    assert ok.end - ok.start == timedelta(hours=6)
    with pytest.raises(msgspec.ValidationError, match="must be before end"):
        msgspec.json.decode(
            b'{"start": "2026-06-02T09:00:00Z", "end": "2026-06-01T17:00:00Z"}', type=SendWindow
        )


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("", "must be an IANA name"),
        ("Mars/Olympus", "not a known IANA time zone"),
        ("America/New York", "not a known IANA time zone"),
        ("../../etc/passwd", "not a known IANA time zone"),
        ("/etc/localtime", "not a known IANA time zone"),
    ],
)
def test_invalid_zone_names(name: str, match: str) -> None:
    """Unknown or malformed zone names are a ValueError naming the zone."""
    with pytest.raises(ValueError, match=match):
        resolve_zone(name)
    with pytest.raises(ValueError, match=match):
        zone_hours(window(utc(2026, 6, 1), utc(2026, 6, 2)), name, "hour_of_day")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda w: hours_in("minute_of_day"), "hour kind"),  # type: ignore[arg-type]
        (lambda w: send_at_for_hour(w, "UTC", "hour_of_day", 24), r"hour == 24"),
        (lambda w: send_at_for_hour(w, "UTC", "hour_of_week", -1), r"hour == -1"),
        (lambda w: check_default(w, LocalHour(hour=24), "hour_of_day"), "local hour == 24"),
        (
            lambda w: check_default(w, FixedInstant(at=utc(2026, 6, 3)), "hour_of_day"),
            "must lie in the send window",
        ),
        (
            lambda w: check_default(w, FixedInstant(at=datetime(2026, 6, 1, 12)), "hour_of_day"),
            "must be timezone-aware",
        ),
    ],
)
def test_invalid_hours_and_defaults(call: object, match: str) -> None:
    """Out-of-range hours, unknown kinds and defaults outside the window are rejected."""
    w = window(utc(2026, 6, 1, 9), utc(2026, 6, 2, 9))
    with pytest.raises(ValueError, match=match):
        call(w)  # type: ignore[operator]


def test_default_fixed_instant_is_the_same_for_everyone() -> None:
    """A fixed-instant default sends everyone at that UTC instant, whatever their zone."""
    w = window(utc(2026, 6, 1, 9), utc(2026, 6, 2, 9))
    default = FixedInstant(at=datetime(2026, 6, 1, 16, tzinfo=ZoneInfo("Europe/Paris")))
    for zone in ZONES:
        assert default_send_at(w, default, zone, "hour_of_day") == utc(2026, 6, 1, 14)
    bulk = bulk_zone_hours(w, ["Asia/Kolkata", "nope", "UTC"], "hour_of_day")
    at = int(utc(2026, 6, 1, 14).timestamp())
    np.testing.assert_array_equal(default_send_at_many(w, default, bulk), [at, NO_SEND_AT, at])


def test_default_local_hour_follows_each_zone_and_falls_back_to_window_start() -> None:
    """A local-hour default sends at that hour in each zone, or at the window start if absent."""
    w = window(utc(2026, 6, 1, 9), utc(2026, 6, 1, 17))
    default = LocalHour(hour=10)
    assert default_send_at(w, default, "America/New_York", "hour_of_day") == utc(2026, 6, 1, 14)
    assert default_send_at(w, default, "Europe/London", "hour_of_day") == utc(2026, 6, 1, 9)
    # Kolkata sees 14:30–22:30 local: 10h never occurs, so the window start is used.
    assert default_send_at(w, default, "Asia/Kolkata", "hour_of_day") == utc(2026, 6, 1, 9)
    names = ["America/New_York", "Europe/London", "Asia/Kolkata", "Nowhere/Else"]
    got = default_send_at_many(w, default, bulk_zone_hours(w, names, "hour_of_day"))
    expected = [int(default_send_at(w, default, z, "hour_of_day").timestamp()) for z in names[:3]]
    np.testing.assert_array_equal(got, [*expected, NO_SEND_AT])


def test_default_send_time_decodes_as_tagged_union() -> None:
    """Campaign JSON picks the default kind by its `kind` tag."""
    decoded = msgspec.json.decode(
        b'[{"kind": "local_hour", "hour": 9},'
        b' {"kind": "fixed_instant", "at": "2026-06-01T10:00:00Z"}]',
        type=list[DefaultSendTime],
    )
    assert decoded == [LocalHour(hour=9), FixedInstant(at=utc(2026, 6, 1, 10))]
