"""Serving policies on a real Redis: hot swap on new snapshots, failed loads keep the old model."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import numpy as np
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from bandits.registry import build_policy
from bandits.serving import ServingPolicies
from bandits.snapshots import Snapshot, SnapshotStore
from bandits.spec import PolicySpec
from tailor_contract.policies import ThompsonConfig, VWCBConfig
from tests.support.training import bernoulli_examples, epsilon_vw, spec_of

EXP = "hero"


@pytest.fixture
async def store(redis_url: str, namespace: str) -> AsyncIterator[SnapshotStore]:
    """A snapshot store under this test's prefix."""
    client = Redis.from_url(redis_url, decode_responses=False)
    try:
        yield SnapshotStore(client, namespace)
    finally:
        await client.aclose()


def _trained(spec: PolicySpec, n: int = 600, seed: int = 1) -> bytes:
    policy = build_policy(spec.config, spec.arms)
    examples = bernoulli_examples(spec.experiment, n, np.random.default_rng(seed))
    policy.learn([e for r, w in examples if (e := spec.example(r, w)) is not None])
    return policy.snapshot()


async def _publish(store: SnapshotStore, spec: PolicySpec, version: int, data: bytes) -> None:
    async with store._redis.pipeline(transaction=True) as pipe:
        store.stage_publish(
            pipe,
            Snapshot(
                experiment=spec.experiment,
                version=version,
                gen=0,
                kind="x",
                data=data,
                examples=1,
                updated_ms=0,
            ),
        )
        await pipe.execute()


def _pmf(serving: ServingPolicies, spec: PolicySpec) -> list[float]:
    policy = serving.policy(spec.experiment)
    assert policy is not None
    return [float(p) for p in policy.pmf({}, spec.candidates)]


async def test_new_snapshot_is_swapped_in_and_stamps_decisions(store: SnapshotStore) -> None:
    """A published version is loaded on the next poll; decisions carry its version."""
    spec = spec_of(EXP)
    loaded: list[tuple[str, int]] = []
    serving = ServingPolicies(store, on_loaded=lambda n, v: loaded.append((n, v)))
    serving.set_specs({EXP: spec})
    assert serving.version_of(EXP) == 0
    fresh = _pmf(serving, spec)
    assert fresh == pytest.approx([1 / 3] * 3, abs=0.02)
    data = _trained(spec)
    await _publish(store, spec, 1, data)
    assert await serving.poll() == 1
    assert serving.version_of(EXP) == 1
    assert loaded[-1] == (EXP, 1)
    expected = build_policy(spec.config, spec.arms, snapshot=data).pmf({}, spec.candidates)
    assert _pmf(serving, spec) == pytest.approx(expected.tolist())
    choice = serving.choose(EXP, {}, np.random.default_rng(0))
    assert choice is not None and choice.model_version == "1"
    assert await serving.poll() == 0  # nothing moved: nothing reloaded


async def test_snapshot_that_fails_to_load_keeps_the_previous_model(
    store: SnapshotStore,
) -> None:
    """Corrupt bytes under a higher version: the old model keeps serving, the failure is
    reported once (callback and ``model_load_failed`` log), and the next good version loads."""
    spec = spec_of(EXP)
    failures: list[str] = []
    serving = ServingPolicies(store, on_load_failure=lambda n, _: failures.append(n))
    serving.set_specs({EXP: spec})
    good = _trained(spec)
    await _publish(store, spec, 1, good)
    await serving.poll()
    before = _pmf(serving, spec)
    await _publish(store, spec, 2, b"\x00not a snapshot\xff")
    with capture_logs() as logs:
        assert await serving.poll() == 0
        assert await serving.poll() == 0  # the same bad version is not retried
    assert failures == [EXP]
    [entry] = [e for e in logs if e["event"] == "model_load_failed"]
    assert (entry["experiment"], entry["version"], entry["log_level"]) == (EXP, 2, "error")
    assert serving.version_of(EXP) == 1
    assert _pmf(serving, spec) == before
    await _publish(store, spec, 3, _trained(spec, n=50, seed=2))
    assert await serving.poll() == 1
    assert serving.version_of(EXP) == 3


async def test_incompatible_snapshot_is_a_load_failure(store: SnapshotStore) -> None:
    """A VW snapshot trained with other arguments than the config's is rejected, not served."""
    trained_with = spec_of(EXP, VWCBConfig(interactions=("UA",)))
    serving_with = spec_of(EXP, VWCBConfig(interactions=()))
    failures: list[str] = []
    serving = ServingPolicies(store, on_load_failure=lambda _, m: failures.append(m))
    serving.set_specs({EXP: serving_with})
    await _publish(store, trained_with, 4, _trained(trained_with))
    assert await serving.poll() == 0
    assert serving.version_of(EXP) == 0
    assert len(failures) == 1 and "VW arguments" in failures[0]


