"""Admin API for experiments: CRUD, versions, lifecycle, 404/409/422, audit rows in ClickHouse."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from decision_api.app import create_app
from decision_api.services import Services
from decision_api.settings import AuthSettings, Settings
from tailor_contract.definitions import Experiment
from tests.support.polling import eventually

T = TypeVar("T")
Client = AsyncTestClient[Litestar]

HERO_TEMPLATE: dict[str, Any] = {
    "key": "hero-banner",
    "placement": "home_hero",
    "variants": [
        {"key": "control", "weight": 1, "payload": {"img": "a.png"}},
        {"key": "spring", "weight": 1, "payload": {"img": "b.png"}},
    ],
    "default_variant": "control",
    "policy": {"kind": "fixed"},
    "targeting": {"all": [{"attribute": "device", "op": "eq", "value": "mobile"}]},
    "holdout": 0.05,
    "layer": "home",
    "primary_metric": "purchase",
    "guardrail_metrics": ["unsubscribe"],
    "reward_window_s": 1800,
}


@pytest.fixture
def client(shared_client: Client) -> Client:
    """The module's app (each test uses its own experiment keys, placements and layers)."""
    return shared_client


@pytest.fixture
def hero() -> dict[str, Any]:
    """The issue's example definition under a key, placement and layer of this test's own."""
    tag = uuid.uuid4().hex[:8]
    return {**HERO_TEMPLATE, "key": f"hero-{tag}", "placement": f"home-{tag}", "layer": f"l-{tag}"}


def services_of(client: Client) -> Services:
    """The app's open services (its event log shares the app's chdb lock)."""
    services: Services = client.app.state.services
    return services


async def audit_rows(client: Client, key: str) -> list[tuple[Any, ...]]:
    """The audit table's rows for one experiment, oldest first."""
    sql = (
        "SELECT action, entity, entity_key, version, actor, detail FROM audit "
        "WHERE entity_key = {key:String} ORDER BY ts, version"
    )
    return await asyncio.to_thread(services_of(client).event_log.query, sql, {"key": key})


async def test_create_read_list(client: Client, hero: dict[str, Any]) -> None:
    """Create answers 201 with a draft at version 1; read and list return the same definition."""
    created = await client.post("/v1/experiments", json=hero)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["status"], body["version"], body["layer_slice"]) == ("draft", 1, None)
    assert {k: body[k] for k in hero} == {
        **hero,
        "variants": [
            {**v, "weight": 1.0, "features": {}, "eligible": None} for v in hero["variants"]
        ],
    }
    read = await client.get(f"/v1/experiments/{hero['key']}")
    assert read.status_code == 200
    assert read.json() == body
    other = "a-" + hero["key"]
    await client.post("/v1/experiments", json={**hero, "key": other, "layer": None})
    listed = [e["key"] for e in (await client.get("/v1/experiments")).json()["experiments"]]
    assert [k for k in listed if k in {other, hero["key"]}] == [other, hero["key"]]
    assert listed == sorted(listed)


async def test_update_is_a_new_version_with_history(client: Client, hero: dict[str, Any]) -> None:
    """PUT replaces the definition at version + 1; the history endpoint lists every version."""
    await client.post("/v1/experiments", json=hero)
    changed = {**hero, "hypothesis": "spring imagery lifts purchases", "holdout": 0.1}
    updated = await client.put(f"/v1/experiments/{hero['key']}", json=changed)
    assert updated.status_code == 200, updated.text
    assert (updated.json()["version"], updated.json()["holdout"]) == (2, 0.1)
    history = (await client.get(f"/v1/experiments/{hero['key']}/history")).json()["experiments"]
    assert [(e["version"], e["holdout"], e["hypothesis"]) for e in history] == [
        (1, 0.05, ""),
        (2, 0.1, "spring imagery lifts purchases"),
    ]


async def test_lifecycle_and_invalid_transitions(client: Client, hero: dict[str, Any]) -> None:
    """start/pause/start/stop move the status (version + 1 each); an invalid move is 409."""
    await client.post("/v1/experiments", json=hero)
    bad = await client.post(f"/v1/experiments/{hero['key']}/pause")
    assert bad.status_code == 409
    assert bad.json()["code"] == "conflict"
    assert "it is draft" in bad.json()["detail"]
    expected = [("start", "running", 2), ("pause", "paused", 3), ("start", "running", 4),
                ("stop", "stopped", 5)]  # fmt: skip
    for action, status, version in expected:
        moved = await client.post(f"/v1/experiments/{hero['key']}/{action}")
        assert moved.status_code == 200, moved.text
        assert (moved.json()["status"], moved.json()["version"]) == (status, version)
    for action in ("start", "pause", "stop"):
        refused = await client.post(f"/v1/experiments/{hero['key']}/{action}")
        assert refused.status_code == 409
        assert refused.headers["content-type"].startswith("application/problem+json")
    update = await client.put(f"/v1/experiments/{hero['key']}", json=hero)
    assert update.status_code == 409


