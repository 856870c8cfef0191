"""The experiment store on a real Redis: lifecycle, versions, history, layers, audit hook, cache."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from experiments.cache import ExperimentCache
from experiments.errors import ExperimentConflict, ExperimentNotFound
from experiments.store import Action, ExperimentStore, due_action
from tailor_contract.definitions import Experiment, ExperimentSpec, LayerSlice, Status

pytestmark = pytest.mark.redis_cluster


def spec(key: str = "hero", **changes: Any) -> ExperimentSpec:
    """A two-variant definition with some fields changed."""
    raw = {
        "key": key,
        "placement": "home",
        "variants": [{"key": "control"}, {"key": "spring"}],
        "default_variant": "control",
        **changes,
    }
    return msgspec.convert(raw, ExperimentSpec)


class Recorder:
    """Collects the store's audit callbacks."""

    def __init__(self) -> None:
        self.calls: list[tuple[Action, str, int, Status]] = []

    def __call__(self, action: Action, experiment: Experiment) -> None:
        """Record one change."""
        self.calls.append((action, experiment.key, experiment.version, experiment.status))


@pytest.fixture
def recorder() -> Recorder:
    """An audit hook that remembers what it was told."""
    return Recorder()


@pytest.fixture
def store(redis: Redis, namespace: str, recorder: Recorder) -> ExperimentStore:
    """A store under this test's own key prefix."""
    return ExperimentStore(redis, namespace, audit=recorder)


async def test_create_read_list(store: ExperimentStore) -> None:
    """Create stores a draft at version 1; get and list return it; the config version moves."""
    assert await store.config_version() == 0
    created = await store.create(spec("b-exp"), now=100.0)
    await store.create(spec("a-exp"), now=101.0)
    assert (created.status, created.version, created.created_at) == (Status.DRAFT, 1, 100.0)
    assert await store.get("b-exp") == created
    assert [e.key for e in await store.list()] == ["a-exp", "b-exp"]
    assert await store.config_version() == 2


async def test_duplicate_and_unknown_keys(store: ExperimentStore) -> None:
    """A second create of a key conflicts; reading, updating or moving an unknown key is 404."""
    await store.create(spec(), now=1.0)
    with pytest.raises(ExperimentConflict, match="exists already"):
        await store.create(spec(), now=2.0)
    with pytest.raises(ExperimentNotFound, match="'nope'"):
        await store.get("nope")
    with pytest.raises(ExperimentNotFound):
        await store.update("nope", spec("nope"), now=2.0)
    with pytest.raises(ExperimentNotFound):
        await store.transition("nope", "start", now=2.0)
    with pytest.raises(ExperimentNotFound):
        await store.history("nope")


async def test_update_makes_a_new_version_and_keeps_history(store: ExperimentStore) -> None:
    """Update bumps the version, keeps status and creation time, and history lists each version."""
    await store.create(spec(hypothesis="v1"), now=1.0)
    await store.transition("hero", "start", now=2.0)
    updated = await store.update("hero", spec(hypothesis="v3"), now=3.0)
    assert (updated.version, updated.status, updated.created_at) == (3, Status.RUNNING, 1.0)
    assert updated.updated_at == 3.0
    history = await store.history("hero")
    assert [(e.version, e.status, e.hypothesis) for e in history] == [
        (1, Status.DRAFT, "v1"),
        (2, Status.RUNNING, "v1"),
        (3, Status.RUNNING, "v3"),
    ]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"placement": "cart"}, "placement cannot change"),
        ({"layer": "home"}, "layer cannot change"),
        ({"traffic": 0.5}, "traffic cannot change"),
    ],
)
async def test_live_experiments_keep_placement_layer_and_traffic(
    store: ExperimentStore, changes: dict[str, Any], match: str
) -> None:
    """Once started, placement, layer and traffic are frozen (they decide who is in it)."""
    await store.create(spec(), now=1.0)
    await store.update("hero", spec(**changes), now=2.0)  # a draft may change anything
    await store.update("hero", spec(), now=3.0)
    await store.transition("hero", "start", now=4.0)
    with pytest.raises(ExperimentConflict, match=match) as info:
        await store.update("hero", spec(**changes), now=5.0)
    assert info.value.field == next(iter(changes))


async def test_update_refuses_a_body_for_another_key_and_a_stopped_experiment(
    store: ExperimentStore,
) -> None:
    """The body's key must match the path, and a stopped experiment is final."""
    await store.create(spec(), now=1.0)
    with pytest.raises(ExperimentConflict, match="does not match the path"):
        await store.update("hero", spec("other"), now=2.0)
    await store.transition("hero", "start", now=2.0)
    await store.transition("hero", "stop", now=3.0)
    with pytest.raises(ExperimentConflict, match="is stopped"):
        await store.update("hero", spec(), now=4.0)


