"""Access control: route scopes, keys created/listed/revoked (API, CLI), rate limits, CORS."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from decision_api.access.key_store import KeyStore
from decision_api.access.keys import digest
from decision_api.access.rate_limit import RateLimiter
from decision_api.app import create_app
from decision_api.cli.main import main as tailor_main
from decision_api.redis_server import free_port
from decision_api.settings import AuthSettings, EventLogSettings, RedisSettings, Settings

pytestmark = pytest.mark.redis_cluster

Client = AsyncTestClient[Litestar]
REPO_ROOT = Path(__file__).resolve().parents[2]

SECRETS = {
    "admin": "secret-admin",
    "decide": "secret-decide",
    "ingest": "secret-ingest",
    "report": "secret-report",
}
BOOTSTRAP = ",".join(f"{secret}:{scope}" for scope, secret in SECRETS.items())

# (method, path, body, scopes that may call it besides admin)
ROUTES: list[tuple[str, str, dict[str, Any] | None, set[str]]] = [
    ("POST", "/v1/decide", {"unit_id": "u1", "placements": ["home"]}, {"decide"}),
    ("POST", "/v1/outcomes", {"unit_id": "u1", "type": "click"}, {"decide", "ingest"}),
    (
        "POST",
        "/v1/outcomes/batch",
        {"outcomes": [{"unit_id": "u1", "type": "click"}]},
        {"decide", "ingest"},
    ),
    ("POST", "/v1/events", {"unit_id": "u1", "type": "page_view"}, {"decide", "ingest"}),
    # A public (decide-only) key sends browser events only: no purchase, no value, no date.
    ("POST", "/v1/events", {"unit_id": "u1", "type": "purchase", "value": 9.5}, {"ingest"}),
    ("POST", "/v1/decide/batch", {}, {"ingest"}),
    ("GET", "/v1/definitions", None, {"decide"}),
    ("POST", "/v1/exposures/batch", {}, {"decide", "ingest"}),
    ("GET", "/v1/experiments/nope/model", None, set()),
    ("PUT", "/v1/units/u1/features", {"features": {"segment": "vip"}}, {"ingest"}),
    ("PUT", "/v1/units/u1/consent", {"personalization": True}, {"ingest"}),
    ("GET", "/v1/units/u1/export", None, set()),
    ("DELETE", "/v1/units/u1", None, set()),
    ("GET", "/v1/experiments", None, set()),
    ("GET", "/v1/experiments/nope", None, set()),
    ("GET", "/v1/keys", None, set()),
    ("POST", "/v1/keys", {"scopes": ["decide"]}, set()),
    ("GET", "/v1/kill-switch", None, set()),
    ("PUT", "/v1/kill-switch", {"engaged": False}, set()),
]
# The snippet is public; so are the UI's page and files, which hold no data (every call the UI
# makes goes through the API's guards with the user's key) and ``/``, a redirect to ``/ui``.
OPEN_PATHS = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/sdk/tailor.js",
    "/",
    "/ui",
    "/ui/static/{name:str}",
}


def with_auth(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with bootstrap keys for every scope (and other auth changes)."""
    auth = AuthSettings(api_keys=BOOTSTRAP, **changes)
    return msgspec.structs.replace(settings, auth=auth)


@pytest.fixture
async def keyed(settings: Settings) -> AsyncIterator[Client]:
    """A client for an app that has one bootstrap key per scope."""
    async with AsyncTestClient(app=create_app(with_auth(settings))) as c:
        yield c


@pytest.fixture(scope="module")
async def keyed_module(shared_settings: Settings) -> AsyncIterator[Client]:
    """One keyed app (on the module's Redis kind) for tests that change nothing another test
    reads: refused requests, the bootstrap keys, a unit of their own."""
    async with AsyncTestClient(app=create_app(with_auth(shared_settings))) as c:
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared(
    redis_url: str, chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Client]:
    """One keyed app for the read-mostly tables below (an app start costs ~0.5 s)."""
    namespace = "t" + uuid.uuid4().hex[:12]
    settings = Settings(
        redis=RedisSettings(url=redis_url, key_prefix=namespace),
        event_log=EventLogSettings(
            url=f"chdb://{chdb_dir}?database={namespace}",
            flush_interval_s=0.05,
            spool_dir=str(tmp_path_factory.mktemp("spool")),
        ),
        log_format="console",
        log_level="warning",
    )
    async with AsyncTestClient(app=create_app(with_auth(settings))) as c:
        yield c


