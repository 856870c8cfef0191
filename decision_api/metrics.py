"""Prometheus metrics, one registry per app (so tests can build several apps in one process).

Served as Prometheus text at ``/metrics``. Label sets are bounded: reason codes and policy kinds
are fixed vocabularies; experiment keys appear only on model-health metrics.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

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
        self.queue = Gauge("tailor_event_queue_depth", "Events buffered in memory", registry=r)
        self.spool = Gauge(
            "tailor_event_spool_bytes", "Bytes waiting in the disk spool", registry=r
        )
        self.model_load_failures = Counter(
            "tailor_model_load_failures",
            "Model snapshots that failed to load",
            ["experiment"],
            registry=r,
        )
        self.model_version = Gauge(
            "tailor_model_version_loaded",
            "Snapshot version serving, per experiment",
            ["experiment"],
            registry=r,
        )
        self.learned = Counter(
            "tailor_examples_learned", "Training examples learned", ["experiment"], registry=r
        )
        self.late_outcomes = Counter(
            "tailor_late_outcomes", "Outcomes after their decision's reward window (not learned)",
            ["experiment"], registry=r,
        )
        self.early_outcomes = Counter(
            "tailor_early_outcomes",
            "Outcomes dated before their decision (or its send_at): rejected, not learned",
            ["experiment"], registry=r,
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
            "The largest event-loop lag measured since the worker started",
            registry=r,
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
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