async def test_duplicate_key_is_409_naming_the_key(client: Client, hero: dict[str, Any]) -> None:
    """Creating a key that exists is a 409 whose error names ``$.key``."""
    assert (await client.post("/v1/experiments", json=hero)).status_code == 201
    again = await client.post("/v1/experiments", json=hero)
    assert again.status_code == 409
    assert again.json()["errors"][0]["field"] == "$.key"


async def test_frozen_fields_of_a_live_experiment_are_409(
    client: Client, hero: dict[str, Any]
) -> None:
    """Changing the placement of a running experiment is refused with the field named."""
    await client.post("/v1/experiments", json=hero)
    await client.post(f"/v1/experiments/{hero['key']}/start")
    moved = await client.put(f"/v1/experiments/{hero['key']}", json={**hero, "placement": "cart"})
    assert moved.status_code == 409
    assert moved.json()["errors"][0]["field"] == "$.placement"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/experiments/nope"),
        ("GET", "/v1/experiments/nope/history"),
        ("PUT", "/v1/experiments/nope"),
        ("POST", "/v1/experiments/nope/start"),
        ("POST", "/v1/experiments/nope/pause"),
        ("POST", "/v1/experiments/nope/stop"),
    ],
)
async def test_unknown_experiment_is_404(client: Client, method: str, path: str) -> None:
    """Every per-experiment endpoint answers 404 problem details for an unknown key."""
    body = {**HERO_TEMPLATE, "key": "nope"} if method == "PUT" else None
    response = await client.request(method, path, json=body)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert "'nope'" in response.json()["detail"]


def _variants(*weights: float) -> list[dict[str, Any]]:
    return [{"key": f"v{i}", "weight": w} for i, w in enumerate(weights)]


INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"variants": _variants(0, 0), "default_variant": "v0"}, "$.variants", "positive total"),
    ({"variants": _variants(1, -1), "default_variant": "v0"}, "$.variants[1].weight", ">= 0"),
    ({"default_variant": "autumn"}, "$.default_variant", "not one of the variants"),
    ({"variants": [{"key": "a"}, {"key": "b"}, {"key": "a"}], "default_variant": "a"},
     "$.variants[2].key", "duplicate variant key 'a'"),
    ({"targeting": {"attribute": "device", "op": "like", "value": "m"}},
     "$.targeting.op", "Invalid enum value 'like'"),
    ({"targeting": {"all": [{"attribute": "device", "op": "eq"}]}},
     "$.targeting.all[0].value", "needs a scalar `value`"),
    ({"targeting": {"attribute": "tier", "op": "in"}}, "$.targeting.value", "non-empty list"),
    ({"targeting": {"all": [{"any": [{"all": [{"any": [
        {"attribute": "x", "op": "exists"}]}]}]}]}},
     "$.targeting", "nested deeper than 4"),
    ({"targeting": {"attribute": "health", "op": "exists"}}, "$.targeting", "sensitive"),
    ({"holdout": 1.5}, "$.holdout", "<= 0.9"),
    ({"key": "has space"}, "$.key", "regex"),
    ({"policy": {"kind": "oracle"}}, "$.policy.kind", "Invalid value 'oracle'"),
    ({"reward_window_s": "soon"}, "$.reward_window_s", "Expected `int`"),
    ({"colour": "red"}, "$.colour", "unknown field `colour`"),
    ({"start_at": "2027-01-02T00:00:00Z", "end_at": "2027-01-01T00:00:00Z"},
     "$.end_at", "must be after start_at"),
    ({"start_at": "2027-01-02T00:00:00Z", "end_at": "2027-01-02T00:00:00Z"},
     "$.end_at", "must be after start_at"),
    ({"start_at": "2027-01-01T00:00:00"}, "$.start_at", "timezone"),
    ({"end_at": "next week"}, "$.end_at", "datetime"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "field", "match"), INVALID)
async def test_invalid_definitions_are_422_naming_the_field(
    client: Client, hero: dict[str, Any], changes: dict[str, Any], field: str, match: str
) -> None:
    """A definition breaking a rule is a 422 problem whose first error names the field."""
    for method, path in (("POST", "/v1/experiments"), ("PUT", f"/v1/experiments/{hero['key']}")):
        response = await client.request(method, path, json={**hero, **changes})
        assert response.status_code == 422, response.text
        problem = response.json()
        assert problem["code"] == "invalid_input"
        assert problem["errors"][0]["field"] == field
        assert match in problem["errors"][0]["message"]
    listed = (await client.get("/v1/experiments")).json()["experiments"]
    assert hero["key"] not in {e["key"] for e in listed}


