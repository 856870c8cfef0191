"""Several API workers share one embedded chdb through Redis: the event-log relay."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis

from decision_api.metrics import Metrics
from decision_api.redis_client import connect_sync, key_slot
from decision_api.redis_server import RedisServer, free_port
from decision_api.settings import RedisSettings
from event_log.relay import REPLICA_ACK_TIMEOUT_MS, RelayEventLog, RelayKeys, run_owner
from event_log.rows import Outcome
from event_log.spool import Spool
from event_log.store import open_event_log
from event_log.writer import MAX_STRIKES, EventWriter
from tailor_contract.errors import EventLogUnavailable, EventLogUnreachable
from tests.event_log.test_writer import exposure
from tests.integration.test_serve_cli import COUNT_EXPOSURES, REPO, TAILOR, alive, descendants
from tests.support.redis_cluster import RedisCluster


def _outcomes(n: int, tag: str) -> list[tuple[object, ...]]:
    return [
        Outcome(
            event_id=uuid.uuid4(),
            ts_ms=1_795_000_000_000 + i,
            decision_id=f"d{i}",
            unit_id=f"{tag}-{i}",
            experiment="",
            type="click",
            value=1.0,
            properties={"i": str(i)},
        ).row()
        for i in range(n)
    ]


@pytest.fixture
def owner(redis_url: str, event_log_url: str, namespace: str) -> Iterator[threading.Event]:
    """The owner loop in a thread of this process (it opens this test's chdb database)."""
    stop = threading.Event()
    thread = threading.Thread(
        target=run_owner, args=(event_log_url, redis_url, namespace, stop), daemon=True
    )
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=30)


