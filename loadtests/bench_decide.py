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
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import redis

from decision_api.feature_store import encode_feature, unit_key
from decision_api.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "loadtests" / "results"
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


# ---------------------------------------------------------------------------------------------
# Processes


def proc_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the given processes (their own, not reaped children)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def busiest_thread_cpu(pids: list[int]) -> dict[tuple[int, int], float]:
    """CPU seconds of every thread of the given processes, keyed by (pid, tid)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[(pid, int(task.name))] = (int(fields[11]) + int(fields[12])) / tick
    return out


def start_server(workdir: Path, redis_url: str, port: int) -> subprocess.Popen[bytes]:
    """``tailor serve`` on its embedded chdb, the private Redis, keys and JSON logs on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env.update(
        TAILOR_REDIS_URL=redis_url,
        TAILOR_REDIS_KEY_PREFIX=PREFIX,
        TAILOR_DATA_DIR=str(workdir / "data"),
        TAILOR_EVENT_LOG_URL=f"chdb://{workdir / 'data' / 'chdb'}",
        TAILOR_EVENT_LOG_SPOOL_DIR=str(workdir / "data" / "spool"),
        TAILOR_AUTH_API_KEYS=f"{ADMIN_KEY}:admin,{DECIDE_KEY}:decide",
        TAILOR_AUTH_RATE_LIMIT_PER_S="1000000",
        TAILOR_AUTH_RATE_LIMIT_BURST="1000000",
        TAILOR_LOG_FORMAT="json",
        TAILOR_LOG_LEVEL="info",
    )
    tailor = Path(sys.executable).with_name("tailor")
    command = [str(tailor)] if tailor.exists() else [sys.executable, "-m", "decision_api.cli"]
    log = (workdir / "serve.log").open("wb")
    return subprocess.Popen(
        [*command, "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Block until ``/readyz`` answers 200."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("server did not become ready:\n" + log_path.read_text()[-3000:])


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


def server_counters(url: str) -> dict[str, float]:
    """Decisions served and exposures written, from the server's /metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out = {"decisions": 0.0, "exposures_written": 0.0, "queue_depth": 0.0, "flush_errors": 0.0}
    for line in text.splitlines():
        if line.startswith("tailor_decisions_total{"):
            out["decisions"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith('tailor_events_written_total{table="exposures"}'):
            out["exposures_written"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("tailor_event_queue_depth "):
            out["queue_depth"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("tailor_event_flush_errors_total{"):
            out["flush_errors"] += float(line.rsplit(" ", 1)[1])
    return out


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


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response; returns its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"content-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at)
        await reader.readexactly(int(lower[at + 15 : end]))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


class Generator:
    """Closed- or open-loop load over keep-alive connections."""

    def __init__(self, port: int, requests: list[bytes], concurrency: int, rate: float) -> None:
        self.port = port
        self.requests = requests
        self.concurrency = concurrency
        self.rate = rate
        self.latencies: list[int] = []
        self.errors = 0
        self._next = 0

    async def run(self, duration: float) -> float:
        """Drive load for ``duration`` seconds; returns the measured wall time."""
        conns = [await asyncio.open_connection("127.0.0.1", self.port)
                 for _ in range(self.concurrency)]  # fmt: skip
        self.latencies, self.errors, self._next = [], 0, 0
        start = time.perf_counter_ns()
        stop = start + int(duration * 1e9)
        worker = self._open if self.rate > 0 else self._closed
        await asyncio.gather(*(worker(r, w, start, stop) for r, w in conns))
        elapsed = (time.perf_counter_ns() - start) / 1e9
        for _, w in conns:
            w.close()
        return elapsed

    async def _closed(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, start: int, stop: int
    ) -> None:
        requests, n = self.requests, len(self.requests)
        clock = time.perf_counter_ns
        while (t0 := clock()) < stop:
            i = self._next
            self._next = i + 1
            writer.write(requests[i % n])
            try:
                status = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                self.errors += 1
                return
            self.latencies.append(clock() - t0)
            if status != 200:
                self.errors += 1

    async def _open(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, start: int, stop: int
    ) -> None:
        requests, n = self.requests, len(self.requests)
        clock = time.perf_counter_ns
        interval = 1e9 / self.rate
        while True:
            i = self._next
            self._next = i + 1
            scheduled = start + int(i * interval)
            if scheduled >= stop:
                return
            wait = scheduled - clock()
            if wait > 0:
                await asyncio.sleep(wait / 1e9)
            writer.write(requests[i % n])
            try:
                status = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                self.errors += 1
                return
            # From the scheduled time: a late send is the server's (or the generator's) delay.
            self.latencies.append(clock() - scheduled)
            if status != 200:
                self.errors += 1


def start_profiler(path: Path | None, pid: int, duration: float) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the server process tree for ``duration`` seconds, if asked for."""
    if path is None:
        return None
    spy = Path(sys.executable).with_name("py-spy")
    command = [str(spy), "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
               "--threads", "--duration", str(int(duration)), "--rate", "200", "--format", "raw",
               "--output", str(path)]  # fmt: skip
    if os.environ.get("BENCH_PYSPY_NATIVE"):
        command.append("--native")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise(
    mode: str, elapsed: float, gen: Generator, cpu: tuple[float, float, float]
) -> RunResult:
    """Figures of one run."""
    lat = np.asarray(gen.latencies, dtype=np.float64) / 1e6
    p50, p95, p99 = np.percentile(lat, [50, 95, 99]) if lat.size else (np.nan,) * 3
    return RunResult(
        mode=mode,
        duration_s=round(elapsed, 3),
        requests=int(lat.size),
        errors=gen.errors,
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
    gen = Generator(port, requests, args.concurrency, rate=0)
    if args.warmup > 0:
        await gen.run(args.warmup)
    gen.rate = args.rate
    mode = f"open loop at {args.rate:g}/s" if args.rate > 0 else "closed loop"
    results = []
    for run in range(args.runs):
        spy = start_profiler(args.profile, server_pids[0], args.duration) if run == 0 else None
        server_before = cpu_seconds(server_pids)
        threads_before = busiest_thread_cpu(server_pids)
        own_before = time.process_time()
        elapsed = await gen.run(args.duration)
        threads_after = busiest_thread_cpu(server_pids)
        loop_cpu = max(v - threads_before.get(k, 0.0) for k, v in threads_after.items())
        cpu = (
            cpu_seconds(server_pids) - server_before,
            time.process_time() - own_before,
            loop_cpu,
        )
        result = summarise(mode, elapsed, gen, cpu)
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
    server = start_server(workdir, redis_server.url, port)
    try:
        wait_healthy(url, server, workdir / "serve.log")
        setup_experiment(url)
        loaded = load_features(redis_server.url, args.units, np.random.default_rng(args.seed))
        print(f"features for {args.units:,} units loaded in {loaded:.1f} s", flush=True)
        server_pids = proc_tree(server.pid)
        results = asyncio.run(measure(args, port, server_pids))
        # Every decision's exposure must reach the event log (flush interval 1 s).
        deadline = time.monotonic() + 15
        counters = server_counters(url)
        while counters["exposures_written"] < counters["decisions"] and time.monotonic() < deadline:
            time.sleep(0.5)
            counters = server_counters(url)
    finally:
        tree = proc_tree(server.pid)[1:]  # granian's worker: orphaned if only the parent dies
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        for pid in tree:  # still there after the parent's exit (and not a reused pid)?
            with contextlib.suppress(OSError):
                if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        redis_server.stop()

    def median(name: str) -> float:
        return round(statistics.median(getattr(r, name) for r in results), 3)

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
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"bench_decide-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "runs": [msgspec.to_builtins(r) for r in results],
                "median": summary,
                "server": counters,
            },
            indent=2,
        )
        + "\n"
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
