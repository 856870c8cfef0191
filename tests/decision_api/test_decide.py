"""POST /v1/decide end to end: variants, reasons, consent, features, layers, exposure rows."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, TypeVar

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from decision_api.decisions.engine import Pseudonymiser
from decision_api.services import Services
from tailor_contract.assignment import in_holdout, in_layer, variant_index
from tailor_contract.definitions import LayerSlice
from tests.support.polling import eventually

pytestmark = pytest.mark.redis_cluster

T = TypeVar("T")
Client = AsyncTestClient[Litestar]

EXPOSURE_SQL = """
SELECT toString(event_id), decision_id, toUnixTimestamp64Milli(ts), unit_id, experiment,
       experiment_version, placement, variant, propensity, policy, policy_version, reason,
       holdout, context
FROM exposures WHERE decision_id = {decision_id:String} ORDER BY placement
"""
EXPOSURE_FIELDS = (
    "event_id", "decision_id", "ts_ms", "unit_id", "experiment", "experiment_version",
    "placement", "variant", "propensity", "policy", "policy_version", "reason", "holdout",
    "context",
)  # fmt: skip


@pytest.fixture
def client(shared_client: Client) -> Client:
    """The module's app; every test uses experiment keys and placements of its own."""
    return shared_client


@pytest.fixture
def tag() -> str:
    """A suffix making this test's keys, placements, layers and unit ids unique."""
    return uuid.uuid4().hex[:8]


def services_of(client: Client) -> Services:
    """The app's open services."""
    services: Services = client.app.state.services
    return services


async def exposures(client: Client, decision_id: str, count: int = 1) -> list[dict[str, Any]]:
    """The exposure rows of one decision, once ``count`` of them have been flushed."""

    async def probe() -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(
            services_of(client).event_log.query, EXPOSURE_SQL, {"decision_id": decision_id}
        )
        return (
            [dict(zip(EXPOSURE_FIELDS, r, strict=True)) for r in rows] if len(rows) >= count else []
        )

    return await eventually(probe)


async def running(client: Client, key: str, placement: str, **changes: Any) -> dict[str, Any]:
    """Create and start an experiment; returns its running definition."""
    spec = {
        "key": key,
        "placement": placement,
        "variants": [
            {"key": "control", "weight": 1, "payload": {"img": "a.png"}},
            {"key": "spring", "weight": 3, "payload": {"img": "b.png"}},
        ],
        "default_variant": "control",
        **changes,
    }
    created = await client.post("/v1/experiments", json=spec)
    assert created.status_code == 201, created.text
    started = await client.post(f"/v1/experiments/{key}/start")
    assert started.status_code == 200, started.text
    body: dict[str, Any] = started.json()
    return body


