"""Glue between experiments and the bandit machinery, for API workers and the learner process.

- :class:`LearningPolicies` is the decision engine's
:class:`~decision_api.decisions.engine.PolicyProvider`:
  hot-swapped models per learning experiment, and the reward join's ``remember``.
- :class:`LearnerRunner` runs the learner and the reward sweeper, either as ``tailor learn`` or
  inside the server (embedded mode). Inside the server a Redis lease elects one leader, so with
  several workers exactly one learns.

Redis keys owned here: ``{p}:learner:leader`` (STRING, the worker holding the lease, PX 10 s);
``{p}:learner:leader:<i>/<n>`` (the same for shard i of n, ``tailor learn --shard i/n``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bandits.base import Arm, Candidate, Choice, Policy
from bandits.join import DecisionRecord, JoinRules, RewardJoin, rules_for
from bandits.learner import Learner, Shard
from bandits.serving import ServingPolicies
from bandits.slates import Slate
from bandits.snapshots import SnapshotStore
from bandits.spec import PolicySpec, candidate_features, is_learning
from decision_api.learning.outcome_batcher import OutcomeBatcher
from decision_api.metrics import Metrics
from decision_api.redis_client import connect
from decision_api.settings import RedisSettings
from experiments.cache import Compiled
from experiments.store import ExperimentStore
from tailor_contract.definitions import Experiment
from tailor_contract.wire import Factor

log = structlog.get_logger("tailor.learning")

LEASE_MS = 10_000


def spec_of(experiment: Experiment) -> PolicySpec:
    """The bandit view of an experiment."""
    return PolicySpec(
        experiment=experiment.key,
        experiment_version=experiment.version,
        config=experiment.policy,
        arms=tuple(Arm(key=v.key, weight=v.weight) for v in experiment.variants),
        candidates=tuple(
            Candidate(key=v.key, features=candidate_features(v.payload, v.features))
            for v in experiment.variants
        ),
        reward_lo=experiment.reward.min_reward,
        reward_hi=experiment.reward.max_reward,
    )


def join_rules_of(experiment: Experiment) -> JoinRules:
    """The reward join's rules for an experiment."""
    spec = experiment.reward
    return rules_for(
        experiment.reward_window_s,
        spec.aggregation,
        spec.default,
        spec.min_reward,
        spec.max_reward,
        [(r.type, r.reward, r.per_value) for r in experiment.reward_rules],
    )


def learning_specs(experiments: Iterable[Experiment]) -> dict[str, PolicySpec]:
    """Specs of the experiments whose policy learns."""
    return {e.key: spec_of(e) for e in experiments if is_learning(e.policy)}


