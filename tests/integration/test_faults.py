"""Fault injection under load, with real processes: no event lost, none stored twice.

One ``tailor serve`` (granian, embedded chdb event log, a private Redis the test owns so it can
kill and restart it on the same port) takes decisions and outcomes from a small asyncio load
while, in turn, a worker gets ``kill -9``, Redis gets ``kill -9`` and comes back, and the server
gets SIGTERM. The server is then started again on the same data directory (it replays its spool)
and stopped, and the stored rows are counted from a separate interpreter (chdb is one process at
a time). Promises checked:

- no exposure or outcome is stored twice;
- every event answered 2xx is stored, except those a worker killed with ``kill -9`` held in
  memory: only events answered within one flush interval (plus scheduling slack) before the
  kill may be missing;
- SIGTERM loses nothing.

A second test kills ClickHouse (over HTTP) and then makes the spool unwritable under load and a
stream of poison batches: nothing answered 2xx may be lost or doubled, and no poison row stored.

Each phase of load between two faults runs until 60 more exposures were
accepted (at least 0.5 s, at most the full phase); with ``TAILOR_LONG_TESTS=1`` every phase lasts
its full length (2 s, thousands of events). The figures are printed (``FIGURES {...}``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import msgspec
import pytest

from decision_api.redis_server import RedisServer, free_port
from tests.integration.test_failures import (
    ADMIN,
    DECIDER,
    HERO,
    KEYS,
    Load,
    eventually_stored,
    front_at,
    metric,
    start_server,
    stored_exactly_once,
    under_load,
)
from tests.integration.test_serve_cli import children_of
from tests.support.processes import TailorServer, server_env
from tests.support.sizes import sized

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
FLUSH_INTERVAL_S = 0.2
SLACK_S = 1.0  # a batch being inserted when the worker died, scheduling on a loaded machine

COUNT_EVENTS = """
import json, sys
from event_log.store import open_event_log
log = open_event_log(sys.argv[1])
exposures = [r[0] for r in log.query("SELECT decision_id FROM exposures")]
outcomes = [str(r[0]) for r in log.query("SELECT event_id FROM outcomes")]
print(json.dumps({"exposures": exposures, "outcomes": outcomes}))
log.close()
"""


class TimedLoad(Load):
    """:class:`Load` that also remembers when each accepted event was answered."""

    def __init__(self, url: str, concurrency: int = 8) -> None:
        super().__init__(url, concurrency)
        self.answered_at: dict[str, float] = {}

    async def _decide(self, client: httpx.AsyncClient, unit: str) -> str | None:
        did = await super()._decide(client, unit)
        if did is not None:
            self.answered_at[did] = time.monotonic()
        return did

    async def _outcome(self, client: httpx.AsyncClient, did: str, unit: str) -> None:
        body = {"decision_id": did, "unit_id": unit, "type": "purchase", "value": 1.0}
        self.sent += 1
        response = await client.post("/v1/outcomes", json=body, headers=DECIDER)
        self.statuses[f"outcome {response.status_code}"] += 1
        if response.status_code == 202:
            now = time.monotonic()
            for event_id in response.json()["event_ids"]:
                self.outcomes.append(event_id)
                self.answered_at[uuid.UUID(event_id).hex] = now


def start(tmp: Path, redis_url: str, prefix: str, name: str, workers: int = 1) -> TailorServer:
    """``tailor serve`` on ``tmp/data`` with keys and a short flush interval, ready."""
    env = server_env(
        redis_url, prefix, tmp / "data",
        TAILOR_AUTH_API_KEYS=KEYS,
        TAILOR_EVENT_LOG_FLUSH_INTERVAL_S=str(FLUSH_INTERVAL_S),
    )  # fmt: skip
    server = TailorServer(env, tmp / f"{name}.log", workers=workers)
    server.wait_ready(timeout_s=60)
    return server


def worker_of(server: TailorServer) -> int:
    """The pid of one of the server's granian workers (its python children but the owner)."""
    workers = [pid for pid, cmd in children_of(server.pid) if "serve" in cmd]
    assert workers, children_of(server.pid)
    return workers[0]


