"""The fast path of /v1/decide answers exactly like the full handler, and only the happy path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from decision_api.app import create_asgi_app
from decision_api.routes.fast_decide import DecideFront
from decision_api.settings import AuthSettings, Settings

EXPERIMENT = {
    "key": "fast-hero",
    "placement": "fast_hero",
    "variants": [
        {"key": "a", "weight": 1, "payload": {"img": "a.png"}},
        {"key": "b", "weight": 3, "payload": {"img": "b.png"}},
    ],
    "default_variant": "a",
}


@pytest.fixture
def app(settings: Settings) -> DecideFront:
    """What a server runs: the decide front around the Litestar app."""
    return create_asgi_app(settings)


@pytest.fixture
async def client(app: DecideFront) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """An in-process client of the front, with the app's lifespan running."""
    async with AsyncTestClient(app=app) as c:  # type: ignore[arg-type]
        yield c


@pytest.fixture(scope="module")
def front(shared_settings: Settings) -> DecideFront:
    """One front for the module's tests of refused input (each compares counters before and
    after its own request)."""
    return create_asgi_app(shared_settings)


@pytest.fixture(scope="module")
async def front_client(front: DecideFront) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """An in-process client of :func:`front`, its lifespan running for the module."""
    async with AsyncTestClient(app=front) as c:  # type: ignore[arg-type]
        yield c


def _fast_hits(app: Litestar | DecideFront) -> float:
    value = app.state.services.metrics.fast_path._value.get()
    return float(value)


async def _start(client: AsyncTestClient[Litestar], headers: dict[str, str]) -> None:
    r = await client.post("/v1/experiments", json=EXPERIMENT, headers=headers)
    assert r.status_code == 201, r.text
    r = await client.post("/v1/experiments/fast-hero/start", headers=headers)
    assert r.status_code == 200, r.text


