"""The learner on a real Redis: learn the stream, publish with acks, resume, reset, cadence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import msgspec
import numpy as np
import pytest
from redis.asyncio import Redis

from bandits import learner as learner_module
from bandits.base import Arm
from bandits.join import JOIN_GROUP, RewardJoin
from bandits.learner import Learner
from bandits.registry import build_policy
from bandits.snapshots import SnapshotStore
from bandits.spec import PolicySpec
from bandits.thompson import ThompsonPolicy
from decision_api.learning.runtime import LearnerRunner
from decision_api.redis_client import connect
from decision_api.settings import RedisSettings
from experiments.store import ExperimentStore
from tailor_contract.definitions import ExperimentSpec
from tailor_contract.policies import ThompsonConfig, VWCBConfig
from tests.support.training import (
    ARMS,
    arm_totals,
    bernoulli_examples,
    epsilon_vw,
    feed,
    record,
    spec_of,
)

pytestmark = pytest.mark.redis_cluster

EXP = "hero"


@pytest.fixture
async def redis_bin(redis_settings: RedisSettings) -> AsyncIterator[Redis]:
    """A binary-safe client, as the learner and snapshot store use (on a cluster too)."""
    client = connect(redis_settings, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


def _source(*specs: PolicySpec) -> learner_module.SpecSource:
    table = {s.experiment: s for s in specs}

    async def specs_() -> Mapping[str, PolicySpec]:
        return dict(table)

    return specs_


def _learner(redis_bin: Redis, namespace: str, *specs: PolicySpec, **kw: object) -> Learner:
    return Learner(redis_bin, namespace, _source(*(specs or (spec_of(EXP),))), **kw)  # type: ignore[arg-type]


async def _drain(learner: Learner) -> int:
    """Step until the stream has nothing more for this learner; returns entries consumed."""
    total = 0
    while consumed := await learner.step(block_ms=10):
        total += consumed
    return total


async def _thompson(store: SnapshotStore, spec: PolicySpec) -> ThompsonPolicy:
    snap = await store.get(spec.experiment)
    assert snap is not None
    policy = build_policy(spec.config, spec.arms, snapshot=snap.data)
    assert isinstance(policy, ThompsonPolicy)
    return policy


def _counts(policy: ThompsonPolicy) -> dict[str, tuple[float, float]]:
    out = {}
    for key in ARMS:
        alpha, beta = policy.posterior(key)
        out[key] = (alpha - 1.0, beta - 1.0)  # minus the Beta(1, 1) prior
    return out


async def _pending(redis_bin: Redis, namespace: str) -> int:
    info = await redis_bin.xpending(f"{{{namespace}}}:train", JOIN_GROUP)
    return int(info["pending"])


async def test_learns_the_stream_and_publishes_with_acks(redis_bin: Redis, namespace: str) -> None:
    """Examples become posterior counts in a published snapshot; publishing acks them all."""
    examples = bernoulli_examples(EXP, 1500, np.random.default_rng(1))
    await feed(redis_bin, namespace, examples)
    learner = _learner(redis_bin, namespace, batch_size=400)
    await learner.start()
    assert await _drain(learner) == 1500
    assert await _pending(redis_bin, namespace) == 1500  # learned, not yet published
    assert await learner.publish() == 1
    assert await _pending(redis_bin, namespace) == 0
    store = SnapshotStore(redis_bin, namespace)
    snap = await store.get(EXP)
    assert snap is not None
    assert (snap.version, snap.gen, snap.kind, snap.examples) == (1, 0, "thompson", 1500)
    counts = _counts(await _thompson(store, spec_of(EXP)))
    expected = arm_totals(examples)
    assert counts == {k: pytest.approx(v) for k, v in expected.items()}
    # Nothing new: a publish changes nothing and the version stays.
    assert await learner.publish() == 0
    assert (await store.versions([EXP]))[EXP] == (1, 0)


@pytest.mark.parametrize("published_before_crash", [0, 1, 2])
async def test_crash_before_publish_redelivers_without_doubling(
    redis_bin: Redis, namespace: str, published_before_crash: int
) -> None:
    """A learner that dies with learned-but-unpublished batches loses and doubles nothing:
    its successor (same consumer) relearns exactly the unacknowledged entries."""
    examples = bernoulli_examples(EXP, 1000, np.random.default_rng(2))
    await feed(redis_bin, namespace, examples)
    first = _learner(redis_bin, namespace, batch_size=100)
    await first.start()
    for _ in range(published_before_crash):
        await first.step(block_ms=10)
        await first.publish()
    for _ in range(4):  # four more batches learned in memory, then the process dies
        await first.step(block_ms=10)
    assert await _pending(redis_bin, namespace) == 400
    del first

    second = _learner(redis_bin, namespace, batch_size=100)
    await second.start()
    assert await _drain(second) == 1000 - 100 * published_before_crash
    await second.publish()
    store = SnapshotStore(redis_bin, namespace)
    snap = await store.get(EXP)
    assert snap is not None and snap.examples == 1000
    assert _counts(await _thompson(store, spec_of(EXP))) == {
        k: pytest.approx(v) for k, v in arm_totals(examples).items()
    }
    assert await _pending(redis_bin, namespace) == 0


async def test_a_dead_consumers_pending_entries_are_claimed(
    redis_bin: Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries a differently named, dead learner left pending are claimed and learned once."""
    monkeypatch.setattr(learner_module, "CLAIM_IDLE_MS", 0)
    examples = bernoulli_examples(EXP, 600, np.random.default_rng(3))
    await feed(redis_bin, namespace, examples)
    dead = _learner(redis_bin, namespace, batch_size=100, consumer="learner-a")
    await dead.start()
    for _ in range(3):
        await dead.step(block_ms=10)
    heir = _learner(redis_bin, namespace, batch_size=100, consumer="learner-b")
    await heir.start()
    assert await _drain(heir) == 600
    await heir.publish()
    snap = await SnapshotStore(redis_bin, namespace).get(EXP)
    assert snap is not None and snap.examples == 600
    assert await _pending(redis_bin, namespace) == 0


