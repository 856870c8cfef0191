"""Automatic pause on guard-rail harm: the report's check, run in the background.

An experiment with ``auto_pause_on_harm: true`` is paused by itself when its report finds
significant harm on a guard-rail metric — the verdict's own test: the always-valid (confidence
sequence) test after the multiple-testing correction, with enough outcomes, the metric going up
(:func:`experiments.reports.verdict.guardrail_harms`). The report is built off the decision path,
in a worker thread, once per check interval by one worker only; the pause goes through
:meth:`experiments.store.ExperimentStore.pause_for_harm` (the admin lock, and only if the
definition the harm was measured on is still the running one), so it is stored and audited once.

Key layout (``{p}`` is ``redis.key_prefix``):

==============================  ========  ===========================================  ==========
key                             type      holds                                        TTL
==============================  ========  ===========================================  ==========
``{p}:exp:guardrail_lease``     STRING    the worker running this interval's check     interval
==============================  ========  ===========================================  ==========
"""

from __future__ import annotations

import asyncio
import time

import structlog
from redis.asyncio import Redis

from event_log.store import EventLog
from experiments.reports.build import build_report
from experiments.reports.results import ReportOptions
from experiments.reports.verdict import guardrail_harms
from experiments.store import ExperimentStore
from tailor_contract.definitions import Experiment, Status

log = structlog.get_logger("tailor.guardrail")

CHECK_OPTIONS = ReportOptions(off_policy=False)
"""The report the check reads: the whole run, the default level and correction, no off-policy
pass (the guard-rail comparisons do not need it)."""


def watched(experiments: list[Experiment]) -> list[Experiment]:
    """The experiments the check reads: running, with ``auto_pause_on_harm`` and guard-rails."""
    return [
        e
        for e in experiments
        if e.status is Status.RUNNING and e.auto_pause_on_harm and e.guardrail_metrics
    ]


def harm_reason(harms: list[str]) -> str:
    """The stored (and reported) reason of a guard-rail pause."""
    return "; ".join(harms)


class GuardrailWatch:
    """Reads the reports of watched experiments and pauses those that show guard-rail harm."""

    def __init__(
        self,
        store: ExperimentStore,
        event_log: EventLog,
        redis: Redis,
        prefix: str,
        *,
        holder: str,
        interval_s: float,
    ) -> None:
        self._store = store
        self._event_log = event_log
        self._redis = redis
        self._lease = f"{prefix}:exp:guardrail_lease"
        self._holder = holder
        self._interval_ms = max(1, int(interval_s * 1000))

    async def _take_lease(self) -> bool:
        """Whether this worker runs this interval's check (one worker per interval)."""
        taken = await self._redis.set(self._lease, self._holder, nx=True, px=self._interval_ms)
        return bool(taken)

    async def harms(self, experiment: Experiment) -> list[str]:
        """The guard-rail harms in ``experiment``'s report now (a report build, in a thread)."""
        report = await asyncio.to_thread(build_report, self._event_log, experiment, CHECK_OPTIONS)
        return guardrail_harms(report)

    async def check(
        self, experiments: list[Experiment], now: float | None = None
    ) -> list[Experiment]:
        """Check every watched experiment once (if this worker holds the interval's lease) and
        pause the harmful ones; returns the experiments this call paused.

        Raises:
            EventLogUnavailable: when the event log cannot be queried.
            RedisError: when Redis cannot be reached.
        """
        candidates = watched(experiments)
        if not candidates or not await self._take_lease():
            return []
        paused = []
        for experiment in candidates:
            harms = await self.harms(experiment)
            if not harms:
                continue
            at = time.time() if now is None else now
            changed = await self._store.pause_for_harm(
                experiment.key, experiment.version, harm_reason(harms), at
            )
            if changed is not None:
                log.warning(
                    "experiment_paused_on_harm",
                    experiment=experiment.key,
                    version=changed.version,
                    harms=harms,
                )
                paused.append(changed)
        return paused
