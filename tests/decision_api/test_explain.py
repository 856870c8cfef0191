"""``explain: true`` on /v1/decide: why a learning policy chose, end to end on real Redis/chdb."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from decision_api.settings import LearnerSettings, Settings
from tests.support.polling import eventually

Client = AsyncTestClient[Litestar]

SEGMENTED: dict[str, Any] = {
    "key": "segmented",
    "placement": "home",
    "variants": [{"key": "a"}, {"key": "b"}],
    "default_variant": "a",
    "policy": {"kind": "thompson", "segment_by": "plan", "min_segment_trials": 2},
    "reward_window_s": 1,
    "reward": {"rules": [{"type": "click"}]},
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Fast learning cadence: snapshots every 0.2 s, model polls and sweeps every 0.1 s."""
    return msgspec.structs.replace(
        settings,
        learner=LearnerSettings(
            snapshot_interval_s=0.2, model_poll_interval_s=0.1, reward_sweep_interval_s=0.1
        ),
    )


async def _decide(client: Client, unit: str, **extra: Any) -> dict[str, Any]:
    body = {
        "unit_id": unit,
        "placements": ["home"],
        "context": {"plan": "pro", "health": "private"},
        **extra,
    }
    response = await client.post("/v1/decide", json=body)
    assert response.status_code == 200, response.text
    decision: dict[str, Any] = response.json()["decisions"][0]
    return decision


async def test_explain_names_the_segment_once_it_decides(client: Client) -> None:
    """Before the ``pro`` segment has its own posterior the choice has no explanation (the
    global posterior decided); once it learned, ``explain: true`` names ``plan = pro``. Without
    ``explain`` the answer has no ``explanation`` field; sensitive features never appear."""
    assert (await client.post("/v1/experiments", json=SEGMENTED)).status_code == 201
    assert (await client.post("/v1/experiments/segmented/start")).status_code == 200
    first = await _decide(client, "u0", explain=True)
    assert (first["reason"], first["explanation"]) == ("policy", [])

    for i in range(4):
        await _decide(client, f"u{i}")
        await client.post("/v1/outcomes", json={"type": "click", "unit_id": f"u{i}"})

    async def explained() -> list[dict[str, Any]] | None:
        decision = await _decide(client, "u9", explain=True)
        return decision["explanation"] or None

    factors = await eventually(explained, "an explanation from the pro segment", timeout_s=20)
    assert factors == [{"feature": "plan", "value": "pro"}]
    plain = await _decide(client, "u9")
    assert "explanation" not in plain
    assert "health" not in str(factors)


async def test_explain_must_be_a_boolean(shared_client: Client) -> None:
    """``explain: "yes"`` is a 400/422 naming the field."""
    response = await shared_client.post(
        "/v1/decide", json={"unit_id": "u", "placements": ["home"], "explain": "yes"}
    )
    assert response.status_code in (400, 422), response.text
    assert response.json()["errors"][0]["field"] == "$.explain"


async def _batch(client: Client, tag: str, **extra: Any) -> list[dict[str, Any]]:
    body = {
        "campaign": f"camp-{tag}",
        "placements": [f"mail-{tag}"],
        "recipients": [
            {"unit_id": f"r{i}", "context": {"plan": "pro", "health": "private"}} for i in range(3)
        ],
        **extra,
    }
    response = await client.post("/v1/decide/batch", json=body)
    assert response.status_code == 200, response.text
    return [r["decisions"][0] for r in response.json()["recipients"]]


async def test_bulk_decisions_explain_on_request(client: Client) -> None:
    """``explain: true`` on /v1/decide/batch: every recipient's learning-policy answer carries
    the explanation ``/v1/decide`` gives (``plan = pro`` once that segment decides); without it
    no answer has the field; sensitive features never appear."""
    spec = {**SEGMENTED, "key": "bulk-explained", "placement": "mail-x"}
    assert (await client.post("/v1/experiments", json=spec)).status_code == 201
    assert (await client.post("/v1/experiments/bulk-explained/start")).status_code == 200
    for i in range(4):
        await _decide_placement(client, "mail-x", f"u{i}")
        await client.post("/v1/outcomes", json={"type": "click", "unit_id": f"u{i}"})

    async def explained() -> list[dict[str, Any]] | None:
        answers = await _batch(client, "x", explain=True)
        return answers if all(a.get("explanation") for a in answers) else None

    answers = await eventually(explained, "explained bulk answers", timeout_s=20)
    for answer in answers:
        assert answer["reason"] == "policy"
        assert answer["explanation"] == [{"feature": "plan", "value": "pro"}]
    single = await _decide_placement(client, "mail-x", "r0", explain=True)
    assert single["explanation"] == answers[0]["explanation"]
    assert all("explanation" not in a for a in await _batch(client, "x"))
    assert "health" not in str(answers)


async def test_bulk_explain_must_be_a_boolean(shared_client: Client) -> None:
    """``explain: "yes"`` on /v1/decide/batch is a 400/422 naming the field."""
    response = await shared_client.post(
        "/v1/decide/batch",
        json={
            "campaign": "c",
            "placements": ["p"],
            "recipients": [{"unit_id": "u"}],
            "explain": "yes",
        },
    )
    assert response.status_code in (400, 422), response.text
    assert response.json()["errors"][0]["field"] == "$.explain"


async def _decide_placement(
    client: Client, placement: str, unit: str, **extra: Any
) -> dict[str, Any]:
    body = {
        "unit_id": unit,
        "placements": [placement],
        "context": {"plan": "pro", "health": "private"},
        **extra,
    }
    response = await client.post("/v1/decide", json=body)
    assert response.status_code == 200, response.text
    decision: dict[str, Any] = response.json()["decisions"][0]
    return decision
