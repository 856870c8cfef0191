"""The one way Tailor connects to Redis: a single server or a Redis Cluster, from the settings.

:func:`connect` makes the asyncio client every worker, learner and CLI command uses (and
:func:`connect_sync` the blocking one of the event-log relay): ``redis.asyncio.Redis`` for a
single server, redis-py's ``redis.asyncio.cluster.RedisCluster`` when ``redis.cluster`` is set
(``TAILOR_REDIS_CLUSTER=true``, ``TAILOR_REDIS_URL`` naming any node; the client discovers the
others and follows ``MOVED``/``ASK`` redirections and failovers).

Key layout on a cluster. Every multi-key script or transaction touches one hash slot:

- a unit's profile ``{p}:u:{<unit>}`` is tagged by the unit, so profiles spread over the
  cluster; the event and feature scripts read the erasure tombstones of the unit's own slot
  (``{p}:erased:{<slot tag>}``, :func:`slot_tag`);
- a rate-limit bucket ``{p}:rl:{<key id>}`` by the key id;
- everything that changes together lives under the deployment's tag ``{<p>}``: experiment
  definitions and their version, API keys and theirs, the reward join (records, unit index, due
  set, training stream) and the model snapshots its learner publishes with its stream acks.
  That slot is the cluster's *hot slot*: the join writes a record per learning decision there.

Work over many slots is split: bulk profile reads are one cluster pipeline of ``HGETALL`` (one
round trip per node, in parallel) instead of one script call; an erasure scans every primary and
deletes per slot. Lua scripts in a cluster pipeline are sent as ``EVAL`` (:func:`queue_script`):
a node that never saw a script (a replica promoted a moment ago) runs it all the same.

Failures. The cluster client raises ``RedisClusterException`` (not a ``RedisError``) when no node
serves a slot or no node answers, as happens for a few seconds while a replica takes over from a
failed primary. This module turns those into :class:`ClusterUnavailable`, a
``redis.exceptions.ConnectionError``, so the rest of Tailor treats a cluster in failover as it
treats a Redis that is down: decisions answer ``degraded``, writes that need Redis answer 503.

Stream reads. redis-py finds the keys of a command whose key positions vary (``XREAD``,
``XREADGROUP``) by asking a node, with ``COMMAND GETKEYS``: the blocking client asks its *default
node*, the asyncio one the node of its last topology refresh. When that node is the primary that
died, the question fails before the command is routed, so no topology refresh follows, and every
stream read failed for as long as the process lived, while the commands with fixed key positions
(``XADD``, ``SET``...) went on working: the event-log owner, reading the relay's stream, inserted
nothing after a failover and left the backlog in Redis at its stop (the failover test lost 544
of 746 exposures). Both clients made here take the keys of a stream read from its arguments
(:func:`stream_read_keys`), as Redis does, and ask no node.

Startup nodes. A cluster client discovers the cluster from the node its URL names, so a process
started while that node is down (a worker respawned after a failover, a restarted learner) could
not start at all. The URL of a cluster may name several nodes, ``redis://[auth@]a:7000,b:7001/0``
(:func:`cluster_startup`): the client tries each.

A single server keeps the same layout; :func:`migrate_layout` renames the keys of the layout
before the cluster one (``RENAMENX``) once, at start-up, so existing data keeps working.
"""

from __future__ import annotations

import binascii
import fnmatch
import functools
from collections.abc import Sequence
from typing import Any, cast

import redis
import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode as SyncClusterNode
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, ResponseError
from redis.retry import Retry as SyncRetry

from decision_api.lean_redis import LeanRedis
from decision_api.settings import RedisSettings

log = structlog.get_logger("tailor.redis")

SLOTS = 16384
CLUSTER_RETRIES = 1
"""Attempts after a connection error or ``CLUSTERDOWN`` before a command fails. redis-py's
default (10, backed off up to 1 s) sits out a whole failover: a decision waited 2.8 s for a
replica to take over. With one quick retry it answers ``degraded`` instead, within the socket
timeout; the next command after the takeover goes to the new primary."""
SYNC_CLUSTER_RETRIES = 3
"""The blocking client's attempts (the event-log relay's: no visitor waits on it)."""
LAYOUT_VERSION = "2"
MIGRATE_SCAN_COUNT = 1000


class ClusterUnavailable(redis.exceptions.ConnectionError):
    """The cluster cannot serve a command now (a slot without a primary, no node answering)."""


STREAM_READS = frozenset({"XREAD", "XREADGROUP"})
_OPTION_ARGS = {"GROUP": 2, "COUNT": 1, "BLOCK": 1, "CLAIM": 1, "NOACK": 0}
"""The options a stream read may carry before ``STREAMS``, with how many arguments each takes."""


