"""The asyncio SDK against the real app in-process (httpx ASGI transport), auth keys on.

One app serves the module (real Redis and chdb); every test uses keys and unit ids of its own.
Covers: decide and defaults, idempotent outcome batches, the definitions and exposures routes,
local evaluation agreeing with the server, ``?key=`` auth, the snippet route, ``decide_batch``
on the real endpoint, the error hierarchy, and fail-open on a slow app.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from litestar.testing.transport import TestClientTransport as LitestarTransport
from litestar.types import Receive, Scope, Send

from decision_api.app import create_app
from decision_api.services import Services
from decision_api.settings import AuthSettings, Settings
from sdk import (
    AsyncTailorClient,
    AuthError,
    ClientOptions,
    DefaultVariant,
    InvalidRequest,
    PermissionDenied,
    RequestTimeout,
)
from tests.support.polling import eventually

T = TypeVar("T")
Client = AsyncTestClient[Litestar]
ADMIN, DECIDE, INGEST = "admin-secret", "decide-secret", "ingest-secret"


@pytest.fixture(scope="module")
async def api(shared_settings: Settings) -> AsyncIterator[Client]:
    """The module's app with three keys: admin, decide-only, ingest+decide."""
    keys = f"{ADMIN}:admin,{DECIDE}:decide,{INGEST}:ingest+decide"
    settings = msgspec.structs.replace(shared_settings, auth=AuthSettings(api_keys=keys))
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


@pytest.fixture
def tag() -> str:
    """A suffix making this test's keys and unit ids unique."""
    return uuid.uuid4().hex[:8]


def admin() -> dict[str, str]:
    """The admin key's header."""
    return {"authorization": f"Bearer {ADMIN}"}


