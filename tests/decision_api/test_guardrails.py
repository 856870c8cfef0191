"""Guard-rails: the global kill switch across workers, the sensitive-feature denylist."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import msgspec
import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from decision_api.app import create_app
from decision_api.decisions import engine as engine_module
from decision_api.decisions.controls import Controls
from decision_api.decisions.engine import DecisionEngine, Pseudonymiser
from decision_api.metrics import Metrics
from decision_api.profiles.store import UnitProfile
from decision_api.settings import DecisionSettings, Settings
from event_log.rows import Exposure, Outcome
from experiments.cache import ExperimentCache
from tests.support.polling import eventually

Client = AsyncTestClient[Litestar]

HERO: dict[str, Any] = {
    "key": "hero",
    "placement": "home",
    "variants": [{"key": "control"}, {"key": "spring"}],
    "default_variant": "control",
}
DECIDE = {"unit_id": "u-1", "placements": ["home"]}


async def reasons(client: Client, units: int = 20) -> set[str]:
    """The reason codes served to ``units`` different units."""
    found = set()
    for i in range(units):
        body = {**DECIDE, "unit_id": f"u-{i}"}
        found.add((await client.post("/v1/decide", json=body)).json()["decisions"][0]["reason"])
    return found


async def until(probe: Any, timeout: float = 10.0) -> None:
    """Poll an async predicate until it holds."""
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_kill_switch_reaches_every_worker(settings: Settings, redis: Redis) -> None:
    """Engaging the switch on one worker serves defaults (reason kill_switch) on another within
    a poll interval; releasing it restores the split; both are audited."""
    async with (
        AsyncTestClient(app=create_app(settings)) as one,
        AsyncTestClient(app=create_app(settings)) as two,
    ):
        await one.post("/v1/experiments", json=HERO)
        await one.post("/v1/experiments/hero/start")
        await until(lambda: _reasons_are(two, {"split"}))

        engaged = await one.put("/v1/kill-switch", json={"engaged": True})
        assert engaged.json() == {"engaged": True, "forced": False}
        assert await reasons(one) == {"kill_switch"}
        await until(lambda: _reasons_are(two, {"kill_switch"}))
        decided = (await two.post("/v1/decide", json=DECIDE)).json()["decisions"][0]
        assert (decided["variant"], decided["propensity"]) == ("control", 1.0)
        assert (await two.get("/v1/kill-switch")).json()["engaged"] is True

        await one.put("/v1/kill-switch", json={"engaged": False})
        await until(lambda: _reasons_are(two, {"split"}))

        services = one.app.state.services
        await asyncio.to_thread(one.blocking_portal.call, services.writer.flush)
        audit = await asyncio.to_thread(
            services.event_log.query,
            "SELECT action FROM audit WHERE entity = 'kill_switch' ORDER BY ts",
        )
        assert [a for (a,) in audit] == ["engage", "release"]


async def _reasons_are(client: Client, expected: set[str]) -> bool:
    return await reasons(client, 5) == expected


async def test_kill_switch_forced_by_settings(settings: Settings) -> None:
    """``decisions.kill_switch`` engages the switch for the process; the API cannot release it."""
    forced = msgspec.structs.replace(settings, decisions=DecisionSettings(kill_switch=True))
    async with AsyncTestClient(app=create_app(forced)) as client:
        await client.post("/v1/experiments", json=HERO)
        await client.post("/v1/experiments/hero/start")
        released = await client.put("/v1/kill-switch", json={"engaged": False})
        assert released.json() == {"engaged": True, "forced": True}
        assert await reasons(client, 5) == {"kill_switch"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {"targeting": {"all": [{"attribute": "Health", "op": "eq", "value": "x"}]}},
            "$.targeting",
        ),
        (
            {"variants": [{"key": "control"}, {"key": "spring", "features": {"religion": "x"}}]},
            "$.variants[1].features",
        ),
        ({"policy": {"kind": "thompson", "segment_by": "ethnicity"}}, "$.policy.segment_by"),
        (
            {
                "policy": {"kind": "vw_cb"},
                "variants": [
                    {"key": "control", "features": {"political_opinion": 1.0}},
                    {"key": "spring"},
                ],
            },
            "$.variants[0].features",
        ),
    ],
)
async def test_sensitive_features_rejected_in_definitions(
    shared_client: Client, change: dict[str, Any], field: str
) -> None:
    """Targeting, variant (action) features and policy options naming a sensitive feature are
    422 at definition time, case-insensitively, naming the field (one app for every case:
    nothing is stored)."""
    response = await shared_client.post("/v1/experiments", json={**HERO, **change})
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["field"] == field
    assert "sensitive" in error["message"]


async def test_sensitive_features_never_stored(
    client: Client, redis: Redis, namespace: str
) -> None:
    """PUT features with a sensitive name is refused (422 naming it) and nothing is stored."""
    body = {"features": {"segment": "vip", "health": "diabetic"}}
    response = await client.put("/v1/units/u-1/features", json=body)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "$.features.health"
    assert await redis.exists(f"{namespace}:u:{{u-1}}") == 0


async def test_sensitive_context_never_reaches_targeting(client: Client) -> None:
    """A sensitive attribute sent in the request context is stripped before targeting and
    logging, whatever its case."""
    spec = {**HERO, "targeting": {"all": [{"attribute": "device", "op": "eq", "value": "m"}]}}
    await client.post("/v1/experiments", json=spec)
    await client.post("/v1/experiments/hero/start")
    body = {**DECIDE, "context": {"device": "m", "health": "x", "Religion": "y"}}
    decided = (await client.post("/v1/decide", json=body)).json()["decisions"][0]
    assert decided["reason"] == "split"
    services = client.app.state.services
    await asyncio.to_thread(client.blocking_portal.call, services.writer.flush)
    rows = await asyncio.to_thread(services.event_log.query, "SELECT context FROM exposures")
    assert rows == [({"device": "m"},)]


def test_sensitive_attributes_are_stripped_from_every_prepared_unit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Names once found harmless are not checked again, but a sensitive one (any case) is
    stripped from every unit, whatever names came before it, also once the set of names
    remembered as harmless has started over."""
    monkeypatch.setattr(engine_module, "MAX_KNOWN_NAMES", 50)
    engine = DecisionEngine(
        features=None,  # type: ignore[arg-type]  # prepare reads no store
        cache=ExperimentCache(store=None),  # type: ignore[arg-type]
        policies=None,
        sink=None,  # type: ignore[arg-type]
        metrics=Metrics(),
        pseudonymise=Pseudonymiser("s"),
        rng=np.random.default_rng(0),
        sensitive_features=frozenset({"Health", "religion"}),
    )
    profile = UnitProfile(attributes={"plan": "pro", "HEALTH": "x"}, hours={}, found=True)
    for i in range(300):
        context = {"device": "m", f"k{i % 120}": i}
        if i % 7 == 0:
            context["Religion" if i % 2 else "health"] = "y"
        unit = engine.prepare(f"u{i}", context, True, profile, False, 1_700_000_000_000)
        assert unit.attributes == {"plan": "pro", "device": "m", f"k{i % 120}": i}
    no_consent = engine.prepare("u", {"religion": "z"}, False, profile, False, 0)
    assert no_consent.attributes == {}