async def test_restart_resumes_from_the_last_snapshot(redis_bin: Redis, namespace: str) -> None:
    """A new learner continues the published model: counts and versions keep going up."""
    rng = np.random.default_rng(4)
    part1 = bernoulli_examples(EXP, 300, rng)
    part2 = bernoulli_examples(EXP, 200, rng, start=300)
    await feed(redis_bin, namespace, part1)
    one = _learner(redis_bin, namespace)
    await one.start()
    await _drain(one)
    await one.publish()
    await feed(redis_bin, namespace, part2)
    two = _learner(redis_bin, namespace)
    await two.start()
    assert await _drain(two) == 200
    await two.publish()
    store = SnapshotStore(redis_bin, namespace)
    snap = await store.get(EXP)
    assert snap is not None and (snap.version, snap.examples) == (2, 500)
    assert _counts(await _thompson(store, spec_of(EXP))) == {
        k: pytest.approx(v) for k, v in arm_totals(part1 + part2).items()
    }


@pytest.mark.parametrize("publish_between", [True, False])
async def test_reset_starts_a_fresh_generation(
    redis_bin: Redis, namespace: str, publish_between: bool
) -> None:
    """After a reset the learner drops its model: the next snapshot holds exactly the examples
    read after the reset, whether or not a publish came in between."""
    rng = np.random.default_rng(5)
    before = bernoulli_examples(EXP, 300, rng)
    after = bernoulli_examples(EXP, 120, rng, start=300)
    store = SnapshotStore(redis_bin, namespace)
    learner = _learner(redis_bin, namespace)
    await learner.start()
    await feed(redis_bin, namespace, before)
    await _drain(learner)
    await learner.publish()
    reset = await store.replace(EXP, 1)
    assert (reset.version, reset.gen, reset.examples, reset.data) == (2, 1, 0, b"")
    if publish_between:
        assert await learner.publish() == 0  # notices the new generation, nothing to publish
    await feed(redis_bin, namespace, after)
    await _drain(learner)
    await learner.publish()
    snap = await store.get(EXP)
    assert snap is not None and (snap.version, snap.gen, snap.examples) == (3, 1, 120)
    assert _counts(await _thompson(store, spec_of(EXP))) == {
        k: pytest.approx(v) for k, v in arm_totals(after).items()
    }