async def decide(client: Client, unit_id: str, *placements: str, **extra: Any) -> dict[str, Any]:
    """One decide call that must succeed."""
    response = await client.post(
        "/v1/decide", json={"unit_id": unit_id, "placements": list(placements), **extra}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_running_experiment_serves_the_hashed_variant(client: Client, tag: str) -> None:
    """Each unit gets the variant its hash picks, with payload, propensity, policy and reason."""
    key, placement = f"hero-{tag}", f"home-{tag}"
    await running(client, key, placement)
    seen = set()
    for i in range(40):
        unit = f"u-{tag}-{i}"
        answer = await decide(client, unit, placement, context={"device": "mobile"})
        assert answer["degraded"] is False
        assert len(answer["decision_id"]) == 32
        (placed,) = answer["decisions"]
        index = variant_index(key, unit, [1, 3])
        expected = [("control", {"img": "a.png"}, 0.25), ("spring", {"img": "b.png"}, 0.75)][index]
        assert placed == {
            "placement": placement,
            "experiment": key,
            "variant": expected[0],
            "payload": expected[1],
            "propensity": expected[2],
            "policy": "fixed",
            "reason": "split",
        }
        seen.add(placed["variant"])
        again = await decide(client, unit, placement)
        assert again["decisions"] == answer["decisions"]  # deterministic per unit
        assert again["decision_id"] != answer["decision_id"]
    assert seen == {"control", "spring"}


@pytest.mark.parametrize(
    ("context", "reason", "variant"),
    [
        ({"device": "desktop"}, "not_targeted", "control"),
        ({}, "not_targeted", "control"),
        ({"device": "mobile"}, "split", None),
    ],
)
async def test_targeting_mismatch_gets_the_default(
    client: Client, tag: str, context: dict[str, Any], reason: str, variant: str | None
) -> None:
    """A unit the rules exclude gets the default variant (reason not_targeted, propensity 1)."""
    key, placement = f"hero-{tag}", f"home-{tag}"
    targeting = {"all": [{"attribute": "device", "op": "eq", "value": "mobile"}]}
    await running(client, key, placement, targeting=targeting)
    (placed,) = (await decide(client, f"u-{tag}", placement, context=context))["decisions"]
    assert placed["reason"] == reason
    assert placed["experiment"] == key
    if reason == "not_targeted":
        assert (placed["variant"], placed["policy"], placed["propensity"]) == (
            variant,
            "default",
            1.0,
        )
        assert placed["payload"] == {"img": "a.png"}


async def test_paused_experiment_serves_the_default(client: Client, tag: str) -> None:
    """While paused, everyone gets the default (reason experiment_paused); resuming restores it."""
    key, placement = f"hero-{tag}", f"home-{tag}"
    await running(
        client, key, placement, variants=[{"key": "control"}, {"key": "b", "weight": 1e6}]
    )
    unit = f"u-{tag}"
    assert (await decide(client, unit, placement))["decisions"][0]["variant"] == "b"
    await client.post(f"/v1/experiments/{key}/pause")
    (placed,) = (await decide(client, unit, placement))["decisions"]
    assert (placed["variant"], placed["reason"], placed["policy"]) == (
        "control",
        "experiment_paused",
        "default",
    )
    await client.post(f"/v1/experiments/{key}/start")
    assert (await decide(client, unit, placement))["decisions"][0]["reason"] == "split"


async def test_placement_without_experiment(client: Client, tag: str) -> None:
    """A placement nothing serves answers reason no_experiment, without experiment or variant."""
    answer = await decide(client, f"u-{tag}", f"nowhere-{tag}")
    assert answer["decisions"] == [{"placement": f"nowhere-{tag}", "reason": "no_experiment"}]


async def test_stopped_experiment_leaves_the_placement(client: Client, tag: str) -> None:
    """After stop, the placement falls back to no_experiment."""
    key, placement = f"hero-{tag}", f"home-{tag}"
    await running(client, key, placement)
    await client.post(f"/v1/experiments/{key}/stop")
    (placed,) = (await decide(client, f"u-{tag}", placement))["decisions"]
    assert placed["reason"] == "no_experiment"


async def test_holdout_units_get_the_default(client: Client, tag: str) -> None:
    """Units whose holdout hash falls in the slice get the default (reason holdout, logged)."""
    key, placement = f"hero-{tag}", f"home-{tag}"
    # A fixed salt and fixed unit ids make the holdout membership (22 of 30) deterministic.
    await running(client, key, placement, holdout=0.5, salt="holdout-test")
    units = [f"u-{i}" for i in range(30)]
    held = [u for u in units if in_holdout("holdout-test", u, 0.5)]
    assert len(held) == 22
    decision_of_held = ""
    for unit in units:
        answer = await decide(client, unit, placement)
        (placed,) = answer["decisions"]
        if unit in held:
            assert (placed["variant"], placed["reason"], placed["policy"]) == (
                "control",
                "holdout",
                "default",
            )
            decision_of_held = answer["decision_id"]
        else:
            assert placed["reason"] == "split"
    (row,) = await exposures(client, decision_of_held)
    assert (row["reason"], row["holdout"], row["variant"]) == ("holdout", 1, "control")


async def test_without_consent_no_profile_is_read(client: Client, tag: str) -> None:
    """consent=false: stored profile unread, default served, pseudonym and no context logged."""
    key, placement = f"hero-{tag}", f"home-{tag}"
    # Targeting that the stored profile would *fail*: only an unread profile gets past it.
    targeting = {"attribute": "segment", "op": "ne", "value": "vip"}
    await running(client, key, placement, targeting=targeting)
    unit = f"vip-{tag}"
    put = await client.put(f"/v1/units/{unit}/features", json={"features": {"segment": "vip"}})
    assert put.status_code == 200
    (with_consent,) = (await decide(client, unit, placement))["decisions"]
    assert with_consent["reason"] == "not_targeted"
    answer = await decide(client, unit, placement, consent=False, context={"device": "mobile"})
    (placed,) = answer["decisions"]
    assert (placed["variant"], placed["reason"], placed["policy"], placed["propensity"]) == (
        "control",
        "no_consent",
        "default",
        1.0,
    )
    (row,) = await exposures(client, answer["decision_id"])
    secret = services_of(client).settings.pseudonym_secret
    assert row["unit_id"] == Pseudonymiser(secret)(unit)
    assert row["unit_id"].startswith("anon:") and unit not in row["unit_id"]
    assert row["context"] == {}
    assert row["reason"] == "no_consent"


async def test_multiple_placements_in_one_call(client: Client, tag: str) -> None:
    """One call decides several placements in order, logging one exposure per served placement."""
    await running(client, f"a-{tag}", f"pa-{tag}")
    await running(client, f"b-{tag}", f"pb-{tag}", holdout=0.0)
    unit = f"u-{tag}"
    answer = await decide(client, unit, f"pa-{tag}", f"none-{tag}", f"pb-{tag}")
    assert [d["placement"] for d in answer["decisions"]] == [
        f"pa-{tag}",
        f"none-{tag}",
        f"pb-{tag}",
    ]
    assert [d["reason"] for d in answer["decisions"]] == ["split", "no_experiment", "split"]
    rows = await exposures(client, answer["decision_id"], count=2)
    assert [(r["placement"], r["experiment"]) for r in rows] == [
        (f"pa-{tag}", f"a-{tag}"),
        (f"pb-{tag}", f"b-{tag}"),
    ]
    assert len({r["event_id"] for r in rows}) == 2


async def test_features_from_redis_drive_targeting(client: Client, tag: str) -> None:
    """Features PUT for a unit are read at decision time; the request context overrides them."""
    key, placement = f"hero-{tag}", f"home-{tag}"
    targeting = {"all": [{"attribute": "ltv", "op": "gte", "value": 100},
                         {"attribute": "tags", "op": "contains", "value": "golfer"}]}  # fmt: skip
    await running(client, key, placement, targeting=targeting)
    unit = f"u-{tag}"
    assert (await decide(client, unit, placement))["decisions"][0]["reason"] == "not_targeted"
    features = {"ltv": 120.5, "tags": ["golfer", "runner"], "tier": "gold", "vip": True,
                "signup": {"ts": "2026-01-02T03:04:05Z"}}  # fmt: skip
    put = await client.put(f"/v1/units/{unit}/features", json={"features": features})
    assert put.json() == {"unit_id": unit, "stored": ["ltv", "signup", "tags", "tier", "vip"]}
    answer = await decide(client, unit, placement)
    assert answer["decisions"][0]["reason"] == "split"
    overridden = await decide(client, unit, placement, context={"ltv": 5})
    assert overridden["decisions"][0]["reason"] == "not_targeted"
    (row,) = await exposures(client, answer["decision_id"])
    assert {k: row["context"][k] for k in ("ltv", "tags", "tier", "vip", "signup")} == {
        "ltv": "120.5",
        "tags": '["golfer","runner"]',
        "tier": "gold",
        "vip": "1",
        "signup": "1767323045.0",
    }
    assert float(row["context"]["signup_age_days"]) > 0


async def test_exposure_row_has_every_column(client: Client, tag: str) -> None:
    """The exposure lands in ClickHouse within the flush interval with every column filled in."""
    key, placement = f"hero-{tag}", f"home-{tag}"
    experiment = await running(client, key, placement)
    unit = f"u-{tag}"
    before = time.time_ns() // 1_000_000
    context = {"device": "mobile", "page": "/", "visits": 3, "returning": True, "ab": ["x", "y"]}
    answer = await decide(client, unit, placement, context=context)
    after = time.time_ns() // 1_000_000
    started = time.monotonic()
    (row,) = await exposures(client, answer["decision_id"])
    waited = time.monotonic() - started
    flush_interval = services_of(client).settings.event_log.flush_interval_s
    assert waited < flush_interval + 1.0  # flushed on the writer's timer, not at shutdown
    (placed,) = answer["decisions"]
    assert uuid.UUID(row["event_id"])
    assert before <= row["ts_ms"] <= after
    assert {k: row[k] for k in EXPOSURE_FIELDS if k not in ("event_id", "ts_ms")} == {
        "decision_id": answer["decision_id"],
        "unit_id": unit,
        "experiment": key,
        "experiment_version": experiment["version"],
        "placement": placement,
        "variant": placed["variant"],
        "propensity": placed["propensity"],
        "policy": "fixed",
        "policy_version": "",
        "reason": "split",
        "holdout": 0,
        "context": {"device": "mobile", "page": "/", "visits": "3", "returning": "1",
                    "ab": '["x","y"]'},
    }  # fmt: skip


async def test_resalting_one_experiment_moves_no_unit_in_another(client: Client, tag: str) -> None:
    """Updating A's salt (while running) reshuffles A's units and leaves B's answers unchanged."""
    pa, pb = f"pa-{tag}", f"pb-{tag}"
    a = await running(client, f"a-{tag}", pa, variants=[{"key": "x"}, {"key": "y"}],
                      default_variant="x")  # fmt: skip
    await running(client, f"b-{tag}", pb, variants=[{"key": "x"}, {"key": "y"}, {"key": "z"}],
                  default_variant="x")  # fmt: skip
    units = [f"u-{tag}-{i}" for i in range(120)]

    async def variants() -> list[tuple[str, str]]:
        out = []
        for unit in units:
            da, db = (await decide(client, unit, pa, pb))["decisions"]
            out.append((da["variant"], db["variant"]))
        return out

    before = await variants()
    spec = {k: a[k] for k in ("key", "placement", "variants", "default_variant")}
    updated = await client.put(f"/v1/experiments/{a['key']}", json={**spec, "salt": "new-salt"})
    assert updated.status_code == 200, updated.text
    after = await variants()
    assert [b for _, b in after] == [b for _, b in before]
    moved = sum(x != y for (x, _), (y, _) in zip(before, after, strict=True))
    assert 30 < moved < 90  # ~60 of 120 expected: a fresh, independent 50/50 split
    assert [x for x, _ in after] == [
        ["x", "y"][variant_index("new-salt", u, [1, 1])] for u in units
    ]


async def test_experiments_in_one_layer_never_share_a_unit(client: Client, tag: str) -> None:
    """Two experiments sharing a layer split its units: each unit is in exactly one of them."""
    layer = f"layer-{tag}"
    a = await running(client, f"a-{tag}", f"pa-{tag}", layer=layer, traffic=0.5)
    b = await running(client, f"b-{tag}", f"pb-{tag}", layer=layer, traffic=0.5)
    slice_a = LayerSlice(**a["layer_slice"])
    in_a = 0
    for i in range(120):
        unit = f"u-{tag}-{i}"
        da, db = (await decide(client, unit, f"pa-{tag}", f"pb-{tag}"))["decisions"]
        assert sorted([da["reason"], db["reason"]]) == ["outside_layer", "split"]
        assert (da["reason"] == "split") is in_layer(layer, unit, slice_a)
        in_a += da["reason"] == "split"
        for other in (da, db):
            if other["reason"] == "outside_layer":
                assert (other["variant"], other["policy"]) == ("control", "default")
    assert 35 < in_a < 85
    assert b["layer_slice"] == {"start": 0.5, "end": 1.0}
