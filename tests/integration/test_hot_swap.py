"""Model hot swap and pause propagation: in one worker, and across real worker processes.

The multi-process test runs two ``tailor serve`` processes (each with its own chdb directory,
sharing one Redis and key prefix, no in-server learner) and one ``tailor learn`` process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from structlog.testing import capture_logs

from bandits.base import Example
from bandits.registry import build_policy
from bandits.snapshots import Snapshot, SnapshotStore
from decision_api.learning.runtime import spec_of
from decision_api.settings import LearnerSettings, Settings
from experiments.store import ExperimentStore
from tests.support.polling import eventually, sample
from tests.support.processes import TailorProcess, TailorServer, server_env

HERO = {
    "key": "hero",
    "placement": "home",
    "default_variant": "a",
    "variants": [{"key": k, "payload": {"colour": k}} for k in ("a", "b", "c")],
    # No exploration floor: the tests read which model serves from a model sure of one variant.
    "policy": {"kind": "thompson", "min_propensity": 0},
    "reward_window_s": 1,
    "reward": {"rules": [{"type": "click"}]},
}


LOADED = 'tailor_model_version_loaded{experiment="hero"}'
FAILED = 'tailor_model_load_failures_total{experiment="hero"}'


@pytest.fixture
async def snapshots(redis_url: str, namespace: str) -> AsyncIterator[SnapshotStore]:
    """The model snapshots of this test's namespace, on the test's own Redis client."""
    binary = Redis.from_url(redis_url, decode_responses=False)
    try:
        yield SnapshotStore(binary, namespace)
    finally:
        await binary.aclose()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No in-server learner (the test publishes models itself); model polls every 0.1 s."""
    return msgspec.structs.replace(
        settings, learner=LearnerSettings(in_process=False, model_poll_interval_s=0.1)
    )


async def _publish(snapshots: SnapshotStore, version: int, data: bytes) -> None:
    async with snapshots._redis.pipeline(transaction=True) as pipe:
        snapshots.stage_publish(
            pipe,
            Snapshot(
                experiment="hero",
                version=version,
                gen=0,
                kind="thompson",
                data=data,
                examples=100,
                updated_ms=0,
            ),
        )
        await pipe.execute()


async def test_corrupt_snapshot_keeps_the_previous_model_serving(
    client: AsyncTestClient[Litestar],
    snapshots: SnapshotStore,
    redis: Redis,
    namespace: str,
) -> None:
    """Corrupt bytes published under a higher version: decisions keep the previous model and
    version, ``tailor_model_load_failures_total`` goes up once and ``model_load_failed`` is
    logged; the next good version is served again."""
    assert (await client.post("/v1/experiments", json=HERO)).status_code == 201
    assert (await client.post("/v1/experiments/hero/start")).status_code == 200
    spec = spec_of(await ExperimentStore(redis, namespace).get("hero"))
    policy = build_policy(spec.config, spec.arms)
    policy.learn(
        [
            Example(
                context={},
                candidates=spec.candidates,
                chosen=arm,
                propensity=1 / 3,
                reward=float(arm == 2),
            )
            for arm in (0, 1, 2)
            for _ in range(40)
        ]
    )
    await _publish(snapshots, 1, policy.snapshot())

    async def metrics() -> str:
        return (await client.get("/metrics")).text

    async def loaded(version: int) -> bool:
        return sample(await metrics(), LOADED) == version

    await eventually(lambda: loaded(1), what="good model v1 loaded")
    with capture_logs() as logs:
        await _publish(snapshots, 2, b"\x92\xa7garbage")

        async def failed() -> bool:
            return sample(await metrics(), FAILED) == 1.0

        await eventually(failed, what="load failure counted")
        await asyncio.sleep(0.3)  # several more polls: the bad version is not retried
    text = await metrics()
    assert (sample(text, FAILED), sample(text, LOADED)) == (1.0, 1.0)
    failures = [e for e in logs if e["event"] == "model_load_failed"]
    assert len(failures) == 1 and failures[0]["version"] == 2
    for i in range(20):
        got = await client.post("/v1/decide", json={"unit_id": f"u{i}", "placements": ["home"]})
        decision = got.json()["decisions"][0]
        assert (decision["model_version"], decision["reason"]) == ("1", "policy")
        assert decision["variant"] == "c"  # the v1 model is sure of "c"
    await _publish(snapshots, 3, build_policy(spec.config, spec.arms).snapshot())
    await eventually(lambda: loaded(3), what="good model v3 loaded")


# -- two API worker processes and a learner process ------------------------------------------


async def _decide(http: httpx.AsyncClient, url: str, unit: str) -> dict[str, Any]:
    got = await http.post(url + "/v1/decide", json={"unit_id": unit, "placements": ["home"]})
    assert got.status_code == 200, got.text
    decision: dict[str, Any] = got.json()["decisions"][0]
    decision["decision_id"] = got.json()["decision_id"]
    return decision


async def _loaded_version(http: httpx.AsyncClient, url: str) -> float:
    return sample((await http.get(url + "/metrics")).text, LOADED)