def bearer(secret: str) -> dict[str, str]:
    """The Authorization header for a secret."""
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize(("method", "path", "body", "allowed"), ROUTES)
async def test_scope_per_route(
    shared: Client, method: str, path: str, body: dict[str, Any] | None, allowed: set[str]
) -> None:
    """Each route admits exactly its scopes (and admin): 401 without a key, 403 with another."""
    no_key = await shared.request(method, path, json=body)
    assert no_key.status_code == 401, no_key.text
    assert no_key.json()["code"] == "unauthorized"
    for scope, secret in SECRETS.items():
        response = await shared.request(method, path, json=body, headers=bearer(secret))
        if scope == "admin" or scope in allowed:
            assert response.status_code not in (401, 403), (scope, response.text)
        else:
            assert response.status_code == 403, (scope, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")


async def test_every_api_route_is_guarded(shared: Client) -> None:
    """Every route outside operations and the schema has a scope guard (none is left open)."""
    unguarded = []
    for route in shared.app.routes:
        if route.path in OPEN_PATHS or route.path.startswith("/schema"):
            continue
        for handler in getattr(route, "route_handlers", []):
            if handler.http_methods != {"OPTIONS"} and not handler.resolve_guards():
                unguarded.append(f"{sorted(handler.http_methods)} {route.path}")
    assert not unguarded


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Authorization": "Bearer wrong"}, 401),
        ({"X-API-Key": "wrong"}, 401),
        ({"Authorization": "Basic c2VjcmV0LWFkbWlu"}, 401),
        ({"X-API-Key": SECRETS["decide"]}, 200),
        ({"authorization": f"bearer {SECRETS['decide']}"}, 200),
    ],
)
async def test_key_presentation(shared: Client, headers: dict[str, str], status: int) -> None:
    """Keys are read from a Bearer token or X-API-Key; unknown keys are 401."""
    body = {"unit_id": "u1", "placements": ["home"]}
    response = await shared.post("/v1/decide", json=body, headers=headers)
    assert response.status_code == status, response.text


async def test_keys_created_listed_revoked(keyed: Client, redis: Redis, namespace: str) -> None:
    """A created key works at once for its scope, is listed without secret, stored hashed, and
    stops working when revoked."""
    admin = bearer(SECRETS["admin"])
    created = await keyed.post(
        "/v1/keys", json={"scopes": ["decide"], "name": "web"}, headers=admin
    )
    assert created.status_code == 201, created.text
    body = created.json()
    secret, key_id = body["secret"], body["key_id"]
    assert body["scopes"] == ["decide"] and body["name"] == "web"
    decide = {"unit_id": "u1", "placements": ["home"]}
    assert (await keyed.post("/v1/decide", json=decide, headers=bearer(secret))).status_code == 200
    forbidden = await keyed.get("/v1/experiments", headers=bearer(secret))
    assert forbidden.status_code == 403

    listed = (await keyed.get("/v1/keys", headers=admin)).json()["keys"]
    assert {k["key_id"] for k in listed} >= {key_id}
    assert {k["source"] for k in listed} == {"env", "redis"}
    assert all("secret" not in k and "digest" not in k for k in listed)
    assert secret not in str(listed)

    stored = await redis.hgetall(f"{{{namespace}}}:keys")
    assert list(stored) == [key_id]
    assert secret not in stored[key_id] and digest(secret) in stored[key_id]

    revoked = await keyed.delete(f"/v1/keys/{key_id}", headers=admin)
    assert revoked.status_code == 204
    after = await keyed.post("/v1/decide", json=decide, headers=bearer(secret))
    assert after.status_code == 401
    again = await keyed.delete(f"/v1/keys/{key_id}", headers=admin)
    assert again.status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scopes": []}, "$.scopes"),
        ({"scopes": ["root"]}, "$.scopes[0]"),
        ({"scopes": ["decide"], "rate_per_s": 0}, "$.rate_per_s"),
        ({"scopes": ["decide"], "secret": "mine"}, "$.secret"),
    ],
)
async def test_key_create_rejects(keyed_module: Client, body: dict[str, Any], field: str) -> None:
    """Bad key definitions are 422 naming the field."""
    response = await keyed_module.post("/v1/keys", json=body, headers=bearer(SECRETS["admin"]))
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field


