"""Operations: health, readiness (and its 503s), Prometheus metrics, OpenAPI, JSON logs."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import structlog
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from decision_api.app import create_app
from decision_api.redis_server import RedisServer, free_port
from decision_api.settings import RedisSettings, Settings
from event_log.throttle import Throttle

Client = AsyncTestClient[Litestar]


@pytest.fixture
def client(shared_client: Client) -> Client:
    """The module's app."""
    return shared_client


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus exposition as {(sample name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_healthz(client: Client) -> None:
    """/healthz answers 200 while the process lives."""
    response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_readyz_when_everything_answers(client: Client) -> None:
    """/readyz is 200 with every check ok when Redis and the event log answer."""
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"redis": "ok", "event_log": "ok", "spool": "empty", "events": "durable"},
    }


async def test_readyz_is_503_when_redis_is_unreachable(shared_settings: Settings) -> None:
    """An app whose Redis is a dead port starts, stays alive, and reports 503 not ready."""
    dead = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", key_prefix="dead")
    app = create_app(msgspec.structs.replace(shared_settings, redis=dead))
    async with AsyncTestClient(app=app) as client:
        assert (await client.get("/healthz")).status_code == 200
        response = await client.get("/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["redis"].startswith("down")
        assert body["checks"]["event_log"] == "ok"


async def test_readyz_is_503_while_events_are_held_in_memory_only(
    shared_settings: Settings, tmp_path: Path
) -> None:
    """With the event log unreachable and the spool unwritable, accepted outcomes are held in
    memory and /readyz says not ready (events: memory_only); once the spool is back it is
    durable again."""
    dead_log = f"http://127.0.0.1:{free_port()}/tailor"
    spool_dir = tmp_path / "spool"
    settings = msgspec.structs.replace(
        shared_settings,
        event_log=msgspec.structs.replace(
            shared_settings.event_log, url=dead_log, spool_dir=str(spool_dir)
        ),
    )
    app = create_app(settings)
    async with AsyncTestClient(app=app) as client:
        slot = spool_dir / "0"
        slot.rename(tmp_path / "slot-away")
        slot.write_bytes(b"")  # a file where the spool's directory should be
        response = await client.post("/v1/outcomes", json={"type": "click", "unit_id": "u-1"})
        assert response.status_code == 202
        deadline = time.monotonic() + 5
        while (body := (await client.get("/readyz")).json())["checks"]["events"] != "memory_only":
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.05)
        assert body["status"] == "unavailable"
        slot.unlink()
        (tmp_path / "slot-away").rename(slot)
        while (body := (await client.get("/readyz")).json())["checks"]["events"] != "durable":
            assert time.monotonic() < deadline + 5, body
            await asyncio.sleep(0.05)
        writer = app.state.services.writer
        assert writer.dropped == 0 and writer.buffered == 0


async def test_metrics_count_decisions_latency_queue_and_flush_errors(client: Client) -> None:
    """/metrics exports the decisions counter, the latency histogram, queue depth, flush errors."""
    tag = uuid.uuid4().hex[:8]
    key, placement = f"m-{tag}", f"p-{tag}"
    spec = {"key": key, "placement": placement, "variants": [{"key": "a"}, {"key": "b"}],
            "default_variant": "a"}  # fmt: skip
    await client.post("/v1/experiments", json=spec)
    await client.post(f"/v1/experiments/{key}/start")
    before = samples((await client.get("/metrics")).text)
    for i in range(5):
        await client.post("/v1/decide", json={"unit_id": f"u-{i}", "placements": [placement]})
    await client.post("/v1/decide", json={"unit_id": "u", "placements": [f"none-{tag}"]})
    written = ("tailor_events_written_total", frozenset({("table", "exposures")}))
    deadline = time.monotonic() + 5
    depth = ("tailor_event_queue_depth", frozenset())
    while True:  # the writer flushes every 0.05 s and sets the depth gauge when a flush ends:
        response = await client.get("/metrics")  # poll until the 5 exposures are counted
        after = samples(response.text)  # and the flush that wrote them has ended
        counted = after.get(written, 0) - before.get(written, 0) >= 5
        if (counted and after.get(depth) == 0) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")

    def delta(name: str, **labels: str) -> float:
        k = (name, frozenset(labels.items()))
        return after.get(k, 0.0) - before.get(k, 0.0)

    assert delta("tailor_decisions_total", policy="fixed", reason="split") == 5
    assert delta("tailor_decisions_total", policy="none", reason="no_experiment") == 1
    assert delta("tailor_decision_latency_seconds_count", endpoint="decide") == 6
    assert delta("tailor_decision_latency_seconds_bucket", endpoint="decide", le="+Inf") == 6
    assert delta("tailor_events_written_total", table="exposures") == 5
    assert after[depth] == 0
    families = {f.name for f in text_string_to_metric_families(response.text)}
    assert {"tailor_event_flush_errors", "tailor_event_spool_bytes"} <= families


async def test_openapi_lists_the_endpoints(client: Client) -> None:
    """The OpenAPI document at /schema/openapi.json lists every public endpoint."""
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    expected = {
        "/v1/decide": "post",
        "/v1/experiments": "post",
        "/v1/experiments/{key}": "put",
        "/v1/experiments/{key}/start": "post",
        "/v1/experiments/{key}/pause": "post",
        "/v1/experiments/{key}/stop": "post",
        "/v1/experiments/{key}/history": "get",
        "/v1/outcomes": "post",
        "/v1/outcomes/batch": "post",
        "/v1/events": "post",
        "/v1/units/{unit_id}/features": "put",
        "/healthz": "get",
        "/readyz": "get",
        "/metrics": "get",
    }
    for path, method in expected.items():
        assert method in paths.get(path, {}), path
    assert "get" in paths["/v1/experiments"]
    decide = paths["/v1/decide"]["post"]
    assert "requestBody" in decide


