"""Contact caps across experiments, end to end on real Redis and chdb: the admin API, the
``contact_capped`` reason in ``/v1/decide`` and bulk decisions, priorities, counters in the
unit's profile hash."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from decision_api.profiles.store import unit_key
from decision_api.settings import Settings
from tests.decision_api.test_decide import exposures
from tests.support.polling import eventually

Client = AsyncTestClient[Litestar]


@pytest.fixture
def client(shared_client: Client) -> Client:
    """The module's app; every test uses keys and placements of its own."""
    return shared_client


@pytest.fixture
def tag() -> str:
    """A suffix making this test's names unique."""
    return uuid.uuid4().hex[:8]


async def promo(client: Client, key: str, cap: str, priority: int) -> str:
    """Start an experiment in the cap whose split always shows ``promo`` (the default ``none``
    has no weight); returns its placement."""
    spec = {
        "key": key,
        "placement": f"p-{key}",
        "variants": [{"key": "none", "weight": 0}, {"key": "promo", "payload": {"x": key}}],
        "default_variant": "none",
        "contact_cap": cap,
        "priority": priority,
    }
    created = await client.post("/v1/experiments", json=spec)
    assert created.status_code == 201, created.text
    assert (await client.post(f"/v1/experiments/{key}/start")).status_code == 200
    return f"p-{key}"


async def put_cap(client: Client, name: str, max_exposures: int, window_s: int) -> None:
    """Define a contact cap."""
    response = await client.put(
        f"/v1/contact-caps/{name}", json={"max_exposures": max_exposures, "window_s": window_s}
    )
    assert response.status_code == 200, response.text


async def decide(client: Client, unit: str, placements: list[str]) -> dict[str, Any]:
    """One decide call; placement -> decision, plus the decision id under ``"id"``."""
    response = await client.post("/v1/decide", json={"unit_id": unit, "placements": placements})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [d["placement"] for d in body["decisions"]] == placements  # request order kept
    return {"id": body["decision_id"], **{d["placement"]: d for d in body["decisions"]}}


async def test_contact_cap_admin_api(client: Client, tag: str) -> None:
    """Caps are created, read, listed, replaced; refused when invalid, unknown or in use."""
    name = f"promo-{tag}"
    await put_cap(client, name, 3, 604800)
    assert (await client.get(f"/v1/contact-caps/{name}")).json() == {
        "name": name, "max_exposures": 3, "window_s": 604800,
    }  # fmt: skip
    await put_cap(client, name, 2, 86400)
    listed = (await client.get("/v1/contact-caps")).json()["contact_caps"]
    assert {"name": name, "max_exposures": 2, "window_s": 86400} in listed
    bad = await client.put(f"/v1/contact-caps/{name}", json={"max_exposures": 0, "window_s": 1})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "$.max_exposures"
    assert (await client.get(f"/v1/contact-caps/nope-{tag}")).status_code == 404
    unknown = await client.post("/v1/experiments", json={
        "key": f"x-{tag}", "placement": f"x-{tag}", "variants": [{"key": "a"}],
        "default_variant": "a", "contact_cap": f"nope-{tag}"})  # fmt: skip
    assert unknown.status_code == 422, unknown.text
    assert unknown.json()["errors"][0]["field"] == "$.contact_cap"
    await promo(client, f"a-{tag}", name, 0)
    in_use = await client.delete(f"/v1/contact-caps/{name}")
    assert in_use.status_code == 409 and f"a-{tag}" in in_use.json()["detail"]
    await client.post(f"/v1/experiments/a-{tag}/stop")
    assert (await client.delete(f"/v1/contact-caps/{name}")).status_code == 204
    assert (await client.get(f"/v1/contact-caps/{name}")).status_code == 404


async def test_cap_spans_experiments_and_goes_to_the_highest_priority(
    client: Client, tag: str, redis: Redis, shared_settings: Settings
) -> None:
    """With 2 contacts a week, one request for three capped placements serves the two highest
    priorities and answers ``contact_capped`` for the third; later requests are all capped."""
    name = f"email-{tag}"
    await put_cap(client, name, 2, 7 * 86400)
    low = await promo(client, f"low-{tag}", name, 0)
    mid = await promo(client, f"mid-{tag}", name, 5)
    high = await promo(client, f"high-{tag}", name, 10)
    unit = f"u-{tag}"
    first = await decide(client, unit, [low, mid, high])
    assert [first[p]["variant"] for p in (low, mid, high)] == ["none", "promo", "promo"]
    assert (first[low]["reason"], first[low]["policy"]) == ("contact_capped", "default")
    rows = await exposures(client, first["id"], count=3)
    assert sorted(r["reason"] for r in rows) == ["contact_capped", "split", "split"]

    key = unit_key(shared_settings.redis.key_prefix, unit)

    async def counted() -> bool:
        raw = await redis.hget(key, f"c:@{name}")
        return raw is not None and len(raw.split(",")) == 2

    await eventually(counted)
    later = await decide(client, unit, [high, mid])
    assert [later[p]["reason"] for p in (high, mid)] == ["contact_capped", "contact_capped"]
    other = await decide(client, f"v-{tag}", [high])
    assert other[high]["reason"] == "split"


async def test_cap_window_slides(client: Client, tag: str) -> None:
    """A unit capped by a 1 s window is contacted again once its exposure leaves the window."""
    name = f"daily-{tag}"
    await put_cap(client, name, 1, 1)
    placement = await promo(client, f"w-{tag}", name, 0)
    unit = f"u-{tag}"
    assert (await decide(client, unit, [placement]))[placement]["reason"] == "split"
    await asyncio.sleep(0.1)
    assert (await decide(client, unit, [placement]))[placement]["reason"] == "contact_capped"
    await asyncio.sleep(1.1)
    assert (await decide(client, unit, [placement]))[placement]["reason"] == "split"


async def test_bulk_decisions_apply_the_cap_by_priority(client: Client, tag: str) -> None:
    """In a batch, each recipient gets the one contact the cap allows, from the higher-priority
    experiment, whatever the order of the campaign's placements."""
    name = f"batch-{tag}"
    await put_cap(client, name, 1, 86400)
    low = await promo(client, f"blow-{tag}", name, -3)
    high = await promo(client, f"bhigh-{tag}", name, 7)
    body = {
        "campaign": f"c-{tag}",
        "placements": [low, high],
        "recipients": [{"unit_id": f"r{i}-{tag}"} for i in range(50)],
    }
    response = await client.post("/v1/decide/batch", json=body)
    assert response.status_code == 200, response.text
    for recipient in response.json()["recipients"]:
        got = {d["placement"]: d for d in recipient["decisions"]}
        assert (got[high]["variant"], got[high]["reason"]) == ("promo", "split")
        assert (got[low]["variant"], got[low]["reason"]) == ("none", "contact_capped")