def _word(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode(errors="replace").upper()
    return str(value).upper()


def stream_read_keys(args: Sequence[Any]) -> list[Any] | None:
    """The stream keys of ``XREAD``/``XREADGROUP`` ``args`` (the command first), read the way Redis
    reads them: the options, then ``STREAMS``, then as many keys as ids. None for another command
    or arguments this does not know (the caller asks Redis then)."""
    if not args or _word(args[0]) not in STREAM_READS:
        return None
    i = 1
    while i < len(args):
        word = _word(args[i])
        if word == "STREAMS":
            rest = args[i + 1 :]
            if not rest or len(rest) % 2:
                return None
            return list(rest[: len(rest) // 2])
        if word not in _OPTION_ARGS:
            return None
        i += 1 + _OPTION_ARGS[word]
    return None


class _Cluster(AsyncRedisCluster):
    """redis-py's cluster client whose availability errors are ``RedisError``s, and which finds
    the keys of stream reads itself (see the module docstring)."""

    async def _determine_slot(self, command: str, *args: Any) -> int:
        keys = stream_read_keys((command, *args))
        if keys is None:
            slot: int = await super()._determine_slot(command, *args)
            return slot
        slots = {self.keyslot(key) for key in keys}
        if len(slots) != 1:
            raise RedisClusterException(f"{command} - all keys must map to the same key slot")
        return slots.pop()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise ClusterUnavailable(str(exc)) from exc

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _ClusterPipeline(self, transaction)  # type: ignore[abstract]


class _ClusterPipeline(ClusterPipeline):
    """A cluster pipeline whose availability errors are ``RedisError``s."""

    async def initialize(self) -> ClusterPipeline:
        try:
            return await super().initialize()
        except RedisClusterException as exc:
            raise ClusterUnavailable(str(exc)) from exc

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except RedisClusterException as exc:
            raise ClusterUnavailable(str(exc)) from exc


class _SyncCluster(redis.RedisCluster):
    """redis-py's blocking cluster client, which finds the keys of stream reads itself (see the
    module docstring); another command whose keys it must ask its default node about moves the
    default node elsewhere when that node cannot be reached, so the next attempt asks another."""

    def _get_command_keys(self, *args: Any) -> Any:
        keys = stream_read_keys(args)
        if keys is not None:
            return keys
        try:
            return super()._get_command_keys(*args)  # type: ignore[no-untyped-call]
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            self.replace_default_node()
            raise


def cluster_startup(url: str) -> tuple[str, list[tuple[str, int]]]:
    """A cluster URL that may name several nodes (``redis://[auth@]a:7000,b:7001/0``) as the URL
    of its first node and the (host, port) of the others (port 6379 when not given)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, []
    netloc, slash, tail = rest.partition("/")
    auth, at, hosts = netloc.rpartition("@")
    first, *others = hosts.split(",")
    nodes = []
    for other in others:
        host, colon, port = other.rpartition(":")
        if not colon or host.endswith(":"):  # no port, or a bare IPv6 address
            host, port = other, ""
        nodes.append((host.strip("[]"), int(port) if port else 6379))
    return f"{scheme}://{auth}{at}{first}{slash}{tail}", nodes


def connect(
    settings: RedisSettings, *, decode_responses: bool = True, lean: bool = False, **options: Any
) -> Redis:
    """The asyncio client for ``settings``: a cluster client when ``settings.cluster``.

    ``options`` are connection options (``socket_timeout``, ``max_connections``...); on a
    cluster they apply per node. The cluster client is typed as ``Redis``: it offers the same
    commands, pipelines and scripts (see the module docstring for what differs). ``lean`` (a
    serving worker's clients, unless ``settings.lean_client`` is off): on a single server, a
    :class:`~decision_api.lean_redis.LeanRedis`, whose hot commands share one pipelined
    connection.
    """
    url = settings.url or "redis://127.0.0.1:6379/0"
    if not settings.cluster:
        cls = LeanRedis if lean and settings.lean_client else Redis
        return cls.from_url(url, decode_responses=decode_responses, **options)
    options.setdefault(
        "retry", Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.05), CLUSTER_RETRIES)
    )
    first, others = cluster_startup(url)
    # A slot without a primary (failover in progress) must not stop the others being served.
    cluster = _Cluster.from_url(
        first,
        startup_nodes=[AsyncClusterNode(host, port) for host, port in others],
        decode_responses=decode_responses,
        require_full_coverage=False,
        **options,
    )
    return cast(Redis, cluster)


def connect_sync(settings: RedisSettings, **options: Any) -> redis.Redis:
    """The blocking client for ``settings`` (the event-log relay's), cluster-aware too."""
    url = settings.url or "redis://127.0.0.1:6379/0"
    if not settings.cluster:
        return redis.Redis.from_url(url, **options)
    # redis-py's default backs off a topology refresh after failed ones (up to 10 s): the relay's
    # owner kept calling a dead primary for 8 s after its replica had taken over. Its caller
    # retries every second anyway; a short backoff lets each retry see the new topology.
    options.setdefault(
        "retry", SyncRetry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), SYNC_CLUSTER_RETRIES)
    )
    first, others = cluster_startup(url)
    nodes = [SyncClusterNode(host, port) for host, port in others]  # type: ignore[no-untyped-call]
    cluster = _SyncCluster.from_url(
        first, startup_nodes=nodes, require_full_coverage=False, **options
    )
    return cast(redis.Redis, cluster)


def is_cluster(client: object) -> bool:
    """Whether ``client`` (or pipeline) talks to a Redis Cluster."""
    return isinstance(client, AsyncRedisCluster | ClusterPipeline)


def queue_script(script: AsyncScript, pipe: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """Queue a script call on a pipeline: ``EVALSHA`` on a single server's pipeline (which loads
    missing scripts itself), ``EVAL`` with the text on a cluster pipeline (which would not)."""
    if isinstance(pipe, ClusterPipeline):
        text = script.script
        pipe.eval(text if isinstance(text, str) else bytes(text).decode(), len(keys), *keys, *args)
    else:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
        pipe.scripts.add(script)


def key_slot(tag: str) -> int:
    """The cluster hash slot of a hash tag (or of a key without braces)."""
    return binascii.crc_hqx(tag.encode(), 0) % SLOTS


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    tags: list[str | None] = [None] * SLOTS
    missing, n = SLOTS, 0
    while missing:
        text = format(n, "x")
        slot = key_slot(text)
        if tags[slot] is None:
            tags[slot] = text
            missing -= 1
        n += 1
    return tuple(cast(str, t) for t in tags)


def slot_tag(slot: int) -> str:
    """A short hash tag of ``slot``: ``{p}:x:{<slot_tag(s)>}`` lives in slot ``s``."""
    return _slot_tags()[slot]


def shared_prefix(prefix: str) -> str:
    """``{<prefix>}``: the hash-tagged prefix of the keys that change together."""
    return "{" + prefix + "}"


def _renames(prefix: str) -> tuple[list[str], list[str]]:
    """The fixed old key names (renamed as they are) and the SCAN patterns of the others."""
    fixed = [
        f"{prefix}:exp:defs",
        f"{prefix}:exp:version",
        f"{prefix}:exp:contact_caps",
        f"{prefix}:keys",
        f"{prefix}:keys:version",
        f"{prefix}:join:due",
        f"{prefix}:train",
    ]
    patterns = [
        f"{prefix}:exp:hist:*",
        f"{prefix}:model:*",
        f"{prefix}:dec:{{*",
        f"{prefix}:u:{{*}}:join",
    ]
    return fixed, patterns


def new_name(prefix: str, old: str) -> str:
    """The cluster layout's name of a key of the single-server layout before it.

    ``<p>:exp:...``, ``<p>:keys...``, ``<p>:join:due``, ``<p>:train``, ``<p>:model:...`` move
    under ``{<p>}``; ``<p>:dec:{<d>}:<rest>`` becomes ``{<p>}:dec:<d>:<rest>`` and
    ``<p>:u:{<unit>}:join`` becomes ``{<p>}:u:<unit>:join``.
    """
    rest = old[len(prefix) :]
    shared = shared_prefix(prefix)
    if rest.startswith(":dec:{"):
        decision, _, tail = rest[len(":dec:{") :].partition("}")
        return f"{shared}:dec:{decision}{tail}"
    if rest.startswith(":u:{") and rest.endswith("}:join"):
        return f"{shared}:u:{rest[len(':u:{') : -len('}:join')]}:join"
    return shared + rest


async def migrate_layout(client: Redis, prefix: str) -> int:
    """Rename the keys of the layout before the cluster one (single server only); returns how
    many moved. Runs once per prefix: ``{<p>}:layout`` records that it did. ``RENAMENX`` never
    overwrites a key of the new layout, and a rename another worker made first is skipped, so
    workers starting together are safe. Stop every worker of the old version first: one still
    running would write the old names after the move.
    """
    marker = shared_prefix(prefix) + ":layout"
    if await client.get(marker) == LAYOUT_VERSION:
        return 0
    fixed, patterns = _renames(prefix)
    moved = 0
    names = list(fixed)
    # Decision records, join indexes and models exist only beside experiment definitions (which
    # are never deleted): without any fixed key there is nothing to scan for (a new prefix).
    if await client.exists(*fixed):
        async for key in client.scan_iter(match=prefix + ":*", count=MIGRATE_SCAN_COUNT):
            name = key.decode() if isinstance(key, bytes) else str(key)
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
                names.append(name)
    for start in range(0, len(names), MIGRATE_SCAN_COUNT):
        async with client.pipeline(transaction=False) as pipe:
            for old in names[start : start + MIGRATE_SCAN_COUNT]:
                pipe.renamenx(old, new_name(prefix, old))
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if reply is True or reply == 1:
                moved += 1
            elif not isinstance(reply, ResponseError) and reply not in (False, 0):
                raise TypeError(f"unexpected RENAMENX reply {reply!r}")
    await client.set(marker, LAYOUT_VERSION)
    if moved:
        log.info("redis_layout_migrated", prefix=prefix, keys=moved)
    return moved
