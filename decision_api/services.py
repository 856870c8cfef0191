"""Everything a worker holds open: Redis, the event log and its writer, caches, the engine.

Opened in the app's lifespan (:func:`open_services`) and closed in reverse order; background
tasks (config polling, flushing) start here too. Handlers receive the :class:`Services` object by
dependency injection — nothing is reached through globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from decision_api.access.key_store import KeyStore, refresh_ring
from decision_api.access.keys import KeyRing, current_actor, parse_bootstrap_keys
from decision_api.access.rate_limit import RateLimiter
from decision_api.decisions.controls import Controls
from decision_api.decisions.engine import DecisionEngine, Pseudonymiser
from decision_api.learning.runtime import LearnerRunner, LearningPolicies
from decision_api.logging import WARN_INTERVAL_S
from decision_api.loop_lag import LoopLagMonitor
from decision_api.metrics import Metrics
from decision_api.privacy.data_rights import DataRights, Tombstones
from decision_api.profiles.batcher import ProfileBatcher
from decision_api.profiles.store import RedisFeatureStore
from decision_api.redis_client import connect, connect_sync, migrate_layout
from decision_api.settings import Settings
from event_log.relay import RelayEventLog
from event_log.rows import AuditEntry
from event_log.spool import Spool
from event_log.store import DeferredEventLog, EventLog, open_event_log
from event_log.throttle import Throttle
from event_log.writer import EventWriter, now_ms
from experiments.cache import ExperimentCache
from experiments.errors import ExperimentConflict, ExperimentNotFound
from experiments.guardrail_watch import GuardrailWatch
from experiments.store import Action, ExperimentStore
from tailor_contract.definitions import Experiment
from tailor_contract.errors import EventLogUnavailable

log = structlog.get_logger("tailor.services")

SCHEDULE_ACTOR = "schedule"
"""The actor audited for lifecycle moves made by an experiment's ``start_at`` / ``end_at``."""
GUARDRAIL_ACTOR = "guardrail"
"""The actor audited for pauses made by ``auto_pause_on_harm``."""