class _Engine:
    """The decision engine as the kill switch sees it."""

    kill_switch = False


class _HeldRedis:
    """Real Redis whose GET answers only when ``release`` is set (the reply is read first)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self.release = asyncio.Event()

    async def get(self, key: str) -> Any:
        value = await self._redis.get(key)
        await self.release.wait()
        return value

    async def set(self, key: str, value: str) -> Any:
        return await self._redis.set(key, value)

    async def delete(self, key: str) -> Any:
        return await self._redis.delete(key)


async def test_a_poll_in_flight_does_not_undo_a_switch(redis: Redis, namespace: str) -> None:
    """A poll whose GET was answered before the admin released the switch does not re-engage
    it when it lands afterwards (it did, until the next poll: the UI then read a stale state)."""
    held = _HeldRedis(redis)
    engine = _Engine()
    controls = Controls(held, namespace, engine, forced=False)  # type: ignore[arg-type]
    await controls.set_kill_switch(True)
    poll = asyncio.create_task(controls.poll())
    await asyncio.sleep(0.05)  # the poll has read "1" and waits
    await controls.set_kill_switch(False)
    held.release.set()
    await poll
    assert controls.engaged is False and engine.kill_switch is False
    await controls.poll()  # a later poll reads the released switch
    assert controls.engaged is False


# Automatic pause on guard-rail harm (issue 17, item 3).

WATCHED: dict[str, Any] = {
    "key": "watched",
    "placement": "promo",
    "variants": [{"key": "control"}, {"key": "pushy"}],
    "default_variant": "control",
    "primary_metric": "purchase",
    "guardrail_metrics": ["unsubscribe"],
    "reward_window_s": 3600,
    "auto_pause_on_harm": True,
}


def _simulate(services: Any, *, units: int, unsubscribe: dict[str, float], seed: int = 7) -> None:
    """Exposures of ``units`` units per arm of ``watched`` (a minute ago) and their outcomes:
    each unit of arm ``a`` unsubscribes with probability ``unsubscribe[a]``, 10% purchase."""
    rng = np.random.default_rng(seed)
    t0 = int(time.time() * 1000) - 60_000
    exposures, outcomes = [], []
    for arm, rate in unsubscribe.items():
        for i in range(units):
            unit = f"{arm}-{i}"
            exposures.append(
                Exposure(
                    event_id=uuid.uuid4(),
                    decision_id=uuid.uuid4().hex,
                    ts_ms=t0,
                    unit_id=unit,
                    experiment="watched",
                    experiment_version=2,
                    placement="promo",
                    variant=arm,
                    propensity=0.5,
                    policy="fixed",
                    policy_version="",
                    reason="split",
                    holdout=False,
                    context={},
                ).row()
            )
            for kind, p in (("unsubscribe", rate), ("purchase", 0.1)):
                if rng.random() < p:
                    outcomes.append(
                        Outcome(
                            event_id=uuid.uuid4(),
                            ts_ms=t0 + 1000,
                            decision_id="",
                            unit_id=unit,
                            experiment="watched",
                            type=kind,
                            value=0.0,
                            properties={},
                        ).row()
                    )
    services.event_log.insert("exposures", exposures, uuid.uuid4().hex)
    services.event_log.insert("outcomes", outcomes, uuid.uuid4().hex)


async def _in_app(client: Client, fn: Any, *args: Any) -> Any:
    """Run an app coroutine on the app's own event loop (its connections live there)."""
    return await asyncio.to_thread(client.blocking_portal.call, fn, *args)


