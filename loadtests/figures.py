"""Figures of ``loadgen.py``: percentiles per request kind, server CPU and RSS, soak verdict."""

from __future__ import annotations

import statistics
import time
from typing import Any

import msgspec
import numpy as np

from loadtests.harness import (
    ServerUnderTest,
    busiest_thread_delta,
    cpu_seconds,
    load_average,
    process_name,
    rss_bytes,
    thread_cpu,
)
from loadtests.http_load import Sample

KINDS = ("decide", "outcome", "features")


class KindFigures(msgspec.Struct, kw_only=True):
    """Latency and throughput of one request kind (or all of them)."""

    requests: int
    per_s: float
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


class RunFigures(msgspec.Struct, kw_only=True):
    """One measured run."""

    mode: str
    duration_s: float
    overall: KindFigures
    kinds: dict[str, KindFigures]
    statuses: dict[str, int]
    send_lag_p99_ms: float
    not_sent: int
    server_cpu_s: float
    server_cpu_share: float
    busiest_thread_cpu_s: float
    processes: dict[str, float]
    redis_cpu_s: float
    loadgen_cpu_s: float
    server_rss_mb: float
    load_avg: tuple[float, float, float]


def kind_figures(latencies_ns: np.ndarray[Any, Any], errors: int, elapsed: float) -> KindFigures:
    """Percentiles of latencies given in nanoseconds."""
    lat = latencies_ns.astype(np.float64) / 1e6
    if lat.size:
        p50, p95, p99 = (float(x) for x in np.percentile(lat, [50, 95, 99]))
        top = float(lat.max())
    else:
        p50 = p95 = p99 = top = float("nan")
    return KindFigures(
        requests=int(lat.size), per_s=round(lat.size / elapsed, 1), errors=errors,
        p50_ms=round(p50, 3), p95_ms=round(p95, 3), p99_ms=round(p99, 3), max_ms=round(top, 3),
    )  # fmt: skip


def sample_figures(sample: Sample, elapsed: float) -> tuple[KindFigures, dict[str, KindFigures]]:
    """Overall and per-kind figures of a sample."""
    arrays = [np.frombuffer(a, dtype=np.int64) for a in sample.latencies]
    kinds = {
        name: kind_figures(arrays[k], sample.errors[k], elapsed)
        for k, name in enumerate(KINDS)
        if len(arrays[k]) or sample.errors[k]
    }
    overall = kind_figures(np.concatenate(arrays), sum(sample.errors), elapsed)
    return overall, kinds


class Meters:
    """CPU and memory of the server tree, Redis and this process between two readings."""

    def __init__(self, server: ServerUnderTest, redis_pids: list[int]) -> None:
        self.server = server
        self.redis_pids = redis_pids
        self.reset()

    def reset(self) -> None:
        """Start a new interval."""
        self.pids = self.server.pids()
        self.wall = time.perf_counter()
        self.per_process = {pid: cpu_seconds([pid]) for pid in self.pids}
        self.threads = thread_cpu(self.pids)
        self.redis = cpu_seconds(self.redis_pids)
        self.own = time.process_time()

    def read(self) -> dict[str, Any]:
        """CPU used since :meth:`reset` (server total and per process, busiest thread, Redis,
        generator) and the server's RSS now."""
        wall = time.perf_counter() - self.wall
        per = {pid: cpu_seconds([pid]) - before for pid, before in self.per_process.items()}
        total = sum(per.values())
        return {
            "server_cpu_s": round(total, 2),
            "server_cpu_share": round(total / wall, 3) if wall else 0.0,
            "busiest_thread_cpu_s": round(busiest_thread_delta(self.threads,
                                                               thread_cpu(self.pids)), 2),
            "processes": {f"{pid} {process_name(pid)}": round(v, 2) for pid, v in per.items()},
            "redis_cpu_s": round(cpu_seconds(self.redis_pids) - self.redis, 2),
            "loadgen_cpu_s": round(time.process_time() - self.own, 2),
            "server_rss_mb": round(rss_bytes(self.pids) / 2**20, 1),
        }  # fmt: skip