async def test_changed_definition_rebuilds_with_the_published_model(
    store: SnapshotStore,
) -> None:
    """A new experiment version keeps serving the old policy until the poll rebuilds it with
    the new config on the same snapshot."""
    v1 = spec_of(EXP, epsilon_vw(0.3))
    greedy = msgspec.structs.replace(epsilon_vw(0.0), min_propensity=0.0)  # no floor
    v2 = msgspec.structs.replace(v1, experiment_version=2, config=greedy)
    await _publish(store, v1, 1, _trained(v1, n=800))
    serving = ServingPolicies(store)
    serving.set_specs({EXP: v1})
    await serving.poll()
    assert max(_pmf(serving, v1)) == pytest.approx(0.7 + 0.1)
    serving.set_specs({EXP: v2})
    assert max(_pmf(serving, v1)) == pytest.approx(0.8)  # old policy until the poll
    assert await serving.poll() == 1
    assert _pmf(serving, v2) == [0.0, 0.0, 1.0]
    assert serving.version_of(EXP) == 1


async def test_removed_experiment_stops_being_served(store: SnapshotStore) -> None:
    """An experiment dropped from the specs has no model: the engine falls back to the split."""
    serving = ServingPolicies(store)
    serving.set_specs({EXP: spec_of(EXP), "other": spec_of("other", ThompsonConfig())})
    serving.set_specs({"other": spec_of("other", ThompsonConfig())})
    assert serving.choose(EXP, {}, np.random.default_rng(0)) is None
    assert serving.version_of(EXP) == -1
    assert serving.choose("other", {}, np.random.default_rng(0)) is not None


async def test_structural_definition_change_restarts_the_model(store: SnapshotStore) -> None:
    """When a live experiment's policy changes kind, the old snapshot cannot fit the new
    definition: workers serve a fresh model of the new kind instead of the old one, and it is
    not counted as a failed load."""
    old = spec_of(EXP)
    failures: list[str] = []
    serving = ServingPolicies(store, on_load_failure=lambda n, e: failures.append(n))
    serving.set_specs({EXP: old})
    await _publish(store, old, 1, _trained(old))
    assert await serving.poll() == 1
    new = msgspec.structs.replace(
        old, experiment_version=old.experiment_version + 1, config=VWCBConfig()
    )
    serving.set_specs({EXP: new})
    with capture_logs() as logs:
        assert await serving.poll() == 1
    policy = serving.policy(EXP)
    assert policy is not None and policy.name == "vw_cb"
    assert failures == []
    assert any(entry["event"] == "model_restarted" for entry in logs)


async def test_vw_swaps_cost_the_loop_a_memory_copy_not_a_model_load(
    store: SnapshotStore,
) -> None:
    """Newer weights-only VW snapshots are taken into the serving model in place: the same
    object keeps serving, decides exactly as the snapshot restored whole, and no VW workspace is
    built for a swap. Building one costs 3-6 ms for this model and 10-20 ms for bigger ones,
    holding the GIL, so it blocks the event loop even from another thread (the copy measured
    about 0.5 ms; loadtests/bench_serving.py measures the loop's lag)."""
    import bandits.vw as vw_module

    spec = spec_of(EXP, epsilon_vw(0.1))
    serving = ServingPolicies(store)
    serving.set_specs({EXP: spec})
    learner = build_policy(spec.config, spec.arms)
    rng = np.random.default_rng(4)
    built = []
    real_workspace = vw_module.Workspace

    def counting_workspace(*args: object, **kwargs: object) -> object:
        built.append(args)
        return real_workspace(*args, **kwargs)

    vw_module.Workspace = counting_workspace  # type: ignore[assignment,misc]
    try:
        build_policy(spec.config, spec.arms)
    finally:
        vw_module.Workspace = real_workspace  # type: ignore[misc]
    assert len(built) == 1, "the count sees a workspace being built"
    first = None
    for version in range(1, 10):
        examples = bernoulli_examples(EXP, 300, rng)
        learner.learn([e for r, w in examples if (e := spec.example(r, w)) is not None])
        data = learner.snapshot()
        await _publish(store, spec, version, data)
        built.clear()
        vw_module.Workspace = counting_workspace  # type: ignore[assignment,misc]
        try:
            assert await serving.poll() == 1
        finally:
            vw_module.Workspace = real_workspace  # type: ignore[misc]
        if version == 1:
            first = serving.policy(EXP)  # the first load may build the model
        else:
            assert built == [], "a swap built a VW workspace"
        assert serving.policy(EXP) is first
        restored = build_policy(spec.config, spec.arms, snapshot=data, version=str(version))
        for context in ({}, {"segment": "a"}, {"visits": 3}):
            policy = serving.policy(EXP)
            assert policy is not None and policy.version == str(version)
            assert np.array_equal(policy.pmf(context, spec.candidates),
                                  restored.pmf(context, spec.candidates))  # fmt: skip
