"""Prometheus metrics, one registry per app (so tests can build several apps in one process).

Served as Prometheus text at ``/metrics``. Label sets are bounded: reason codes and policy kinds
are fixed vocabularies; experiment keys appear only on model-health metrics.

Several workers (``tailor serve --workers N``) use prometheus_client's multiprocess mode:
``serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` to a fresh directory before any worker starts, every
process writes its values to its own memory-mapped files there, and :meth:`Metrics.render`
merges all of them, so every worker answers a scrape with the same totals. Counters and
histograms add up over every process that ever ran (a dead worker's counts stay counted);
gauges say how they merge (``multiprocess_mode``): depths add up over live workers, the loop
lag is the worst live worker's, the model version the oldest one a live worker serves. A worker
that stops deletes its live gauges (:meth:`Metrics.close`), and one that died without stopping
is pruned at the next scrape.
"""

from __future__ import annotations

import os
import re

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The directory of per-process metric files (prometheus_client reads it at import)."""

# Live gauges' files are named ``gauge_live<mode>_<pid>.db``.
_LIVE_GAUGE_FILE = re.compile(r"\Agauge_live[a-z]+_(\d+)\.db\Z")


def multiprocess_dir() -> str | None:
    """The multiprocess directory when ``PROMETHEUS_MULTIPROC_DIR`` names one, else None.

    prometheus_client picks memory-mapped values once, at import, from that variable; a
    process that imported it before the variable was set (a worker forked from a server that
    had) is switched to them here, before any of :class:`Metrics`' metrics exist.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return path


def prune_dead_processes(path: str) -> list[int]:
    """Delete the live-gauge files of processes that no longer exist; returns their pids.

    A worker killed without running its shutdown (OOM, SIGKILL) leaves its queue depth and
    loop lag behind; ``mark_process_dead`` is what its parent would call, done here instead
    because the server (granian) is not ours to hook.
    """
    dead: set[int] = set()
    for name in os.listdir(path):
        match = _LIVE_GAUGE_FILE.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid not in dead and not _alive(pid):
            dead.add(pid)
    for pid in dead:
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    return sorted(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


# ``*_created`` series double the exposition for no operational value.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    1.0,
)

LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """Every metric the service exports."""

    def __init__(self) -> None:
        self.multiprocess_dir = multiprocess_dir()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions = Counter(
            "tailor_decisions", "Placement decisions served", ["policy", "reason"], registry=r
        )
        self.decision_latency = Histogram(
            "tailor_decision_latency_seconds",
            "Time to answer a decide request (server side)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fast_path = Counter(
            "tailor_decide_fast_path",
            "Decide requests served by the fast path (the rest went through the full handler)",
            registry=r,
        )
        self.fast_outcomes = Counter(
            "tailor_outcomes_fast_path",
            "Single outcomes (POST /v1/outcomes) served by the fast path (the rest went through "
            "the full handler)",
            registry=r,
        )
        self.degraded = Counter(
            "tailor_degraded_responses",
            "Responses answered without a backend",
            ["backend"],
            registry=r,
        )
        self.outcomes = Counter("tailor_outcomes", "Outcomes accepted", ["type"], registry=r)
        self.unit_events = Counter("tailor_unit_events", "Behavioural events accepted", registry=r)
        self.unit_events_dropped = Counter(
            "tailor_unit_events_dropped",
            "Behavioural events accepted but not applied (unit opted out, or erased just now)",
            ["reason"],
            registry=r,
        )
        self.written = Counter(
            "tailor_events_written", "Rows written to the event log", ["table"], registry=r
        )
        self.flush_errors = Counter(
            "tailor_event_flush_errors", "Event-log inserts that failed", ["table"], registry=r
        )
        self.dropped = Counter(
            "tailor_events_dropped", "Events lost (buffer and spool full)", registry=r
        )
        self.dead_lettered = Counter(
            "tailor_events_dead_lettered",
            "Rows the event log rejected for good, set aside in the spool's dead/",
            ["table"],
            registry=r,
        )
        self.queue = Gauge(
            "tailor_event_queue_depth",
            "Events buffered in memory",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.spool = Gauge(
            "tailor_event_spool_bytes",
            "Bytes waiting in the disk spool",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_load_failures = Counter(
            "tailor_model_load_failures",
            "Model snapshots that failed to load",
            ["experiment"],
            registry=r,
        )
        self.model_version = Gauge(
            "tailor_model_version_loaded",
            "Snapshot version serving, per experiment (with several workers: the oldest one a "
            "live worker serves)",
            ["experiment"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.learned = Counter(
            "tailor_examples_learned", "Training examples learned", ["experiment"], registry=r
        )
        self.late_outcomes = Counter(
            "tailor_late_outcomes",
            "Outcomes after their decision's reward window (not learned)",
            ["experiment"],
            registry=r,
        )
        self.early_outcomes = Counter(
            "tailor_early_outcomes",
            "Outcomes dated before their decision (or its send_at): rejected, not learned",
            ["experiment"],
            registry=r,
        )
        self.loop_lag = Histogram(
            "tailor_event_loop_lag_seconds",
            "How late the event loop woke a 10 ms timer: time it spent on something else "
            "(a long callback, a model load holding the GIL)",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "tailor_event_loop_lag_max_seconds",
            "The largest event-loop lag measured since the worker started (with several "
            "workers: the largest over live workers)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.rate_limited = Counter(
            "tailor_rate_limited", "Requests refused by rate limits", registry=r
        )

    # WriterMetrics protocol
    def events_written(self, table: str, count: int) -> None:
        """Rows inserted into the event log."""
        self.written.labels(table).inc(count)

    def flush_failed(self, table: str) -> None:
        """An insert failed and its batch was spooled."""
        self.flush_errors.labels(table).inc()

    def events_dropped(self, count: int) -> None:
        """Events lost because the buffer and the spool were both full."""
        self.dropped.inc(count)

    def events_dead_lettered(self, table: str, count: int) -> None:
        """Rows the event log rejected for good, set aside in the spool's ``dead/``."""
        self.dead_lettered.labels(table).inc(count)

    def queue_depth(self, depth: int, spooled_bytes: int) -> None:
        """Events buffered in memory, bytes waiting in the spool."""
        self.queue.set(depth)
        self.spool.set(spooled_bytes)

    def render(self) -> bytes:
        """The Prometheus text exposition: this app's registry, or every process's merged.

        In multiprocess mode the answer is the same whichever worker renders it: the merge of
        every process's files in the directory (after pruning the live gauges of dead ones).
        """
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        prune_dead_processes(self.multiprocess_dir)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    def close(self) -> None:
        """Delete this process's live gauges (a stopping worker no longer counts in them)."""
        if self.multiprocess_dir is not None:
            mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]