async def test_full_layer_is_409_and_stopping_frees_the_slice(
    client: Client, hero: dict[str, Any]
) -> None:
    """A start that finds no free slice in its layer is 409; after a stop the slice is reused."""
    url = "/v1/experiments/" + hero["key"]
    for suffix, traffic in [("a", 0.6), ("b", 0.4), ("c", 0.5)]:
        spec = {**hero, "key": hero["key"] + suffix, "traffic": traffic, "targeting": None}
        assert (await client.post("/v1/experiments", json=spec)).status_code == 201
    a = (await client.post(url + "a/start")).json()
    b = (await client.post(url + "b/start")).json()
    assert (a["layer_slice"], b["layer_slice"]) == (
        {"start": 0.0, "end": 0.6},
        {"start": 0.6, "end": 1.0},
    )
    full = await client.post(url + "c/start")
    assert full.status_code == 409
    assert full.json()["errors"][0]["field"] == "$.traffic"
    assert "no free 50% slice" in full.json()["detail"]
    await client.post(url + "a/stop")
    c = await client.post(url + "c/start")
    assert c.status_code == 200
    assert c.json()["layer_slice"] == {"start": 0.0, "end": 0.5}


async def test_every_change_is_written_to_the_audit_table(
    client: Client, hero: dict[str, Any]
) -> None:
    """create, update, start, pause and stop each land in ClickHouse ``audit`` with the version."""
    await client.post("/v1/experiments", json=hero)
    await client.put(f"/v1/experiments/{hero['key']}", json={**hero, "hypothesis": "h"})
    for action in ("start", "pause", "stop"):
        await client.post(f"/v1/experiments/{hero['key']}/{action}")
    await client.post(f"/v1/experiments/{hero['key']}/start")  # refused: not audited

    async def five_rows() -> list[tuple[Any, ...]]:
        rows = await audit_rows(client, hero["key"])
        return rows if len(rows) >= 5 else []

    rows = await eventually(five_rows)
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        ("create", "experiment", hero["key"], 1, "anonymous"),
        ("update", "experiment", hero["key"], 2, "anonymous"),
        ("start", "experiment", hero["key"], 3, "anonymous"),
        ("pause", "experiment", hero["key"], 4, "anonymous"),
        ("stop", "experiment", hero["key"], 5, "anonymous"),
    ]
    snapshots = [msgspec.json.decode(r[5], type=Experiment) for r in rows]
    assert [s.status.value for s in snapshots] == ["draft", "draft", "running", "paused", "stopped"]
    assert snapshots[1].hypothesis == "h"


async def test_api_keys_guard_the_admin_api_and_name_the_actor(
    settings: Settings, hero: dict[str, Any]
) -> None:
    """With keys configured: no key 401, a decide-only key 403, an admin key's id is the actor."""
    keyed = msgspec.structs.replace(
        settings, auth=AuthSettings(api_keys="admin-secret:admin,page-secret:decide")
    )
    app = create_app(keyed)
    async with AsyncTestClient(app=app) as client:
        assert (await client.post("/v1/experiments", json=hero)).status_code == 401
        wrong = await client.post(
            "/v1/experiments", json=hero, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        page = await client.post("/v1/experiments", json=hero, headers={"X-API-Key": "page-secret"})
        assert page.status_code == 403
        assert page.json()["code"] == "forbidden"
        admin = {"Authorization": "Bearer admin-secret"}
        assert (await client.post("/v1/experiments", json=hero, headers=admin)).status_code == 201
        decide = {"unit_id": "u-1", "placements": ["home_hero"]}
        page_decide = await client.post(
            "/v1/decide", json=decide, headers={"X-API-Key": "page-secret"}
        )
        assert page_decide.status_code == 200

        async def one_row() -> list[tuple[Any, ...]]:
            return await audit_rows(client, hero["key"])

        rows = await eventually(one_row)
        actor = rows[0][4]
        assert actor.startswith("key_")
        assert "admin-secret" not in actor


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


async def test_schedule_starts_and_stops_the_experiment_and_audits_it(
    client: Client, hero: dict[str, Any]
) -> None:
    """A draft with ``start_at``/``end_at`` starts and stops by itself, audited as ``schedule``."""
    now = time.time()
    spec = {**hero, "targeting": None, "start_at": _iso(now + 1.0), "end_at": _iso(now + 5.0)}
    assert (await client.post("/v1/experiments", json=spec)).status_code == 201
    url = f"/v1/experiments/{hero['key']}"

    async def status_is(status: str) -> bool:
        return (await client.get(url)).json()["status"] == status

    assert await status_is("draft")
    await eventually(lambda: status_is("running"))

    async def serves_it() -> bool:
        # Deciding sees a started experiment once its cached definitions refresh (within the
        # poll interval), not in the same instant as the admin API (a clean clone saw the gap).
        decided = await client.post(
            "/v1/decide", json={"unit_id": "u1", "placements": [hero["placement"]]}
        )
        return decided.json()["decisions"][0].get("experiment") == hero["key"]

    await eventually(serves_it, "decide serves the started experiment", timeout_s=3.0)
    await eventually(lambda: status_is("stopped"))

    async def three_rows() -> list[tuple[Any, ...]]:
        rows = await audit_rows(client, hero["key"])
        return rows if len(rows) >= 3 else []

    rows = await eventually(three_rows)
    assert [(r[0], r[3], r[4]) for r in rows] == [
        ("create", 1, "anonymous"),
        ("start", 2, "schedule"),
        ("stop", 3, "schedule"),
    ]