class AppTransport(httpx.AsyncBaseTransport):
    """Litestar's test transport (requests run on the app's loop) as an httpx transport."""

    def __init__(self, api: Client) -> None:
        self._inner = LitestarTransport(client=api, raise_server_exceptions=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Run the request through the app under test."""
        return await self._inner.handle_async_request(request)


def sdk(api: Client, key: str = INGEST, app: Any = None, **options: Any) -> AsyncTailorClient:
    """An SDK client talking to the module's app in-process.

    Requests go through Litestar's test transport, which runs them on the app's own event loop
    (where its Redis connections live); ``app`` instead puts a plain ASGI app behind httpx.
    """
    opts = ClientOptions(decide_timeout_s=5.0, flush_interval_s=0.05, **options)
    transport: httpx.AsyncBaseTransport
    transport = AppTransport(api) if app is None else httpx.ASGITransport(app=app)
    return AsyncTailorClient(
        "http://testserver.local", key, options=opts, transport=transport, close_at_exit=False
    )


async def running(api: Client, key: str, placement: str, **changes: Any) -> None:
    """Create and start an experiment (3 variants, default ``a``)."""
    spec = {
        "key": key,
        "placement": placement,
        "default_variant": "a",
        "variants": [
            {"key": "a", "payload": {"headline": "A"}},
            {"key": "b", "weight": 2, "payload": {"headline": "B"}},
            {"key": "c", "payload": {"headline": "C"}},
        ],
        **changes,
    }
    created = await api.post("/v1/experiments", json=spec, headers=admin())
    assert created.status_code == 201, created.text
    started = await api.post(f"/v1/experiments/{key}/start", headers=admin())
    assert started.status_code == 200, started.text


async def server_decide(api: Client, unit: str, placements: list[str], **extra: Any) -> Any:
    """One decide through the plain HTTP API."""
    body = {"unit_id": unit, "placements": placements, **extra}
    response = await api.post("/v1/decide", json=body, headers=admin())
    assert response.status_code == 200, response.text
    return response.json()


async def query(api: Client, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows from the app's event log."""
    services: Services = api.app.state.services
    return await asyncio.to_thread(services.event_log.query, sql, params)


async def test_decide_returns_the_server_variant_and_fills_defaults(api: Client, tag: str) -> None:
    """decide gives each unit the server's variant; a placement without experiment, the default."""
    await running(api, f"hero-{tag}", f"home-{tag}")
    defaults = {f"footer-{tag}": DefaultVariant(variant="plain", payload={"text": "Hi"})}
    async with sdk(api) as client:
        for i in range(20):
            unit = f"u-{tag}-{i}"
            result = await client.decide(
                unit, [f"home-{tag}", f"footer-{tag}"], {"device": "mobile"}, defaults=defaults
            )
            server = await server_decide(api, unit, [f"home-{tag}"])
            hero = result[f"home-{tag}"]
            assert (hero.variant, hero.payload, hero.fallback) == (
                server["decisions"][0]["variant"],
                server["decisions"][0]["payload"],
                False,
            )
            assert len(result.decision_id or "") == 32 and not result.fallback
            footer = result[f"footer-{tag}"]
            assert (footer.variant, footer.payload, footer.reason) == (
                "plain",
                {"text": "Hi"},
                "no_experiment",
            )
            assert not footer.fallback


OUTCOME_COUNT = """
SELECT count(), uniqExact(event_id) FROM outcomes FINAL WHERE unit_id = {unit:String}
"""


async def test_outcomes_are_flushed_and_a_resent_batch_counts_once(api: Client, tag: str) -> None:
    """Buffered outcomes arrive with their client event ids; resending the batch adds nothing."""
    unit = f"u-{tag}"
    async with sdk(api) as client:
        ids = [client.track_outcome("purchase", unit_id=unit, value=float(i)) for i in range(50)]
        assert await client.flush(5.0)
        assert client.stats.outcomes.sent == 50

    async def counted() -> Any:
        rows = await query(api, OUTCOME_COUNT, unit=unit)
        return rows if rows[0][1] == 50 else None

    assert (await eventually(counted))[0] == (50, 50)
    stored = await query(
        api, "SELECT toString(event_id) FROM outcomes WHERE unit_id = {u:String}", u=unit
    )
    assert {uuid.UUID(r[0]).hex for r in stored} == set(ids)
    batch = {"outcomes": [{"type": "purchase", "unit_id": unit, "event_id": e} for e in ids]}
    again = await api.post("/v1/outcomes/batch", json=batch, headers=admin())
    assert again.status_code == 202
    assert again.json()["event_ids"] == ids
    await asyncio.sleep(0.3)  # two flush intervals: the replay is in the table now
    assert (await query(api, OUTCOME_COUNT, unit=unit))[0] == (50, 50)


async def test_definitions_carry_only_locally_evaluable_experiments(api: Client, tag: str) -> None:
    """Running and paused fixed experiments are listed; learning and capped ones make their
    placement remote; drafts are absent; the ETag answers 304 until the config changes."""
    await running(
        api,
        f"fixed-{tag}",
        f"p1-{tag}",
        holdout=0.1,
        salt=f"salt-{tag}",
        targeting={"attribute": "device", "op": "eq", "value": "mobile"},
    )
    await running(api, f"paused-{tag}", f"p2-{tag}")
    await api.post(f"/v1/experiments/paused-{tag}/pause", headers=admin())
    await running(api, f"ts-{tag}", f"p3-{tag}", policy={"kind": "thompson"})
    await running(
        api, f"cap-{tag}", f"p4-{tag}", frequency_cap={"max_exposures": 1, "window_s": 60}
    )
    spec = {
        "key": f"draft-{tag}",
        "placement": f"p5-{tag}",
        "variants": [{"key": "a"}],
        "default_variant": "a",
    }
    await api.post("/v1/experiments", json=spec, headers=admin())
    response = await api.get("/v1/definitions", headers={"authorization": f"Bearer {DECIDE}"})
    assert response.status_code == 200, response.text
    body = response.json()
    mine = {d["key"]: d for d in body["experiments"] if d["key"].endswith(tag)}
    assert set(mine) == {f"fixed-{tag}", f"paused-{tag}"}
    fixed = mine[f"fixed-{tag}"]
    assert fixed["salt"] == f"salt-{tag}" and fixed["holdout"] == 0.1
    assert fixed["targeting"] == {"attribute": "device", "op": "eq", "value": "mobile"}
    assert [v["key"] for v in fixed["variants"]] == ["a", "b", "c"]
    assert "hypothesis" not in fixed and "primary_metric" not in fixed
    assert mine[f"paused-{tag}"]["status"] == "paused"
    assert {f"p3-{tag}", f"p4-{tag}"} <= set(body["remote_placements"])
    etag = response.headers["etag"]
    same = await api.get(
        "/v1/definitions", headers={"authorization": f"Bearer {DECIDE}", "if-none-match": etag}
    )
    assert (same.status_code, same.content) == (304, b"")
    await api.post(f"/v1/experiments/paused-{tag}/start", headers=admin())
    changed = await api.get(
        "/v1/definitions", headers={"authorization": f"Bearer {DECIDE}", "if-none-match": etag}
    )
    assert changed.status_code == 200 and changed.headers["etag"] != etag


async def test_local_evaluation_agrees_with_the_server(api: Client, tag: str) -> None:
    """For 300 units, locally decided placements equal the server's answers (variant, reason,
    policy, propensity) across splits, holdout, targeting, priorities, layers and pauses; a
    learning placement goes to the server; exposures of local decisions are logged."""
    names = ("split", "target", "tonly", "layer", "paused", "learn")
    p = {name: f"{name}-{tag}" for name in names}
    await running(api, f"split-{tag}", p["split"], holdout=0.2)
    await running(
        api,
        f"target-{tag}",
        p["target"],
        priority=5,
        targeting={
            "any": [
                {"attribute": "device", "op": "eq", "value": "mobile"},
                {"attribute": "visits", "op": "gte", "value": 3},
            ]
        },
    )
    await running(api, f"fallback-{tag}", p["target"])
    await running(
        api,
        f"tonly-{tag}",
        p["tonly"],
        targeting={"attribute": "device", "op": "eq", "value": "mobile"},
    )
    await running(api, f"l1-{tag}", p["layer"], layer=f"L{tag}", traffic=0.5)
    await running(api, f"l2-{tag}", p["layer"], layer=f"L{tag}", traffic=0.3)
    await running(api, f"paused-{tag}", p["paused"])
    await api.post(f"/v1/experiments/paused-{tag}/pause", headers=admin())
    await running(api, f"learn-{tag}", p["learn"], policy={"kind": "thompson"})
    local_placements = [p["split"], p["target"], p["tonly"], p["layer"], p["paused"]]
    async with sdk(api, local_evaluation=True) as client:
        reasons: set[str] = set()
        exposures = 0
        for i in range(300):
            unit = f"u-{tag}-{i}"
            context = {"device": ["mobile", "desktop"][i % 2], "visits": i % 5}
            consent = i % 7 != 0
            result = await client.decide(unit, [*local_placements, p["learn"]], context, consent)
            server = await server_decide(
                api, unit, local_placements, context=context, consent=consent
            )
            for answer in server["decisions"]:
                mine = result[answer["placement"]]
                assert mine.local, answer
                assert (mine.experiment, mine.variant, mine.reason, mine.policy) == (
                    answer.get("experiment"),
                    answer.get("variant"),
                    answer["reason"],
                    answer["policy"],
                ), (unit, answer)
                assert mine.propensity == pytest.approx(answer["propensity"], rel=1e-12)
                reasons.add(answer["reason"])
                exposures += answer.get("experiment") is not None
            learned = result[p["learn"]]
            assert not learned.local and learned.experiment == f"learn-{tag}"
        assert reasons >= {
            "split",
            "holdout",
            "not_targeted",
            "outside_layer",
            "experiment_paused",
            "no_consent",
        }
        assert await client.flush(5.0)
        assert client.stats.exposures.sent == exposures
        assert client.stats.exposures.rejected == 0
    sql = """SELECT policy, reason, count() FROM exposures FINAL
             WHERE experiment IN {keys:Array(String)} GROUP BY policy, reason"""
    keys = [
        f"tonly-{tag}",
        f"split-{tag}",
        f"target-{tag}",
        f"fallback-{tag}",
        f"l1-{tag}",
        f"l2-{tag}",
        f"paused-{tag}",
    ]

    async def logged() -> Any:
        rows = await query(api, sql, keys=keys)
        return rows if sum(r[2] for r in rows) >= 2 * exposures else None  # local + server

    rows = await eventually(logged)
    assert sum(r[2] for r in rows) == 2 * exposures
    assert all(
        policy == ("fixed" if reason == "split" else "default") for policy, reason, _ in rows
    )


async def test_local_definitions_refresh_with_etag(api: Client, tag: str) -> None:
    """A refresh with nothing changed is a 304 (False); a started experiment is then local."""
    async with sdk(api, local_evaluation=True) as client:
        assert await client.refresh_definitions() is False
        before = await client.decide(f"u-{tag}", [f"new-{tag}"])
        assert before[f"new-{tag}"].reason == "no_experiment" and before[f"new-{tag}"].local
        await running(api, f"new-{tag}", f"new-{tag}")
        await asyncio.sleep(0.15)  # the worker's config poll (50 ms) picks it up
        assert await client.refresh_definitions() is True
        after = await client.decide(f"u-{tag}", [f"new-{tag}"])
        assert after[f"new-{tag}"].reason == "split" and after[f"new-{tag}"].local


EXPOSURE_SQL = """
SELECT unit_id, variant, propensity, policy, reason, holdout, context, experiment_version
FROM exposures WHERE decision_id = {d:String} ORDER BY reason
"""


async def test_exposure_reports_are_checked_and_logged_like_server_ones(
    api: Client, tag: str
) -> None:
    """Good reports become rows (policy from the reason, propensity from the definition,
    pseudonymised unit and no context without consent); bad ones come back as rejected."""
    await running(api, f"exp-{tag}", f"p-{tag}")
    version = (await api.get(f"/v1/experiments/exp-{tag}", headers=admin())).json()["version"]
    decision = uuid.uuid4().hex
    base = {
        "decision_id": decision,
        "unit_id": f"u-{tag}",
        "experiment": f"exp-{tag}",
        "experiment_version": version,
        "placement": f"p-{tag}",
        "variant": "b",
        "reason": "split",
        "propensity": 0.9,
        "ts": datetime.now(UTC).isoformat(),
        "context": {"page": "/", "visits": 3},
    }
    reports = [
        {**base, "event_id": uuid.uuid4().hex},
        {
            **base,
            "event_id": uuid.uuid4().hex,
            "reason": "holdout",
            "variant": "a",
            "propensity": 1.0,
            "consent": False,
        },
        {**base, "event_id": uuid.uuid4().hex, "experiment": f"nope-{tag}"},
        {**base, "event_id": uuid.uuid4().hex, "variant": "zz"},
        {**base, "event_id": uuid.uuid4().hex, "placement": "elsewhere"},
    ]
    response = await api.post(
        "/v1/exposures/batch",
        json={"exposures": reports},
        headers={"authorization": f"Bearer {DECIDE}"},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 2
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [
        (2, "$.exposures[2].experiment"),
        (3, "$.exposures[3].variant"),
        (4, "$.exposures[4].placement"),
    ]

    async def rows() -> Any:
        found = await query(api, EXPOSURE_SQL, d=decision)
        return found if len(found) == 2 else None

    holdout, split = await eventually(rows)
    assert split[:6] == (f"u-{tag}", "b", pytest.approx(0.5), "fixed", "split", 1 - 1)
    assert split[6] == {"page": "/", "visits": "3"} and split[7] == version
    assert holdout[0].startswith("anon:") and holdout[0] != f"u-{tag}"
    assert holdout[1:7] == ("a", 1.0, "default", "holdout", 1, {})


@pytest.mark.parametrize(
    ("method", "path", "key", "status"),
    [
        ("POST", "/v1/decide", DECIDE, 200),
        ("POST", "/v1/outcomes", DECIDE, 202),
        ("POST", "/v1/decide", INGEST, 403),  # more than decide: not in a URL
        ("POST", "/v1/decide", ADMIN, 403),
        ("POST", "/v1/decide", "wrong", 401),
        ("GET", "/v1/experiments", ADMIN, 401),  # URL keys only where decide is accepted
        ("PUT", "/v1/units/u1/features", INGEST, 401),
    ],
)
async def test_url_keys_only_for_decide_only_keys(
    api: Client, method: str, path: str, key: str, status: int
) -> None:
    """``?key=`` works on decide routes for decide-only keys, with a text/plain body (no CORS
    preflight), and nowhere else."""
    bodies = {
        "/v1/decide": {"unit_id": "u1", "placements": ["x"]},
        "/v1/outcomes": {"unit_id": "u1", "type": "click"},
        "/v1/units/u1/features": {"features": {"a": 1}},
    }
    content = msgspec.json.encode(bodies.get(path, {})) if method != "GET" else None
    response = await api.request(
        method,
        path,
        params={"key": key},
        content=content,
        headers={"content-type": "text/plain;charset=UTF-8"},
    )
    assert response.status_code == status, response.text


async def test_snippet_is_served_with_etag(api: Client) -> None:
    """``/sdk/tailor.js`` is public JavaScript with an ETag; a revalidation is a 304."""
    response = await api.get("/sdk/tailor.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    # A budget for a script on every page view: 8 KiB until slates, which added about 2.5 KiB.
    assert b"data-tailor-placement" in response.content and len(response.content) < 10 * 1024
    again = await api.get("/sdk/tailor.js", headers={"if-none-match": response.headers["etag"]})
    assert again.status_code == 304


async def test_non_decide_calls_raise_the_hierarchy(api: Client, tag: str) -> None:
    """Features with a decide-only key: 403; unknown key: 401; decide with a bad key falls back."""
    async with sdk(api, key=DECIDE) as client:
        with pytest.raises(PermissionDenied):
            await client.upsert_features(f"u-{tag}", {"segment": "vip"})
    async with sdk(api, key="not-a-key") as client:
        with pytest.raises(AuthError) as caught:
            await client.track_event(f"u-{tag}", "page_view")
        assert not isinstance(caught.value, PermissionDenied) and caught.value.status == 401
        result = await client.decide(f"u-{tag}", ["x"], defaults={"x": "plain"})
        assert result.fallback and isinstance(result.error, AuthError)
        assert result["x"].variant == "plain"
        with pytest.raises(InvalidRequest, match="invalid features: must have at least 1") as bad:
            await client.upsert_features(f"u-{tag}", {})
        assert bad.value.field == "$.features"


async def test_features_and_events_reach_the_profile(api: Client, tag: str) -> None:
    """Features upserted by the SDK are what server-side targeting then sees."""
    await running(
        api,
        f"vip-{tag}",
        f"p-{tag}",
        targeting={"attribute": "segment", "op": "eq", "value": "vip"},
    )
    async with sdk(api) as client:
        unit = f"u-{tag}"
        assert (await client.decide(unit, [f"p-{tag}"]))[f"p-{tag}"].reason == "not_targeted"
        stored = await client.upsert_features(unit, {"segment": "vip", "score": 0.5})
        assert stored.stored == ["score", "segment"]
        assert (await client.track_event(unit, "page_view")).type == "page_view"
        assert (await client.decide(unit, [f"p-{tag}"]))[f"p-{tag}"].reason == "split"


async def test_decide_batch_streams_the_real_endpoint(api: Client, tag: str) -> None:
    """decide_batch yields one result per recipient in order, with the variants decide gives;
    a recipient the server refuses gets the defaults and its error."""
    await running(api, f"subj-{tag}", f"subject-{tag}")
    units = [f"u-{tag}-{i}" for i in range(40)]
    recipients: list[dict[str, Any]] = [{"unit_id": u} for u in units]
    recipients[7] = {"unit_id": "bad{brace}"}
    async with sdk(api) as client:
        results = [
            r
            async for r in client.decide_batch(
                f"camp-{tag}", recipients, [f"subject-{tag}"], defaults={f"subject-{tag}": "a"}
            )
        ]
        assert [r.index for r in results] == list(range(40))
        assert results[7].fallback and isinstance(results[7].error, InvalidRequest)
        for i in (0, 5, 39):
            single = await client.decide(units[i], [f"subject-{tag}"])
            assert results[i][f"subject-{tag}"].variant == single[f"subject-{tag}"].variant
            assert not results[i].fallback and results[i].decision_id


def slow(delay_s: float) -> Any:
    """An ASGI app that takes ``delay_s`` before answering 200 (a stalled API)."""

    async def stalled(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(delay_s)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return stalled


async def test_stalled_api_gives_defaults_within_the_timeout(api: Client, tag: str) -> None:
    """With the API 500 ms late, a 100 ms decide returns the defaults after ~100 ms (the real
    app behind a slow proxy: test_socket.py)."""
    client = sdk(api, app=slow(0.5))
    try:
        started = time.monotonic()
        result = await client.decide(
            f"u-{tag}", ["hero"], defaults={"hero": "control"}, timeout_s=0.1
        )
        elapsed = time.monotonic() - started
    finally:
        await client.aclose()
    assert result.fallback and isinstance(result.error, RequestTimeout)
    assert result["hero"].variant == "control"
    assert 0.09 <= elapsed < 0.3


async def test_exclude_is_decided_by_the_server_even_for_local_placements(
    api: Client, tag: str
) -> None:
    """``exclude`` reaches the API (a locally evaluable placement goes remote for it), and a
    variant with an ``eligible`` condition keeps its placement remote."""
    placement, conditional = f"shelf-{tag}", f"cond-{tag}"
    await running(api, f"shelf-{tag}", placement)
    await running(
        api,
        f"cond-{tag}",
        conditional,
        variants=[{"key": "a"}, {"key": "b", "eligible": {"attribute": "x", "op": "exists"}}],
    )
    async with sdk(api, local_evaluation=True) as client:
        await client.refresh_definitions()
        for i in range(20):
            result = await client.decide(
                f"u-{tag}-{i}", [placement, conditional], exclude={placement: ["a", "b"]}
            )
            assert (result[placement].variant, result[placement].reason) == ("c", "split")
            assert result[placement].propensity == 1.0
            assert result[conditional].variant == "a"  # b needs ``x``: the server knows
            nothing = await client.decide(
                f"u-{tag}-{i}", [placement], exclude={placement: ["a", "b", "c"]}
            )
            assert (nothing[placement].variant, nothing[placement].reason) == (
                "a",
                "no_eligible_variant",
            )
    definitions = (await api.get("/v1/definitions", headers=admin())).json()
    assert conditional in definitions["remote_placements"]
    assert placement not in definitions["remote_placements"]


async def test_explain_reaches_the_api_and_comes_back(api: Client, tag: str) -> None:
    """``decide(explain=True)`` asks the API (even with local evaluation on) and returns the
    learning policy's ``explanation`` (``[]`` from an untrained global posterior); without it
    ``explanation`` is None. ``decide_batch(explain=True)`` does the same for every recipient."""
    placement = f"explained-{tag}"
    await running(api, placement, placement, policy={"kind": "thompson", "segment_by": "plan"})
    async with sdk(api, local_evaluation=True) as client:
        await client.refresh_definitions()
        asked = await client.decide(f"u-{tag}", [placement], {"plan": "pro"}, explain=True)
        assert (asked[placement].reason, asked[placement].explanation) == ("policy", [])
        assert not asked[placement].local
        plain = await client.decide(f"u-{tag}", [placement], {"plan": "pro"})
        assert plain[placement].explanation is None
        recipients = [{"unit_id": f"r-{tag}-{i}", "context": {"plan": "pro"}} for i in range(3)]
        bulk = [
            r async for r in client.decide_batch(f"c-{tag}", recipients, [placement], explain=True)
        ]
        assert [(r[placement].reason, r[placement].explanation) for r in bulk] == [
            ("policy", [])
        ] * 3
        unasked = [r async for r in client.decide_batch(f"c-{tag}", recipients, [placement])]
        assert all(r[placement].explanation is None for r in unasked)


SLATE_OUTCOMES = """
SELECT slot, item FROM outcomes FINAL WHERE decision_id = {d:String} ORDER BY slot
"""


async def test_slates_reach_the_api_and_outcomes_name_their_slot(api: Client, tag: str) -> None:
    """``decide(slates=...)`` asks the API for a ranked slate (a slot count, or items of the
    caller's own with features) and returns it in order as ``Decision.slate``;
    ``track_outcome(item=..., slot=...)`` sends the slot that earned the outcome; a bad slate
    is refused before sending, naming the field."""
    placement = f"carousel-{tag}"
    await running(api, placement, placement, policy={"kind": "vw_slates", "slots": 2})
    async with sdk(api, local_evaluation=True) as client:
        await client.refresh_definitions()
        ranked = await client.decide(f"u-{tag}", [placement], slates={placement: 3})
        slate = ranked[placement].slate
        assert slate is not None and not ranked[placement].local
        assert sorted(s.item for s in slate) == ["a", "b", "c"]
        assert [s.slot for s in slate] == [0, 1, 2]
        assert ranked[placement].variant == slate[0].item
        own = [{"id": f"sku-{i}", "features": {"brand": "x" if i % 2 else "y"}} for i in range(5)]
        mine = await client.decide(f"u-{tag}", [placement], slates={placement: {"candidates": own}})
        mine_slate = mine[placement].slate
        assert mine_slate is not None and len(mine_slate) == 2
        assert {s.item for s in mine_slate} <= {c["id"] for c in own}
        assert mine.decision_id is not None
        client.track_outcome("click", decision_id=mine.decision_id, item=mine_slate[1].item)
        client.track_outcome("click", decision_id=mine.decision_id, slot=0)
        assert await client.flush(5.0)
        recipients = [{"unit_id": f"b-{tag}-{i}"} for i in range(3)]
        bulk = [
            r async for r in client.decide_batch(
                f"c-{tag}", recipients, [placement], slates={placement: 2}
            )
        ]  # fmt: skip
        assert [len(r[placement].slate or []) for r in bulk] == [2, 2, 2]
        bad = await client.decide(f"u-{tag}", [placement], slates={placement: {"slots": 0}})
        assert bad.fallback and bad.error is not None
        assert "slots" in str(bad.error)

    async def logged() -> Any:
        rows = await query(api, SLATE_OUTCOMES, d=mine.decision_id)
        return rows if len(rows) == 2 else None

    assert sorted(await eventually(logged)) == sorted([(-1, mine_slate[1].item), (0, "")])