@pytest.fixture
def doomed_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server this test may kill."""
    server = RedisServer(tmp_path / "redis", persist=False).start()
    try:
        yield server
    finally:
        server.stop()


async def test_json_logs_carry_request_ids_and_never_raw_unit_ids(
    settings: Settings, doomed_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Warnings logged while serving requests are JSON with a request id and no raw unit id."""
    unit = f"secret-unit-{uuid.uuid4().hex[:8]}"
    config = msgspec.structs.replace(
        settings,
        redis=RedisSettings(url=doomed_redis.url, key_prefix="logs"),
        log_format="json",
        log_level="info",
    )
    app = create_app(config)  # logging is configured now, onto the captured stderr
    async with AsyncTestClient(app=app) as client:
        await client.put(f"/v1/units/{unit}/features", json={"features": {"a": 1}})
        doomed_redis.stop()
        decided = await client.post(
            "/v1/decide",
            json={"unit_id": unit, "placements": ["home"]},
            headers={"X-Request-ID": "req-decide-1"},
        )
        assert decided.status_code == 200
        assert decided.json()["degraded"] is True
        write = await client.put(
            f"/v1/units/{unit}/features",
            json={"features": {"a": 2}},
            headers={"X-Request-ID": "req-write-1"},
        )
        assert write.status_code == 503
        assert write.json()["code"] == "redis_unavailable"
    err = capsys.readouterr().err
    structlog.reset_defaults()  # do not leave structlog writing into this test's capture
    records = []
    for line in err.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    by_event = {r["event"]: r for r in records}
    assert by_event["profile_read_failed"]["request_id"] == "req-decide-1"
    assert by_event["profile_read_failed"]["level"] == "warning"
    assert by_event["redis_unavailable"]["request_id"] == "req-write-1"
    assert not [line for line in err.splitlines() if line.startswith("{") and unit in line]


def test_throttle_logs_the_first_then_once_per_interval_with_a_count() -> None:
    """A throttled event is logged at once, then not again within the interval; the next one
    after it says how many were suppressed. Other event names are throttled separately."""
    clock = [100.0]
    throttle = Throttle(structlog.get_logger("test"), every_s=10.0, clock=lambda: clock[0])
    with structlog.testing.capture_logs() as logs:
        for _ in range(50):
            throttle.warning("redis_down", error="refused")
            clock[0] += 0.1
        throttle.error("other_thing")
        clock[0] += 10.0
        throttle.warning("redis_down", error="refused")
    assert [(e["event"], e["log_level"], e.get("suppressed")) for e in logs] == [
        ("redis_down", "warning", None),
        ("other_thing", "error", None),
        ("redis_down", "warning", 49),
    ]


async def test_redis_down_does_not_log_a_warning_per_request(
    settings: Settings, doomed_redis: RedisServer
) -> None:
    """With Redis gone, 60 requests that each meet the outage log each warning once, not once
    per request (2,926 lines in 30 s before)."""
    config = msgspec.structs.replace(
        settings, redis=RedisSettings(url=doomed_redis.url, key_prefix="quiet")
    )
    app = create_app(config)
    async with AsyncTestClient(app=app) as client:
        assert (await client.put("/v1/units/u/consent", json={"personalization": True})).is_success
        doomed_redis.stop()
        with structlog.testing.capture_logs() as logs:
            for i in range(20):
                await client.post("/v1/decide", json={"unit_id": f"u{i}", "placements": ["p"]})
                await client.put(f"/v1/units/u{i}/consent", json={"personalization": True})
                await client.post("/v1/outcomes", json={"unit_id": f"u{i}", "type": "click"})
    per_request = Counter(
        e["event"] for e in logs if e["event"] in ("profile_read_failed", "redis_unavailable")
    )
    assert per_request == {"profile_read_failed": 1, "redis_unavailable": 1}, per_request


_RECORD = """
import sys
from decision_api.metrics import Metrics
m = Metrics()
m.decisions.labels("fixed", "split").inc(int(sys.argv[1]))
m.queue_depth(int(sys.argv[1]), 0)
m.loop_lag_max.set(float(sys.argv[1]) / 1000)
m.model_version.labels("hero").set(int(sys.argv[1]))
if sys.argv[2] == "stop":
    m.close()
"""


def test_multiprocess_metrics_merge_every_process(tmp_path: Path) -> None:
    """With ``PROMETHEUS_MULTIPROC_DIR`` set, one process renders every process's counters
    summed, and gauges of live processes only: a stopped process's are deleted, a dead one's
    are pruned at the scrape."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for count, ending in ((7, "stop"), (5, "die")):
        subprocess.run([sys.executable, "-c", _RECORD, str(count), ending], env=env, check=True)
    render = "from decision_api.metrics import Metrics; print(Metrics().render().decode())"
    out = subprocess.run(
        [sys.executable, "-c", render], env=env, check=True, capture_output=True, text=True
    ).stdout
    values = samples(out)
    assert values[("tailor_decisions_total", frozenset({("policy", "fixed"),
                                                         ("reason", "split")}))] == 12  # fmt: skip
    # Both recorders have exited: the one that stopped deleted its gauges, the other is pruned.
    assert values[("tailor_event_queue_depth", frozenset())] == 0
    assert ("tailor_model_version_loaded", frozenset({("experiment", "hero")})) not in values
