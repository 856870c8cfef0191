"""Benchmark: ``POST /v1/decide`` over HTTP against a real ``tailor serve`` process.

Run: ``.venv/bin/python loadtests/bench_decide.py [--runs 3] [--duration 20] [--concurrency 32]
[--rate 0] [--units 100000]``

It starts a private ``redis-server`` and ``tailor serve`` (granian, one worker, embedded chdb event
log in a temporary directory, JSON logging at ``info``, API keys on), creates one running
fixed-split experiment whose targeting reads profile features, loads features for ``--units``
units into Redis (pipelined), and drives ``/v1/decide`` (one placement, random unit ids) from this
single Python process with a purpose-built load generator: raw asyncio HTTP/1.1 keep-alive
connections (uvloop), requests encoded before the clock starts.

- closed loop (``--rate 0``, the default): ``--concurrency`` connections, each sends its next
  request as soon as the previous answer arrives — the maximum throughput;
- open loop (``--rate R``): requests are scheduled at a fixed R per second and latency is measured
  from the scheduled time, so a stalled server is charged for the requests it delayed (no
  coordinated omission); ``--concurrency`` must cover R x latency.

Printed per run: decisions/s, p50/p95/p99/max latency, errors; then the medians over runs, the
CPU seconds the server and the load generator used, and whether every decision's exposure reached
the event log. The JSON goes to ``loadtests/results/``. Target on a 2-core machine, load generator
included: >= 2,000 decisions/s with p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import redis

from decision_api.profiles.store import encode_feature, unit_key
from decision_api.redis_server import RedisServer, free_port

if __package__ in (None, ""):  # run as a script: make ``loadtests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtests.harness import (
    REPO,
    ServerUnderTest,
    busiest_thread_delta,
    cpu_seconds,
    server_counters,
    start_profiler,
    thread_cpu,
    write_result,
)
from loadtests.http_load import LoadGenerator, Sample

ADMIN_KEY = "bench-admin-key"
DECIDE_KEY = "bench-decide-key"
PREFIX = "bench"
PLACEMENT = "home_hero"
EXPERIMENT: dict[str, Any] = {
    "key": "hero-banner",
    "placement": PLACEMENT,
    "variants": [
        {"key": "control", "weight": 1, "payload": {"img": "a.png", "headline": "Welcome back"}},
        {"key": "spring", "weight": 1, "payload": {"img": "b.png", "headline": "Spring is here"}},
        {"key": "summer", "weight": 2, "payload": {"img": "c.png", "headline": "Hello summer"}},
    ],
    "default_variant": "control",
    "policy": {"kind": "fixed"},
    # Reads profile features, so every decision uses the Redis round trip it makes.
    "targeting": {
        "any": [
            {"attribute": "visits_30d", "op": "gte", "value": 0},
            {"attribute": "segment", "op": "in", "value": ["new", "regular", "vip"]},
        ]
    },
    "holdout": 0.05,
    "primary_metric": "purchase",
    "reward_window_s": 1800,
}


class RunResult(msgspec.Struct, kw_only=True):
    """One measured run."""

    mode: str
    duration_s: float
    requests: int
    errors: int
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_s: float
    loop_thread_cpu_s: float
    loadgen_cpu_s: float


def setup_experiment(url: str) -> None:
    """Create and start the benchmark's experiment through the admin API."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
        created = http.post("/v1/experiments", json=EXPERIMENT)
        created.raise_for_status()
        http.post(f"/v1/experiments/{EXPERIMENT['key']}/start").raise_for_status()


def load_features(redis_url: str, units: int, rng: np.random.Generator) -> float:
    """Write a profile for every unit, pipelined; returns seconds taken."""
    started = time.perf_counter()
    client = redis.Redis.from_url(redis_url)
    segments = ["new", "regular", "vip"]
    ltv = rng.gamma(2.0, 50.0, size=units)
    visits = rng.poisson(4, size=units)
    seg = rng.integers(0, 3, size=units)
    chunk = 2000
    for start in range(0, units, chunk):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(units, start + chunk)):
            features: dict[str, Any] = {
                "segment": segments[seg[i]],
                "ltv": round(float(ltv[i]), 2),
                "visits_30d": int(visits[i]),
                "favourite_categories": ["shoes", "bags"] if i % 2 else ["outdoor"],
                "newsletter": bool(i % 3),
            }
            key = unit_key(PREFIX, f"u-{i}")
            pipe.hset(key, mapping={"f:" + k: encode_feature(v) for k, v in features.items()})
            pipe.expire(key, 86400)
        pipe.execute()
    client.close()
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# Load generator


def encode_requests(units: int, count: int, rng: np.random.Generator, port: int) -> list[bytes]:
    """``count`` complete HTTP/1.1 requests for random units, encoded up front."""
    devices = [b"mobile", b"desktop", b"tablet"]
    pages = [b"/", b"/sale", b"/products/shoes", b"/cart"]
    ids = rng.integers(0, units, size=count)
    out = []
    for n, i in enumerate(ids):
        body = (
            b'{"unit_id":"u-%d","placements":["%s"],"context":{"device":"%s","page":"%s",'
            b'"hour":%d},"consent":true}'
            % (int(i), PLACEMENT.encode(), devices[n % 3], pages[n % 4], n % 24)
        )
        head = (
            b"POST /v1/decide HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (port, DECIDE_KEY.encode(), len(body))
        )
        out.append(head + body)
    return out


class DecideRequests:
    """The workload: the pre-encoded decide requests, in turn."""

    kinds = ("decide",)

    def __init__(self, requests: list[bytes]) -> None:
        self._requests = requests

    def request(self, i: int) -> tuple[int, bytes, int]:
        """The ``i``-th request."""
        return 0, self._requests[i % len(self._requests)], 0

    def response(self, kind: int, tag: int, status: int, body: bytes) -> None:
        """Answers are only counted (by the generator)."""


