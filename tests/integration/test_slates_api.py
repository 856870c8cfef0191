"""Ranked slates through the API: decide a slate, an exposure per slot in ClickHouse, outcomes
joined per slot, the learner fed slate by slate. Real Redis and chdb throughout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from bandits.join import RewardJoin, decode_entry
from bandits.registry import build_policy
from bandits.snapshots import SnapshotStore
from bandits.vw_slates import VWSlatesPolicy
from decision_api.app import create_app
from decision_api.learning.runtime import spec_of
from decision_api.learning.warm_start import history_slates
from decision_api.services import Services
from decision_api.settings import LearnerSettings, Settings
from experiments.store import ExperimentStore
from tests.support.polling import eventually

Client = AsyncTestClient[Litestar]
ITEMS = ["shoes", "hat", "scarf", "gloves", "coat"]


def carousel(key: str = "carousel", *, window_s: int = 3600, **extra: Any) -> dict[str, Any]:
    """A vw_slates experiment ranking five variants (features per variant)."""
    return {
        "key": key,
        "placement": "home_carousel",
        "default_variant": "shoes",
        "variants": [
            {"key": k, "payload": {"title": k.title()}, "features": {"kind": k, "warm": i > 1}}
            for i, k in enumerate(ITEMS)
        ],
        "policy": {"kind": "vw_slates", "slots": 3},
        "reward_window_s": window_s,
        "primary_metric": "click",
        "reward": {"rules": [{"type": "click"}]},
        **extra,
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


@pytest.fixture
async def quiet_client(settings: Settings) -> AsyncIterator[Client]:
    """A client whose worker runs no learner: the test sweeps the join itself."""
    quiet = msgspec.structs.replace(
        settings, learner=msgspec.structs.replace(settings.learner, in_process=False)
    )
    async with AsyncTestClient(app=create_app(quiet)) as c:
        yield c


def services_of(client: Client) -> Services:
    """The app's services (synchronous attributes only from a test)."""
    services: Services = client.app.state.services
    return services


async def start(client: Client, spec: dict[str, Any]) -> None:
    """Create and start an experiment through the admin API."""
    created = await client.post("/v1/experiments", json=spec)
    assert created.status_code == 201, created.text
    started = await client.post(f"/v1/experiments/{spec['key']}/start")
    assert started.status_code == 200, started.text