class LearningPolicies:
    """Serve learning policies and remember their decisions for the reward join."""

    def __init__(self, redis: Redis, redis_bin: Redis, prefix: str, metrics: Metrics) -> None:
        self.join = RewardJoin(redis, prefix)
        self.outcomes = OutcomeBatcher(self.join)
        """Single outcomes of concurrent requests share the join's round trips through it."""
        self.snapshots = SnapshotStore(redis_bin, prefix)
        self.serving = ServingPolicies(
            self.snapshots,
            on_load_failure=lambda name, _: metrics.model_load_failures.labels(name).inc(),
            on_loaded=lambda name, v: metrics.model_version.labels(name).set(v),
        )
        self.rules: dict[str, JoinRules] = {}
        # Each experiment's variant keys, built once per definition (bulk decisions remember
        # tens of thousands of decisions a second; the lists are shared, never mutated).
        self._variant_keys: dict[str, tuple[Experiment, list[str]]] = {}

    def sync(self, experiments: Iterable[Experiment]) -> None:
        """Follow the live experiment definitions."""
        live = list(experiments)
        self.serving.set_specs(learning_specs(live))
        self.rules = {e.key: join_rules_of(e) for e in live if is_learning(e.policy)}

    def choose(
        self, compiled: Compiled, context: Mapping[str, Any], rng: np.random.Generator
    ) -> Choice | None:
        """The current model's choice for this context."""
        return self.serving.choose(compiled.experiment.key, context, rng)

    def choose_among(
        self,
        compiled: Compiled,
        context: Mapping[str, Any],
        eligible: Sequence[int],
        rng: np.random.Generator,
    ) -> Choice | None:
        """The current model's choice among the eligible variants (indexes into the variants);
        the choice's index and propensity are over that subset."""
        return self.serving.choose_among(compiled.experiment.key, context, eligible, rng)

    def choose_many(
        self,
        compiled: Compiled,
        contexts: Sequence[Mapping[str, Any]],
        rng: np.random.Generator,
    ) -> list[Choice] | None:
        """The current model's choices for many contexts, in one vectorised call."""
        return self.serving.choose_many(compiled.experiment.key, contexts, rng)

    def explain(self, compiled: Compiled, context: Mapping[str, Any], chosen: str) -> list[Factor]:
        """The features that weighed most in the serving model's choice of ``chosen``."""
        return self.serving.explain(compiled.experiment.key, context, chosen)

    def choose_slate(
        self,
        compiled: Compiled,
        context: Mapping[str, Any],
        slots: int,
        rng: np.random.Generator,
        *,
        candidates: Sequence[Candidate] | None = None,
        eligible: Sequence[int] | None = None,
    ) -> Slate | None:
        """The current model's ranked slate (its indexes point into ``candidates``, or into the
        eligible variants), or None when no ranking model serves the experiment."""
        chosen = self.serving.choose_slate(
            compiled.experiment.key, context, slots, rng, candidates=candidates, eligible=eligible
        )
        return chosen[0] if chosen is not None else None

    def remember_slate(
        self,
        decision_id: str,
        compiled: Compiled,
        unit_id: str,
        slate: Slate,
        candidates: list[str],
        features: list[dict[str, Any]] | None,
        context: Mapping[str, Any],
        now_ms: int,
    ) -> None:
        """Queue a slate decision for the reward join: ``candidates`` are the item keys it was
        drawn from (the slots' indexes point there), ``features`` theirs when they came in the
        request. Outcomes naming a slot or item reward that slot."""
        exp = compiled.experiment
        rules = self.rules.get(exp.key)
        if rules is None:
            return
        first = slate.slots[0]
        self.join.remember(
            DecisionRecord(
                decision_id=decision_id,
                experiment=exp.key,
                experiment_version=exp.version,
                unit_id=unit_id,
                candidates=candidates,
                chosen=first.index,
                propensity=first.propensity,
                model_version=slate.model_version,
                context=dict(context),
                decided_ms=now_ms,
                slate=tuple(s.index for s in slate.slots),
                slate_propensities=tuple(s.propensity for s in slate.slots),
                features=features,
            ),
            rules,
        )

    def policy(self, experiment: str) -> Policy | None:
        """The model currently serving an experiment (for bulk, vectorised choices)."""
        return self.serving.policy(experiment)

    def remember(
        self,
        decision_id: str,
        compiled: Compiled,
        unit_id: str,
        choice: Choice,
        context: Mapping[str, Any],
        now_ms: int,
        *,
        candidates: list[str] | None = None,
        window_end_ms: int | None = None,
        window_start_ms: int | None = None,
    ) -> None:
        """Queue the decision for the reward join (written by the join flusher).

        ``candidates`` are the variant keys the policy chose among (all variants by default).
        The reward window runs from ``window_start_ms`` (the decision by default; ``send_at``
        for a send-time decision) to ``window_end_ms`` (start + the experiment's window).
        A ``dict`` context is kept as it is, not copied (a bulk campaign remembers two records
        per recipient, both with the recipient's attributes): the caller never changes it
        afterwards, as the engine never changes a unit's attributes once prepared.
        """
        exp = compiled.experiment
        rules = self.rules.get(exp.key)
        if rules is None:
            return
        if not candidates:
            known = self._variant_keys.get(exp.key)
            if known is None or known[0] is not exp:
                known = self._variant_keys[exp.key] = (exp, [v.key for v in exp.variants])
            candidates = known[1]
        self.join.remember(
            DecisionRecord(
                decision_id=decision_id,
                experiment=exp.key,
                experiment_version=exp.version,
                unit_id=unit_id,
                candidates=candidates,
                chosen=choice.index,
                propensity=choice.propensity,
                model_version=choice.model_version,
                context=context if type(context) is dict else dict(context),
                decided_ms=now_ms,
            ),
            rules,
            window_end_ms,
            window_start_ms=window_start_ms,
        )


