"""The bulk send-time step's open-hour histories: sparse stored cells and dense bins agree."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import pytest

from decision_api.decisions.send_times import SendTimeGroup, history_features
from decision_api.profiles.store import EMPTY_PROFILE, UnitProfile, decode_profile
from tailor_contract.definitions import SendTimeSpec
from tailor_contract.send_window import HourKind, SendWindow

ZONES = ("UTC", "America/New_York", "Asia/Kolkata", "Asia/Tokyo", "Pacific/Auckland", "Bad/Zone")
WINDOW = SendWindow(start=datetime(2026, 3, 28, tzinfo=UTC), end=datetime(2026, 3, 30, tzinfo=UTC))


def _profiles(n: int, seed: int) -> tuple[list[UnitProfile], list[str]]:
    """Decoded profiles (some without history, some with opens and clicks on one cell)."""
    rng = random.Random(seed)
    profiles, zones = [], []
    for i in range(n):
        zones.append(rng.choice(ZONES))
        if i % 4 == 0:
            profiles.append(EMPTY_PROFILE)
            continue
        raw: dict[str, str] = {"f:plan": "s:pro"}
        for _ in range(rng.randint(0, 5)):
            typ = rng.choice(("email_open", "email_click", "web_visit"))
            raw[f"h:{typ}:{rng.randrange(168)}"] = str(rng.randint(0, 4))
        profiles.append(decode_profile(raw, WINDOW.start_s))
    return profiles, zones


def _histories(profiles: list[UnitProfile], zones: list[str], kind: HourKind) -> Any:
    compiled = SimpleNamespace(experiment=SimpleNamespace(send_time=SendTimeSpec(hours=kind)))
    chunk = SimpleNamespace(units=[], zones=zones, profiles=profiles, placed=[])
    members = [(k, 1) for k in range(len(profiles))]
    group = SendTimeGroup(None, compiled, chunk, members, None, WINDOW)  # type: ignore[arg-type]
    return group._local_histories(range(0, len(profiles), 2))  # every other member pending


def _reference(profile: UnitProfile, zone: str, kind: HourKind) -> Any:
    """Opens + clicks per UTC hour of week, rolled by the zone's whole-hour offset."""
    week = np.zeros(168)
    for typ in ("email_open", "email_click"):
        if typ in profile.hours:
            week += np.asarray(profile.hours[typ], dtype=np.float64)
    offset = 0
    if zone != "Bad/Zone":
        delta = datetime.fromtimestamp(WINDOW.start_s, ZoneInfo(zone)).utcoffset()
        assert delta is not None
        offset = round(delta.total_seconds() / 3600)
    local = np.roll(week, offset)
    return local if kind == "hour_of_week" else local.reshape(7, 24).sum(axis=0)


@pytest.mark.parametrize("kind", ["hour_of_day", "hour_of_week"])
def test_histories_from_stored_cells_equal_the_dense_bins(kind: HourKind) -> None:
    profiles, zones = _profiles(400, seed=7)
    assert any(p.hour_cells for p in profiles)
    dense = [msgspec.structs.replace(p, hour_cells=[]) for p in profiles]
    mixed = [d if k % 3 else p for k, (p, d) in enumerate(zip(profiles, dense, strict=True))]

    from_cells = _histories(profiles, zones, kind)
    expected = np.stack(
        [_reference(profiles[k], zones[k], kind) for k in range(0, len(profiles), 2)]
    )
    np.testing.assert_array_equal(from_cells, expected)
    np.testing.assert_array_equal(_histories(dense, zones, kind), expected)
    np.testing.assert_array_equal(_histories(mixed, zones, kind), expected)


def test_decoded_profile_lists_its_hour_cells() -> None:
    raw = {"h:email_open:5": "2", "h:email_click:5": "1", "h:email_open:170": "3"}
    with pytest.raises(IndexError):  # an hour outside the week is refused as before
        decode_profile(raw, WINDOW.start_s)
    del raw["h:email_open:170"]
    profile = decode_profile(raw, WINDOW.start_s)
    assert sorted(profile.hour_cells) == [("email_click", 5, 1), ("email_open", 5, 2)]
    assert profile.hours["email_open"][5] == 2


def test_contextual_history_features_for_a_group_equal_each_members_own() -> None:
    """The vectorised features a contextual policy sees (peak UTC hour, opens and clicks, or no
    history) equal :func:`history_features` of each member's dense 168-bin week."""
    profiles, zones = _profiles(400, seed=11)
    compiled = SimpleNamespace(experiment=SimpleNamespace(send_time=SendTimeSpec()))
    chunk = SimpleNamespace(units=[], zones=zones, profiles=profiles, placed=[])
    members = [(k, 1) for k in range(len(profiles))]
    group = SendTimeGroup(None, compiled, chunk, members, None, WINDOW)  # type: ignore[arg-type]
    pending = list(range(1, len(profiles), 2))
    got = group._history_features(pending)

    expected = []
    for k in pending:
        week = np.zeros(168)
        for typ in ("email_open", "email_click"):
            if typ in profiles[k].hours:
                week += np.asarray(profiles[k].hours[typ], dtype=np.float64)
        expected.append(history_features(week))
    assert got == expected
    assert {"email_history": "none"} in got
    assert any("email_peak_hour_utc" in f for f in got)


def test_an_open_and_a_click_in_the_same_hour_both_count() -> None:
    raw = {"h:email_open:30": "2", "h:email_click:30": "1", "h:web_visit:30": "5"}
    profile = decode_profile(raw, WINDOW.start_s)
    histories = _histories([profile, EMPTY_PROFILE], ["UTC", "UTC"], "hour_of_week")
    assert histories[0][30] == 3.0 and histories[0].sum() == 3.0