async def test_warm_started_generation_is_continued(redis_bin: Redis, namespace: str) -> None:
    """A warm-started model published as a new generation is what the learner builds on."""
    rng = np.random.default_rng(6)
    warm = bernoulli_examples(EXP, 400, rng)
    live = bernoulli_examples(EXP, 100, rng, start=400)
    spec = spec_of(EXP)
    policy = build_policy(spec.config, spec.arms)
    policy.learn([e for r, w in warm if (e := spec.example(r, w)) is not None])
    store = SnapshotStore(redis_bin, namespace)
    learner = _learner(redis_bin, namespace)
    await learner.start()
    await feed(redis_bin, namespace, live[:50])
    await _drain(learner)
    await learner.publish()
    await store.replace(EXP, 1, kind="thompson", data=policy.snapshot(), examples=400)
    await learner.publish()
    await feed(redis_bin, namespace, live[50:])
    await _drain(learner)
    await learner.publish()
    snap = await store.get(EXP)
    assert snap is not None and (snap.gen, snap.examples) == (1, 450)
    assert _counts(await _thompson(store, spec)) == {
        k: pytest.approx(v) for k, v in arm_totals(warm + live[50:]).items()
    }


async def test_new_definition_keeps_the_model(redis_bin: Redis, namespace: str) -> None:
    """A new experiment version (e.g. epsilon changed) carries the learned VW model over."""
    v1 = spec_of(EXP, epsilon_vw(0.2), version=1)
    v2 = msgspec.structs.replace(v1, experiment_version=2, config=epsilon_vw(0.01))
    table = {EXP: v1}

    async def specs() -> Mapping[str, PolicySpec]:
        return dict(table)

    rng = np.random.default_rng(7)
    examples = bernoulli_examples(EXP, 400, rng)
    learner = Learner(redis_bin, namespace, specs)
    await learner.start()
    await feed(redis_bin, namespace, examples[:200])
    await _drain(learner)
    table[EXP] = v2
    learner._specs = table  # what the cadence refresh does
    await feed(redis_bin, namespace, examples[200:])
    await _drain(learner)
    await learner.publish()
    snap = await SnapshotStore(redis_bin, namespace).get(EXP)
    assert snap is not None and snap.examples == 400
    # The model learned "c" is best; with epsilon 0.01 it exploits it but for the floor.
    served = build_policy(v2.config, v2.arms, snapshot=snap.data)
    pmf = served.pmf({}, v2.candidates)
    assert isinstance(v2.config, VWCBConfig)
    floor = max(0.01 / 3, v2.config.floor(3))  # epsilon's share or the floor, the larger
    assert pmf.argmax() == 2 and pmf.max() == pytest.approx(1 - 2 * floor)


@pytest.mark.parametrize(
    ("experiment", "arms"),
    [("gone", ARMS), (EXP, ("a", "b", "removed"))],
    ids=["unknown-experiment", "removed-variant"],
)
async def test_unlearnable_examples_are_skipped_and_acknowledged(
    redis_bin: Redis, namespace: str, experiment: str, arms: tuple[str, ...]
) -> None:
    """Examples of deleted experiments or removed variants are skipped, counted and acked."""
    await feed(redis_bin, namespace, [(record("x1", experiment, 2, arms=arms), 1.0)])
    await feed(redis_bin, namespace, [(record("x2", EXP, 1), 1.0)])
    learner = _learner(redis_bin, namespace)
    await learner.start()
    assert await _drain(learner) == 2
    assert (learner.learned, learner.skipped) == (1, 1)
    await learner.publish()
    assert await _pending(redis_bin, namespace) == 0
    snap = await SnapshotStore(redis_bin, namespace).get(EXP)
    assert snap is not None and snap.examples == 1