async def until_ready(server: TailorServer, timeout_s: float, after: str) -> float:
    """Seconds until ``/readyz`` answers 200 again."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=server.url, timeout=2) as client:
        while time.monotonic() - started < timeout_s:
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"not ready {timeout_s} s after {after}:\n{server.output()[-3000:]}")


def stored(data: Path) -> tuple[list[str], list[str]]:
    """Decision ids of the stored exposures and event ids (hex) of the stored outcomes."""
    counted = subprocess.run(
        [sys.executable, "-c", COUNT_EVENTS, f"chdb://{data / 'chdb'}"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=True,
    )  # fmt: skip
    rows = json.loads(counted.stdout)
    return rows["exposures"], [uuid.UUID(e).hex for e in rows["outcomes"]]


@pytest.mark.parametrize(("workers", "ending"), [(1, "sigterm"), (2, "sigterm"), (1, "kill -9")])
async def test_no_event_lost_or_doubled_through_kills_and_sigterm(
    tmp_path: Path, workers: int, ending: str
) -> None:
    """kill -9 of a worker, kill -9 and restart of Redis, then SIGTERM (or kill -9) of the
    server, all under load: nothing stored twice, nothing lost but what a killed process held
    for at most one flush interval. With two workers the events reach chdb through the Redis
    relay."""
    redis = RedisServer(tmp_path / "redis", port=free_port(), persist=True).start()
    prefix = "x" + uuid.uuid4().hex[:10]
    server = start(tmp_path, redis.url, prefix, "serve", workers)
    try:
        for path in ("/v1/experiments", "/v1/experiments/hero/start"):
            body = HERO if path == "/v1/experiments" else None
            answer = httpx.post(server.url + path, json=body, headers=ADMIN, timeout=10)
            assert answer.status_code in (200, 201), answer.text

        load = TimedLoad(server.url).start()
        await under_load(load, 2.0)
        worker = worker_of(server)
        killed_worker_at = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        respawn_s = await until_ready(server, 30, "kill -9 of the worker")
        await under_load(load, 2.0)

        redis_port = redis.port
        assert redis.pid is not None
        os.kill(redis.pid, signal.SIGKILL)
        redis.stop()  # reaps it
        await under_load(load, 1.5)
        redis = RedisServer(tmp_path / "redis", port=redis_port, persist=True).start()
        redis_back_s = await until_ready(server, 30, "the Redis restart")
        await under_load(load, 2.0)

        killed_server_at = time.monotonic()
        if ending == "sigterm":
            server.proc.send_signal(signal.SIGTERM)
        else:
            server.proc.kill()  # the workers and the learner die with it (parent-death signal)
        code = await asyncio.to_thread(server.proc.wait, 60)
        await load.finish()
        if ending != "sigterm":
            await asyncio.sleep(2.0)  # its children get SIGTERM and flush what they can
    finally:
        server.stop()
    assert code == (0 if ending == "sigterm" else -signal.SIGKILL), server.output()[-3000:]

    again = start(tmp_path, redis.url, prefix, "restart", workers)  # replays what was spooled
    assert again.stop() == 0
    redis.stop()

    exposures, outcomes = stored(tmp_path / "data")
    accepted = {did: load.answered_at[did] for did in load.exposed}
    accepted |= {uuid.UUID(e).hex: load.answered_at[uuid.UUID(e).hex] for e in load.outcomes}
    kept = set(exposures) | set(outcomes)
    missing = {event: at for event, at in accepted.items() if event not in kept}
    windows = [(killed_worker_at - FLUSH_INTERVAL_S - SLACK_S, killed_worker_at + SLACK_S)]
    if ending != "sigterm":
        windows.append((killed_server_at - FLUSH_INTERVAL_S - SLACK_S, killed_server_at + SLACK_S))
    outside = {e: round(at - killed_worker_at, 3) for e, at in missing.items()
               if not any(low <= at <= high for low, high in windows)}  # fmt: skip
    figures = {
        "workers": workers,
        "ending": ending,
        "requests_sent": load.sent,
        "exposures_accepted": len(load.exposed),
        "exposures_stored": len(exposures),
        "exposure_duplicates": len(exposures) - len(set(exposures)),
        "outcomes_accepted": len(load.outcomes),
        "outcomes_stored": len(outcomes),
        "outcome_duplicates": len(outcomes) - len(set(outcomes)),
        "lost_at_worker_kill": len(missing) - len(outside),
        "lost_elsewhere": len(outside),
        "lost_answered_s_before_kill": [
            round(killed_worker_at - max(missing.values(), default=killed_worker_at), 3),
            round(killed_worker_at - min(missing.values(), default=killed_worker_at), 3),
        ],
        "worker_respawn_s": round(respawn_s, 2),
        "ready_after_redis_restart_s": round(redis_back_s, 2),
        "statuses": dict(load.statuses),
    }
    print("\nFIGURES " + msgspec.json.encode(figures).decode())
    assert figures["exposure_duplicates"] == 0 and figures["outcome_duplicates"] == 0, figures
    assert not outside, (outside, figures)
    assert len(load.exposed) > 100, figures


async def _poison(url: str, stop: asyncio.Event, statuses: dict[int, int]) -> None:
    """Batches a public key could send to hurt other clients: outcomes dated decades ago or far
    ahead beside a valid one (partition bombs). Each must be refused whole, with a 4xx."""
    bad_ts = ["1990-01-01T00:00:00Z", "2999-01-01T00:00:00Z", "0001-01-01T00:00:00Z"]
    async with httpx.AsyncClient(base_url=url, timeout=10, headers=DECIDER) as client:
        i = 0
        while not stop.is_set():
            batch = {"outcomes": [
                {"unit_id": f"poison-{i}", "experiment": "hero", "type": "click"},
                {"unit_id": f"poison-{i}", "experiment": "hero", "type": "click",
                 "ts": bad_ts[i % len(bad_ts)]},
            ]}  # fmt: skip
            answer = await client.post("/v1/outcomes/batch", json=batch)
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            i += 1
            await asyncio.sleep(0.05)


async def test_no_event_lost_when_clickhouse_and_the_spool_fail_under_poison(
    redis_url: str, tmp_path: Path
) -> None:
    """Under load and a stream of poison batches, ClickHouse (over HTTP) is killed, then the
    spool becomes unwritable (its directory replaced by a file): events are held in memory and
    ``/readyz`` says so; when both come back, every event answered 2xx is stored exactly once,
    and every poison batch was refused with a 4xx and stored nothing."""
    spool = tmp_path / "spool"
    with front_at(tmp_path / "chdb") as front:
        server = start_server(tmp_path, redis_url, front.url, TAILOR_EVENT_LOG_SPOOL_DIR=str(spool))
        poison_statuses: dict[int, int] = {}
        stop_poison = asyncio.Event()
        try:
            load = Load(server.url).start()
            poison = asyncio.create_task(_poison(server.url, stop_poison, poison_statuses))
            await asyncio.sleep(sized(0.5, 1.0))
            await asyncio.to_thread(front.kill)  # ClickHouse down: batches go to the spool
            await asyncio.sleep(1.5)
            spool.rename(tmp_path / "spool-away")  # the spool becomes unwritable
            spool.write_text("not a directory")
            await asyncio.sleep(1.5)
            async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
                readyz = await http.get("/readyz")
            spool.unlink()
            (tmp_path / "spool-away").rename(spool)
            await asyncio.to_thread(front.start)
            await asyncio.sleep(sized(0.5, 1.0))
            await load.finish()
            stop_poison.set()
            await poison
            await eventually_stored(front, load, timeout=40)
            dropped = metric(server, "tailor_events_dropped_total")
        finally:
            stop_poison.set()
            assert server.stop() == 0
        figures = stored_exactly_once(front, load, "ClickHouse and spool down, poison batches")
        _, _, poisoned = front.rows("outcomes", "unit_id")
    assert readyz.status_code == 503, readyz.text  # events held in memory only
    assert figures["exposures_stored"] == figures["exposures_accepted"] > 50, figures
    assert figures["outcomes_stored"] == figures["outcomes_accepted"], figures
    assert dropped == 0
    assert poison_statuses and all(400 <= s < 500 for s in poison_statuses), poison_statuses
    assert not any(u.startswith("poison-") for u in poisoned)