TRANSITIONS: list[tuple[list[str], str, Status | None]] = [
    ([], "start", Status.RUNNING),
    ([], "pause", None),
    ([], "stop", None),
    (["start"], "start", None),
    (["start"], "pause", Status.PAUSED),
    (["start"], "stop", Status.STOPPED),
    (["start", "pause"], "start", Status.RUNNING),
    (["start", "pause"], "pause", None),
    (["start", "pause"], "stop", Status.STOPPED),
    (["start", "stop"], "start", None),
    (["start", "stop"], "pause", None),
    (["start", "stop"], "stop", None),
]


@pytest.mark.parametrize(("before", "action", "target"), TRANSITIONS)
async def test_lifecycle_transitions(
    store: ExperimentStore, before: list[str], action: str, target: Status | None
) -> None:
    """Every (status, action) pair either moves to the documented status or conflicts."""
    await store.create(spec(), now=1.0)
    for step in before:
        await store.transition("hero", step, now=2.0)  # type: ignore[arg-type]
    version = (await store.get("hero")).version
    if target is None:
        with pytest.raises(ExperimentConflict, match=f"cannot {action} experiment 'hero'"):
            await store.transition("hero", action, now=3.0)  # type: ignore[arg-type]
        assert (await store.get("hero")).version == version
    else:
        moved = await store.transition("hero", action, now=3.0)  # type: ignore[arg-type]
        assert (moved.status, moved.version) == (target, version + 1)


async def test_layer_slices_first_fit_refuse_when_full_and_free_on_stop(
    store: ExperimentStore,
) -> None:
    """Starting in a layer claims a free slice; a full layer refuses; stopping frees the slice."""
    for key, traffic in [("a", 0.5), ("b", 0.3), ("c", 0.3)]:
        await store.create(spec(key, layer="home", traffic=traffic), now=1.0)
    a = await store.transition("a", "start", now=2.0)
    b = await store.transition("b", "start", now=2.0)
    assert a.layer_slice == LayerSlice(start=0.0, end=0.5)
    assert b.layer_slice == LayerSlice(start=0.5, end=0.8)
    with pytest.raises(ExperimentConflict, match="no free 30% slice") as info:
        await store.transition("c", "start", now=3.0)
    assert info.value.field == "traffic"
    assert (await store.get("c")).status is Status.DRAFT
    paused = await store.transition("b", "pause", now=4.0)
    assert paused.layer_slice == b.layer_slice  # pausing keeps the slice
    resumed = await store.transition("b", "start", now=4.5)
    assert resumed.layer_slice == b.layer_slice
    stopped = await store.transition("a", "stop", now=5.0)
    assert stopped.layer_slice is None
    c = await store.transition("c", "start", now=6.0)
    assert c.layer_slice is not None
    assert (c.layer_slice.start, c.layer_slice.end) == pytest.approx((0.0, 0.3))


async def test_other_layers_and_unlayered_experiments_do_not_compete(
    store: ExperimentStore,
) -> None:
    """Slices are per layer: a full layer does not stop experiments in another layer or none."""
    await store.create(spec("a", layer="home", traffic=1.0), now=1.0)
    await store.create(spec("b", layer="cart", traffic=1.0), now=1.0)
    await store.create(spec("c"), now=1.0)
    for key in ("a", "b", "c"):
        await store.transition(key, "start", now=2.0)
    assert (await store.get("b")).layer_slice == LayerSlice(start=0.0, end=1.0)
    assert (await store.get("c")).layer_slice is None


async def test_every_change_calls_the_audit_hook(
    store: ExperimentStore, recorder: Recorder
) -> None:
    """Create, update and each transition report (action, key, new version, status) in order."""
    await store.create(spec(), now=1.0)
    await store.update("hero", spec(hypothesis="x"), now=2.0)
    for action in ("start", "pause", "stop"):
        await store.transition("hero", action, now=3.0)  # type: ignore[arg-type]
    with pytest.raises(ExperimentConflict):
        await store.transition("hero", "start", now=4.0)
    assert recorder.calls == [
        ("create", "hero", 1, Status.DRAFT),
        ("update", "hero", 2, Status.DRAFT),
        ("start", "hero", 3, Status.RUNNING),
        ("pause", "hero", 4, Status.PAUSED),
        ("stop", "hero", 5, Status.STOPPED),
    ]


async def test_namespaces_do_not_see_each_other(redis: Redis, namespace: str) -> None:
    """Two prefixes on one Redis hold separate experiment sets."""
    one = ExperimentStore(redis, namespace + "a")
    two = ExperimentStore(redis, namespace + "b")
    await one.create(spec(), now=1.0)
    assert await two.list() == []
    assert await two.config_version() == 0


