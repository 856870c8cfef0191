"""The online learner: joined examples from a Redis Stream into models, snapshots out.

Exactly-once learning without a transaction log: the learner reads examples through a consumer
group, learns them into in-memory models, and acknowledges them only when it publishes — the new
snapshots and the ``XACK`` of every example they contain commit in one ``MULTI``. If the learner
dies in between, the last snapshot does not contain the unacknowledged examples and they are
re-delivered to the restarted learner (it reads its own pending entries first, and claims those
of a dead consumer), so nothing is lost and nothing is learned twice.

A reset (``SnapshotStore.reset``) bumps the model's generation; the learner notices on its next
publish, drops its in-memory model and starts fresh from that point.

Learners shard by experiment (:class:`Shard`, ``tailor learn --shard i/n``): experiment ``e``
belongs to shard ``crc32(e) mod n``. Each shard reads the one training stream through its own
consumer group (``learners:i/n``; ``learners`` when unsharded), learns only its experiments and
acknowledges every entry it read (the others' entries are skipped after decoding the record's
first two fields, not the context). Stream entries are trimmed only below the slowest group of the
layout, so no shard loses an entry another has not read. Groups of another layout (left by a
re-sharding) are not waited for: stop the old learners (they publish and trim on the way out)
before starting the new layout, whose groups start from the stream's start — what is left on it
is what the old layout had not learned.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from bandits.base import Example, Policy, PolicyError
from bandits.join import JOIN_GROUP, TrainingExample, decode_entry
from bandits.registry import build_policy
from bandits.slates import SlateExample, SlatePolicy
from bandits.snapshots import Snapshot, SnapshotStore
from bandits.spec import PolicySpec

log = structlog.get_logger("tailor.learner")

SpecSource = Callable[[], Awaitable[Mapping[str, PolicySpec]]]
CLAIM_IDLE_MS = 30_000


class Shard(msgspec.Struct, frozen=True):
    """Shard ``index`` of ``count``: the experiments whose ``crc32(key) mod count == index``.

    ``Shard(0, 1)`` (the default) owns every experiment and reads with the unsharded group.
    """

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"shard count == {self.count}, must be >= 1")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index == {self.index}, must be in [0, {self.count - 1}]")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` (e.g. ``"0/3"``) as a shard; ValueError saying what is wrong otherwise."""
        index, slash, count = text.partition("/")
        if not slash or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"shard {text!r} must be i/n with whole numbers, e.g. 0/3")
        return cls(int(index), int(count))

    def owns(self, experiment: str) -> bool:
        """Whether this shard learns ``experiment``."""
        return self.count == 1 or zlib.crc32(experiment.encode()) % self.count == self.index

    @property
    def group(self) -> str:
        """The consumer group this shard reads the training stream with."""
        return JOIN_GROUP if self.count == 1 else f"{JOIN_GROUP}:{self.index}/{self.count}"

    @property
    def label(self) -> str:
        """``i/n``, for lease keys and logs (empty when unsharded)."""
        return "" if self.count == 1 else f"{self.index}/{self.count}"

    def layout_groups(self) -> set[str]:
        """Every consumer group of this shard's layout (all ``n`` shards)."""
        return {Shard(i, self.count).group for i in range(self.count)}


class _Head(msgspec.Struct, array_like=True):
    """The first fields of a :class:`~bandits.join.DecisionRecord` (array-like JSON): enough
    to tell which shard an entry belongs to without decoding its context."""

    decision_id: str
    experiment: str


_head_decoder = msgspec.json.Decoder(_Head)


class _Model:
    """A model the learner is training."""

    def __init__(self, spec: PolicySpec, policy: Policy, version: int, gen: int, examples: int):
        self.spec = spec
        self.policy = policy
        self.version = version
        self.gen = gen
        self.examples = examples
        self.dirty = False


