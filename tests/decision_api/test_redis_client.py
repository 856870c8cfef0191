"""The Redis client factory: the cluster layout's slots, the one-time key migration of a single
server, and a cluster nobody answers (degraded decisions and 503s, never a 500)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
import redis
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from redis.crc import key_slot as redis_key_slot

from bandits.join import RewardJoin
from bandits.learner import Learner
from bandits.snapshots import SnapshotStore
from decision_api.access.key_store import KeyStore
from decision_api.app import create_app
from decision_api.profiles.store import tombstone_key, unit_key
from decision_api.redis_client import (
    SLOTS,
    ClusterUnavailable,
    cluster_startup,
    connect,
    connect_sync,
    key_slot,
    migrate_layout,
    new_name,
    slot_tag,
    stream_read_keys,
)
from decision_api.redis_server import free_port
from decision_api.settings import AuthSettings, LearnerSettings, RedisSettings, Settings
from experiments.store import ExperimentStore
from tests.support.redis_cluster import RedisCluster

SECRET = "cluster-down-secret"


def slot(key: str) -> int:
    """The slot redis-py (and Redis) compute for a key."""
    return int(redis_key_slot(key.encode()))


def test_every_slot_has_a_tag() -> None:
    """``slot_tag(s)`` is a hash tag of slot ``s``, for all 16,384 slots."""
    assert [s for s in range(SLOTS) if slot(f"p:erased:{{{slot_tag(s)}}}") != s] == []


@pytest.mark.parametrize("unit", ["u-1", "visitor-7f3a9c", "a" * 256, "é:x|y"])
def test_a_units_tombstones_live_in_its_profiles_slot(unit: str) -> None:
    """The profile scripts read the tombstones beside the profile: one slot per script call."""
    assert slot(tombstone_key("tailor", unit)) == slot(unit_key("tailor", unit))


async def test_keys_that_change_together_share_one_slot(redis: Redis) -> None:
    """Experiment definitions, API keys, the reward join, the stream and the models: every key a
    script or MULTI combines hashes to the slot of ``{<prefix>}``."""
    prefix = "shop-eu"
    store = ExperimentStore(redis, prefix)
    keys = KeyStore(redis, prefix)
    join = RewardJoin(redis, prefix)
    learner = Learner(redis, prefix, specs=_no_specs)
    names = [
        store._defs, store._version, store._hist + "hero", store._caps, store._lock,
        keys._hash, keys._version,
        join.due_key, join.stream_key, join.record_key("d1", "hero"),
        join.experiments_key("d1"), join.unit_index_key("u-1"),
        learner._stream, SnapshotStore(redis, prefix).key("hero"),
    ]  # fmt: skip
    assert {name: slot(name) for name in names} == dict.fromkeys(names, slot("{shop-eu}"))


async def _no_specs() -> dict[str, object]:
    return {}


async def test_a_single_server_moves_old_key_names_once(redis_url: str) -> None:
    """Keys of the layout before the cluster one are renamed at start-up (values, types, TTLs
    and the stream's consumer group kept), once; an app then serves the old experiment."""
    prefix = "o" + uuid.uuid4().hex[:10]
    r = Redis.from_url(redis_url, decode_responses=True)
    try:
        spec = {
            "key": "hero", "placement": "home", "default_variant": "a",
            "variants": [{"key": "a", "payload": {}}, {"key": "b", "payload": {}}],
        }  # fmt: skip
        exp_store = ExperimentStore(r, "scratch-" + prefix)
        created = await exp_store.create(msgspec.convert(spec, _spec_type()), 1.7e9)
        definition = msgspec.json.encode(created).decode()
        key, secret = await KeyStore(r, "scratch-" + prefix).create(["admin"])
        stored_key = await r.hget("{scratch-" + prefix + "}:keys", key.key_id)
        old = {
            f"{prefix}:exp:defs": ("hash", {"hero": definition}),
            f"{prefix}:exp:hist:hero": ("hash", {"1": definition}),
            f"{prefix}:exp:version": ("string", "1"),
            f"{prefix}:keys": ("hash", {key.key_id: stored_key}),
            f"{prefix}:keys:version": ("string", "3"),
            f"{prefix}:join:due": ("zset", {"d1|hero": 5.0}),
            f"{prefix}:dec:{{d1}}:hero": ("hash", {"rec": "[]", "wend": "5"}),
            f"{prefix}:dec:{{d1}}:exps": ("set", {"hero"}),
            f"{prefix}:u:{{u-1}}:join": ("hash", {"hero": "d1"}),
            f"{prefix}:model:hero": ("hash", {"version": "4"}),
        }
        for key, (kind, value) in old.items():
            if kind == "hash":
                await r.hset(key, mapping=value)  # type: ignore[arg-type]
            elif kind == "string":
                await r.set(key, value)  # type: ignore[arg-type]
            elif kind == "zset":
                await r.zadd(key, value)  # type: ignore[arg-type]
            else:
                await r.sadd(key, *value)
        await r.pexpire(f"{prefix}:dec:{{d1}}:hero", 600_000)
        await r.xadd(f"{prefix}:train", {"rec": "[]", "r": "1", "joined": "1"})
        await r.xgroup_create(f"{prefix}:train", "learners", id="0")
        profile = unit_key(prefix, "u-1")
        await r.hset(profile, "f:plan", "s:gold")

        assert await migrate_layout(r, prefix) == len(old) + 1
        shared = "{" + prefix + "}"
        assert new_name(prefix, f"{prefix}:dec:{{d1}}:hero") == f"{shared}:dec:d1:hero"
        for key, (kind, _) in old.items():
            assert not await r.exists(key)
            assert await r.type(new_name(prefix, key)) == kind
        assert await r.hget(f"{shared}:dec:d1:hero", "rec") == "[]"
        assert 0 < await r.pttl(f"{shared}:dec:d1:hero") <= 600_000
        assert await r.hget(f"{shared}:u:u-1:join", "hero") == "d1"
        groups = await r.xinfo_groups(f"{shared}:train")
        assert [g["name"] for g in groups] == ["learners"]
        assert await r.hget(profile, "f:plan") == "s:gold"  # profiles keep their names
        assert await migrate_layout(r, prefix) == 0  # once
        fresh = "n" + prefix  # a new deployment: nothing to move, no keyspace scan
        assert await migrate_layout(r, fresh) == 0
        assert await r.get("{" + fresh + "}:layout") == "2"

        settings = Settings(  # no learner: the records above are not real decisions
            redis=RedisSettings(url=redis_url, key_prefix=prefix),
            learner=LearnerSettings(in_process=False),
            log_level="warning",
        )
        settings = _local_log(settings, prefix)
        async with AsyncTestClient(app=create_app(settings)) as client:
            got = await client.get(
                "/v1/experiments/hero", headers={"Authorization": f"Bearer {secret}"}
            )
            assert got.status_code == 200, got.text
            assert got.json()["version"] == created.version
    finally:
        await r.aclose()


def _spec_type() -> type:
    from tailor_contract.definitions import ExperimentSpec

    return ExperimentSpec


def _local_log(settings: Settings, name: str) -> Settings:
    import tempfile

    tmp = tempfile.mkdtemp(prefix=name)
    return msgspec.structs.replace(
        settings,
        event_log=msgspec.structs.replace(
            settings.event_log, url=f"chdb://{tmp}/chdb", spool_dir=f"{tmp}/spool"
        ),
        data_dir=tmp,
        log_format="console",
    )


@pytest.fixture
async def dead_cluster_client(settings: Settings) -> AsyncIterator[AsyncTestClient[object]]:
    """An app told to use a Redis Cluster at an address where nothing listens (with a key of
    ``TAILOR_AUTH_API_KEYS``, which works without Redis)."""
    dead = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", cluster=True, key_prefix="dead")
    auth = AuthSettings(api_keys=f"{SECRET}:admin+decide+ingest")
    own = msgspec.structs.replace(settings, redis=dead, auth=auth)
    headers = {"Authorization": f"Bearer {SECRET}"}
    async with AsyncTestClient(app=create_app(own)) as client:
        client.headers.update(headers)
        yield client  # type: ignore[misc]


async def test_a_cluster_nobody_answers_degrades_decisions_and_503s_writes(
    dead_cluster_client: AsyncTestClient[object],
) -> None:
    """The cluster client's own errors (no reachable node) are Redis errors: a decision answers
    the default, flagged ``degraded``; a write that needs Redis answers 503; nothing is a 500."""
    client = dead_cluster_client
    decided = await client.post("/v1/decide", json={"unit_id": "u-1", "placements": ["home"]})
    assert decided.status_code == 200, decided.text
    assert decided.json()["degraded"] is True
    put = await client.put("/v1/units/u-1/features", json={"features": {"plan": "gold"}})
    assert put.status_code == 503, put.text
    assert put.json()["code"] == "redis_unavailable"
    outcome = await client.post("/v1/outcomes", json={"unit_id": "u-1", "type": "click"})
    assert outcome.status_code == 202, outcome.text
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert "redis" in json.dumps(ready.json())


async def test_the_cluster_clients_errors_are_redis_errors() -> None:
    """``connect`` on a cluster raises ``ClusterUnavailable`` (a ``redis.ConnectionError``)
    where redis-py raises its own ``RedisClusterException``: commands and pipelines alike."""
    r = connect(
        RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", cluster=True),
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
    )
    try:
        with pytest.raises(ClusterUnavailable):
            await r.get("x")
        with pytest.raises(ClusterUnavailable):
            async with r.pipeline(transaction=False) as pipe:
                pipe.get("x")
                await pipe.execute()
    finally:
        await r.aclose()


@pytest.mark.parametrize(
    ("args", "keys"),
    [
        (("XREADGROUP", "GROUP", "g", "c", "COUNT", 20, "STREAMS", "s", ">"), ["s"]),
        (
            (
                "XREADGROUP",
                "GROUP",
                "streams",
                "streams",
                "BLOCK",
                5,
                "NOACK",
                "STREAMS",
                "a",
                "b",
                "0",
                "0",
            ),
            ["a", "b"],
        ),
        ((b"XREAD", b"COUNT", b"1", b"STREAMS", b"k", b"$"), [b"k"]),
        (("XREADGROUP", "GROUP", "g", "c", "STREAMS", "s"), None),  # a key without its id
        (("XREAD", "SOMEDAY", "1", "STREAMS", "k", "$"), None),  # an option it does not know
        (("XADD", "s", "*", "f", "v"), None),
    ],
)
def test_stream_read_keys_are_read_as_redis_reads_them(
    args: tuple[object, ...], keys: list[object] | None
) -> None:
    """The options (``GROUP`` takes two words, which may be ``streams``), then ``STREAMS``,
    then as many keys as ids; anything else is left to Redis."""
    assert stream_read_keys(args) == keys


@pytest.mark.slow
async def test_stream_reads_go_on_after_the_default_node_fails_over(
    own_cluster: RedisCluster,
) -> None:
    """redis-py asks a node (the default one) where the keys of ``XREADGROUP`` are. Once that
    primary was killed and its replica had taken over, every stream read failed for ever with
    ``Connection refused`` (the question fails before routing, so no refresh follows), while
    other commands went on: the event-log owner stored nothing after a failover. The clients
    of :mod:`decision_api.redis_client` read the keys themselves."""
    cluster = own_cluster
    settings = RedisSettings(url=cluster.url, cluster=True)
    blocking = connect_sync(settings, socket_timeout=2, socket_connect_timeout=1)
    asyncio_client = connect(settings, socket_timeout=2, socket_connect_timeout=1)
    try:
        await asyncio_client.ping()
        asked = blocking.get_default_node()
        assert asyncio_client.get_default_node().name == asked.name  # type: ignore[attr-defined]
        dead = next(n for n in cluster.nodes if n.address == asked.name)
        # A stream on another primary: nothing sent to it touches the node that dies.
        stream = next(
            k for k in (f"s{i}" for i in range(1000)) if cluster.primary_of(key_slot(k)) != dead
        )
        blocking.xgroup_create(stream, "sync", id="0", mkstream=True)
        blocking.xgroup_create(stream, "async", id="0")
        blocking.xadd(stream, {"n": "1"})
        cluster.fail_over(dead)

        read = blocking.xreadgroup("sync", "c", {stream: ">"}, count=10)
        assert [len(entries) for _, entries in read] == [1]  # type: ignore[union-attr]
        read = await asyncio_client.xreadgroup("async", "c", {stream: ">"}, count=10)
        assert [len(entries) for _, entries in read] == [1]
    finally:
        blocking.close()
        await asyncio_client.aclose()


@pytest.mark.parametrize(
    ("url", "first", "others"),
    [
        ("redis://a:7000/0", "redis://a:7000/0", []),
        ("redis://a:7000,b:7001,c/0", "redis://a:7000/0", [("b", 7001), ("c", 6379)]),
        ("rediss://u:p@a:7000,b:7001", "rediss://u:p@a:7000", [("b", 7001)]),
        ("redis://a:1,[::1]:7002/0?x=1", "redis://a:1/0?x=1", [("::1", 7002)]),
    ],
)
def test_a_cluster_url_may_name_several_nodes(
    url: str, first: str, others: list[tuple[str, int]]
) -> None:
    """The first node keeps the URL's credentials and options; the others are host and port."""
    assert cluster_startup(url) == (first, others)


@pytest.mark.slow
async def test_a_client_starts_while_the_node_its_url_names_first_is_dead(
    own_cluster: RedisCluster,
) -> None:
    """A process started after a failover (a respawned worker) whose URL names the dead primary
    first reaches the cluster through the next node the URL names; naming only the dead node,
    it cannot start."""
    cluster = own_cluster
    dead = cluster.primary_of(0)
    alive = next(n for n in cluster.nodes if n is not dead and cluster.replica_of(n) is not None)
    cluster.fail_over(dead)
    with pytest.raises(redis.exceptions.RedisClusterException):  # all a one-node URL allows
        connect_sync(RedisSettings(url=f"redis://{dead.address}/0", cluster=True))
    settings = RedisSettings(url=f"redis://{dead.address},{alive.address}/0", cluster=True)
    blocking = connect_sync(settings, socket_connect_timeout=1)
    asyncio_client = connect(settings, socket_connect_timeout=1)
    try:
        blocking.set("started", "1")
        assert await asyncio_client.get("started") == "1"
    finally:
        blocking.close()
        await asyncio_client.aclose()