def summarise(
    mode: str, elapsed: float, sample: Sample, cpu: tuple[float, float, float]
) -> RunResult:
    """Figures of one run."""
    lat = np.frombuffer(sample.latencies[0], dtype=np.int64).astype(np.float64) / 1e6
    p50, p95, p99 = np.percentile(lat, [50, 95, 99]) if lat.size else (np.nan,) * 3
    return RunResult(
        mode=mode,
        duration_s=round(elapsed, 3),
        requests=int(lat.size),
        errors=sample.errors[0],
        throughput=round(lat.size / elapsed, 1),
        p50_ms=round(float(p50), 3),
        p95_ms=round(float(p95), 3),
        p99_ms=round(float(p99), 3),
        max_ms=round(float(lat.max()) if lat.size else float("nan"), 3),
        server_cpu_s=round(cpu[0], 2),
        loop_thread_cpu_s=round(cpu[2], 2),
        loadgen_cpu_s=round(cpu[1], 2),
    )


async def measure(args: argparse.Namespace, port: int, server_pids: list[int]) -> list[RunResult]:
    """Warm up, then the measured runs."""
    rng = np.random.default_rng(args.seed)
    requests = encode_requests(args.units, 50_000, rng, port)
    gen = LoadGenerator(port, DecideRequests(requests), args.concurrency, rate=0)
    if args.warmup > 0:
        await gen.run(args.warmup)
    gen.rate = args.rate
    mode = f"open loop at {args.rate:g}/s" if args.rate > 0 else "closed loop"
    results = []
    for run in range(args.runs):
        spy = start_profiler(args.profile, server_pids[0], args.duration) if run == 0 else None
        server_before = cpu_seconds(server_pids)
        threads_before = thread_cpu(server_pids)
        own_before = time.process_time()
        elapsed = await gen.run(args.duration)
        loop_cpu = busiest_thread_delta(threads_before, thread_cpu(server_pids))
        cpu = (
            cpu_seconds(server_pids) - server_before,
            time.process_time() - own_before,
            loop_cpu,
        )
        result = summarise(mode, elapsed, gen.take(), cpu)
        results.append(result)
        if spy is not None:
            spy.wait(timeout=60)
        print(
            f"run {run + 1}: {result.throughput:8.1f} decisions/s  p50 {result.p50_ms:6.2f} ms"
            f"  p95 {result.p95_ms:6.2f}  p99 {result.p99_ms:6.2f}  max {result.max_ms:7.2f}"
            f"  errors {result.errors}  cpu: server {result.server_cpu_s:.1f} s"
            f" (event loop {result.loop_thread_cpu_s:.1f} s ="
            f" {1e6 * result.loop_thread_cpu_s / max(result.requests, 1):.0f} us/decision),"
            f" loadgen {result.loadgen_cpu_s:.1f} s",
            flush=True,
        )
    return results


def main() -> int:
    """Set up, measure, report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the runs")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--rate", type=float, default=0.0, help="open-loop req/s (0: closed)")
    parser.add_argument("--units", type=int, default=100_000, help="units with profiles")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=1, help="API worker processes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--profile",
        type=Path,
        help="record the server with py-spy during the first run (collapsed stacks to this file)",
    )
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    workdir = Path(tempfile.mkdtemp(prefix="bench-decide-"))
    redis_server = RedisServer(workdir / "redis", persist=False).start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServerUnderTest(
        workdir,
        redis_server.url,
        port,
        prefix=PREFIX,
        api_keys=f"{ADMIN_KEY}:admin,{DECIDE_KEY}:decide",
        workers=args.workers,
    )
    try:
        server.wait_ready()
        setup_experiment(url)
        loaded = load_features(redis_server.url, args.units, np.random.default_rng(args.seed))
        print(f"features for {args.units:,} units loaded in {loaded:.1f} s", flush=True)
        server_pids = server.pids()
        results = asyncio.run(measure(args, port, server_pids))
        # Every decision's exposure must reach the event log (flush interval 1 s).
        deadline = time.monotonic() + 15
        counters = server_counters(url)
        while counters["exposures_written"] < counters["decisions"] and time.monotonic() < deadline:
            time.sleep(0.5)
            counters = server_counters(url)
    finally:
        server.stop()  # granian's worker too (orphaned if only the parent dies)
        redis_server.stop()

    def median(name: str) -> float:
        return round(float(statistics.median(getattr(r, name) for r in results)), 3)

    summary = {k: median(k) for k in ("throughput", "p50_ms", "p95_ms", "p99_ms", "max_ms")}
    summary["errors"] = sum(r.errors for r in results)
    print(
        f"median of {len(results)} runs ({results[0].mode}, {args.concurrency} connections): "
        f"{summary['throughput']:.0f} decisions/s, p50 {summary['p50_ms']:.2f} ms, "
        f"p95 {summary['p95_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms, "
        f"max {summary['max_ms']:.2f} ms, errors {summary['errors']}"
    )
    print(
        f"server: {counters['decisions']:.0f} decisions served (warm-up included), "
        f"{counters['exposures_written']:.0f} exposures written to chdb, "
        f"flush errors {counters['flush_errors']:.0f}"
    )
    out = write_result(
        "bench_decide",
        {
            "command": " ".join(sys.argv),
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "runs": [msgspec.to_builtins(r) for r in results],
            "median": summary,
            "server": counters,
        },
    )
    print(f"wrote {out.relative_to(REPO)}")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
