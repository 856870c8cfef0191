"""Shared fixtures: a real private ``redis-server`` and a real chdb directory for the session.

Isolation between tests comes from namespaces, not from flushing: every test gets its own Redis
key prefix and its own ClickHouse database. ``TAILOR_REDIS_URL`` points the suite at an existing
Redis instead of starting one (nothing in it is ever flushed).

Tests marked ``redis_cluster`` that use Redis through ``redis_settings`` (``settings``, ``app``,
``client``, ``redis``) run twice: on the single server and on a real Redis Cluster of 3 primaries
with a replica each, which the session starts the first time a test needs it
(:mod:`tests.support.redis_cluster`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from decision_api.app import create_app
from decision_api.redis_client import connect
from decision_api.redis_server import RedisServer
from decision_api.settings import DecisionSettings, EventLogSettings, RedisSettings, Settings
from event_log.store import ClickHouseEventLog, open_event_log
from tests.support.redis_cluster import RedisCluster

ADMIN_KEY = "test-admin-key"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis for the whole session: ``TAILOR_REDIS_URL`` or a private server on a free port."""
    external = os.environ.get("TAILOR_REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"), persist=False).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real Redis Cluster (3 primaries, a replica each) for the session, started on first use
    (about 2 s) and stopped at the end."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A 3-master cluster of the test's own, for tests that kill or fail over its nodes."""
    cluster = RedisCluster(tmp_path / "cluster").start()
    try:
        yield cluster
    finally:
        cluster.stop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``redis_cluster`` run on a single Redis server and on a Redis Cluster."""
    marked = metafunc.definition.get_closest_marker("redis_cluster") is not None
    if marked and "redis_kind" in metafunc.fixturenames:
        metafunc.parametrize("redis_kind", ["single", "cluster"], indirect=True, scope="module")


@pytest.fixture(scope="module")
def redis_kind(request: pytest.FixtureRequest) -> str:
    """``single`` (the session's server) or ``cluster`` (for tests marked ``redis_cluster``);
    module-scoped, so a module's shared app and its tests' own clients agree."""
    return str(getattr(request, "param", "single"))


def _redis_settings(
    request: pytest.FixtureRequest, kind: str, redis_url: str, prefix: str
) -> RedisSettings:
    if kind == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return RedisSettings(url=cluster.url, cluster=True, key_prefix=prefix)
    return RedisSettings(url=redis_url, key_prefix=prefix)


@pytest.fixture
def redis_settings(
    request: pytest.FixtureRequest, redis_kind: str, redis_url: str, namespace: str
) -> RedisSettings:
    """This test's Redis: its own key prefix on the single server, or on the cluster."""
    return _redis_settings(request, redis_kind, redis_url, namespace)


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's chdb data directory (one engine per process, so one directory)."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def namespace() -> str:
    """A unique name for this test's Redis prefix and ClickHouse database."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def event_log_url(chdb_dir: Path, namespace: str) -> str:
    """This test's own database in the session's chdb."""
    return f"chdb://{chdb_dir}?database={namespace}"


@pytest.fixture
def settings(redis_settings: RedisSettings, event_log_url: str, tmp_path: Path) -> Settings:
    """Settings for an app under test: real Redis and chdb, fast flushes, open auth."""
    return Settings(
        redis=redis_settings,
        event_log=EventLogSettings(
            url=event_log_url,
            flush_interval_s=0.05,
            spool_dir=str(tmp_path / "spool"),
        ),
        decisions=DecisionSettings(config_poll_interval_s=0.05),
        log_format="console",
        log_level="warning",
        data_dir=str(tmp_path),
    )


@pytest.fixture
def app(settings: Settings) -> Litestar:
    """The app built by the factory for this test's settings."""
    return create_app(settings)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """An in-process HTTP client with the app's lifespan running."""
    async with AsyncTestClient(app=app) as c:
        yield c


@pytest.fixture(scope="module")
def shared_settings(
    request: pytest.FixtureRequest,
    redis_kind: str,
    redis_url: str,
    chdb_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    """Like ``settings``, for one app shared by a whole module (its tests use their own keys)."""
    name = "m" + uuid.uuid4().hex[:12]
    tmp = tmp_path_factory.mktemp(name)
    return Settings(
        redis=_redis_settings(request, redis_kind, redis_url, name),
        event_log=EventLogSettings(
            url=f"chdb://{chdb_dir}?database={name}",
            flush_interval_s=0.05,
            spool_dir=str(tmp / "spool"),
        ),
        decisions=DecisionSettings(config_poll_interval_s=0.05),
        log_format="console",
        log_level="warning",
        data_dir=str(tmp),
    )


@pytest.fixture(scope="module")
async def shared_client(shared_settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """An in-process client of one app for a whole module (starting an app costs ~0.5 s)."""
    async with AsyncTestClient(app=create_app(shared_settings)) as c:
        yield c


@pytest.fixture
async def redis(redis_settings: RedisSettings) -> AsyncIterator[Redis]:
    """A direct Redis client (a cluster client on the cluster) for assertions."""
    r = connect(redis_settings, decode_responses=True)
    try:
        yield r
    finally:
        await r.aclose()


@pytest.fixture
def event_log(event_log_url: str) -> Iterator[ClickHouseEventLog]:
    """A direct event-log client on this test's database, tables migrated."""
    log = open_event_log(event_log_url)
    log.migrate()
    try:
        yield log
    finally:
        log.close()