@pytest.mark.parametrize(("interval_s", "lo", "hi"), [(0.25, 4, 8), (30.0, 1, 1)])
async def test_snapshot_cadence_is_respected(
    redis_bin: Redis, namespace: str, interval_s: float, lo: int, hi: int
) -> None:
    """Under a steady trickle the learner publishes once per interval (plus once at stop)."""
    learner = _learner(redis_bin, namespace, snapshot_interval_s=interval_s)
    stop = asyncio.Event()
    task = asyncio.create_task(learner.run(stop))
    rng = np.random.default_rng(8)
    examples = bernoulli_examples(EXP, 70, rng)
    for i in range(0, 70, 2):  # ~1.4 s of traffic
        await feed(redis_bin, namespace, examples[i : i + 2])
        await asyncio.sleep(0.04)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    snap = await SnapshotStore(redis_bin, namespace).get(EXP)
    assert snap is not None and snap.examples == 70
    assert lo <= snap.version <= hi


async def test_each_experiment_learns_its_own_examples(redis_bin: Redis, namespace: str) -> None:
    """Examples of two experiments interleaved on one stream go to their own models, both
    published in one step."""
    other = spec_of("other", ThompsonConfig(), arms=("x", "y"))
    await feed(redis_bin, namespace, [(record("o1", "other", 1, arms=("x", "y")), 1.0)])
    await feed(redis_bin, namespace, [(record("h1", EXP, 0), 0.0)])
    learner = _learner(redis_bin, namespace, spec_of(EXP), other)
    await learner.start()
    await _drain(learner)
    assert await learner.publish() == 2
    store = SnapshotStore(redis_bin, namespace)
    versions = await store.versions([EXP, "other"])
    assert versions == {EXP: (1, 0), "other": (1, 0)}
    other_policy = build_policy(
        other.config, [Arm(key="x"), Arm(key="y")], snapshot=(await store.get("other")).data
    )  # type: ignore[union-attr]
    assert isinstance(other_policy, ThompsonPolicy)
    assert other_policy.posterior("y") == (2.0, 1.0)


async def test_the_lease_lets_exactly_one_runner_learn(
    redis_bin: Redis, redis: Redis, namespace: str
) -> None:
    """Of two in-server learners on one Redis only the lease holder learns and sweeps; when its
    lease lapses the other takes over and continues the published model."""
    store = ExperimentStore(redis, namespace)
    spec = msgspec.convert(
        {
            "key": EXP,
            "placement": "home",
            "default_variant": "a",
            "variants": [{"key": k} for k in ARMS],
            "policy": {"kind": "thompson"},
        },
        ExperimentSpec,
    )
    await store.create(spec, 0.0)
    runners = [
        LearnerRunner(
            redis_bin,
            RewardJoin(redis, namespace),
            store,
            namespace,
            holder=name,
            snapshot_interval_s=0.0,
            sweep_interval_s=0.0,
        )
        for name in ("worker-1", "worker-2")
    ]
    rng = np.random.default_rng(9)
    first = bernoulli_examples(EXP, 300, rng)
    await feed(redis_bin, namespace, first)
    for _ in range(3):
        await runners[0].tick()
    await runners[1].tick()
    assert [r.leader for r in runners] == [True, False]
    assert runners[1].learner.learned == 0
    snap = await SnapshotStore(redis_bin, namespace).get(EXP)
    assert snap is not None and snap.examples == 300

    await redis.delete(f"{namespace}:learner:leader")  # the leader's lease lapses
    second = bernoulli_examples(EXP, 200, rng, start=300)
    await feed(redis_bin, namespace, second)
    for _ in range(3):
        await runners[1].tick()
    assert runners[1].leader and runners[1].learner.learned == 200
    await runners[0].tick()
    assert not runners[0].leader
    snap = await SnapshotStore(redis_bin, namespace).get(EXP)
    assert snap is not None and snap.examples == 500
