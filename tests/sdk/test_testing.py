"""``sdk.testing``: fake clients with scripted decisions and a recorder, for users' own tests."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import pytest

from sdk import (
    AsyncTailorClient,
    DefaultVariant,
    InvalidRequest,
    TailorClient,
    TransportError,
)
from sdk.testing import FakeAsyncTailorClient, FakeTailorClient, Recorder, Scripted

PUBLIC = ["decide", "decide_batch", "track_outcome", "flush"]


@pytest.mark.parametrize(
    ("real", "fake", "closing"),
    [
        (TailorClient, FakeTailorClient, ["close", "__enter__", "__exit__"]),
        (AsyncTailorClient, FakeAsyncTailorClient, ["aclose", "start", "__aenter__", "__aexit__"]),
    ],
)
def test_fakes_have_the_clients_public_api(real: type, fake: type, closing: list[str]) -> None:
    """Each fake takes the same arguments (names, kinds, defaults) as the client it stands
    for, and is async exactly where the client is."""
    for name in PUBLIC:
        ours = inspect.signature(getattr(fake, name))
        theirs = inspect.signature(getattr(real, name))
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
            (p.name, p.kind, p.default) for p in theirs.parameters.values()
        ], name
        assert inspect.iscoroutinefunction(getattr(fake, name)) == inspect.iscoroutinefunction(
            getattr(real, name)
        ), name
    for name in closing:
        assert hasattr(fake, name), name


def by_segment(unit_id: str, context: Mapping[str, Any]) -> str | None:
    """A scripted policy: VIPs see the offer, nobody else is in the experiment."""
    return "ten-off" if context.get("segment") == "vip" else None


def test_scripted_decisions_and_recorded_outcomes() -> None:
    """Scripted placements answer their variant (by key, Scripted or function), unscripted
    ones the caller's default as with no experiment; calls and outcomes are recorded."""
    client = FakeTailorClient({
        "home_hero": Scripted("spring", payload={"img": "b.png"}, experiment="hero-banner"),
        "footer": "plain",
        "offer": by_segment,
    })  # fmt: skip
    defaults = {"offer": "none", "carousel": DefaultVariant(variant="best", payload={"n": 4})}
    with client:
        result = client.decide(
            "u-1", ["home_hero", "footer", "offer", "carousel"], {"segment": "vip"},
            defaults=defaults,
        )  # fmt: skip
        assert result.payload("home_hero") == {"img": "b.png"}
        assert result["home_hero"].experiment == "hero-banner"
        assert [result.variant(p) for p in ("footer", "offer", "carousel")] == [
            "plain", "ten-off", "best"
        ]  # fmt: skip
        assert result["carousel"].reason == "no_experiment" and not result.fallback
        other = client.decide("u-2", ["offer"], {"segment": "new"}, defaults=defaults)
        assert other["offer"].variant == "none" and other["offer"].reason == "no_experiment"
        assert result.decision_id is not None
        event_id = client.track_outcome("purchase", decision_id=result.decision_id, value=42.0)
        assert len(event_id) == 32
        assert client.flush()
    recorder = client.recorder
    assert [c.unit_id for c in recorder.decisions] == ["u-1", "u-2"]
    assert recorder.variants("offer") == ["ten-off", "none"]
    assert [(o.type, o.decision_id, o.value) for o in recorder.outcomes_of("purchase")] == [
        ("purchase", result.decision_id, 42.0)
    ]
    assert recorder.flushes == 1 and recorder.closed


def test_fake_checks_arguments_as_the_client_does() -> None:
    """A bad unit id falls back with InvalidRequest; a bad outcome raises and is not recorded."""
    client = FakeTailorClient({"home": "b"})
    result = client.decide("bad\n", ["home"], defaults={"home": "a"})
    assert result.fallback and isinstance(result.error, InvalidRequest)
    assert result["home"].variant == "a"
    with pytest.raises(InvalidRequest, match="decision_id"):
        client.track_outcome("click")
    assert client.recorder.outcomes == []


def test_a_down_api_is_scripted_with_an_error() -> None:
    """With ``error=`` every decision falls back to the defaults, carrying that error."""
    down = TransportError("could not connect to http://tailor: connection refused")
    client = FakeTailorClient({"home": "b"}, error=down)
    result = client.decide("u-1", ["home"], defaults={"home": "a"})
    assert result.fallback and result.error is down and result["home"].variant == "a"
    batch = list(client.decide_batch("spring", [{"unit_id": "r-1"}], ["home"]))
    assert batch[0].fallback and batch[0].error is down


def test_batches_are_scripted_and_recorded() -> None:
    """decide_batch answers every recipient in order with the script (recipient context
    included) and records the campaign."""
    client = FakeTailorClient({"subject": "emoji", "offer": by_segment})
    recipients = [{"unit_id": "r-1", "context": {"segment": "vip"}}, {"unit_id": "r-2"}]
    results = list(client.decide_batch("spring", recipients, ["subject", "offer"], step="w1"))
    assert [(r.index, r.unit_id, r["subject"].variant, r["offer"].variant) for r in results] == [
        (0, "r-1", "emoji", "ten-off"), (1, "r-2", "emoji", None)
    ]  # fmt: skip
    call = client.recorder.batches[0]
    assert (call.campaign, call.unit_ids, call.step) == ("spring", ["r-1", "r-2"], "w1")
    with pytest.raises(InvalidRequest, match="campaign"):
        client.decide_batch("bad campaign!", recipients, ["subject"])


async def test_async_fake_shares_a_recorder() -> None:
    """The async fake answers the same way, and a Recorder can be shared between fakes."""
    recorder = Recorder()
    async with FakeAsyncTailorClient({"home": "b"}, recorder=recorder) as client:
        result = await client.decide("u-1", ["home"])
        assert result["home"].variant == "b"
        answers = [r async for r in client.decide_batch("c", [{"unit_id": "r"}], ["home"])]
        assert answers[0]["home"].variant == "b"
        client.track_outcome("click", decision_id=result.decision_id)
        assert await client.flush()
    FakeTailorClient(recorder=recorder).decide("u-2", ["home"])
    assert [c.unit_id for c in recorder.decisions] == ["u-1", "u-2"]
    assert len(recorder.outcomes) == 1 and recorder.closed
