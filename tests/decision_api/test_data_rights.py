"""Consent and data rights: stored opt-out, export, erasure leaving nothing, no raw ids in logs."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import structlog
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from decision_api.app import create_app
from decision_api.decisions.engine import Pseudonymiser
from decision_api.redis_server import RedisServer
from decision_api.services import Services
from decision_api.settings import Settings
from event_log.rows import Exposure
from event_log.spool import SpooledBatch

pytestmark = pytest.mark.redis_cluster

Client = AsyncTestClient[Litestar]
T = TypeVar("T")
UNIT = "visitor-7f3a9c"
OTHER = "visitor-other-11"

HERO: dict[str, Any] = {
    "key": "hero",
    "placement": "home",
    "variants": [
        {"key": "control", "payload": {"img": "a.png"}},
        {"key": "spring", "payload": {"img": "b.png"}},
    ],
    "default_variant": "control",
    "primary_metric": "purchase",
    "frequency_cap": {"max_exposures": 50, "window_s": 86400},
}


def services_of(client: Client) -> Services:
    """The app's open services."""
    services: Services = client.app.state.services
    return services


async def start_hero(client: Client) -> None:
    """Create and start the hero experiment."""
    assert (await client.post("/v1/experiments", json=HERO)).status_code == 201
    assert (await client.post("/v1/experiments/hero/start")).status_code == 200