async def test_bootstrap_key_cannot_be_revoked_through_api(keyed_module: Client) -> None:
    """A key from TAILOR_AUTH_API_KEYS is 409 on revoke (it lives in the configuration)."""
    admin = bearer(SECRETS["admin"])
    listed = (await keyed_module.get("/v1/keys", headers=admin)).json()["keys"]
    env_key = next(k["key_id"] for k in listed if k["source"] == "env")
    response = await keyed_module.delete(f"/v1/keys/{env_key}", headers=admin)
    assert response.status_code == 409


async def test_other_workers_follow_created_and_revoked_keys(settings: Settings) -> None:
    """A key created on one worker is accepted by another within a poll interval, and a
    revocation reaches it the same way."""
    keyed_settings = with_auth(settings)
    async with (
        AsyncTestClient(app=create_app(keyed_settings)) as one,
        AsyncTestClient(app=create_app(keyed_settings)) as two,
    ):
        admin = bearer(SECRETS["admin"])
        created = (await one.post("/v1/keys", json={"scopes": ["ingest"]}, headers=admin)).json()
        body = {"unit_id": "u1", "type": "click"}

        async def status_on_two() -> int:
            response = await two.post("/v1/outcomes", json=body, headers=bearer(created["secret"]))
            return response.status_code

        await wait_for_status(status_on_two, 202)
        await one.delete(f"/v1/keys/{created['key_id']}", headers=admin)
        await wait_for_status(status_on_two, 401)


async def wait_for_status(probe: Any, expected: int, timeout: float = 10.0) -> None:
    """Poll ``probe`` until it returns ``expected``."""
    deadline = time.monotonic() + timeout
    while (status := await probe()) != expected:
        assert time.monotonic() < deadline, f"still {status}, expected {expected}"
        await asyncio.sleep(0.05)


async def test_open_mode_closes_once_a_key_exists(client: Client) -> None:
    """With no key configured the API is open; creating the first key closes it."""
    assert (await client.get("/v1/experiments")).status_code == 200
    created = await client.post("/v1/keys", json={"scopes": ["admin"], "name": "first"})
    assert created.status_code == 201
    assert (await client.get("/v1/experiments")).status_code == 401
    ok = await client.get("/v1/experiments", headers=bearer(created.json()["secret"]))
    assert ok.status_code == 200