def print_run(label: str, run: RunFigures) -> None:
    """One run's figures, overall and per kind."""
    o = run.overall
    print(
        f"{label}: {o.per_s:8.1f} req/s  p50 {o.p50_ms:6.2f} ms  p95 {o.p95_ms:6.2f}  "
        f"p99 {o.p99_ms:6.2f}  max {o.max_ms:7.2f}  errors {o.errors}  "
        f"send-lag p99 {run.send_lag_p99_ms:.2f} ms  not sent {run.not_sent}  "
        f"load {run.load_avg[0]:.2f}",
        flush=True,
    )
    for name, k in run.kinds.items():
        print(
            f"    {name:9s} {k.per_s:8.1f}/s  p50 {k.p50_ms:6.2f}  p95 {k.p95_ms:6.2f}  "
            f"p99 {k.p99_ms:6.2f}  max {k.max_ms:7.2f}  errors {k.errors}",
            flush=True,
        )
    decisions = run.kinds.get("decide")
    per_decision = 1e6 * run.busiest_thread_cpu_s / max(decisions.requests if decisions else 1, 1)
    print(
        f"    cpu: server {run.server_cpu_s:.1f} s ({run.server_cpu_share:.2f} cores; busiest "
        f"thread {run.busiest_thread_cpu_s:.1f} s = {per_decision:.0f} us/decision), "
        f"redis {run.redis_cpu_s:.1f} s, loadgen {run.loadgen_cpu_s:.1f} s; "
        f"server RSS {run.server_rss_mb:.0f} MB",
        flush=True,
    )


def make_run(
    mode: str, elapsed: float, sample: Sample, meters: dict[str, Any], due: int = 0
) -> RunFigures:
    """Bundle a run's figures; ``due`` is how many requests the open loop scheduled (0: closed
    loop), so that ``not_sent`` shows a rate the server did not sustain."""
    overall, kinds = sample_figures(sample, elapsed)
    lag = np.frombuffer(sample.send_lag, dtype=np.int64)
    return RunFigures(
        mode=mode,
        duration_s=round(elapsed, 3),
        overall=overall,
        kinds=kinds,
        statuses={str(k): v for k, v in sorted(sample.statuses.items())},
        send_lag_p99_ms=round(float(np.percentile(lag, 99)) / 1e6, 3) if lag.size else 0.0,
        not_sent=max(0, due - sample.sent),
        load_avg=load_average(),
        **meters,
    )


class SoakWindow(msgspec.Struct, kw_only=True):
    """One 30-second window of a soak."""

    t_s: float
    per_s: float
    decide_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_rss_mb: float
    server_cpu_share: float
    not_sent: int
    load_avg_1m: float


def verdict(windows: list[SoakWindow]) -> dict[str, Any]:
    """Flat or not: first third of the windows against the last third (p99 and RSS)."""
    third = max(1, len(windows) // 3)
    first, last = windows[:third], windows[-third:]
    p99_first = statistics.median(w.p99_ms for w in first)
    p99_last = statistics.median(w.p99_ms for w in last)
    rss_first = statistics.median(w.server_rss_mb for w in first)
    rss_last = statistics.median(w.server_rss_mb for w in last)
    p99_flat = p99_last <= max(1.5 * p99_first, p99_first + 2.0)
    rss_growth = (rss_last - rss_first) / rss_first if rss_first else 0.0
    rss_flat = rss_growth <= 0.10
    minutes = np.array([w.t_s / 60 for w in windows])
    rss = np.array([w.server_rss_mb for w in windows])
    slope = float(np.polyfit(minutes, rss, 1)[0]) if len(windows) >= 2 else 0.0
    return {
        "p99_first_third_ms": round(p99_first, 3), "p99_last_third_ms": round(p99_last, 3),
        "p99_flat": p99_flat,
        "rss_first_third_mb": round(rss_first, 1), "rss_last_third_mb": round(rss_last, 1),
        "rss_growth": round(rss_growth, 4), "rss_flat": rss_flat,
        "rss_slope_mb_per_min": round(slope, 2),
        "flat": p99_flat and rss_flat,
        "tolerance": "p99 last third <= max(1.5 x first third, first third + 2 ms); "
                     "RSS growth first -> last third <= 10 %",
    }  # fmt: skip


def median_summary(runs: list[RunFigures]) -> dict[str, Any]:
    """Medians over runs, overall and per kind."""

    def med(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    out: dict[str, Any] = {}
    for name in ("overall", *KINDS):
        figures = [r.overall if name == "overall" else r.kinds.get(name) for r in runs]
        present = [f for f in figures if f is not None]
        if not present:
            continue
        out[name] = {
            field: med([getattr(f, field) for f in present])
            for field in ("per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms")
        }
        out[name]["errors"] = sum(f.errors for f in present)
    out["server_cpu_share"] = med([r.server_cpu_share for r in runs])
    out["server_rss_mb"] = med([r.server_rss_mb for r in runs])
    out["load_avg_1m"] = med([r.load_avg[0] for r in runs])
    return out