async def decide(client: Client, unit: str, consent: bool = True) -> dict[str, Any]:
    """One decision for the home placement."""
    response = await client.post(
        "/v1/decide",
        json={"unit_id": unit, "placements": ["home"], "context": {"device": "mobile"},
              "consent": consent},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def in_app(client: Client, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run an app coroutine on the app's own event loop (its locks and connections live there)."""
    return await asyncio.to_thread(client.blocking_portal.call, fn, *args)


async def query(client: Client, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Flush the app's writer, then run SQL on its event log (it holds the chdb lock)."""
    await in_app(client, services_of(client).writer.flush)
    return await asyncio.to_thread(services_of(client).event_log.query, sql, params)


async def populate(client: Client, unit: str) -> list[str]:
    """Give ``unit`` features, events, decisions (with and without consent) and outcomes;
    returns its decision ids."""
    features = {"features": {"segment": "vip", "ltv": 120.5, "tags": ["a", "b"]}}
    assert (await client.put(f"/v1/units/{unit}/features", json=features)).status_code == 200
    for event in (
        {"type": "purchase", "value": 42.0, "properties": {"category": "shoes"}},
        {"type": "email_open"},
    ):
        response = await client.post("/v1/events", json={"unit_id": unit, **event})
        assert response.status_code == 202, response.text
    ids = [(await decide(client, unit))["decision_id"] for _ in range(2)]
    ids.append((await decide(client, unit, consent=False))["decision_id"])
    for outcome in (
        {"unit_id": unit, "type": "click"},
        {"decision_id": ids[0], "type": "purchase", "value": 9.5},
    ):
        assert (await client.post("/v1/outcomes", json=outcome)).status_code == 202
    return ids


async def redis_dump(redis: Redis, namespace: str) -> dict[str, str]:
    """Every key under the namespace (``ns:...`` and ``{ns}:...``) with its value as text."""
    dump = {}
    keys = [k async for k in redis.scan_iter(match=f"{namespace}:*", count=1000)]
    keys += [k async for k in redis.scan_iter(match=f"{{{namespace}}}:*", count=1000)]
    for key in keys:
        kind = await redis.type(key)
        if kind == "hash":
            value: Any = await redis.hgetall(key)
        elif kind == "string":
            value = await redis.get(key)
        elif kind == "set":
            value = await redis.smembers(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "stream":
            value = await redis.xrange(key)
        else:
            value = kind
        dump[key] = str(value)
    return dump


def spooled_exposure(unit: str, now_ms: int) -> Exposure:
    """An exposure as the writer would have spooled it during an outage."""
    return Exposure(
        event_id=uuid.uuid4(), decision_id="spooled-d", ts_ms=now_ms, unit_id=unit,
        experiment="hero", experiment_version=1, placement="home", variant="control",
        propensity=0.5, policy="fixed", policy_version="", reason="split", holdout=False,
        context={},
    )  # fmt: skip


@pytest.fixture
async def verbose(settings: Settings) -> AsyncIterator[Client]:
    """A client for an app logging at debug level (so every log line can be inspected)."""
    app = create_app(msgspec.structs.replace(settings, log_level="debug"))
    async with AsyncTestClient(app=app) as c:
        yield c


def spooled_events(services: Services) -> list[Any]:
    """Every event waiting in the writer's disk spool."""
    spool = services.writer._spool
    return [e for seg in spool.segments() for b in spool.read(seg) for e in b.events]


async def test_erasure_leaves_nothing(
    verbose: Client, redis: Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After DELETE /v1/units/{id} no Redis key or value, event-log row, spooled event or log
    line carries the unit's id, pseudonym or decision ids; another unit is untouched; the
    erasure is audited under the pseudonym."""
    services = services_of(verbose)
    pseudonym = Pseudonymiser(services.settings.pseudonym_secret)(UNIT)
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        await start_hero(verbose)
        decisions = await populate(verbose, UNIT)
        await populate(verbose, OTHER)
        # What an outage would have left: a spooled batch about the unit (and one about OTHER).
        await in_app(verbose, services.writer.flush)
        now = int(time.time() * 1000)
        spooled: list[Any] = [spooled_exposure(unit, now) for unit in (UNIT, OTHER)]
        services.writer._spool.append(
            SpooledBatch(table="exposures", token="t-outage", events=list(spooled))
        )
        # Records kept by decision and by unit (as the reward join keeps them).
        await redis.hset(f"{{{namespace}}}:dec:{decisions[0]}:hero", "rec", f'["{UNIT}"]')
        await redis.hset(f"{{{namespace}}}:u:{UNIT}:join", "hero", decisions[0])
        # A queued frequency-cap hit that has not reached Redis yet.
        await decide(verbose, UNIT)
        before_other = await query(
            verbose, "SELECT count() FROM exposures WHERE unit_id = {u:String}", u=OTHER
        )

        erased = await verbose.delete(f"/v1/units/{UNIT}")
        assert erased.status_code == 200, erased.text
        report = erased.json()
        assert report["pseudonym"] == pseudonym
        assert report["event_log_rows"]["exposures"] == 4  # 3 consented + 1 pseudonymised
        assert report["event_log_rows"]["outcomes"] == 2  # by unit id, and by decision id
        assert report["unwritten_events"] >= 1  # the spooled exposure
        assert report["redis_keys"] >= 3
        await asyncio.sleep(0.1)  # let any queued write (caps, join) land if it would

    secrets = [UNIT, pseudonym, *decisions]
    dump = await redis_dump(redis, namespace)
    leaks = [(k, s) for k, v in dump.items() for s in secrets if s in k or s in v]
    assert not leaks
    assert f"{namespace}:u:{{{OTHER}}}" in dump

    for table in ("exposures", "outcomes", "audit"):
        for secret in (UNIT, *decisions):
            rows = await query(
                verbose,
                "SELECT count() FROM {t:Identifier} "
                "WHERE position(formatRowNoNewline('TSV', *), {s:String}) > 0",
                t=table,
                s=secret,
            )
            assert rows == [(0,)], (table, secret)
    still = await query(
        verbose, "SELECT count() FROM exposures WHERE unit_id = {u:String}", u=OTHER
    )
    assert still == before_other
    assert [e.unit_id for e in spooled_events(services)] == [OTHER]

    audit = await query(
        verbose,
        "SELECT actor, entity_key, detail FROM audit WHERE action = 'erase' AND entity = 'unit'",
    )
    assert len(audit) == 1 and audit[0][1] == pseudonym

    server_records = [r.getMessage() for r in caplog.records if not r.name.startswith("httpx")]
    assert not [line for line in map(str, logs) if UNIT in line]
    assert not [line for line in server_records if UNIT in line]
    assert any(entry["event"] == "unit_erased" for entry in logs)

    export = (await verbose.get(f"/v1/units/{UNIT}/export")).json()
    assert (export["features"], export["exposures"], export["outcomes"], export["redis"]) == (
        {}, [], [], []
    )  # fmt: skip


async def test_erasure_is_idempotent(shared_client: Client) -> None:
    """Erasing an unknown (or already erased) unit succeeds with nothing removed."""
    for _ in range(2):
        response = await shared_client.delete("/v1/units/never-seen")
        assert response.status_code == 200
        body = response.json()
        assert body["redis_keys"] == 0
        assert set(body["event_log_rows"].values()) == {0}


async def test_export_returns_what_is_stored(client: Client, redis: Redis, namespace: str) -> None:
    """The export holds decoded features, derived counters, histograms, caps, consent, other
    Redis records, and exposures and outcomes (also pseudonymised and by decision id)."""
    await start_hero(client)
    decisions = await populate(client, UNIT)
    await redis.hset(f"{{{namespace}}}:u:{UNIT}:join", "hero", decisions[0])
    await asyncio.sleep(0.1)  # frequency-cap hits are written asynchronously
    response = await client.get(f"/v1/units/{UNIT}/export")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["features"] == {"segment": "vip", "ltv": 120.5, "tags": ["a", "b"]}
    assert body["derived"]["purchase_7d"] == 1
    assert body["derived"]["purchase_value_90d"] == 42.0
    assert body["derived"]["last_categories"] == ["shoes"]
    assert sum(body["hours"]["email_open"]) == 1
    assert len(body["frequency_caps"]["hero"]) == 2  # consented, non-default exposures
    assert body["personalization"] is True
    assert body["redis"] == [
        {"key": f"{{{namespace}}}:u:{UNIT}:join", "type": "hash", "value": {"hero": decisions[0]}}
    ]
    units = sorted({e["unit_id"] for e in body["exposures"]})
    assert units == sorted([UNIT, body["pseudonym"]])
    assert {e["decision_id"] for e in body["exposures"]} == set(decisions)
    assert sorted(o["type"] for o in body["outcomes"]) == ["click", "purchase"]
    no_consent = next(e for e in body["exposures"] if e["unit_id"] == body["pseudonym"])
    assert no_consent["context"] == {}


async def test_stored_opt_out(client: Client) -> None:
    """PUT consent false gives the default experience with a pseudonymised, context-free
    exposure even when the request says consent: true; PUT true restores personalisation."""
    await start_hero(client)
    await client.put(f"/v1/units/{UNIT}/features", json={"features": {"segment": "vip"}})
    response = await client.put(f"/v1/units/{UNIT}/consent", json={"personalization": False})
    assert response.status_code == 200
    assert response.json() == {"unit_id": UNIT, "personalization": False}
    opted_out = (await decide(client, UNIT))["decisions"][0]
    assert (opted_out["variant"], opted_out["reason"]) == ("control", "no_consent")
    export = (await client.get(f"/v1/units/{UNIT}/export")).json()
    assert export["personalization"] is False
    logged = await query(
        client, "SELECT unit_id, context FROM exposures WHERE reason = 'no_consent'"
    )
    assert logged == [(export["pseudonym"], {})]

    await client.put(f"/v1/units/{UNIT}/consent", json={"personalization": True})
    back = (await decide(client, UNIT))["decisions"][0]
    assert back["reason"] != "no_consent"
    audit = await query(
        client, "SELECT action FROM audit WHERE entity = 'unit' ORDER BY ts, action"
    )
    assert [a for (a,) in audit] == ["consent_withdrawn", "consent_given"]


async def test_erasure_needs_the_event_log(client: Client) -> None:
    """With the event log failing, erasure answers 503 and leaves Redis alone (retry-safe)."""
    services = services_of(client)
    await client.put(f"/v1/units/{UNIT}/features", json={"features": {"segment": "vip"}})

    def broken(sql: str, parameters: Any = None) -> list[tuple[Any, ...]]:
        from tailor_contract.errors import EventLogUnavailable

        raise EventLogUnavailable("event log unreachable (test)")

    original = services.event_log.query
    services.event_log.query = broken  # type: ignore[method-assign]
    try:
        response = await client.delete(f"/v1/units/{UNIT}")
    finally:
        services.event_log.query = original  # type: ignore[method-assign]
    assert response.status_code == 503
    assert response.json()["code"] == "event_log_unavailable"
    export = (await client.get(f"/v1/units/{UNIT}/export")).json()
    assert export["features"] == {"segment": "vip"}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/units/a%7Bb%7D/export", 422),  # braces would move the Redis hash tag
        ("/v1/units/" + "x" * 300 + "/export", 422),
    ],
)
async def test_unit_id_path_limits(shared_client: Client, path: str, status: int) -> None:
    """Unit ids in paths obey the same limits as in bodies."""
    response = await shared_client.get(path)
    assert response.status_code == status, response.text


async def test_unit_ids_never_logged_raw_when_redis_is_down(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Failures (Redis errors on writes, degraded decisions) log route templates and
    references, never the unit id."""
    server = RedisServer(tmp_path / "redis", persist=False).start()
    own = msgspec.structs.replace(
        settings,
        log_level="debug",
        redis=msgspec.structs.replace(settings.redis, url=server.url, cluster=False),
    )
    caplog.set_level(logging.DEBUG)
    try:
        async with AsyncTestClient(app=create_app(own)) as verbose:
            await start_hero(verbose)
            server.stop()
            with structlog.testing.capture_logs() as logs:
                put = await verbose.put(f"/v1/units/{UNIT}/features", json={"features": {"a": 1}})
                assert put.status_code == 503
                assert put.json()["code"] == "redis_unavailable"
                assert (await decide(verbose, UNIT))["degraded"] is True
                body = {"unit_id": UNIT, "type": "click"}
                assert (await verbose.post("/v1/outcomes", json=body)).status_code == 202
                body = {"unit_id": UNIT, "type": "page_view"}
                assert (await verbose.post("/v1/events", json=body)).status_code == 503
            server.start()
    finally:
        server.stop()
    assert logs, "the failures were logged"
    assert not [entry for entry in logs if UNIT in str(entry)]
    server_lines = [r.getMessage() for r in caplog.records if not r.name.startswith("httpx")]
    assert not [line for line in server_lines if UNIT in line]


async def test_outcomes_of_opted_out_unit_are_pseudonymised(client: Client) -> None:
    """An outcome sent by unit id for a unit that withdrew consent is logged under its
    pseudonym without properties (single and batch); another unit's outcome is untouched."""
    await client.put(f"/v1/units/{UNIT}/consent", json={"personalization": False})
    pseudonym = Pseudonymiser(services_of(client).settings.pseudonym_secret)(UNIT)
    sent = {"type": "purchase", "value": 5.0, "properties": {"sku": "pregnancy-test"}}
    assert (await client.post("/v1/outcomes", json={"unit_id": UNIT, **sent})).status_code == 202
    batch = {"outcomes": [{"unit_id": UNIT, **sent}, {"unit_id": OTHER, **sent}]}
    assert (await client.post("/v1/outcomes/batch", json=batch)).status_code == 202
    rows = await query(client, "SELECT unit_id, properties FROM outcomes ORDER BY unit_id")
    assert sorted(rows) == sorted(
        [(pseudonym, {}), (pseudonym, {}), (OTHER, {"sku": "pregnancy-test"})]
    )


async def test_opted_out_profile_is_not_written(
    client: Client, redis: Redis, namespace: str
) -> None:
    """After a consent withdrawal, feature writes are refused (409) and events accepted but
    dropped (202): the stored profile does not change; consent given again writes again."""
    await client.put(f"/v1/units/{UNIT}/features", json={"features": {"segment": "vip"}})
    await client.put(f"/v1/units/{UNIT}/consent", json={"personalization": False})
    profile_key = f"{namespace}:u:{{{UNIT}}}"
    before = await redis.hgetall(profile_key)
    put = await client.put(f"/v1/units/{UNIT}/features", json={"features": {"segment": "new"}})
    assert put.status_code == 409, put.text
    assert put.json()["code"] == "conflict" and "consent" in put.json()["detail"]
    event = {"unit_id": UNIT, "type": "purchase", "value": 1e12, "properties": {"category": "x"}}
    assert (await client.post("/v1/events", json=event)).status_code == 202
    assert await redis.hgetall(profile_key) == before

    await client.put(f"/v1/units/{UNIT}/consent", json={"personalization": True})
    put = await client.put(f"/v1/units/{UNIT}/features", json={"features": {"segment": "new"}})
    assert put.status_code == 200, put.text
    assert (await client.post("/v1/events", json=event)).status_code == 202
    assert (await redis.hgetall(profile_key))["f:segment"] == "s:new"


LEARNING: dict[str, Any] = {
    **HERO,
    "key": "learn",
    "placement": "banner",
    "policy": {"kind": "thompson"},
    "reward": {"rules": [{"type": "purchase", "reward": 1.0}]},
    "reward_window_s": 86400,
}


async def start_learning(client: Client) -> None:
    """Create and start a Thompson-sampling experiment with a frequency cap."""
    assert (await client.post("/v1/experiments", json=LEARNING)).status_code == 201
    assert (await client.post("/v1/experiments/learn/start")).status_code == 200


async def test_export_includes_decision_records(client: Client, namespace: str) -> None:
    """The export lists the unit's reward-join decision records (raw id, context) with the
    join index, for every learning decision made for it."""
    await start_learning(client)
    ids = []
    for _ in range(3):
        body = {"unit_id": UNIT, "placements": ["banner"], "context": {"device": "mobile"}}
        response = await client.post("/v1/decide", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["decisions"][0]["reason"] == "policy"
        ids.append(response.json()["decision_id"])
    body = (await client.get(f"/v1/units/{UNIT}/export")).json()
    entries = {entry["key"]: entry for entry in body["redis"]}
    for decision in ids:
        record = entries[f"{{{namespace}}}:dec:{decision}:learn"]
        assert UNIT in record["value"]["rec"] and "mobile" in record["value"]["rec"]
        assert entries[f"{{{namespace}}}:dec:{decision}:exps"]["value"] == ["learn"]
    assert f"{{{namespace}}}:u:{UNIT}:join" in entries


async def test_erasure_racing_decisions_leaves_nothing(
    client: Client, redis: Redis, namespace: str
) -> None:
    """A DELETE served while 60 decisions (learning and capped), outcomes and events for the
    unit are in flight leaves, once every flush interval has passed, no event-log row and no
    Redis key or value with the unit's id."""
    await start_hero(client)
    await start_learning(client)

    async def decide_one(i: int) -> int:
        await asyncio.sleep(0.002 * i)
        body = {"unit_id": UNIT, "placements": ["home", "banner"], "context": {"i": i}}
        return (await client.post("/v1/decide", json=body)).status_code

    async def side_writes() -> None:
        for _ in range(5):
            await client.post("/v1/outcomes", json={"unit_id": UNIT, "type": "click"})
            await client.post("/v1/events", json={"unit_id": UNIT, "type": "page_view"})

    async def erase() -> int:
        await asyncio.sleep(0.03)
        return (await client.delete(f"/v1/units/{UNIT}")).status_code

    *decided, erased, _ = await asyncio.gather(
        *(decide_one(i) for i in range(60)), erase(), side_writes()
    )
    assert set(decided) == {200} and erased == 200
    flush = services_of(client).settings.event_log.flush_interval_s
    await asyncio.sleep(max(1.0, 10 * flush))  # join and cap flushers run every 20 ms

    for table in ("exposures", "outcomes"):
        rows = await query(
            client,
            "SELECT count() FROM {t:Identifier} "
            "WHERE position(formatRowNoNewline('TSV', *), {s:String}) > 0",
            t=table,
            s=UNIT,
        )
        assert rows == [(0,)], table
    dump = await redis_dump(redis, namespace)
    assert not [k for k, v in dump.items() if UNIT in k or UNIT in v]


async def test_erasure_racing_another_worker_leaves_nothing(
    settings: Settings, redis: Redis, namespace: str
) -> None:
    """Decisions for the unit served by a second worker while the first erases it leave
    nothing behind either (the tombstone in Redis and the second sweep reach other workers)."""
    async with (
        AsyncTestClient(app=create_app(settings)) as one,
        AsyncTestClient(app=create_app(settings)) as two,
    ):
        await start_hero(one)
        await start_learning(one)
        await asyncio.sleep(0.2)  # the second worker picks the experiments up (50 ms poll)

        async def decide_one(i: int) -> int:
            await asyncio.sleep(0.003 * i)
            body = {"unit_id": UNIT, "placements": ["home", "banner"], "context": {"i": i}}
            return (await two.post("/v1/decide", json=body)).status_code

        async def erase() -> int:
            await asyncio.sleep(0.05)
            return (await one.delete(f"/v1/units/{UNIT}")).status_code

        *decided, erased = await asyncio.gather(*(decide_one(i) for i in range(60)), erase())
        assert set(decided) == {200} and erased == 200
        await asyncio.sleep(1.0)
        for table in ("exposures", "outcomes"):
            rows = await query(
                two,
                "SELECT count() FROM {t:Identifier} "
                "WHERE position(formatRowNoNewline('TSV', *), {s:String}) > 0",
                t=table,
                s=UNIT,
            )
            assert rows == [(0,)], table
        dump = await redis_dump(redis, namespace)
        assert not [k for k, v in dump.items() if UNIT in k or UNIT in v]