async def test_fast_path_serves_valid_requests_like_the_handler(
    client: AsyncTestClient[Litestar], app: Litestar
) -> None:
    """A valid request is served by the fast path with the handler's answer shape."""
    await _start(client, {})
    before = _fast_hits(app)
    r = await client.post(
        "/v1/decide", json={"unit_id": "u-1", "placements": ["fast_hero"], "context": {"d": 1}}
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert "x-request-id" in r.headers
    body = r.json()
    assert set(body) == {"decision_id", "degraded", "decisions"}
    (decision,) = body["decisions"]
    assert decision["experiment"] == "fast-hero"
    assert decision["variant"] in {"a", "b"}
    assert decision["propensity"] == pytest.approx(0.25 if decision["variant"] == "a" else 0.75)
    assert _fast_hits(app) == before + 1


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, "$"),
        (b'{"unit_id": "u", "placements": ["p"], "colour": 1}', 422, "$.colour"),
        (b'{"unit_id": "", "placements": ["p"]}', 422, "$.unit_id"),
        (b'{"unit_id": "u", "placements": []}', 422, "$.placements"),
    ],
)
async def test_bad_input_falls_through_to_the_handler(
    front_client: AsyncTestClient[Litestar],
    front: DecideFront,
    body: bytes,
    status: int,
    field: str,
) -> None:
    """Anything the fast path does not accept gets the full handler's problem answer."""
    client, app = front_client, front
    before = _fast_hits(app)
    r = await client.post("/v1/decide", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    problem: dict[str, Any] = r.json()
    assert problem["errors"][0]["field"] == field
    assert _fast_hits(app) == before


async def test_keys_are_checked_on_the_fast_path(settings: Settings) -> None:
    """Without a key the answer is the handler's 401; a decide key is served fast."""
    keyed = Settings(
        **{
            **{f: getattr(settings, f) for f in settings.__struct_fields__},
            "auth": AuthSettings(api_keys="adm:admin,web:decide,rep:report"),
        }
    )
    app = create_asgi_app(keyed)
    async with AsyncTestClient(app=app) as client:
        await _start(client, {"authorization": "Bearer adm"})
        request = {"unit_id": "u-2", "placements": ["fast_hero"]}
        before = _fast_hits(app)
        assert (await client.post("/v1/decide", json=request)).status_code == 401
        wrong = await client.post("/v1/decide", json=request, headers={"x-api-key": "rep"})
        assert wrong.status_code == 403
        assert _fast_hits(app) == before
        ok = await client.post("/v1/decide", json=request, headers={"x-api-key": "web"})
        assert ok.status_code == 200
        url = await client.post("/v1/decide?key=web", json=request)
        assert url.status_code == 200
        assert _fast_hits(app) == before + 2


async def test_request_ids_on_the_fast_path_and_after_handover(
    client: AsyncTestClient[Litestar], app: Litestar
) -> None:
    """The fast path echoes the caller's X-Request-ID (or a new id); a request it hands to the
    regular route keeps the id it was given, in the header and in the problem answer."""
    await _start(client, {})
    request = {"unit_id": "u-3", "placements": ["fast_hero"]}
    given = await client.post("/v1/decide", json=request, headers={"x-request-id": "rid-given"})
    assert given.status_code == 200
    assert given.headers["x-request-id"] == "rid-given"
    fresh = [(await client.post("/v1/decide", json=request)).headers["x-request-id"] for _ in "ab"]
    assert fresh[0] != fresh[1]
    assert all(rid.split("-")[0] == fresh[0].split("-")[0] for rid in fresh)
    before = _fast_hits(app)
    bad = await client.post(
        "/v1/decide", json={"unit_id": "u-3", "placements": []}, headers={"x-request-id": "r-b"}
    )
    assert bad.status_code == 422
    assert bad.headers["x-request-id"] == "r-b"
    assert bad.json()["request_id"] == "r-b"
    generated = await client.post("/v1/decide", json={"unit_id": "u-3", "placements": []})
    assert generated.json()["request_id"] == generated.headers["x-request-id"]
    assert _fast_hits(app) == before


async def test_other_spellings_of_the_path_still_take_the_fast_path(
    client: AsyncTestClient[Litestar], app: Litestar
) -> None:
    """``/v1/decide/`` is routed to the same handler, whose route middleware serves it fast."""
    await _start(client, {})
    before = _fast_hits(app)
    r = await client.post("/v1/decide/", json={"unit_id": "u-4", "placements": ["fast_hero"]})
    assert r.status_code == 200
    assert r.json()["decisions"][0]["experiment"] == "fast-hero"
    assert "x-request-id" in r.headers
    assert _fast_hits(app) == before + 1


async def test_an_unexpected_error_is_the_routes_problem_answer(
    client: AsyncTestClient[Litestar], app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception inside the decision answers the 500 problem the exception handlers give."""
    await _start(client, {})

    async def broken(*_: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(app.state.services.engine, "decide", broken)
    r = await client.post(
        "/v1/decide",
        json={"unit_id": "u-5", "placements": ["fast_hero"]},
        headers={"x-request-id": "r-500"},
    )
    assert r.status_code == 500
    problem = r.json()
    assert problem["status"] == 500
    assert problem["request_id"] == "r-500"
    assert "boom" not in r.text


def _fast_outcomes(app: Litestar | DecideFront) -> float:
    return float(app.state.services.metrics.fast_outcomes._value.get())


async def test_a_single_outcome_is_served_by_the_front_like_the_handler(
    client: AsyncTestClient[Litestar], app: DecideFront
) -> None:
    """A valid POST /v1/outcomes is answered by the front: 202, the route's answer shape,
    the caller's request id, and the outcome accepted (counted as the route counts it)."""
    before = _fast_outcomes(app)
    accepted = app.state.services.metrics.outcomes.labels("click")._value.get()
    r = await client.post(
        "/v1/outcomes",
        json={"unit_id": "u-o1", "experiment": "fast-hero", "type": "click"},
        headers={"x-request-id": "rid-o1"},
    )
    assert r.status_code == 202, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["x-request-id"] == "rid-o1"
    body = r.json()
    assert set(body) == {"accepted", "event_ids", "joined", "degraded"}
    assert (body["accepted"], len(body["event_ids"][0]), body["joined"]) == (1, 32, 0)
    assert _fast_outcomes(app) == before + 1
    assert app.state.services.metrics.outcomes.labels("click")._value.get() == accepted + 1


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, "$"),
        (b'{"type": "click"}', 422, "$.decision_id"),
        (b'{"decision_id": "d", "type": "click", "colour": 1}', 422, "$.colour"),
        (b'{"unit_id": "u", "type": "click", "ts": "2001-01-01T00:00:00Z"}', 422, "$.ts"),
    ],
)
async def test_an_outcome_the_front_cannot_serve_gets_the_routes_problem(
    front_client: AsyncTestClient[Litestar],
    front: DecideFront,
    body: bytes,
    status: int,
    field: str,
) -> None:
    """Malformed outcomes, and one the route refuses after decoding (a ts out of range, refused
    before anything is logged), are answered by the route's problem handler."""
    client, app = front_client, front
    before = _fast_outcomes(app)
    accepted = app.state.services.metrics.outcomes.labels("click")._value.get()
    r = await client.post(
        "/v1/outcomes", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert r.json()["errors"][0]["field"] == field
    assert _fast_outcomes(app) == before
    assert app.state.services.metrics.outcomes.labels("click")._value.get() == accepted


async def test_outcome_keys_are_checked_by_the_front(settings: Settings) -> None:
    """Without a key, or with a report key, the route answers 401/403; decide and ingest keys
    (and a decide key in the URL) are served by the front."""
    keyed = Settings(
        **{
            **{f: getattr(settings, f) for f in settings.__struct_fields__},
            "auth": AuthSettings(api_keys="adm:admin,web:decide,etl:ingest,rep:report"),
        }
    )
    app = create_asgi_app(keyed)
    outcome = {"unit_id": "u-o2", "experiment": "fast-hero", "type": "click"}
    async with AsyncTestClient(app=app) as client:  # type: ignore[arg-type]
        before = _fast_outcomes(app)
        assert (await client.post("/v1/outcomes", json=outcome)).status_code == 401
        wrong = await client.post("/v1/outcomes", json=outcome, headers={"x-api-key": "rep"})
        assert wrong.status_code == 403
        assert _fast_outcomes(app) == before
        for headers in ({"x-api-key": "web"}, {"authorization": "Bearer etl"}):
            ok = await client.post("/v1/outcomes", json=outcome, headers=headers)
            assert ok.status_code == 202, ok.text
        assert (await client.post("/v1/outcomes?key=web", json=outcome)).status_code == 202
        assert _fast_outcomes(app) == before + 3