async def test_refuses_until_keys_are_loaded(settings: Settings, tmp_path: Any) -> None:
    """With Redis unreachable at start-up and no bootstrap key, requests get 503, not open
    access (stored keys might exist)."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    down = msgspec.structs.replace(
        settings, redis=msgspec.structs.replace(settings.redis, url=dead)
    )
    async with AsyncTestClient(app=create_app(down)) as c:
        response = await c.post("/v1/decide", json={"unit_id": "u1", "placements": ["home"]})
        assert response.status_code == 503, response.text


def tailor_keys(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``tailor keys <args>`` in a fresh interpreter with exactly ``env``'s TAILOR_ variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    return subprocess.run(
        [sys.executable, "-m", "decision_api.cli.main", "keys", *args],
        cwd=REPO_ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_creates_lists_and_revokes(redis_url: str, namespace: str) -> None:
    """``tailor keys create/list/revoke`` work on Redis directly; the secret is printed once."""
    env = {"TAILOR_REDIS_URL": redis_url, "TAILOR_REDIS_KEY_PREFIX": namespace}

    def tailor(*args: str) -> str:
        done = tailor_keys(env, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    tailor("create", "--scope", "admin", "--name", "ops")
    created = tailor("create", "--scope", "decide", "--scope", "ingest", "--name", "web")
    fields = dict(line.split(": ", 1) for line in created.strip().splitlines())
    assert fields["scopes"] == "decide,ingest" and fields["secret"].startswith("tlr_")
    listing = tailor("list")
    assert fields["key_id"] in listing and "web" in listing and fields["secret"] not in listing
    tailor("revoke", fields["key_id"])
    assert fields["key_id"] not in tailor("list")


async def test_cli_refuses_a_first_key_without_admin(
    redis_settings: RedisSettings, namespace: str, redis: Redis
) -> None:
    """The first key created with the CLI must include admin: the command refuses, says why and
    stores nothing; a first admin key is accepted, and then any key (on a cluster too)."""
    env = {
        "TAILOR_REDIS_URL": redis_settings.url,
        "TAILOR_REDIS_CLUSTER": str(redis_settings.cluster).lower(),
        "TAILOR_REDIS_KEY_PREFIX": namespace,
    }
    refused = tailor_keys(env, "create", "--scope", "report")
    assert refused.returncode == 2
    assert "first key must include the admin scope" in refused.stderr
    assert "secret" not in refused.stdout
    assert await redis.hlen(f"{{{namespace}}}:keys") == 0  # type: ignore[misc]
    assert tailor_keys(env, "create", "--scope", "admin").returncode == 0
    assert tailor_keys(env, "create", "--scope", "report").returncode == 0
    assert await redis.hlen(f"{{{namespace}}}:keys") == 2  # type: ignore[misc]


def test_cli_takes_a_non_admin_first_key_when_keys_are_configured(
    redis_url: str, namespace: str
) -> None:
    """With keys configured in TAILOR_AUTH_API_KEYS the created key is not the first one."""
    env = {"TAILOR_REDIS_URL": redis_url, "TAILOR_REDIS_KEY_PREFIX": namespace,
           "TAILOR_AUTH_API_KEYS": "s3cret:admin"}  # fmt: skip
    done = tailor_keys(env, "create", "--scope", "report")
    assert done.returncode == 0, done.stderr


async def test_api_refuses_a_first_key_without_admin(client: Client) -> None:
    """POST /v1/keys with no key anywhere and no admin scope is a 422 naming $.scopes, and the
    API stays open; a first admin key closes it as usual."""
    refused = await client.post("/v1/keys", json={"scopes": ["report"], "name": "first"})
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert problem["errors"][0]["field"] == "$.scopes"
    assert "first key must include the admin scope" in problem["detail"]
    assert (await client.get("/v1/experiments")).status_code == 200
    admin = await client.post("/v1/keys", json={"scopes": ["admin", "report"]})
    assert admin.status_code == 201
    second = await client.post(
        "/v1/keys", json={"scopes": ["report"]}, headers=bearer(admin.json()["secret"])
    )
    assert second.status_code == 201


def test_cli_finds_the_servers_private_redis(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    """Without TAILOR_REDIS_URL, ``tailor keys`` uses the Redis named by the state file
    ``tailor serve`` writes under the data directory, and says what to do when there is none."""
    data = tmp_path / "data"
    env = {"TAILOR_DATA_DIR": str(data), "TAILOR_REDIS_KEY_PREFIX": namespace}
    missing = tailor_keys(env, "list")
    assert missing.returncode == 2
    assert "TAILOR_REDIS_URL" in missing.stderr and "state.json" in missing.stderr
    (data / "redis").mkdir(parents=True)
    state = {"url": redis_url, "port": 0, "pid": 0, "owner_pid": 0}
    (data / "redis" / "state.json").write_text(msgspec.json.encode(state).decode())
    created = tailor_keys(env, "create", "--scope", "admin", "--name", "found")
    assert created.returncode == 0, created.stderr
    listed = tailor_keys(env, "list")
    assert listed.returncode == 0 and "found" in listed.stdout


def test_cli_rejects_unknown_scope(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown scope is a usage error before anything touches Redis."""
    with pytest.raises(SystemExit) as exited:
        tailor_main(["keys", "create", "--scope", "root"])
    assert exited.value.code == 2
    assert "root" in capsys.readouterr().err


