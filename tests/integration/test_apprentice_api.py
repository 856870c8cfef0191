"""Apprentice mode through the API: decisions say who serves; an admin takes over."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from decision_api.app import create_app
from decision_api.settings import LearnerSettings, Settings
from tests.integration.test_learning_loop import decide_and_click, definition, model, start
from tests.support.polling import eventually


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Fast learning cadence: snapshots every 0.2 s, model polls and sweeps every 0.1 s."""
    return msgspec.structs.replace(
        settings,
        learner=LearnerSettings(
            snapshot_interval_s=0.2, model_poll_interval_s=0.1, reward_sweep_interval_s=0.1
        ),
    )


@pytest.fixture
async def quiet_client(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """A client whose worker runs no learner (only the admin API changes models)."""
    quiet = msgspec.structs.replace(
        settings, learner=msgspec.structs.replace(settings.learner, in_process=False)
    )
    async with AsyncTestClient(app=create_app(quiet)) as c:
        yield c


async def decide(client: AsyncTestClient[Litestar], unit: str) -> dict[str, object]:
    got = await client.post("/v1/decide", json={"unit_id": unit, "placements": ["home"]})
    assert got.status_code == 200, got.text
    decision: dict[str, object] = got.json()["decisions"][0]
    return decision


async def test_an_admin_takes_over_a_manual_apprentice(
    quiet_client: AsyncTestClient[Litestar],
) -> None:
    client = quiet_client
    policy = {"kind": "thompson", "apprentice": {"takeover": "manual", "explore": 0.3}}
    await start(client, definition("app", policy))
    for i in range(60):
        answer = await decide(client, f"u{i}")
        assert (answer["reason"], answer["policy"]) == ("policy", "apprentice:thompson")
    warm = await client.post("/v1/experiments/app/model/warm-start")
    assert warm.status_code == 200, warm.text
    assert warm.json()["kind"] == "apprentice:thompson"
    model = (await client.get("/v1/experiments/app/model")).json()
    assert model["apprentice"]["serving"] == "split" and model["apprentice"]["n"] == 60

    taken = await client.post("/v1/experiments/app/takeover")
    assert taken.status_code == 200, taken.text
    body = taken.json()
    assert body["model"]["kind"] == "thompson"
    assert body["apprentice"]["serving"] == "policy"
    assert body["apprentice"]["taken_over_by"] == "admin"
    assert body["apprentice"]["n"] == 60
    version = str(body["model"]["version"])

    async def served_by_the_model() -> bool:
        answer = await decide(client, "later")
        return answer.get("model_version") == version and answer["policy"] == "thompson"

    await eventually(served_by_the_model, what="the taken-over model served")
    model = (await client.get("/v1/experiments/app/model")).json()
    assert model["apprentice"]["taken_over_by"] == "admin"


async def _report(
    client: AsyncTestClient[Litestar], key: str, ready: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The report's apprentice section once ``ready`` (exposures reach the log in batches)."""

    async def probe() -> dict[str, Any] | None:
        got = await client.get(f"/v1/experiments/{key}/report")
        assert got.status_code == 200, got.text
        section: dict[str, Any] = got.json()["apprentice"]
        return section if ready(section) else None

    return await eventually(probe, what="the report's apprentice section")


async def test_the_report_says_who_serves_and_when_it_took_over(
    quiet_client: AsyncTestClient[Litestar],
) -> None:
    """The report's apprentice section: before any model, the rule serves and nothing is
    estimated; after a warm start, the model's estimate with its interval; after the admin's
    takeover, who took over and the first decision the policy served itself, from the log.
    The text report says the same."""
    client = quiet_client
    policy = {"kind": "thompson", "apprentice": {"takeover": "manual", "explore": 0.3}}
    await start(client, definition("rep", policy))
    for i in range(40):
        await decide(client, f"u{i}")
    section = await _report(client, "rep", lambda s: s["rule_decisions"] == 40)
    assert (section["serving"], section["decisions_learned"], section["gain"]) == ("rule", 0, None)
    assert "learned nothing yet" in section["sentence"]
    assert (await client.post("/v1/experiments/rep/model/warm-start")).status_code == 200
    section = await _report(client, "rep", lambda s: s["decisions_learned"] == 40)
    assert section["gain"] is not None
    assert section["taken_over_at"] is None and section["takeover"] == "manual"
    assert (await client.post("/v1/experiments/rep/takeover")).status_code == 200

    async def own() -> bool:
        return (await decide(client, "later"))["policy"] == "thompson"

    await eventually(own, what="the policy serving its own choices")
    section = await _report(client, "rep", lambda s: s["policy_decisions"] >= 1)
    assert (section["serving"], section["taken_over_by"]) == ("policy", "admin")
    assert section["taken_over_at"]
    text = await client.get("/v1/experiments/rep/report", params={"format": "text"})
    assert "thompson took over from the fixed split by an admin at" in text.text


async def test_takeover_needs_an_apprentice_and_a_model(
    quiet_client: AsyncTestClient[Litestar],
) -> None:
    await start(quiet_client, definition("plain", {"kind": "thompson"}))
    got = await quiet_client.post("/v1/experiments/plain/takeover")
    assert got.status_code == 409 and "$.policy.apprentice" in got.text
    await start(quiet_client, definition("fresh", {"kind": "thompson", "apprentice": {}}))
    got = await quiet_client.post("/v1/experiments/fresh/takeover")
    assert got.status_code == 409, got.text


async def test_an_auto_apprentice_takes_over_through_the_learner(
    client: AsyncTestClient[Litestar],
) -> None:
    """The uniform split serves while the learner teaches the apprentice (only c is clicked);
    once its gain's lower bound is above zero the learner publishes the takeover and the
    workers serve the policy's own choices."""
    policy = {
        "kind": "thompson",
        "apprentice": {"takeover": "auto", "explore": 0.3, "min_decisions": 100},
    }
    await start(client, definition("auto", policy, placement="home", window_s=1))
    answers = await decide_and_click(client, 200, clicked={"c"})
    served = [a["decisions"][0]["policy"] for a in answers]
    # The split serves until the takeover, which may come before the 200th decision on a slow
    # machine (the 1 s window closes while they are made), never before min_decisions.
    apprenticed = served.index("thompson") if "thompson" in served else len(served)
    assert apprenticed >= 100, served
    assert set(served[:apprenticed]) == {"apprentice:thompson"}
    assert set(served[apprenticed:]) <= {"thompson"}, served

    async def taken_over() -> bool:
        info = await model(client, "auto")
        return bool(info) and info["kind"] == "thompson"

    await eventually(taken_over, what="the learner's takeover published")
    info = await model(client, "auto")
    estimate = info["apprentice"]
    assert estimate["taken_over_by"] == "auto" and estimate["gain_lower"] > 0.0
    assert estimate["own"] > estimate["split"]

    async def serves_its_own() -> bool:
        got = await client.post("/v1/decide", json={"unit_id": "late", "placements": ["home"]})
        return bool(got.json()["decisions"][0]["policy"] == "thompson")

    await eventually(serves_its_own, what="workers serving the apprentice's own choices")
