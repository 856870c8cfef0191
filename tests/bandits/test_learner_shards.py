"""Learners sharded by experiment: each shard learns its own experiments, together every
example exactly once, and the stream is trimmed only below the slowest shard."""

from __future__ import annotations

import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Mapping

import numpy as np
import pytest
from redis.asyncio import Redis

from bandits.join import RewardJoin
from bandits.learner import Learner, Shard
from bandits.registry import build_policy
from bandits.snapshots import SnapshotStore
from bandits.spec import PolicySpec
from bandits.thompson import ThompsonPolicy
from decision_api.learning.runtime import LearnerRunner
from experiments.store import ExperimentStore
from tests.support.training import ARMS, arm_totals, bernoulli_examples, feed, spec_of

EXPERIMENTS = [f"exp-{i}" for i in range(8)]


@pytest.fixture
async def redis_bin(redis_url: str) -> AsyncIterator[Redis]:
    """A binary-safe client, as the learner and snapshot store use."""
    client = Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


def _learner(redis_bin: Redis, namespace: str, shard: Shard) -> Learner:
    table = {e: spec_of(e) for e in EXPERIMENTS}

    async def specs() -> Mapping[str, PolicySpec]:
        return dict(table)

    return Learner(redis_bin, namespace, specs, batch_size=300, shard=shard)


async def _drain(learner: Learner) -> int:
    total = 0
    while consumed := await learner.step(block_ms=10):
        total += consumed
    return total


def test_shards_partition_experiments_by_crc32() -> None:
    """Every experiment belongs to exactly one shard of a layout, crc32(key) mod n; one shard
    of one owns everything and reads with the unsharded group."""
    keys = [f"key-{i}" for i in range(300)]
    for n in (2, 3, 5):
        shards = [Shard(i, n) for i in range(n)]
        for key in keys:
            owners = [s.index for s in shards if s.owns(key)]
            assert owners == [zlib.crc32(key.encode()) % n]
        assert len({s.group for s in shards}) == n
        assert shards[0].layout_groups() == {s.group for s in shards}
    assert all(Shard().owns(k) for k in keys)
    assert (Shard().group, Shard(1, 3).group, Shard(1, 3).label) == (
        "learners", "learners:1/3", "1/3",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("3/3", r"shard index == 3, must be in \[0, 2\]"),
        ("0/0", "shard count == 0, must be >= 1"),
        ("1", "must be i/n"),
        ("a/2", "must be i/n"),
        ("-1/2", "must be i/n"),
    ],
)
def test_a_bad_shard_is_refused_naming_what_is_wrong(text: str, match: str) -> None:
    """``--shard`` values that are not i/n with 0 <= i < n are refused with a clear message."""
    with pytest.raises(ValueError, match=match):
        Shard.parse(text)


def test_tailor_learn_refuses_a_bad_shard() -> None:
    """``tailor learn --shard 2/2`` exits 2 naming the option, before touching Redis."""
    done = subprocess.run(
        [sys.executable, "-m", "decision_api.cli.main", "learn", "--shard", "2/2"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--shard" in done.stderr and "must be in [0, 1]" in done.stderr


async def test_two_shards_learn_every_example_once_and_trim_below_the_slower(
    redis_bin: Redis, namespace: str
) -> None:
    """Shards 0/2 and 1/2 read the same stream: each publishes only its experiments, with
    exactly their examples; entries stay on the stream until both shards have published."""
    rng = np.random.default_rng(5)
    fed = {e: bernoulli_examples(e, 150, rng, start=1000 * i) for i, e in enumerate(EXPERIMENTS)}
    await feed(redis_bin, namespace, [x for e in EXPERIMENTS for x in fed[e]])
    shards = [_learner(redis_bin, namespace, Shard(i, 2)) for i in range(2)]
    owned = [[e for e in EXPERIMENTS if s.shard.owns(e)] for s in shards]
    assert all(owned) and sorted(owned[0] + owned[1]) == sorted(EXPERIMENTS)
    for learner in shards:
        await learner.start()
    stream = f"{{{namespace}}}:train"
    total = 150 * len(EXPERIMENTS)
    assert await _drain(shards[0]) == total  # it reads everything, learns its own
    assert (shards[0].learned, shards[0].others) == (150 * len(owned[0]), 150 * len(owned[1]))
    await shards[0].publish()
    assert await redis_bin.xlen(stream) == total  # shard 1 has read nothing yet
    assert await _drain(shards[1]) == total
    assert shards[1].learned == 150 * len(owned[1])
    await shards[1].publish()
    assert await redis_bin.xlen(stream) == 0  # both have published: trimmed
    store = SnapshotStore(redis_bin, namespace)
    for learner, mine in zip(shards, owned, strict=True):
        for experiment in mine:
            snap = await store.get(experiment)
            assert snap is not None and snap.examples == 150
            policy = build_policy(spec_of(experiment).config, spec_of(experiment).arms,
                                  snapshot=snap.data)  # fmt: skip
            assert isinstance(policy, ThompsonPolicy)
            counts = {k: tuple(x - 1.0 for x in policy.posterior(k)) for k in ARMS}
            assert counts == {k: pytest.approx(v) for k, v in arm_totals(fed[experiment]).items()}
        assert all(learner.shard.owns(name) for name in learner._models)
    for group in ("learners:0/2", "learners:1/2"):
        assert int((await redis_bin.xpending(stream, group))["pending"]) == 0


async def test_each_shard_has_its_own_lease(redis_bin: Redis, redis: Redis, namespace: str) -> None:
    """Two runners of one shard: one leads; a runner of another shard leads too."""

    def runner(shard: Shard, holder: str) -> LearnerRunner:
        return LearnerRunner(
            redis_bin, RewardJoin(redis, namespace), ExperimentStore(redis, namespace),
            namespace, holder=holder, snapshot_interval_s=60, sweep_interval_s=60, shard=shard,
        )  # fmt: skip

    first, standby, other = (runner(Shard(0, 2), "a"), runner(Shard(0, 2), "b"),
                             runner(Shard(1, 2), "c"))  # fmt: skip
    await first.tick()
    await standby.tick()
    await other.tick()
    assert (first.leader, standby.leader, other.leader) == (True, False, True)