async def test_rate_limit_answers_429_with_retry_after(keyed: Client) -> None:
    """A key over its own rate limit gets 429 with Retry-After and a problem body."""
    admin = bearer(SECRETS["admin"])
    spec = {"scopes": ["decide"], "rate_per_s": 0.1, "burst": 3}  # a token per 10 s
    secret = (await keyed.post("/v1/keys", json=spec, headers=admin)).json()["secret"]
    body = {"unit_id": "u1", "placements": ["home"]}
    statuses = [
        (await keyed.post("/v1/decide", json=body, headers=bearer(secret))).status_code
        for _ in range(5)
    ]
    assert statuses == [200, 200, 200, 429, 429]
    limited = await keyed.post("/v1/decide", json=body, headers=bearer(secret))
    assert limited.json()["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 10
    other = await keyed.post("/v1/decide", json=body, headers=bearer(SECRETS["decide"]))
    assert other.status_code == 200


async def test_rate_limit_is_shared_by_workers(redis: Redis, namespace: str) -> None:
    """Two workers' limiters draw on one bucket: together they admit at most burst + refill
    (+ one lease each), and most of what the bucket holds."""
    one = RateLimiter(redis, namespace, rate_per_s=100.0, burst=200)
    two = RateLimiter(redis, namespace, rate_per_s=100.0, burst=200)
    started = time.monotonic()
    admitted = 0
    for i in range(1000):
        limiter = one if i % 2 else two
        admitted += await limiter.acquire("key_shared") is None
    elapsed = time.monotonic() - started
    lease = 2  # min(100, burst, 100 * 0.02)
    assert admitted <= 200 + 100 * elapsed + 2 * lease
    assert admitted >= 200 - 2 * lease
    assert one.redis_calls + two.redis_calls < 1000


async def test_rate_limit_fails_open_without_redis() -> None:
    """When Redis is unreachable, requests are admitted (decisions must keep answering)."""
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    limiter = RateLimiter(dead, "x", rate_per_s=1.0, burst=1)
    try:
        assert [await limiter.acquire("k") for _ in range(3)] == [None, None, None]
        assert limiter.redis_calls == 1  # then it backs off instead of retrying per request
    finally:
        await dead.aclose()


async def test_key_store_versions_every_change(redis: Redis, namespace: str) -> None:
    """Every create and revoke moves the version workers poll."""
    store = KeyStore(redis, namespace)
    assert await store.version() == 0
    key, _ = await store.create(["report"], "r")
    assert await store.version() == 1
    assert await store.revoke(key.key_id)
    assert await store.version() == 2
    assert not await store.revoke(key.key_id)


@pytest.fixture
async def cors(settings: Settings) -> AsyncIterator[Client]:
    """A client for an app with keys and one allowed browser origin."""
    app = create_app(with_auth(settings, cors_origins="https://shop.example"))
    async with AsyncTestClient(app=app) as c:
        yield c


async def test_cors_preflight_allows_configured_origin(cors: Client) -> None:
    """A preflight from the configured origin succeeds without a key and allows the key
    headers; the actual response exposes Retry-After and X-Request-ID."""
    preflight = await cors.options(
        "/v1/decide",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204, preflight.text
    assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "x-api-key" in allowed
    assert "POST" in preflight.headers["access-control-allow-methods"]
    actual = await cors.post(
        "/v1/decide",
        json={"unit_id": "u1", "placements": ["home"]},
        headers={"Origin": "https://shop.example", **bearer(SECRETS["decide"])},
    )
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == "https://shop.example"
    assert "retry-after" in actual.headers["access-control-expose-headers"].lower()


async def test_cors_preflight_refuses_other_origins(cors: Client) -> None:
    """A preflight from an origin not configured gets no allow-origin header."""
    preflight = await cors.options(
        "/v1/decide",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers


async def test_no_cors_headers_without_configuration(keyed_module: Client) -> None:
    """Without TAILOR_AUTH_CORS_ORIGINS no CORS header is sent."""
    response = await keyed_module.post(
        "/v1/decide",
        json={"unit_id": "u1", "placements": ["home"]},
        headers={"Origin": "https://shop.example", **bearer(SECRETS["decide"])},
    )
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"type": "purchase", "value": 1e12, "properties": {"category": "weapons"}}, "$.type"),
        ({"type": "email_open"}, "$.type"),
        ({"type": "page_view", "value": 5}, "$.value"),
        ({"type": "product_view", "ts": "2026-01-01T00:00:00Z"}, "$.ts"),
    ],
)
async def test_public_key_cannot_plant_events(
    keyed: Client, redis: Redis, namespace: str, event: dict[str, Any], field: str
) -> None:
    """A decide-only key (readable in any web page) is refused (403 naming the field) an event
    other than a browsing event, a value or a date; nothing reaches the unit's profile."""
    body = {"unit_id": "victim-1", **event}
    for headers, query in ((bearer(SECRETS["decide"]), ""), ({}, f"?key={SECRETS['decide']}")):
        response = await keyed.post("/v1/events" + query, json=body, headers=headers)
        assert response.status_code == 403, response.text
        assert response.json()["errors"][0]["field"] == field
    assert await redis.hgetall(f"{namespace}:u:{{victim-1}}") == {}
    served = await keyed.post("/v1/events", json=body, headers=bearer(SECRETS["ingest"]))
    assert served.status_code == 202, served.text


