"""No lost events, with real processes: the event log dies under load, Redis dies under load, the
server gets SIGTERM during a burst.

Every test runs ``tailor serve`` (granian) as a child process writing to ClickHouse's HTTP
interface, served by the test front over chdb (``tests/support/clickhouse_front.py``), so the
event log can be killed and restarted on the same port and counted from outside. A load of
decisions and outcomes runs from this process; the figures (sent, accepted, stored, duplicates)
are printed, and the tests assert: every accepted exposure and outcome is stored exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import httpx
import msgspec
import pytest

from decision_api.redis_server import RedisServer, free_port
from tests.support.processes import TailorServer, server_env
from tests.support.sizes import LONG_TESTS

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN = {"Authorization": "Bearer fail-admin"}
DECIDER = {"Authorization": "Bearer fail-decide"}
KEYS = "fail-admin:admin,fail-decide:decide"
HERO = {
    "key": "hero",
    "placement": "home",
    "variants": [{"key": "control"}, {"key": "spring"}],
    "default_variant": "control",
}


class Front:
    """The ClickHouse HTTP front over one chdb directory, on a fixed port (restartable)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.port = free_port()
        self.log = path.parent / "front.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The event-log URL for the server."""
        return f"http://default:@127.0.0.1:{self.port}/tailor"

    def start(self) -> Front:
        """Start serving and wait for READY."""
        command = [sys.executable, "-m", "tests.support.clickhouse_front", "--path",
                   str(self.path), "--port", str(self.port)]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log
            )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = select.select([self.process.stdout], [], [], 0.1)[0]
            if ready and self.process.stdout.readline().startswith(b"READY"):
                return self
            assert self.process.poll() is None, self.log.read_text()[-2000:]
        raise AssertionError("front did not start")

    def kill(self) -> None:
        """SIGKILL: the event log vanishes mid-whatever it was doing."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            assert self.process.stdout is not None
            self.process.stdout.close()
            self.process = None

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            assert self.process.stdout is not None
            self.process.stdout.close()
            self.process = None

    def rows(self, table: str, column: str) -> tuple[int, int, set[str]]:
        """(rows, distinct event ids, distinct values of ``column``) in ``table``."""
        client = clickhouse_connect.get_client(dsn=self.url, autogenerate_session_id=False)
        try:
            sql = "SELECT count(), uniqExact(event_id) FROM {t:Identifier}"
            count, unique = client.query(sql, parameters={"t": table}).result_rows[0]
            ids = client.query(
                "SELECT DISTINCT {c:Identifier} FROM {t:Identifier}",
                parameters={"t": table, "c": column},
            ).result_rows
        finally:
            client.close()
        return int(count), int(unique), {str(r[0]) for r in ids}


@contextlib.contextmanager
def front_at(path: Path) -> Iterator[Front]:
    """A running front, stopped on exit."""
    front = Front(path).start()
    try:
        yield front
    finally:
        front.stop()


class Load:
    """Decisions (and an outcome for every other one) from ``concurrency`` clients until stopped."""

    def __init__(self, url: str, concurrency: int = 8, stop_on_error: bool = False) -> None:
        self.url = url
        self.concurrency = concurrency
        self.stop_on_error = stop_on_error
        self.stop = asyncio.Event()
        self.statuses: collections.Counter[str] = collections.Counter()
        self.exposed: list[str] = []  # decision ids whose exposure was accepted
        self.outcomes: list[str] = []  # event ids of accepted outcomes
        self.degraded = 0
        self.sent = 0
        self.slowest_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Load:
        """Start the clients in the background."""
        self._task = asyncio.create_task(self._run())
        return self

    async def finish(self) -> Load:
        """Stop the clients and wait for them."""
        self.stop.set()
        assert self._task is not None
        await self._task
        return self

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, timeout=10, limits=limits) as client:
            await asyncio.gather(*(self._client(client, w) for w in range(self.concurrency)))

    async def _client(self, client: httpx.AsyncClient, worker: int) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            unit = f"u{worker}-{i}"
            try:
                did = await self._decide(client, unit)
                if did is not None and i % 2 == 0:
                    await self._outcome(client, did, unit)
            except httpx.TransportError as exc:
                self.statuses[type(exc).__name__] += 1
                if self.stop_on_error:
                    return
                await asyncio.sleep(0.02)

    async def _decide(self, client: httpx.AsyncClient, unit: str) -> str | None:
        body = {"unit_id": unit, "placements": ["home"], "context": {"device": "m"}}
        self.sent += 1
        started = time.perf_counter()
        response = await client.post("/v1/decide", json=body, headers=DECIDER)
        self.slowest_s = max(self.slowest_s, time.perf_counter() - started)
        self.statuses[f"decide {response.status_code}"] += 1
        if response.status_code != 200:
            return None
        answer = response.json()
        self.degraded += answer["degraded"]
        did: str = answer["decision_id"]
        if any(d.get("experiment") for d in answer["decisions"]):
            self.exposed.append(did)
        return did

    async def _outcome(self, client: httpx.AsyncClient, did: str, unit: str) -> None:
        body = {"decision_id": did, "unit_id": unit, "type": "purchase", "value": 1.0}
        self.sent += 1
        response = await client.post("/v1/outcomes", json=body, headers=DECIDER)
        self.statuses[f"outcome {response.status_code}"] += 1
        if response.status_code == 202:
            self.outcomes.extend(response.json()["event_ids"])


def start_server(tmp: Path, redis_url: str, event_log_url: str, **extra: str) -> TailorServer:
    """``tailor serve`` with keys, a fast flush (unless ``extra`` says otherwise), the given
    Redis and event log."""
    settings = {
        "TAILOR_EVENT_LOG_URL": event_log_url,
        "TAILOR_AUTH_API_KEYS": KEYS,
        "TAILOR_EVENT_LOG_FLUSH_INTERVAL_S": "0.1",
        **extra,
    }
    env = server_env(redis_url, "f" + uuid.uuid4().hex[:10], tmp / "server", **settings)
    server = TailorServer(env, tmp / "server.log")
    server.wait_ready()
    for path in ("/v1/experiments", "/v1/experiments/hero/start"):
        body = HERO if path == "/v1/experiments" else None
        response = httpx.post(server.url + path, json=body, headers=ADMIN, timeout=10)
        assert response.status_code in (200, 201), response.text
    return server


def stored_exactly_once(front: Front, load: Load, label: str) -> dict[str, Any]:
    """Assert every accepted exposure and outcome is stored once; return the figures."""
    exposures, unique_exposures, decisions = front.rows("exposures", "decision_id")
    outcomes, unique_outcomes, outcome_ids = front.rows("outcomes", "event_id")
    figures = {
        "test": label,
        "requests_sent": load.sent,
        "exposures_accepted": len(load.exposed),
        "exposures_stored": exposures,
        "exposure_duplicates": exposures - unique_exposures,
        "outcomes_accepted": len(load.outcomes),
        "outcomes_stored": outcomes,
        "outcome_duplicates": outcomes - unique_outcomes,
        "degraded_answers": load.degraded,
        "slowest_decide_ms": round(load.slowest_s * 1000, 1),
        "statuses": dict(load.statuses),
    }
    print("\nFIGURES " + msgspec.json.encode(figures).decode())
    assert exposures == unique_exposures and outcomes == unique_outcomes, figures
    assert set(load.exposed) <= decisions, figures
    assert {uuid.UUID(e).hex for e in load.outcomes} <= {uuid.UUID(e).hex for e in outcome_ids}
    return figures


async def eventually_stored(front: Front, load: Load, timeout: float = 20.0) -> None:
    """Wait until the event log holds at least what was accepted (replay takes a moment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exposures, _, _ = await asyncio.to_thread(front.rows, "exposures", "decision_id")
        outcomes, _, _ = await asyncio.to_thread(front.rows, "outcomes", "event_id")
        if exposures >= len(load.exposed) and outcomes >= len(load.outcomes):
            return
        await asyncio.sleep(0.2)


PHASE_EXPOSURES = 60  # per phase of load unless TAILOR_LONG_TESTS=1 (test_faults: 3 phases > 100)
MIN_PHASE_S = 0.5


async def under_load(load: Load, full_s: float) -> None:
    """Let the load run on: ``full_s`` with ``TAILOR_LONG_TESTS=1``; otherwise until
    :data:`PHASE_EXPOSURES` more exposures were accepted, for at least :data:`MIN_PHASE_S` and at
    most ``full_s``."""
    started = time.monotonic()
    before = len(load.exposed)
    while (elapsed := time.monotonic() - started) < full_s:
        enough = len(load.exposed) - before >= PHASE_EXPOSURES
        if not LONG_TESTS and elapsed >= MIN_PHASE_S and enough:
            return
        await asyncio.sleep(0.05)


def metric(server: TailorServer, name: str) -> float:
    """Sum of a Prometheus counter's samples on the server."""
    text = httpx.get(server.url + "/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def test_event_log_outage_under_load(redis_url: str, tmp_path: Path) -> None:
    """The event log is killed under load and comes back: decisions keep answering, batches go
    to the spool and are replayed; accepted exposures == stored rows, no duplicates."""
    with front_at(tmp_path / "chdb") as front:
        server = start_server(tmp_path, redis_url, front.url)
        try:
            load = Load(server.url).start()
            await under_load(load, 1.0)
            await asyncio.to_thread(front.kill)
            await asyncio.sleep(1.5)
            readyz = await asyncio.to_thread(httpx.get, server.url + "/readyz", timeout=5)
            down = readyz.json()["checks"]
            await asyncio.to_thread(front.start)
            await under_load(load, 1.0)
            await load.finish()
            await eventually_stored(front, load)
            assert down["event_log"] == "down"
            assert metric(server, "tailor_event_flush_errors_total") >= 1
            assert metric(server, "tailor_events_dropped_total") == 0
        finally:
            assert server.stop() == 0
        figures = stored_exactly_once(front, load, "event log killed and restarted")
    assert figures["exposures_stored"] == figures["exposures_accepted"]
    assert figures["outcomes_stored"] == figures["outcomes_accepted"]
    assert set(load.statuses) <= {"decide 200", "outcome 202"}, load.statuses


async def test_redis_outage_under_load(redis_url: str, tmp_path: Path) -> None:
    """Redis is stopped under load and started again on the same port: decisions answer
    (degraded), outcomes are accepted and stored, writes needing Redis get a 503 problem, and
    the service recovers by itself."""
    redis = RedisServer(tmp_path / "redis", port=free_port(), persist=True).start()
    with front_at(tmp_path / "chdb") as front:
        server = start_server(tmp_path, redis.url, front.url)
        try:
            features = {"features": {"segment": "vip"}}
            put = f"{server.url}/v1/units/u-x/features"
            assert httpx.put(put, json=features, headers=ADMIN).status_code == 200
            load = Load(server.url).start()
            await under_load(load, 1.0)
            await asyncio.to_thread(redis.stop)
            await asyncio.sleep(0.5)
            during = await asyncio.to_thread(httpx.put, put, json=features, headers=ADMIN)
            create = await asyncio.to_thread(
                httpx.post, server.url + "/v1/experiments",
                json={**HERO, "key": "other"}, headers=ADMIN, timeout=10,
            )  # fmt: skip
            degraded_during = load.degraded
            await asyncio.sleep(1.0)
            assert load.degraded > degraded_during, "decisions kept answering, degraded"
            await asyncio.to_thread(redis.start)
            recovered = await recovers(put, features)
            after = httpx.post(server.url + "/v1/decide", headers=DECIDER, timeout=5,
                               json={"unit_id": "u-x", "placements": ["home"]})  # fmt: skip
            load.exposed.append(after.json()["decision_id"])
            await asyncio.sleep(0.5)
            await load.finish()
            await eventually_stored(front, load)
        finally:
            assert server.stop() == 0
            redis.stop()
        figures = stored_exactly_once(front, load, "redis stopped and restarted")
    assert during.status_code == 503 and during.json()["code"] == "redis_unavailable"
    assert create.status_code == 503 and create.headers["content-type"].startswith(
        "application/problem+json"
    )
    assert recovered < 5.0
    assert after.json()["degraded"] is False
    assert figures["exposures_stored"] == figures["exposures_accepted"]
    assert figures["outcomes_stored"] == figures["outcomes_accepted"]
    assert set(load.statuses) <= {"decide 200", "outcome 202"}, load.statuses


async def recovers(url: str, features: dict[str, Any], timeout: float = 10.0) -> float:
    """Seconds until a write that needs Redis succeeds again."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        response = await asyncio.to_thread(httpx.put, url, json=features, headers=ADMIN, timeout=5)
        if response.status_code == 200:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    return timeout


async def test_sigterm_during_a_burst(redis_url: str, tmp_path: Path) -> None:
    """SIGTERM while a burst is in flight: granian drains and runs the lifespan shutdown, whose
    flush stores everything that was answered 2xx (the flush interval is too long to help)."""
    with front_at(tmp_path / "chdb") as front:
        server = start_server(
            tmp_path, redis_url, front.url,
            TAILOR_EVENT_LOG_FLUSH_INTERVAL_S="60", TAILOR_EVENT_LOG_BATCH_SIZE="1000000",
        )  # fmt: skip
        load = Load(server.url, concurrency=16, stop_on_error=True).start()
        deadline = time.monotonic() + 10
        while len(load.exposed) < 150 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert front.rows("exposures", "decision_id")[0] == 0, "nothing flushed before SIGTERM"
        server.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.proc.wait, 30)
        await load.finish()
        server.stop()
        figures = stored_exactly_once(front, load, "SIGTERM during a burst")
    assert code == 0
    assert figures["exposures_accepted"] > 100
    assert "services_started" in server.output()


async def test_event_log_down_leaks_nothing(redis_url: str, tmp_path: Path) -> None:
    """With ClickHouse over HTTP down, a report, an export and an erasure answer a 503 problem
    that names neither the ClickHouse host and port, nor the query, nor the unit id; and the
    server writes no plain (non-JSON) log line, nor any line with that address or unit id."""
    unit = "leaky-unit-4711"
    with front_at(tmp_path / "chdb") as front:
        server = start_server(tmp_path, redis_url, front.url)
        try:
            decided = httpx.post(server.url + "/v1/decide", headers=DECIDER, timeout=10,
                                 json={"unit_id": unit, "placements": ["home"]})  # fmt: skip
            assert decided.status_code == 200
            await asyncio.sleep(0.5)  # flushed
            front.kill()
            answers = {
                "report": httpx.get(f"{server.url}/v1/experiments/hero/report",
                                    headers=ADMIN, timeout=60),
                "export": httpx.get(f"{server.url}/v1/units/{unit}/export",
                                    headers=ADMIN, timeout=60),
                "erase": httpx.delete(f"{server.url}/v1/units/{unit}",
                                      headers=ADMIN, timeout=60),
            }  # fmt: skip
        finally:
            assert server.stop() == 0
    address = f"127.0.0.1:{front.port}"
    for name, answer in answers.items():
        assert answer.status_code == 503, (name, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["code"] == "event_log_unavailable", (name, answer.text)
        assert answer.json()["detail"].startswith("event log unreachable"), answer.text
        for secret in (address, str(front.port), "SELECT", "ALTER", unit):
            assert secret not in answer.text, (name, secret, answer.text)
    lines = server.output().splitlines()
    plain = [line for line in lines if line.strip() and not line.startswith(("{", "["))]
    assert not [line for line in plain if "urllib3" in line or address in line], plain
    assert not [line for line in lines if address in line or unit in line], "leaked in logs"
    logged = [json.loads(line) for line in lines if '"backend_unavailable"' in line]
    assert {entry["route"] for entry in logged} >= {
        "GET /v1/units/{unit_id}/export",
        "DELETE /v1/units/{unit_id}",
    }, logged