async def test_cache_holds_live_experiments_by_placement_in_priority_order(
    store: ExperimentStore,
) -> None:
    """The cache serves running and paused experiments, highest priority first, then by key."""
    await store.create(spec("low", priority=-1), now=1.0)
    await store.create(spec("high", priority=5), now=1.0)
    await store.create(spec("b-mid"), now=1.0)
    await store.create(spec("a-mid"), now=1.0)
    await store.create(spec("draft"), now=1.0)
    await store.create(spec("gone"), now=1.0)
    await store.create(spec("cart", placement="cart"), now=1.0)
    for key in ("low", "high", "b-mid", "a-mid", "gone", "cart"):
        await store.transition(key, "start", now=2.0)
    await store.transition("a-mid", "pause", now=3.0)
    await store.transition("gone", "stop", now=3.0)
    cache = ExperimentCache(store)
    assert await cache.refresh() is True
    assert [c.experiment.key for c in cache.for_placement("home")] == [
        "high",
        "a-mid",
        "b-mid",
        "low",
    ]
    assert [c.experiment.key for c in cache.for_placement("cart")] == ["cart"]
    assert cache.for_placement("nowhere") == ()
    assert cache.get("draft") is None and cache.get("gone") is None
    compiled = cache.get("high")
    assert compiled is not None
    assert (compiled.cumulative, compiled.default_index) == ([0.5, 1.0], 0)


async def test_cache_reloads_only_when_the_config_version_moves(store: ExperimentStore) -> None:
    """A refresh without a change is a no-op; any change is picked up by the next refresh."""
    cache = ExperimentCache(store)
    await cache.refresh()
    assert await cache.refresh() is False
    await store.create(spec(), now=1.0)
    await store.transition("hero", "start", now=2.0)
    assert await cache.refresh() is True
    assert [c.experiment.key for c in cache.for_placement("home")] == ["hero"]
    await store.transition("hero", "stop", now=3.0)
    assert await cache.refresh() is True
    assert cache.for_placement("home") == ()


T0 = 1_800_000_000.0


def at(ts: float) -> str:
    """An ISO date-time with offset for an epoch time."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


@pytest.mark.parametrize(
    ("status", "start", "end", "now", "expected"),
    [
        (Status.DRAFT, T0, None, T0 - 1, None),
        (Status.DRAFT, T0, None, T0, "start"),
        (Status.DRAFT, T0, T0 + 10, T0 + 5, "start"),
        (Status.DRAFT, T0, T0 + 10, T0 + 10, None),  # the whole window passed: stays a draft
        (Status.DRAFT, None, T0, T0 + 1, None),
        (Status.RUNNING, T0, T0 + 10, T0 + 9, None),
        (Status.RUNNING, T0, T0 + 10, T0 + 10, "stop"),
        (Status.PAUSED, None, T0 + 10, T0 + 11, "stop"),
        (Status.PAUSED, T0, None, T0 + 11, None),  # paused by hand: not resumed
        (Status.STOPPED, T0, T0 + 10, T0 + 11, None),
    ],
)
def test_due_action_follows_the_schedule(
    status: Status, start: float | None, end: float | None, now: float, expected: str | None
) -> None:
    """Drafts start at ``start_at``, live experiments stop at ``end_at``, nothing else moves."""
    changes = {"start_at": at(start) if start else None, "end_at": at(end) if end else None}
    exp = Experiment(**msgspec.structs.asdict(spec(**changes)), status=status)
    assert due_action(exp, now) == expected


async def test_concurrent_scheduled_starts_apply_once(
    store: ExperimentStore, recorder: Recorder
) -> None:
    """Workers racing on one due experiment store and audit a single start."""
    await store.create(spec(start_at=at(T0), end_at=at(T0 + 100)), now=1.0)
    moved = await asyncio.gather(
        *(store.follow_schedule("hero", "start", T0 + 1) for _ in range(6))
    )
    assert len([m for m in moved if m is not None]) == 1
    assert await store.follow_schedule("hero", "start", T0 + 2) is None
    assert await store.follow_schedule("hero", "stop", T0 + 50) is None  # not due yet
    stopped = await store.follow_schedule("hero", "stop", T0 + 100)
    assert stopped is not None and stopped.status is Status.STOPPED
    assert [(a, v) for a, _, v, _ in recorder.calls] == [("create", 1), ("start", 2), ("stop", 3)]


async def test_cache_lists_what_the_schedule_moves(store: ExperimentStore) -> None:
    """The cache knows, in memory, which drafts are due to start and which live ones to stop."""
    await store.create(spec("a", start_at=at(T0)), now=1.0)
    await store.create(spec("b", end_at=at(T0 + 10)), now=1.0)
    await store.transition("b", "start", now=2.0)
    await store.create(spec("c"), now=1.0)
    cache = ExperimentCache(store)
    await cache.refresh()
    assert cache.due(T0 - 1) == []
    assert cache.due(T0) == [("a", "start")]
    assert sorted(cache.due(T0 + 10)) == [("a", "start"), ("b", "stop")]