async def test_public_key_sends_browser_events(keyed_module: Client) -> None:
    """A decide-only key still records browsing events (with a category) for a unit."""
    unit = "shopper-" + uuid.uuid4().hex[:8]
    body = {"unit_id": unit, "type": "product_view", "properties": {"category": "shoes"}}
    response = await keyed_module.post("/v1/events", json=body, headers=bearer(SECRETS["decide"]))
    assert response.status_code == 202, response.text
    export = await keyed_module.get(f"/v1/units/{unit}/export", headers=bearer(SECRETS["admin"]))
    derived = export.json()["derived"]
    assert derived["product_view_7d"] == 1 and derived["last_categories"] == ["shoes"]


OFFER: dict[str, Any] = {
    "key": "offer",
    "placement": "home",
    "variants": [{"key": "control"}, {"key": "spring"}],
    "default_variant": "control",
}


@pytest.mark.parametrize("path", ["/v1/decide", "/v1/decide/"])
async def test_public_key_cannot_probe_consent(keyed: Client, path: str) -> None:
    """Deciding with a public key for a unit that withdrew consent says reason ``default``, as
    for any default answer (a consent: false request, the holdout), never ``no_consent``; server
    keys and the exposure log keep the true reason."""
    admin, public = bearer(SECRETS["admin"]), bearer(SECRETS["decide"])
    spec = {**OFFER, "holdout": 0.5}
    assert (await keyed.post("/v1/experiments", json=spec, headers=admin)).status_code == 201
    assert (await keyed.post("/v1/experiments/offer/start", headers=admin)).status_code == 200
    consent = await keyed.put(
        "/v1/units/opted-out-1/consent",
        json={"personalization": False},
        headers=bearer(SECRETS["ingest"]),
    )
    assert consent.status_code == 200

    async def answer(unit: str, headers: dict[str, str], **extra: Any) -> dict[str, Any]:
        body = {"unit_id": unit, "placements": ["home"], **extra}
        response = await keyed.post(path, json=body, headers=headers)
        assert response.status_code == 200, response.text
        decision: dict[str, Any] = response.json()["decisions"][0]
        return decision

    probed = await answer("opted-out-1", public)
    asked = await answer("someone-else", public, consent=False)
    held_out = [await answer(f"unit-{i}", public) for i in range(40)]
    assert probed == {"placement": "home", "reason": "default", "policy": "default",
                      "propensity": 1.0, "experiment": "offer", "variant": "control",
                      "payload": {}}  # fmt: skip
    assert asked == probed
    assert probed in held_out  # a holdout answer reads exactly the same
    assert (await answer("opted-out-1", admin))["reason"] == "no_consent"
    services = keyed.app.state.services
    await asyncio.to_thread(keyed.blocking_portal.call, services.writer.flush)
    logged = await asyncio.to_thread(
        services.event_log.query, "SELECT count() FROM exposures WHERE reason = 'no_consent'"
    )
    assert logged == [(3,)]