@pytest.mark.slow
async def test_two_worker_processes_swap_models_and_pause_within_a_second(
    redis_url: str, namespace: str, redis: Redis, tmp_path: Path
) -> None:
    """Two ``tailor serve`` processes and one ``tailor learn``: decisions and clicks from both
    workers are learned exactly once; a new snapshot is served by both within a few seconds;
    a pause sent to one worker makes every worker serve the default variant in under 1 s."""
    learner_env = {
        "TAILOR_REDIS_URL": redis_url,
        "TAILOR_REDIS_KEY_PREFIX": namespace,
        "TAILOR_LEARNER_SNAPSHOT_INTERVAL_S": "0.5",
        "TAILOR_LEARNER_REWARD_SWEEP_INTERVAL_S": "0.2",
    }
    servers = [
        TailorServer(
            server_env(redis_url, namespace, tmp_path / name, TAILOR_LEARNER_IN_PROCESS="false"),
            tmp_path / f"{name}.log",
        )
        for name in ("worker-a", "worker-b")
    ]
    learner = TailorProcess(["learn"], learner_env, tmp_path / "learner.log")
    snapshots = SnapshotStore(Redis.from_url(redis_url, decode_responses=False), namespace)
    try:
        await asyncio.gather(*(asyncio.to_thread(s.wait_ready) for s in servers))
        a, b = (s.url for s in servers)
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.post(a + "/v1/experiments", json=HERO)).status_code == 201
            assert (await http.post(a + "/v1/experiments/hero/start")).status_code == 200

            async def live_everywhere() -> bool:
                # consent=false probes are not learned; they show the worker knows the experiment.
                for url in (a, b):
                    got = await http.post(
                        url + "/v1/decide",
                        json={"unit_id": "probe", "placements": ["home"], "consent": False},
                    )
                    if got.json()["decisions"][0]["reason"] != "no_consent":
                        return False
                return True

            await eventually(live_everywhere, what="both workers serving the experiment")

            # Traffic on both workers at once; clicks go to the worker that decided.
            async def traffic(url: str, units: range, rng: np.random.Generator) -> int:
                learning = 0
                for i in units:
                    decision = await _decide(http, url, f"u{i}")
                    assert decision["reason"] == "policy", decision
                    learning += 1
                    if decision["variant"] == "c" or rng.random() < 0.1:
                        outcome = {"decision_id": decision["decision_id"], "type": "click"}
                        accepted = await http.post(url + "/v1/outcomes", json=outcome)
                        assert accepted.json()["joined"] == 1, accepted.text
                return learning

            counts = await asyncio.gather(
                traffic(a, range(0, 60), np.random.default_rng(1)),
                traffic(b, range(60, 120), np.random.default_rng(2)),
            )
            n = sum(counts)

            async def all_learned() -> bool:
                snap = await snapshots.get("hero")
                if snap is not None and snap.examples > n:
                    pytest.fail(f"learned {snap.examples} > {n} examples")
                return snap is not None and snap.examples == n

            # Unclicked decisions join when their 1 s window closes (the learner's sweeper).
            await eventually(all_learned, timeout_s=15, what=f"{n} examples from both workers")

            # One more click makes the learner publish a new version; time how long until
            # both workers serve it (they poll every model_poll_interval_s = 1 s).
            before = await snapshots.get("hero")
            assert before is not None
            decision = await _decide(http, a, "trigger")
            await http.post(
                a + "/v1/outcomes", json={"decision_id": decision["decision_id"], "type": "click"}
            )

            async def published() -> bool:
                snap = await snapshots.get("hero")
                return snap is not None and snap.version > before.version

            await eventually(published, what="a new snapshot")
            published_at = time.monotonic()
            snap = await snapshots.get("hero")
            assert snap is not None
            delays = {}
            while len(delays) < 2 and time.monotonic() - published_at < 5:
                for url in (a, b):
                    if url not in delays and await _loaded_version(http, url) >= snap.version:
                        delays[url] = time.monotonic() - published_at
                await asyncio.sleep(0.02)
            assert len(delays) == 2 and max(delays.values()) < 3.0, delays
            served = {url: (await _decide(http, url, "check"))["model_version"] for url in (a, b)}
            assert (
                served[a]
                == served[b]
                == str(
                    (await snapshots.get("hero")).version  # type: ignore[union-attr]
                )
            )

            # Pause through worker A; hammer both workers until each serves the default.
            sent = time.monotonic()
            paused = await http.post(a + "/v1/experiments/hero/pause")
            assert paused.status_code == 200
            first_default: dict[str, float] = {}
            after: dict[str, list[tuple[str, str, str]]] = {a: [], b: []}
            k = 0
            while time.monotonic() - sent < 1.2:
                for url in (a, b):
                    k += 1
                    d = await _decide(http, url, f"p{k}")
                    if d["reason"] == "experiment_paused":
                        first_default.setdefault(url, time.monotonic() - sent)
                    if url in first_default:
                        after[url].append((d["reason"], d["variant"], d["policy"]))
            assert set(first_default) == {a, b}
            assert max(first_default.values()) < 1.0, first_default
            for url in (a, b):
                assert set(after[url]) == {("experiment_paused", "a", "default")}
    finally:
        for proc in [*servers, learner]:
            proc.stop()
        await snapshots._redis.aclose()
    assert "learner_started" in learner.output()
    print(
        f"model swap delays (s): {sorted(delays.values())}; "
        f"pause delays (s): {sorted(first_default.values())}"
    )