async def _audit(client: Client, key: str) -> list[tuple[Any, ...]]:
    services = client.app.state.services
    await _in_app(client, services.writer.flush)
    return await asyncio.to_thread(
        services.event_log.query,
        "SELECT action, version, actor, detail FROM audit WHERE entity_key = {key:String} "
        "ORDER BY ts, version",
        {"key": key},
    )


async def test_harmful_guardrail_pauses_the_experiment_once(settings: Settings) -> None:
    """Two workers check every 0.1 s; a guard-rail that rises from 2% to 30% pauses the
    experiment exactly once, audited with actor ``guardrail``, and the report says so."""
    fast = msgspec.structs.replace(
        settings,
        decisions=msgspec.structs.replace(settings.decisions, guardrail_check_interval_s=0.1),
    )
    async with (
        AsyncTestClient(app=create_app(fast)) as one,
        AsyncTestClient(app=create_app(fast)) as two,
    ):
        assert (await one.post("/v1/experiments", json=WATCHED)).status_code == 201
        assert (await one.post("/v1/experiments/watched/start")).status_code == 200
        services = one.app.state.services
        await asyncio.to_thread(
            _simulate, services, units=2000, unsubscribe={"control": 0.02, "pushy": 0.3}
        )

        async def paused() -> dict[str, Any] | None:
            body: dict[str, Any] = (await two.get("/v1/experiments/watched")).json()
            return body if body["status"] == "paused" else None

        body = await eventually(paused, "the guard-rail pause", timeout_s=30)
        assert body["version"] == 3
        assert "Guard-rail unsubscribe: pushy raises it" in body["paused_reason"]
        await asyncio.sleep(0.5)  # more checks on both workers: nothing more happens
        rows = await _audit(one, "watched")
        assert [r[:3] for r in rows] == [
            ("create", 1, "anonymous"),
            ("start", 2, "anonymous"),
            ("pause", 3, "guardrail"),
        ]
        assert "pushy raises it" in msgspec.json.decode(rows[2][3])["paused_reason"]
        report = (await one.get("/v1/experiments/watched/report")).json()
        assert report["auto_paused"] == body["paused_reason"]
        assert any("paused automatically by the guard-rail check" in w for w in report["warnings"])

        restarted = (await one.post("/v1/experiments/watched/start")).json()
        assert (restarted["status"], restarted["paused_reason"]) == ("running", None)


async def test_harmless_guardrail_keeps_the_experiment_running(settings: Settings) -> None:
    """The same run with the guard-rail at 2% in both arms is checked and keeps running."""
    async with AsyncTestClient(app=create_app(settings)) as client:
        await client.post("/v1/experiments", json=WATCHED)
        await client.post("/v1/experiments/watched/start")
        services = client.app.state.services
        await asyncio.to_thread(
            _simulate, services, units=2000, unsubscribe={"control": 0.02, "pushy": 0.02}
        )
        watched = await _in_app(client, services.store.get, "watched")
        assert await _in_app(client, services.guardrails.harms, watched) == []
        assert await _in_app(client, services.check_guardrails) == []
        assert (await client.get("/v1/experiments/watched")).json()["status"] == "running"
        assert [r[:3] for r in await _audit(client, "watched")] == [
            ("create", 1, "anonymous"),
            ("start", 2, "anonymous"),
        ]


async def test_auto_pause_needs_a_guardrail_metric(shared_client: Client) -> None:
    """``auto_pause_on_harm`` without a guard-rail metric is a 422 naming the field."""
    response = await shared_client.post(
        "/v1/experiments", json={**WATCHED, "guardrail_metrics": []}
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "$.auto_pause_on_harm"