class Learner:
    """Consume the training stream, learn, publish snapshots with their acks atomically."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        specs: SpecSource,
        *,
        consumer: str = "learner-0",
        snapshot_interval_s: float = 2.0,
        batch_size: int = 2000,
        on_learned: Callable[[str, int], None] | None = None,
        shard: Shard | None = None,
    ) -> None:
        self._redis = redis
        self.shard = shard or Shard()
        self._group = self.shard.group
        self._stream = f"{{{prefix}}}:train"  # the slot of the models: acks commit with them
        self._snapshots = SnapshotStore(redis, prefix)
        self._specs_source = specs
        self._specs: Mapping[str, PolicySpec] = {}
        self.consumer = consumer
        self._interval = snapshot_interval_s
        self._batch = batch_size
        self._on_learned = on_learned
        self._models: dict[str, _Model] = {}
        self._unacked: list[str] = []
        # Where re-reading our own pending entries, then claiming a dead consumer's, has got to
        # (None once done). Pending entries stay pending until the next publish acks them, so
        # re-reading from "0" would deliver the same batch again: the cursor moves past it.
        self._pending_cursor: str | None = "0"
        self._claim_cursor: str | None = "0-0"
        self._last_publish = time.monotonic()
        self.learned = 0
        self.skipped = 0
        self.others = 0
        """Entries of other shards' experiments read (and acknowledged) by this one."""

    async def start(self) -> None:
        """Create the consumer group if needed (from the stream's start) and load specs."""
        try:
            await self._redis.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._specs = await self._specs_source()

    async def _model(self, name: str) -> _Model | None:
        model = self._models.get(name)
        spec = self._specs.get(name)
        if spec is None:
            self._specs = await self._specs_source()
            spec = self._specs.get(name)
            if spec is None:
                return None
        if model is not None and model.spec.experiment_version == spec.experiment_version:
            return model
        if model is not None:
            # New definition: carry the in-memory model (with unpublished examples) over.
            held = Snapshot(
                experiment=name,
                version=model.version,
                gen=model.gen,
                kind=model.policy.name,
                data=await asyncio.to_thread(model.policy.snapshot),
                examples=model.examples,
                updated_ms=0,
            )
            model.policy = await asyncio.to_thread(self._build, spec, held)
            model.spec = spec
            return model
        snapshot = await self._snapshots.get(name)
        policy = await asyncio.to_thread(self._build, spec, snapshot)
        model = _Model(
            spec,
            policy,
            version=snapshot.version if snapshot else 0,
            gen=snapshot.gen if snapshot else 0,
            examples=snapshot.examples if snapshot and snapshot.data else 0,
        )
        self._models[name] = model
        return model

    @staticmethod
    def _build(spec: PolicySpec, snapshot: Snapshot | None) -> Policy:
        data = snapshot.data if snapshot is not None and snapshot.data else None
        version = str(snapshot.version) if snapshot is not None else "0"
        try:
            return build_policy(spec.config, spec.arms, snapshot=data, version=version)
        except (PolicyError, ValueError) as exc:
            log.warning("snapshot_incompatible", experiment=spec.experiment, error=str(exc))
            return build_policy(spec.config, spec.arms, version=version)

    async def step(self, block_ms: int = 200) -> int:
        """Read and learn one batch; returns the number of stream entries consumed."""
        entries = await self._read(block_ms)
        if not entries:
            return 0
        by_experiment: dict[str, list[Example | SlateExample]] = {}
        for stream_id, fields in entries:
            self._unacked.append(stream_id)
            if fields is None:
                continue  # trimmed from the stream while pending: nothing left to learn
            if self.shard.count > 1 and not self._mine(fields):
                self.others += 1
                continue
            example = decode_entry(stream_id, fields)
            spec_model = await self._model(example.record.experiment)
            built = self._example(spec_model, example)
            if built is None:
                self.skipped += 1
                continue
            by_experiment.setdefault(example.record.experiment, []).append(built)
        # A reset or warm start since the last look: these examples belong to the new model.
        await self._follow(list(by_experiment))
        for name, examples in by_experiment.items():
            model = self._models[name]
            # Off the event loop: an in-server learner shares it with decisions.
            await asyncio.to_thread(_learn, model.policy, examples)
            model.examples += len(examples)
            model.dirty = True
            self.learned += len(examples)
            if self._on_learned is not None:
                self._on_learned(name, len(examples))
        return len(entries)

    def _mine(self, fields: Mapping[Any, Any]) -> bool:
        body = fields.get(b"rec", fields.get("rec"))
        try:
            return self.shard.owns(_head_decoder.decode(body).experiment)
        except (msgspec.DecodeError, TypeError):
            return True  # undecodable: the full decode below skips (and counts) it

    @staticmethod
    def _example(model: _Model | None, example: TrainingExample) -> Example | SlateExample | None:
        if model is None:
            return None
        if example.rewards is not None:
            if not isinstance(model.policy, SlatePolicy):
                return None  # a slate logged under another policy cannot teach this one
            return model.spec.slate_example(example.record, example.rewards)
        return model.spec.example(example.record, example.reward)

    async def _read(self, block_ms: int) -> list[tuple[str, Any]]:
        if self._pending_cursor is not None:
            # Our own pending entries first (a previous run died before publishing them).
            reply = await self._redis.xreadgroup(
                self._group, self.consumer, {self._stream: self._pending_cursor}, count=self._batch
            )
            entries = _entries(reply)
            if entries:
                self._pending_cursor = entries[-1][0]
                return entries
            self._pending_cursor = None
        while self._claim_cursor is not None:
            # Then the entries a dead learner (another consumer name) left unacknowledged.
            claimed = await self._redis.xautoclaim(
                self._stream,
                self._group,
                self.consumer,
                CLAIM_IDLE_MS,
                self._claim_cursor,
                count=self._batch,
            )
            cursor = _text(claimed[0]) if claimed else "0-0"
            self._claim_cursor = None if cursor == "0-0" else cursor
            if claimed and claimed[1]:
                return [(_text(i), f or None) for i, f in claimed[1]]
        reply = await self._redis.xreadgroup(
            self._group, self.consumer, {self._stream: ">"}, count=self._batch, block=block_ms
        )
        return _entries(reply)

    def publish_due(self) -> bool:
        """Whether the snapshot cadence has elapsed."""
        return time.monotonic() - self._last_publish >= self._interval

    async def _follow(self, names: list[str]) -> dict[str, tuple[int, int]]:
        """Adopt models replaced (reset, warm start) since loaded; returns published versions."""
        current = await self._snapshots.versions(names)
        for name in names:
            model = self._models[name]
            published = current.get(name)
            if published is not None and published[1] != model.gen:
                # Reset or warm start: continue from what was published, drop what we held.
                log.info("model_replaced", experiment=name, gen=published[1])
                snapshot = await self._snapshots.get(name)
                policy = await asyncio.to_thread(self._build, model.spec, snapshot)
                examples = snapshot.examples if snapshot is not None and snapshot.data else 0
                self._models[name] = _Model(
                    model.spec, policy, published[0], published[1], examples
                )
            elif published is not None and published[0] > model.version and not model.dirty:
                model.version = published[0]
        return current

    async def publish(self) -> int:
        """Publish every changed model and acknowledge its examples, atomically."""
        self._last_publish = time.monotonic()
        current = await self._follow(list(self._models))
        dirty = [m for m in self._models.values() if m.dirty]
        if not dirty and not self._unacked:
            return 0
        now_ms = time.time_ns() // 1_000_000
        snapshots = []
        for model in dirty:
            data = await asyncio.to_thread(model.policy.snapshot)
            snapshots.append(
                Snapshot(
                    experiment=model.spec.experiment,
                    version=max(model.version, current.get(model.spec.experiment, (0, 0))[0]) + 1,
                    gen=model.gen,
                    kind=model.policy.name,
                    data=data,
                    examples=model.examples,
                    updated_ms=now_ms,
                )
            )
        async with self._redis.pipeline(transaction=True) as pipe:
            for snap in snapshots:
                self._snapshots.stage_publish(pipe, snap)
            if self._unacked:
                pipe.xack(self._stream, self._group, *self._unacked)
            await pipe.execute()
        for model, snap in zip(dirty, snapshots, strict=True):
            model.version = snap.version
            model.dirty = False
        acked = len(self._unacked)
        self._unacked = []
        if acked:
            await self._trim()
        if snapshots:
            log.info(
                "models_published",
                models={s.experiment: s.version for s in snapshots},
                acked=acked,
            )
        return len(snapshots)

    async def _trim(self) -> None:
        """Drop learned entries from the stream: they hold unit ids and context, and are in a
        published snapshot now. Entries still pending in any group of this layout, and those
        any of its groups has not read yet, stay."""
        groups = await self._redis.xinfo_groups(self._stream)
        layout = self.shard.layout_groups()
        floors: list[tuple[int, int]] = []
        seen = set()
        for group in groups:
            name = _text(group["name"])
            if name not in layout:
                continue
            seen.add(name)
            summary = await self._redis.xpending(self._stream, name)
            if summary and summary.get("pending"):
                floors.append(_stream_id(_text(summary["min"])))
            else:
                ms, seq = _stream_id(_text(group["last-delivered-id"]))
                floors.append((ms, seq + 1))
        if seen != layout:
            return  # a shard has not started yet: everything may still be its to read
        ms, seq = min(floors)
        await self._redis.xtrim(self._stream, minid=f"{ms}-{seq}", approximate=False)

    async def run(self, stop: asyncio.Event) -> None:
        """Learn until ``stop`` is set, publishing on the cadence and once more at the end."""
        await self.start()
        while not stop.is_set():
            await self.step(block_ms=100)
            if self.publish_due():
                self._specs = await self._specs_source()
                await self.publish()
        await self.publish()


def _learn(policy: Policy, examples: list[Example | SlateExample]) -> None:
    """Teach ``policy`` the examples in order: one-variant examples through ``learn``, slates
    through ``learn_slates`` (only slate policies receive them), each run in one call."""
    run: list[Any] = []
    for example in [*examples, None]:
        if run and (example is None or type(example) is not type(run[0])):
            if isinstance(run[0], SlateExample):
                assert isinstance(policy, SlatePolicy)
                policy.learn_slates(run)
            else:
                policy.learn(run)
            run = []
        if example is not None:
            run.append(example)


def _stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(reply: Any) -> list[tuple[str, Any]]:
    if not reply:
        return []
    out = []
    for _stream, items in reply:
        for stream_id, fields in items:
            out.append((_text(stream_id), fields or None))
    return out