class Services:
    """A worker's open resources and domain objects."""

    def __init__(
        self,
        *,
        settings: Settings,
        redis: Redis,
        redis_bin: Redis,
        event_log: EventLog,
        writer: EventWriter,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.redis = redis
        # Warnings every request would repeat while a backend is down (one per interval).
        self.warn = Throttle(log, every_s=WARN_INTERVAL_S)
        self.redis_bin = redis_bin
        self.event_log = event_log
        self.writer = writer
        self.metrics = metrics
        self.worker_id = settings.worker_id or f"w{os.getpid()}"
        prefix = settings.redis.key_prefix
        self.features = RedisFeatureStore(redis, prefix, settings.redis.profile_ttl_s)
        self.store = ExperimentStore(redis, prefix, audit=self._audit_experiment)
        self.cache = ExperimentCache(self.store)
        self.keys = KeyRing(parse_bootstrap_keys(settings.auth.api_keys))
        self.pseudonymise = Pseudonymiser(settings.pseudonym_secret)
        self.learning = LearningPolicies(redis, redis_bin, prefix, metrics)
        self.engine = DecisionEngine(
            features=self.features,
            cache=self.cache,
            policies=self.learning,
            sink=writer,
            metrics=metrics,
            pseudonymise=self.pseudonymise,
            rng=np.random.default_rng(),
            global_holdout=settings.decisions.global_holdout,
            sensitive_features=sensitive_features(settings),
        )
        self.engine.kill_switch = settings.decisions.kill_switch
        self.profiles = ProfileBatcher(self.features)
        self.engine.profile_reader = self.profiles.get
        self.key_store = KeyStore(redis, prefix)
        auth = settings.auth
        self.rate_limiter = RateLimiter(
            redis, prefix, rate_per_s=auth.rate_limit_per_s, burst=auth.rate_limit_burst
        )
        self.controls = Controls(redis, prefix, self.engine, forced=settings.decisions.kill_switch)
        # Erasure tombstones: every background writer drops what it holds for a unit erased a
        # moment ago (see decision_api.privacy.data_rights).
        self.tombstones = Tombstones(redis, prefix, self.pseudonymise)
        writer.screen = self.tombstones
        self.features.tombstones = self.tombstones
        self.learning.join.screen = self.tombstones
        self.data_rights = DataRights(
            redis=redis,
            prefix=prefix,
            event_log=event_log,
            writer=writer,
            pseudonymise=self.pseudonymise,
            audit=self.audit,
            flushers=(self.features.flush_caps, self.learning.join.flush),
            tombstones=self.tombstones,
            # The second sweep: after one flush interval of the other workers' writers.
            settle_s=max(0.25, settings.event_log.flush_interval_s),
        )
        self.guardrails = GuardrailWatch(
            self.store,
            event_log,
            redis,
            prefix,
            holder=self.worker_id,
            interval_s=settings.decisions.guardrail_check_interval_s,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.learner: LearnerRunner | None = None
        self.loop_lag = LoopLagMonitor(self._observe_lag)

    def _observe_lag(self, lag_s: float) -> None:
        self.metrics.loop_lag.observe(lag_s)
        if lag_s >= self.loop_lag.max_s:
            self.metrics.loop_lag_max.set(lag_s)

    async def refresh_config(self, force: bool = False) -> bool:
        """Reload experiment definitions if they changed, and follow them in the learners."""
        changed = await self.cache.refresh(force=force)
        if changed:
            self.learning.sync(self.cache.experiments())
        return changed

    async def poll_config(self) -> None:
        """The config poll: reload changed definitions, then apply any schedule that is due."""
        await self.refresh_config()
        await self.follow_schedules()

    async def follow_schedules(self, now: float | None = None) -> list[Experiment]:
        """Start drafts whose ``start_at`` has come and stop experiments whose ``end_at`` has.

        Every worker runs this each config poll; the check is in memory (the cache's schedule)
        and the store applies each move at most once across workers, audited like a manual
        change with actor ``schedule``. Returns the experiments this worker moved.
        """
        now = time.time() if now is None else now
        due = self.cache.due(now)
        if not due:
            return []
        token = current_actor.set(SCHEDULE_ACTOR)
        moved: list[Experiment] = []
        try:
            for key, action in due:
                try:
                    changed = await self.store.follow_schedule(key, action, now)
                except (ExperimentConflict, ExperimentNotFound) as exc:
                    self.warn.warning(
                        "schedule_failed", experiment=key, action=action, error=str(exc)
                    )
                    continue
                if changed is not None:
                    log.info(
                        "experiment_scheduled",
                        experiment=key,
                        action=action,
                        version=changed.version,
                    )
                    moved.append(changed)
        finally:
            current_actor.reset(token)
        if moved:
            await self.refresh_config()
        return moved

    async def check_guardrails(self, now: float | None = None) -> list[Experiment]:
        """Pause running experiments with ``auto_pause_on_harm`` whose report shows guard-rail
        harm, audited with actor ``guardrail`` (see :mod:`experiments.guardrail_watch`).

        Runs in the background every ``decisions.guardrail_check_interval_s`` on every worker;
        one worker per interval builds the reports (a Redis lease), never on the decision path.
        An event log that cannot be queried is logged (throttled) and retried next interval.
        Returns the experiments this worker paused.
        """
        token = current_actor.set(GUARDRAIL_ACTOR)
        try:
            paused = await self.guardrails.check(self.cache.experiments(), now)
        except EventLogUnavailable as exc:
            self.warn.warning("guardrail_check_failed", error=str(exc))
            return []
        finally:
            current_actor.reset(token)
        if paused:
            await self.refresh_config()
        return paused

    def start_learner(self) -> None:
        """Run the learner and reward sweeper in this process (leader-elected across workers)."""
        cfg = self.settings.learner
        self.learner = LearnerRunner(
            self.redis_bin,
            self.learning.join,
            self.store,
            self.settings.redis.key_prefix,
            holder=self.worker_id,
            snapshot_interval_s=cfg.snapshot_interval_s,
            sweep_interval_s=cfg.reward_sweep_interval_s,
            metrics=self.metrics,
        )
        self._tasks.append(asyncio.create_task(self.learner.run(self._stop), name="learner"))

    def audit(self, action: str, entity: str, key: str, version: int, detail: str) -> None:
        """Append an audit entry (configuration change or data-rights action)."""
        self.writer.submit(
            AuditEntry(
                event_id=uuid.uuid4(),
                ts_ms=now_ms(),
                actor=current_actor.get(),
                action=action,
                entity=entity,
                entity_key=key,
                version=version,
                detail=detail,
            )
        )

    def _audit_experiment(self, action: Action, experiment: Experiment) -> None:
        self.audit(
            action,
            "experiment",
            experiment.key,
            experiment.version,
            msgspec.json.encode(experiment).decode(),
        )

    def start_background(self, name: str, interval_s: float, step: Callable[[], object]) -> None:
        """Run ``step`` (sync or async) every ``interval_s`` until shutdown; errors are logged."""

        async def loop() -> None:
            failing = False
            while True:
                try:
                    result = step()
                    if asyncio.iscoroutine(result):
                        await result
                    if failing:
                        log.info("background_recovered", task=name)
                    failing = False
                except RedisError as exc:
                    if not failing:
                        log.warning("background_failed", task=name, error=str(exc))
                    failing = True
                await asyncio.sleep(interval_s)

        self._tasks.append(asyncio.create_task(loop(), name=name))

    async def close(self) -> None:
        """Stop background tasks, flush events, close connections."""
        self._stop.set()
        if self.learner is not None:
            learner_task = next(t for t in self._tasks if t.get_name() == "learner")
            with contextlib.suppress(asyncio.TimeoutError, RedisError):
                await asyncio.wait_for(asyncio.shield(learner_task), timeout=5)
        with contextlib.suppress(RedisError):
            await self.learning.join.flush()
            await self.features.flush_caps()
        # Cancel until done: on Python 3.11 a cancel that lands while redis-py's
        # ``asyncio.wait_for`` send completes is swallowed, and one cancel() would hang here.
        pending = set(self._tasks)
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        await self.writer.close()
        await asyncio.to_thread(self.event_log.close)
        await self.redis.aclose()
        await self.redis_bin.aclose()
        self.metrics.close()  # after the writer's last queue-depth update


def sensitive_features(settings: Settings) -> frozenset[str]:
    """The configured sensitive-feature denylist."""
    return frozenset(
        f.strip() for f in settings.decisions.sensitive_features.split(",") if f.strip()
    )


async def start_trust_pollers(services: Services) -> None:
    """Load API keys and the kill switch now, then poll both (one GET each per interval)."""
    ring, store = services.keys, services.key_store

    async def refresh_keys() -> None:
        await refresh_ring(store, ring)

    try:
        await refresh_ring(store, ring, force=True)
        await services.controls.poll()
    except RedisError as exc:
        log.warning("keys_load_failed", error=str(exc))
    interval = services.settings.decisions.config_poll_interval_s
    services.start_background("key-poll", interval, refresh_keys)
    services.start_background("controls-poll", interval, services.controls.poll)


async def open_redis(settings: Settings) -> tuple[Redis, Redis]:
    """The worker's Redis clients (text replies, binary replies), a single server's keys moved to
    the current layout first (see :func:`decision_api.redis_client.migrate_layout`)."""
    redis_options: dict[str, Any] = {
        "socket_timeout": settings.redis.socket_timeout_s,
        "socket_connect_timeout": settings.redis.socket_timeout_s,
        "health_check_interval": 5,
        "max_connections": 256,
    }
    # Hot commands over a pipelined connection of each client's own (single server).
    redis = connect(settings.redis, decode_responses=True, lean=True, **redis_options)
    # Model snapshots are binary, and learners block on the stream: their own pool.
    redis_bin = connect(settings.redis, decode_responses=False, lean=True, **redis_options)
    if not settings.redis.cluster:
        try:  # keys of the layout before the cluster one keep working
            await migrate_layout(redis, settings.redis.key_prefix)
        except RedisError as exc:
            log.warning("redis_layout_migration_failed", error=str(exc))
    return redis, redis_bin


@contextlib.asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Open Redis and the event log, start the writer and pollers; close all on exit."""
    metrics = Metrics()
    redis, redis_bin = await open_redis(settings)
    event_log: EventLog
    if settings.event_log.url.startswith("relay:"):
        # Several workers share one embedded chdb: its owner process is reached through Redis.
        event_log = RelayEventLog(
            settings.redis.url,
            settings.redis.key_prefix,
            connect=functools.partial(connect_sync, settings.redis),
        )
    else:
        try:
            event_log = await asyncio.to_thread(
                open_event_log, settings.event_log.url, settings.event_log.cluster
            )
        except EventLogUnavailable as exc:
            if settings.event_log.url.startswith("chdb:"):
                raise  # a local directory that cannot be opened is a configuration error
            # A ClickHouse server down at start-up: serve anyway, spool events until it answers.
            log.warning("event_log_unreachable_at_start", error=str(exc))
            event_log = DeferredEventLog(settings.event_log.url, cluster=settings.event_log.cluster)
    applied = await asyncio.to_thread(event_log.migrate)
    if applied:
        log.info("event_log_migrated", versions=applied)
    cfg = settings.event_log
    spool = Spool(Path(cfg.spool_dir), cfg.spool_max_bytes, cfg.spool_fsync)
    writer = EventWriter(
        event_log,
        spool,
        batch_size=cfg.batch_size,
        flush_interval_s=cfg.flush_interval_s,
        max_buffered=cfg.max_buffered,
        metrics=metrics,
    )
    services = Services(
        settings=settings,
        redis=redis,
        redis_bin=redis_bin,
        event_log=event_log,
        writer=writer,
        metrics=metrics,
    )
    writer.start()
    try:
        await services.refresh_config(force=True)
    except RedisError as exc:
        log.warning("config_load_failed", error=str(exc))
    services.start_background(
        "config-poll", settings.decisions.config_poll_interval_s, services.poll_config
    )
    services.start_background(
        "guardrail-check",
        settings.decisions.guardrail_check_interval_s,
        services.check_guardrails,
    )
    services.start_background("join-flush", 0.02, services.learning.join.flush)
    services.start_background("cap-flush", 0.02, services.features.flush_caps)
    services.start_background(
        "model-poll", settings.learner.model_poll_interval_s, services.learning.serving.poll
    )
    services._tasks.append(asyncio.create_task(services.loop_lag.run(), name="loop-lag"))
    if settings.learner.in_process is not False:  # unset: in-process (``tailor serve`` sets it)
        services.start_learner()
    await start_trust_pollers(services)
    if settings.pseudonym_secret == "change-me" and not services.keys.open:
        log.warning(
            "pseudonym_secret_default",
            detail="set TAILOR_PSEUDONYM_SECRET: pseudonyms of non-consenting units are only as "
            "private as this secret",
        )
    if services.keys.open:
        log.warning("auth_open", detail="no API key configured: every request is allowed")
    log.info("services_started", worker=services.worker_id, started=time.time())
    try:
        yield services
    finally:
        await services.close()