async def decide(client: Client, unit: str, slate: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One decision of the carousel placement asking for ``slate``."""
    body = {"unit_id": unit, "placements": ["home_carousel"],
            "slates": {"home_carousel": slate}, **extra}  # fmt: skip
    got = await client.post("/v1/decide", json=body)
    assert got.status_code == 200, got.text
    answer: dict[str, Any] = got.json()
    return answer


async def rows(client: Client, sql: str, expected: int) -> list[tuple[Any, ...]]:
    """Flush the event writer until ``sql`` returns ``expected`` rows."""
    services = services_of(client)
    deadline = time.monotonic() + 10
    while True:
        await asyncio.to_thread(client.blocking_portal.call, services.writer.flush)
        found = await asyncio.to_thread(services.event_log.query, sql)
        if len(found) >= expected or time.monotonic() > deadline:
            assert len(found) == expected, found
            return found
        await asyncio.sleep(0.05)


async def test_a_slate_is_answered_and_logged_one_exposure_per_slot(client: Client) -> None:
    """A vw_slates placement asked for 3 slots answers 3 distinct variants in order, each with
    its payload and propensity; the first slot is also the answer's variant; ClickHouse holds
    one exposure per slot with its slot, item and propensity."""
    await start(client, carousel())
    answer = await decide(client, "u1", {"slots": 3})
    [placement] = answer["decisions"]
    slate = placement["slate"]
    assert [s["slot"] for s in slate] == [0, 1, 2]
    assert len({s["item"] for s in slate}) == 3 and {s["item"] for s in slate} <= set(ITEMS)
    assert all(s["payload"] == {"title": s["item"].title()} for s in slate)
    assert all(0 < s["propensity"] <= 1 for s in slate)
    assert (placement["reason"], placement["policy"]) == ("policy", "vw_slates")
    assert (placement["variant"], placement["propensity"]) == (
        slate[0]["item"],
        slate[0]["propensity"],
    )
    logged = await rows(
        client,
        "SELECT slot, item, variant, propensity, reason, candidates FROM exposures "
        f"WHERE decision_id = '{answer['decision_id']}' ORDER BY slot",
        3,
    )
    assert logged == [
        (s["slot"], s["item"], s["item"], s["propensity"], "policy", 5) for s in slate
    ]


async def test_request_candidates_are_ranked_and_exclusions_respected(client: Client) -> None:
    """Items passed in the request (ids with features) are what the slate ranks; an excluded
    item is never shown; ``slots`` defaults to the policy's and is capped by the items left."""
    await start(client, carousel())
    candidates = [{"id": f"sku-{i}", "features": {"brand": f"b{i % 2}", "price": 10.0 + i}}
                  for i in range(4)]  # fmt: skip
    for unit in ("a", "b", "c", "d"):
        answer = await decide(
            client,
            unit,
            {"candidates": candidates},
            exclude={"home_carousel": ["sku-2"]},
        )
        slate = answer["decisions"][0]["slate"]
        items = [s["item"] for s in slate]
        assert len(items) == 3 and len(set(items)) == 3
        assert set(items) <= {"sku-0", "sku-1", "sku-3"}
        assert all("payload" not in s for s in slate)
    one = await decide(client, "e", {"slots": 5, "candidates": candidates[:2]})
    assert len(one["decisions"][0]["slate"]) == 2


async def test_default_answers_show_the_fixed_order_and_other_policies_answer_one_variant(
    client: Client,
) -> None:
    """Outside the experiment's targeting the slate is the offer in its fixed order (the
    default variant first; request items as given) with propensity 1; a fixed-split
    experiment asked for a slate answers one variant without a slate."""
    await start(
        client,
        carousel(targeting={"attribute": "country", "op": "eq", "value": "fr"}),
    )
    answer = await decide(client, "u", {"slots": 3}, context={"country": "de"})
    placement = answer["decisions"][0]
    assert placement["reason"] == "not_targeted"
    assert [(s["item"], s["propensity"]) for s in placement["slate"]] == [
        ("shoes", 1.0),
        ("hat", 1.0),
        ("scarf", 1.0),
    ]
    given = [{"id": "x"}, {"id": "y"}]
    answer = await decide(client, "u", {"candidates": given}, context={"country": "de"})
    assert [s["item"] for s in answer["decisions"][0]["slate"]] == ["x", "y"]
    plain = carousel("plain", policy={"kind": "fixed"})
    plain["placement"] = "banner"
    await start(client, plain)
    got = await client.post("/v1/decide", json={
        "unit_id": "u", "placements": ["banner"], "slates": {"banner": {"slots": 2}}
    })  # fmt: skip
    decision = got.json()["decisions"][0]
    assert decision["reason"] == "split" and "slate" not in decision


@pytest.mark.parametrize(
    ("slates", "field"),
    [
        ({"elsewhere": {"slots": 2}}, "$.slates"),
        ({"home_carousel": {"slots": 0}}, "slots"),
        ({"home_carousel": {"slots": 51}}, "slots"),
        ({"home_carousel": {"candidates": []}}, "candidates"),
        ({"home_carousel": {"candidates": [{"id": "a"}, {"id": "a"}]}}, "candidates[1].id"),
        ({"home_carousel": {"candidates": [{"id": "a", "features": {"x": {}}}]}}, "features"),
        ({"home_carousel": {"size": 2}}, "size"),
    ],
)
async def test_bad_slate_requests_are_refused_naming_the_field(
    shared_client: Client, slates: dict[str, Any], field: str
) -> None:
    """A slate for a placement not asked for, a slot count out of 1..50, no or duplicated
    candidates, a bad feature or an unknown option: a 4xx naming the field (no experiment
    is involved, so one app serves every case)."""
    got = await shared_client.post(
        "/v1/decide", json={"unit_id": "u", "placements": ["home_carousel"], "slates": slates}
    )
    assert 400 <= got.status_code < 500, got.text
    assert field in got.text


async def test_outcomes_name_their_slot_and_each_slot_is_learned_with_its_reward(
    quiet_client: Client, redis: Redis, namespace: str
) -> None:
    """A click naming an item rewards that item's slot, one naming a slot that slot; an outcome
    naming no slot (or an item not shown) joins nothing. When the window closes the training
    stream holds the slate with one reward per slot, and the learner turns it into a slate
    example with the logged per-slot propensities."""
    client = quiet_client
    await start(client, carousel(window_s=1))
    answer = await decide(client, "u1", {"slots": 3})
    did = answer["decision_id"]
    slate = answer["decisions"][0]["slate"]
    clicks = [
        ({"item": slate[1]["item"]}, 1),
        ({"slot": 2}, 1),
        ({}, 0),
        ({"item": "not-shown"}, 0),
        ({"slot": 7}, 0),
    ]
    for extra, joined in clicks:
        got = await client.post("/v1/outcomes", json={"decision_id": did, "type": "click", **extra})
        assert got.status_code == 202, got.text
        assert got.json()["joined"] == joined, extra
    logged = await rows(
        client,
        f"SELECT slot, item FROM outcomes WHERE decision_id = '{did}' ORDER BY slot, item",
        5,
    )
    assert logged == sorted([(-1, ""), (-1, "not-shown"), (-1, slate[1]["item"]), (2, ""), (7, "")])
    join = RewardJoin(redis, namespace)

    async def finalised() -> bool:
        await join.finalize_due(time.time_ns() // 1_000_000)
        return bool(await redis.xlen(join.stream_key) == 1)

    await eventually(finalised, what="the slate's window finalised")
    [(stream_id, fields)] = await redis.xrange(join.stream_key)
    example = decode_entry(stream_id, fields)
    assert example.rewards == [0.0, 1.0, 1.0]
    assert (example.reward, example.joined) == (2.0, True)
    record = example.record
    assert record.slate_items == [s["item"] for s in slate]
    assert list(record.slate_propensities) == [s["propensity"] for s in slate]
    spec = spec_of(await ExperimentStore(redis, namespace).get("carousel"))
    built = spec.slate_example(record, example.rewards)
    assert built is not None
    assert [built.candidates[i].key for i in built.chosen] == record.slate_items
    assert built.rewards == (0.0, 1.0, 1.0)


async def test_request_candidates_reach_the_learner_with_their_features(
    client: Client, redis: Redis, namespace: str
) -> None:
    """Slates over request items are learned through the in-process learner: the model's
    example count grows by one per slate once the windows close, and the published model is a
    slates model that ranks the request's items."""
    await start(client, carousel(window_s=1))
    candidates = [{"id": f"sku-{i}", "features": {"brand": f"b{i % 2}"}} for i in range(4)]
    for i in range(12):
        answer = await decide(client, f"u{i}", {"slots": 2, "candidates": candidates})
        first = answer["decisions"][0]["slate"][0]["item"]
        await client.post("/v1/outcomes", json={
            "decision_id": answer["decision_id"], "type": "click", "item": first
        })  # fmt: skip

    async def learned() -> bool:
        got = await client.get("/v1/experiments/carousel/model")
        return got.status_code == 200 and got.json().get("examples", 0) >= 12

    await eventually(learned, what="12 slates learned", timeout_s=20)
    binary = Redis.from_url(services_of(client).settings.redis.url, decode_responses=False)
    try:
        snap = await SnapshotStore(binary, namespace).get("carousel")
    finally:
        await binary.aclose()
    assert snap is not None and snap.kind == "vw_slates"
    spec = spec_of(await ExperimentStore(redis, namespace).get("carousel"))
    policy = build_policy(spec.config, spec.arms, snapshot=snap.data)
    assert isinstance(policy, VWSlatesPolicy)


async def test_the_report_shows_click_rates_per_slot_and_off_policy_estimates(
    client: Client,
) -> None:
    """A vw_slates experiment's report (JSON, text and page) has a slates section: exposures
    and clicks per slot (a click naming its item or slot), per item and slot, and per slot an
    off-policy click rate of random order (here no model is published yet: a note says so)."""
    await start(client, carousel())
    clicked_slot0 = 0
    for i in range(30):
        answer = await decide(client, f"r{i}", {"slots": 3})
        slate = answer["decisions"][0]["slate"]
        if i % 3 == 0:
            clicked_slot0 += 1
            await client.post("/v1/outcomes", json={
                "decision_id": answer["decision_id"], "type": "click", "item": slate[0]["item"]
            })  # fmt: skip
    await rows(client, "SELECT 1 FROM exposures WHERE slot >= 0", 90)
    got = await client.get("/v1/experiments/carousel/report")
    assert got.status_code == 200, got.text
    section = got.json()["slates"]
    assert section["decisions"] == 30
    assert [(s["slot"], s["exposures"]) for s in section["slots"]] == [(0, 30), (1, 30), (2, 30)]
    assert [s["clicks"] for s in section["slots"]] == [clicked_slot0, 0, 0]
    assert sum(r["exposures"] for r in section["items"] if r["slot"] == 0) == 30
    [first, *_] = section["estimates"]
    assert (first["slot"], first["n"]) == (0, 30)
    assert 0.0 <= first["random_ips"]["lower"] <= first["random_ips"]["upper"] <= 1.0
    assert got.json()["verdict"]["headline"].startswith("The ranked slates earn")
    assert got.json()["adaptive"] is None  # slot items are not arms
    text = await client.get("/v1/experiments/carousel/report", params={"format": "text"})
    assert "slates (30 decisions" in text.text
    assert "random IPS" in text.text
    page = await client.get("/reports/carousel")
    assert page.status_code == 200 and "Off-policy click rate per slot" in page.text


async def test_warm_start_teaches_a_slates_model_the_logged_slates(
    quiet_client: Client, redis: Redis, namespace: str
) -> None:
    """Warm start rebuilds the logged slates over the experiment's variants, each slot with the
    reward of the outcomes naming it, and publishes a slates model taught them; slates over
    request items (features not logged) are left out, and no slot row is read as a one-variant
    decision (a what-if finds no logged one-variant decision)."""
    client = quiet_client
    await start(client, carousel())
    clicked: list[tuple[int, str]] = []
    for i in range(8):
        answer = await decide(client, f"w{i}", {"slots": 3})
        slate = answer["decisions"][0]["slate"]
        if i % 2 == 0:
            clicked.append((i, slate[1]["item"]))
            await client.post("/v1/outcomes", json={
                "decision_id": answer["decision_id"], "type": "click", "item": slate[1]["item"]
            })  # fmt: skip
    await decide(client, "other", {"candidates": [{"id": "x"}, {"id": "y"}]})
    await rows(client, "SELECT 1 FROM outcomes", 4)
    services = services_of(client)
    experiment = await ExperimentStore(redis, namespace).get("carousel")
    slates = await asyncio.to_thread(history_slates, services.event_log, experiment)
    assert len(slates) == 8
    assert [s.rewards for s in slates].count((0.0, 1.0, 0.0)) == 4
    assert [s.rewards for s in slates].count((0.0, 0.0, 0.0)) == 4
    assert all(len(s.chosen) == 3 and len(s.propensities) == 3 for s in slates)
    warmed = await client.post("/v1/experiments/carousel/model/warm-start")
    assert warmed.status_code == 200, warmed.text
    assert (warmed.json()["kind"], warmed.json()["examples"]) == ("vw_slates", 8)
    what_if = await client.post(
        "/v1/experiments/carousel/what-if", json={"policy": {"kind": "vw_slates"}}
    )
    assert what_if.status_code == 409 and "0 logged decisions" in what_if.text


async def test_bulk_decisions_rank_a_slate_for_every_recipient(client: Client) -> None:
    """``/v1/decide/batch`` with ``slates`` gives every recipient its own ranked slate (email
    content blocks) from the campaign's candidates, logged one exposure per slot with the
    campaign; a slate for a placement not requested is a 422 naming ``slates``."""
    await start(client, carousel())
    blocks = [{"id": f"block-{i}", "features": {"topic": f"t{i % 3}"}} for i in range(6)]
    body = {
        "campaign": "weekly", "placements": ["home_carousel"],
        "recipients": [{"unit_id": f"r{i}", "context": {"segment": f"s{i % 2}"}} for i in range(5)],
        "slates": {"home_carousel": {"slots": 4, "candidates": blocks}},
    }  # fmt: skip
    got = await client.post("/v1/decide/batch", json=body)
    assert got.status_code == 200, got.text
    recipients = got.json()["recipients"]
    assert len(recipients) == 5
    for r in recipients:
        slate = r["decisions"][0]["slate"]
        assert [s["slot"] for s in slate] == [0, 1, 2, 3]
        assert len({s["item"] for s in slate}) == 4
        assert all(0 < s["propensity"] <= 1 for s in slate)
    logged = await rows(
        client, "SELECT count(), uniqExact(decision_id) FROM exposures "
        "WHERE campaign = 'weekly' AND slot >= 0 AND candidates = 6", 1,
    )  # fmt: skip
    assert logged == [(20, 5)]
    bad = await client.post("/v1/decide/batch", json={**body, "slates": {"other": {"slots": 2}}})
    assert bad.status_code == 422 and "slates" in bad.text