def _wait(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_relay_inserts_queries_and_deduplicates(
    redis_url: str, namespace: str, owner: threading.Event
) -> None:
    """Inserts reach chdb through the stream, a replayed token is not counted twice, and
    queries and commands run in the owner."""
    relay = RelayEventLog(redis_url, namespace, timeout_s=20)
    try:
        _wait(relay.ping)
        rows = _outcomes(500, "a")
        relay.insert("outcomes", rows, "token-1")
        relay.insert("outcomes", rows, "token-1")  # a replayed batch
        count = "SELECT count() FROM outcomes WHERE unit_id LIKE {p:String}"
        _wait(lambda: relay.query(count, {"p": "a-%"}) == [(500,)])
        assert relay.query("SELECT max(value), min(properties['i']) FROM outcomes") == [(1.0, "0")]
        relay.command(
            "ALTER TABLE outcomes DELETE WHERE unit_id = {u:String} SETTINGS mutations_sync = 2",
            {"u": "a-7"},
        )
        assert relay.query(count, {"p": "a-%"}) == [(499,)]
        with pytest.raises(EventLogUnavailable, match=r"UNKNOWN_TABLE|Unknown table"):
            relay.query("SELECT count() FROM no_such_table")
    finally:
        relay.close()


def test_events_wait_in_redis_while_the_owner_is_down(
    redis_url: str, event_log_url: str, namespace: str
) -> None:
    """With no owner running, inserts still succeed (the stream is the buffer) and are stored
    when an owner starts."""
    relay = RelayEventLog(redis_url, namespace, timeout_s=20)
    try:
        assert not relay.ping()
        relay.insert("outcomes", _outcomes(300, "b"), "token-b")
        stop = threading.Event()
        thread = threading.Thread(
            target=run_owner, args=(event_log_url, redis_url, namespace, stop), daemon=True
        )
        thread.start()
        try:
            _wait(lambda: relay.query("SELECT count() FROM outcomes") == [(300,)])
        finally:
            stop.set()
            thread.join(timeout=30)
    finally:
        relay.close()


def test_entries_of_the_earlier_format_are_inserted(
    redis_url: str, namespace: str, owner: threading.Event
) -> None:
    """A stream entry written by an earlier version (msgpack rows under ``r``) still reaches
    chdb, as do entries in the current format (the encoded insert body under ``b``)."""
    relay = RelayEventLog(redis_url, namespace, timeout_s=20)
    client = redis.Redis.from_url(redis_url)
    try:
        _wait(relay.ping)
        old = _outcomes(40, "old")
        client.xadd(
            RelayKeys(namespace).stream,
            {"t": "outcomes", "k": "token-old", "r": msgspec.msgpack.encode(old)},
        )
        relay.insert("outcomes", _outcomes(60, "new"), "token-new")
        count = "SELECT count() FROM outcomes WHERE unit_id LIKE {p:String}"
        _wait(lambda: relay.query(count, {"p": "old-%"}) == [(40,)])
        _wait(lambda: relay.query(count, {"p": "new-%"}) == [(60,)])
        ts = "SELECT toUnixTimestamp64Milli(min(ts)) FROM outcomes WHERE unit_id LIKE {p:String}"
        assert relay.query(ts, {"p": "old-%"}) == relay.query(ts, {"p": "new-%"})
        assert relay.query(ts, {"p": "new-%"}) == [(1_795_000_000_000,)]
    finally:
        client.close()
        relay.close()


def test_relay_without_redis_is_unavailable() -> None:
    """A dead Redis makes inserts raise EventLogUnavailable, so the writer spools them."""
    relay = RelayEventLog(f"redis://127.0.0.1:{free_port()}/0", "x", timeout_s=1)
    try:
        with pytest.raises(EventLogUnavailable):
            relay.insert("outcomes", _outcomes(1, "c"), "t")
        assert not relay.ping()
    finally:
        relay.close()


@contextlib.contextmanager
def _serve_workers(tmp_path: Path, workers: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``tailor serve --workers N`` on a fresh data directory until ready; killed on exit."""
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAILOR_", "PROMETHEUS_"))}
    env.update(
        TAILOR_DATA_DIR=str(data),
        TAILOR_EVENT_LOG_URL=f"chdb://{data / 'chdb'}",
        TAILOR_EVENT_LOG_SPOOL_DIR=str(data / "spool"),
        TAILOR_EVENT_LOG_FLUSH_INTERVAL_S="0.1",
        TAILOR_LOG_LEVEL="warning",
    )
    port = free_port()
    command = [str(TAILOR)] if TAILOR.exists() else [sys.executable, "-m", "decision_api.cli.main"]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "serve", "--port", str(port), "--workers", str(workers)],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 40
        while True:
            assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        tree = descendants(process.pid)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        for pid in tree:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


_DECISIONS_SERVED = re.compile(
    r'^tailor_decisions_total\{policy="fixed",reason="split"\} (\S+)$', re.M
)


@pytest.mark.slow
def test_metrics_add_up_across_workers(tmp_path: Path) -> None:
    """With two workers every scrape of ``/metrics`` reports the decisions both served, whichever
    worker answers it, and the multiprocess directory goes with the server."""
    n = 60
    with _serve_workers(tmp_path, 2) as (url, process):
        spec = {"key": "hero", "placement": "home",
                "variants": [{"key": "a"}, {"key": "b"}], "default_variant": "a"}  # fmt: skip
        assert httpx.post(url + "/v1/experiments", json=spec).status_code == 201
        assert httpx.post(url + "/v1/experiments/hero/start").status_code == 200
        time.sleep(1.0)  # both workers poll the config version
        for i in range(n):  # a connection each: the kernel spreads them over both workers
            r = httpx.post(url + "/v1/decide", json={"unit_id": f"u{i}", "placements": ["home"]})
            assert r.json()["decisions"][0]["reason"] == "split"
        totals = []
        for _ in range(12):
            text = httpx.get(url + "/metrics", timeout=10).text
            found = _DECISIONS_SERVED.search(text)
            totals.append(float(found.group(1)) if found else 0.0)
        assert totals == [n] * 12
        assert "tailor_event_queue_depth" in text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    assert not list((tmp_path / "data" / "metrics").iterdir())


@pytest.mark.slow
def test_two_workers_share_the_embedded_event_log(tmp_path: Path) -> None:
    """``tailor serve --workers 2`` on chdb: both workers' exposures are stored exactly once and
    every process stops on SIGTERM."""
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env.update(
        TAILOR_DATA_DIR=str(data),
        TAILOR_EVENT_LOG_URL=f"chdb://{data / 'chdb'}",
        TAILOR_EVENT_LOG_SPOOL_DIR=str(data / "spool"),
        TAILOR_EVENT_LOG_FLUSH_INTERVAL_S="0.1",
        TAILOR_LOG_LEVEL="warning",
    )
    port = free_port()
    command = [str(TAILOR)] if TAILOR.exists() else [sys.executable, "-m", "decision_api.cli.main"]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "serve", "--port", str(port), "--workers", "2"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 40
        while True:
            assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        tree = descendants(process.pid)
        spec = {"key": "hero", "placement": "home",
                "variants": [{"key": "a"}, {"key": "b"}], "default_variant": "a"}  # fmt: skip
        decision_ids = set()
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.post("/v1/experiments", json=spec).status_code == 201
            assert http.post("/v1/experiments/hero/start").status_code == 200
            time.sleep(1.0)  # both workers poll the config version
            for i in range(200):
                r = http.post("/v1/decide", json={"unit_id": f"u{i}", "placements": ["home"]})
                assert r.status_code == 200
                assert r.json()["decisions"][0]["reason"] == "split"
                decision_ids.add(r.json()["decision_id"])
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        for pid in tree:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    counted = subprocess.run(
        [sys.executable, "-c", COUNT_EXPOSURES, f"chdb://{data / 'chdb'}"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
    )  # fmt: skip
    rows = json.loads(counted.stdout)
    assert sorted(r[0] for r in rows) == sorted(decision_ids)
    assert not [pid for pid in tree if alive(pid)]


def _owner_thread(
    event_log_url: str, redis_url: str, namespace: str
) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(
        target=run_owner, args=(event_log_url, redis_url, namespace, stop), daemon=True
    )
    thread.start()
    return thread, stop


def test_a_stopping_owner_is_not_held_by_entries_it_inserted_already(
    redis_url: str, event_log_url: str, namespace: str
) -> None:
    """An entry read and acknowledged but not deleted (what a Redis restarted from its
    append-only file can hold) is not backlog: the owner deletes it and stops when asked.
    It used to wait for the stream to be empty, and ``tailor serve`` killed it after 60 s."""
    keys = RelayKeys(namespace)
    client = redis.Redis.from_url(redis_url)
    relay = RelayEventLog(redis_url, namespace, timeout_s=20)
    try:
        client.xgroup_create(keys.stream, "owner", id="0", mkstream=True)
        relay.insert("outcomes", _outcomes(5, "done"), "token-done")
        client.xreadgroup("owner", "owner", {keys.stream: ">"}, count=10)
        (entry_id,) = [e for e, _ in client.xrange(keys.stream)]
        client.xack(keys.stream, "owner", entry_id)  # inserted, acknowledged, never deleted
        relay.insert("outcomes", _outcomes(30, "new"), "token-new")
        thread, stop = _owner_thread(event_log_url, redis_url, namespace)
        _wait(lambda: relay.query("SELECT count() FROM outcomes") == [(30,)])
        stop.set()
        thread.join(timeout=15)
        assert not thread.is_alive(), "the owner did not stop"
        assert client.xlen(keys.stream) == 0
    finally:
        client.close()
        relay.close()


def test_the_owner_recreates_its_group_when_redis_lost_it(
    redis_url: str, event_log_url: str, namespace: str
) -> None:
    """A Redis restarted without its data has no consumer group: the owner creates it again
    and stores what workers add since (it used to answer ``NOGROUP`` for ever)."""
    keys = RelayKeys(namespace)
    client = redis.Redis.from_url(redis_url)
    relay = RelayEventLog(redis_url, namespace, timeout_s=20)
    thread, stop = _owner_thread(event_log_url, redis_url, namespace)
    try:
        relay.insert("outcomes", _outcomes(10, "before"), "token-before")
        _wait(lambda: relay.query("SELECT count() FROM outcomes") == [(10,)])
        client.delete(keys.stream)  # the stream and its group, as after a restart without data
        relay.insert("outcomes", _outcomes(20, "after"), "token-after")
        _wait(lambda: relay.query("SELECT count() FROM outcomes") == [(30,)])
    finally:
        stop.set()
        thread.join(timeout=30)
        client.close()
        relay.close()
    assert not thread.is_alive()


def test_a_stopping_owner_waits_out_a_redis_restart_to_drain(
    tmp_path: Path, event_log_url: str, namespace: str
) -> None:
    """Told to stop while Redis is down, the owner retries until Redis is back and stores what
    the stream holds (it used to give up at the first Redis error, leaving it behind)."""
    server = RedisServer(tmp_path / "redis", port=free_port(), persist=True).start()
    relay = RelayEventLog(server.url, namespace, timeout_s=20)
    try:
        relay.insert("outcomes", _outcomes(40, "held"), "token-held")
        relay.close()
        server.stop()  # saves the stream
        thread, stop = _owner_thread(event_log_url, server.url, namespace)
        stop.set()
        time.sleep(2.0)
        assert thread.is_alive(), "the owner gave up while Redis was down"
        server = RedisServer(tmp_path / "redis", port=server.port, persist=True).start()
        thread.join(timeout=30)
        assert not thread.is_alive()
        relay = RelayEventLog(server.url, namespace, timeout_s=20)
        assert redis.Redis.from_url(server.url).xlen(RelayKeys(namespace).stream) == 0
    finally:
        relay.close()
        server.stop()
    store = open_event_log(event_log_url)
    try:
        assert store.query("SELECT count() FROM outcomes") == [(40,)]
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.redis_cluster
def test_the_owner_drains_after_its_clusters_default_node_fails_over(
    tmp_path: Path, event_log_url: str
) -> None:
    """The primary its cluster client asks about command keys (the default node) is killed and
    its replica takes over: the owner stores what workers add since. It used to fail every
    ``XREADGROUP`` for ever (redis-py asked the dead node for the keys) while its heartbeat went
    on, so workers kept adding to a stream nobody read, and the failover test lost 544 of 746
    exposures."""
    cluster = RedisCluster(tmp_path / "cluster").start()
    stop = threading.Event()
    thread: threading.Thread | None = None
    relay: RelayEventLog | None = None
    try:
        probe = connect_sync(RedisSettings(url=cluster.url, cluster=True))
        asked = probe.get_default_node().name  # type: ignore[attr-defined]
        probe.close()
        dead = next(n for n in cluster.nodes if n.address == asked)
        # The owner's keys on the other primaries: no command of its own reaches the dead node
        # (an error there would refresh its topology and hide the fault).
        prefix = next(
            p
            for p in (f"o{uuid.uuid4().hex[:8]}" for _ in range(10_000))
            if all(
                cluster.primary_of(key_slot(key)) != dead
                for key in (RelayKeys(p).stream, RelayKeys(p).heartbeat, RelayKeys(p).requests)
            )
        )
        settings = RedisSettings(url=cluster.url, cluster=True, key_prefix=prefix)
        connect = functools.partial(connect_sync, settings)
        thread = threading.Thread(
            target=run_owner, args=(event_log_url, cluster.url, prefix, stop, connect), daemon=True
        )
        thread.start()
        relay = RelayEventLog(cluster.url, prefix, timeout_s=5, connect=connect)
        stream = RelayKeys(prefix).stream
        _wait(relay.ping)
        relay.insert("outcomes", _outcomes(10, "before"), "token-before")
        _wait(lambda: relay.query("SELECT count() FROM outcomes") == [(10,)])
        reader = connect_sync(settings)  # before the kill: the URL may name the node that dies
        cluster.fail_over(dead)
        relay.insert("outcomes", _outcomes(20, "after"), "token-after")
        try:
            _wait(lambda: reader.xlen(stream) == 0, timeout=15)
        finally:
            reader.close()
        assert relay.query("SELECT count() FROM outcomes") == [(30,)]
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=40)
        if relay is not None:
            relay.close()
        cluster.stop()


async def test_a_batch_redis_will_not_take_stays_spooled_and_is_never_set_aside(
    tmp_path: Path, namespace: str
) -> None:
    """Redis refuses the relay's ``XADD`` (full: ``maxmemory``) while it answers reads and the
    owner's heartbeat is fresh, as when the stream's node of a cluster is down and the
    heartbeat's is not. That is the event log being down, not a batch it rejects: the batch
    stays in the spool through any number of replays and reaches the stream once Redis takes
    writes again. The writer used to read the fresh heartbeat as "the log is up, the batch is
    bad", split the batch after MAX_STRIKES replays and set every row aside in ``dead/``."""
    server = RedisServer(tmp_path / "redis", port=free_port(), persist=False).start()
    client = redis.Redis.from_url(server.url)
    relay = RelayEventLog(server.url, namespace, timeout_s=5)
    writer = EventWriter(
        relay, Spool(tmp_path / "spool", max_bytes=64 << 20, fsync="batch"), batch_size=10_000,
        flush_interval_s=60.0, max_buffered=100_000, metrics=Metrics(),
    )  # fmt: skip
    keys = RelayKeys(namespace)
    try:
        client.set(keys.heartbeat, "1")  # an owner is alive
        client.config_set("maxmemory", 1)  # every write refused: OOM
        writer.submit_many([exposure(i, "held") for i in range(4)])
        await writer.flush()
        assert not writer.healthy
        for _ in range(3 * MAX_STRIKES):
            assert not await writer.replay()
        assert writer.quarantined == 0
        assert not (tmp_path / "spool" / "dead").exists()
        client.config_set("maxmemory", 0)
        assert await writer.replay()
        ((_, fields),) = client.xrange(keys.stream)
        assert (fields[b"t"], fields[b"n"]) == (b"exposures", b"4")
        await writer.close()
    finally:
        client.close()
        relay.close()
        server.stop()


def test_an_entry_no_replica_holds_stays_in_the_workers_spool(
    tmp_path: Path, namespace: str
) -> None:
    """Redis replicates asynchronously: an ``XADD`` its primary acknowledged is lost with the
    primary if its replica never got it. With the replica stopped (SIGSTOP), the insert waits
    ``REPLICA_ACK_TIMEOUT_MS`` for a replica's acknowledgement and raises, so the writer keeps the
    batch in its spool; with the replica running, it returns once the replica holds the entry.
    It used to return as soon as the primary had it."""
    primary = RedisServer(tmp_path / "primary", port=free_port(), persist=False).start()
    replica = RedisServer(tmp_path / "replica", port=free_port(), persist=False).start()
    relay = RelayEventLog(primary.url, namespace, timeout_s=5)
    to_replica = redis.Redis.from_url(replica.url)
    to_primary = redis.Redis.from_url(primary.url)
    stream = RelayKeys(namespace).stream
    try:
        to_replica.replicaof("127.0.0.1", primary.port)
        _wait(lambda: to_replica.info("replication")["master_link_status"] == "up")
        # The primary lists the replica (ROLE, what the relay counts) a moment after the
        # replica sees its link up: an insert in between did not wait for it.
        _wait(lambda: len(to_primary.role()[2]) == 1)
        relay.insert("outcomes", _outcomes(3, "held"), "token-held")
        assert to_replica.xlen(stream) == 1  # the replica held it when insert returned
        assert replica.pid is not None
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(EventLogUnreachable, match="no replica acknowledged"):
                relay.insert("outcomes", _outcomes(3, "lost"), "token-lost")
            assert time.monotonic() - started >= REPLICA_ACK_TIMEOUT_MS / 1000 * 0.9
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        relay.insert("outcomes", _outcomes(3, "again"), "token-again")  # the replica is back
        assert to_replica.xlen(stream) == 3  # the entry of the failed insert was added too
    finally:
        to_replica.close()
        to_primary.close()
        relay.close()
        replica.stop()
        primary.stop()


class _FirstPushFails(redis.Redis):
    """A Redis client whose first ``LPUSH`` fails as a connection to a dead node does."""

    failed = False

    def lpush(self, name: Any, *values: Any) -> Any:
        if not _FirstPushFails.failed:
            _FirstPushFails.failed = True
            raise redis.exceptions.ConnectionError("Error 111 connecting: Connection refused.")
        return super().lpush(name, *values)


def test_a_query_popped_before_redis_failed_is_still_answered(
    redis_url: str, event_log_url: str, namespace: str
) -> None:
    """The owner pops a query, runs it, and Redis refuses the answer (the response key's slot
    was on a primary that just died): the answer is kept and pushed on the owner's next turn, so
    the caller, still waiting, gets it. It used to be lost with its request: the caller waited
    out its 5 s and got "the event-log owner did not answer" (seen in a failover test)."""
    from event_log.relay import Owner

    prefix = f"a{namespace}"
    event_log = open_event_log(event_log_url)
    event_log.migrate()
    owner = Owner(
        event_log, redis_url, prefix,
        connect=lambda **options: _FirstPushFails.from_url(redis_url, **options),
    )  # fmt: skip
    relay = RelayEventLog(redis_url, prefix, timeout_s=5)
    answers: list[Any] = []
    caller = threading.Thread(target=lambda: answers.append(relay.query("SELECT 41 + 1")))
    try:
        caller.start()
        deadline = time.monotonic() + 5
        failures = 0
        while not answers and time.monotonic() < deadline:
            try:
                owner.answer()
            except redis.exceptions.ConnectionError:
                failures += 1
            time.sleep(0.01)
        caller.join(timeout=10)
        assert failures == 1
        assert answers == [[(42,)]]
    finally:
        relay.close()
        event_log.close()