class LearnerRunner:
    """The learner loop plus the reward sweeper, optionally behind a leader lease."""

    def __init__(
        self,
        redis_bin: Redis,
        join: RewardJoin,
        store: ExperimentStore,
        prefix: str,
        *,
        holder: str,
        snapshot_interval_s: float,
        sweep_interval_s: float,
        metrics: Metrics | None = None,
        use_lease: bool = True,
        shard: Shard | None = None,
    ) -> None:
        self._redis = redis_bin
        self._join = join
        self._store = store
        self.shard = shard or Shard()
        # One lease per shard: one learner per shard learns at a time (more may stand by).
        label = self.shard.label
        self._lease_key = f"{prefix}:learner:leader" + (f":{label}" if label else "")
        self._holder = holder
        self._use_lease = use_lease
        self._sweep_interval = sweep_interval_s
        self._last_sweep = 0.0

        async def specs() -> Mapping[str, PolicySpec]:
            return learning_specs(await store.list())

        on_learned = None
        if metrics is not None:
            counter = metrics.learned

            def on_learned(name: str, n: int) -> None:
                counter.labels(name).inc(n)

        self.learner = Learner(
            redis_bin,
            prefix,
            specs,
            snapshot_interval_s=snapshot_interval_s,
            on_learned=on_learned,
            shard=self.shard,
        )
        self._started = False
        self.leader = False

    async def _hold_lease(self) -> bool:
        if not self._use_lease:
            return True
        got = await self._redis.set(self._lease_key, self._holder, nx=True, px=LEASE_MS)
        if got:
            return True
        current = await self._redis.get(self._lease_key)
        holder = current.decode() if isinstance(current, bytes) else current
        if holder == self._holder:
            await self._redis.pexpire(self._lease_key, LEASE_MS)
            return True
        return False

    async def tick(self) -> int:
        """One round: keep the lease, learn a batch, sweep closed windows, publish on cadence."""
        self.leader = await self._hold_lease()
        if not self.leader:
            await asyncio.sleep(0.5)
            return 0
        if not self._started:
            await self.learner.start()
            self._started = True
        consumed = await self.learner.step(block_ms=100)
        now = time.monotonic()
        if now - self._last_sweep >= self._sweep_interval:
            self._last_sweep = now
            await self._join.finalize_due(time.time_ns() // 1_000_000)
        if self.learner.publish_due():
            await self.learner.publish()
        return consumed

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop``; Redis outages pause learning and it resumes by itself."""
        failing = False
        while not stop.is_set():
            try:
                await self.tick()
                failing = False
            except RedisError as exc:
                if not failing:
                    log.warning("learner_paused", error=str(exc))
                failing = True
                self._started = False
                await asyncio.sleep(1.0)
        if self.leader:
            try:
                await self.learner.publish()
            except RedisError as exc:
                log.warning("final_publish_failed", error=str(exc))


async def run_learner_process(
    redis_url: str,
    prefix: str,
    *,
    snapshot_interval_s: float,
    sweep_interval_s: float,
    stop: asyncio.Event,
    holder: str,
    shard: Shard | None = None,
    cluster: bool = False,
) -> LearnerRunner:
    """Run the learner and reward sweeper until ``stop`` (the ``tailor learn`` command); with
    ``shard``, only that shard's experiments are learned (every shard sweeps: finalising a
    window is atomic, so concurrent sweepers never write an example twice). ``cluster``:
    ``redis_url`` names a node of a Redis Cluster."""
    where = RedisSettings(url=redis_url, cluster=cluster)
    redis = connect(where, decode_responses=True)
    redis_bin = connect(where, decode_responses=False)
    try:
        runner = LearnerRunner(
            redis_bin,
            RewardJoin(redis, prefix),
            ExperimentStore(redis, prefix),
            prefix,
            holder=holder,
            snapshot_interval_s=snapshot_interval_s,
            sweep_interval_s=sweep_interval_s,
            shard=shard,
        )
        log.info("learner_started", holder=holder, shard=runner.shard.label or "all")
        await runner.run(stop)
        log.info("learner_stopped", learned=runner.learner.learned)
        return runner
    finally:
        await redis.aclose()
        await redis_bin.aclose()
