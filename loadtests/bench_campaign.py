"""Benchmark: a 100,000-recipient email campaign through ``POST /v1/decide/batch``.

Run: ``.venv/bin/python loadtests/bench_campaign.py [--recipients 100000] [--request-size 50000]
[--runs 3] [--configs thompson,vw_cb] [--stream] [--workers 1]``

For each configuration it starts a private ``redis-server`` and a real ``tailor serve`` process
(granian, one worker, embedded chdb event log in a temporary directory, logging on), creates one
content placement (``subject``: 3 variants) and one send-time placement (``send_time``: hours of
day, 10% holdout), seeds open-hour histories for a third of the recipients, and sends the campaign
in requests of ``--request-size`` recipients (sequentially, one connection; ``--stream`` asks for
NDJSON; with ``--workers N``, N requests at a time to N API worker processes, which then hand
their events to the event-log owner process — the time until they are durable is not counted).
Configurations: ``thompson`` (``thompson`` for content, ``send_time_thompson`` for send time) and
``vw_cb`` (``vw_cb`` on both).

Printed per configuration: recipients/s of each run and their median, server CPU-seconds per
1k recipients (the whole ``tailor serve`` tree: worker, learner, embedded event log), the
latency of each 1,000-recipient chunk of the streamed answer (p50/p99 of the time between
successive chunks' answers), the time until every exposure of a run was written to the event
log and how many were (written/expected per run), and the server's peak RSS (``VmHWM`` of the
``tailor serve`` process tree). Targets (issue 15, one worker, median of 3 rounds): >= 50,000
recipients/s with Thompson, >= 25,000/s with vw_cb, every exposure stored, RSS < 1 GB.
Request bodies are encoded before the clock starts; the client only counts answers.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import numpy as np
import redis

from decision_api.profiles.store import unit_key
from decision_api.redis_server import RedisServer, free_port

if __package__ in (None, ""):  # run as a script: make ``loadtests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtests.harness import start_profiler

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "bench-admin-key"
PREFIX = "bench"
ZONES = (
    "America/New_York", "America/Chicago", "America/Los_Angeles", "America/Sao_Paulo",
    "Europe/London", "Europe/Berlin", "Europe/Madrid", "Europe/Warsaw", "Africa/Lagos",
    "Asia/Kolkata", "Asia/Tokyo", "Asia/Singapore", "Australia/Sydney", "Pacific/Auckland",
    "UTC",
)  # fmt: skip
SEGMENTS = ("new", "active", "lapsed", "vip")

POLICIES = {
    "thompson": ({"kind": "thompson"}, {"kind": "send_time_thompson"}),
    "vw_cb": ({"kind": "vw_cb"}, {"kind": "vw_cb"}),
}

_encoder = msgspec.json.Encoder()


def recipients(n: int, rng: np.random.Generator) -> list[dict[str, object]]:
    """``n`` recipients with a zone, a little context, and 2% without consent."""
    zones = rng.integers(0, len(ZONES), size=n)
    segments = rng.integers(0, len(SEGMENTS), size=n)
    no_consent = rng.random(n) < 0.02
    out: list[dict[str, object]] = []
    for i in range(n):
        item: dict[str, object] = {
            "unit_id": f"r{i:07d}",
            "timezone": ZONES[zones[i]],
            "context": {"segment": SEGMENTS[segments[i]], "list": "newsletter"},
        }
        if no_consent[i]:
            item["consent"] = False
        out.append(item)
    return out


def seed_histories(url: str, n: int, rng: np.random.Generator) -> None:
    """Give a third of the recipients an open-hour histogram and two stored features."""
    client = redis.Redis.from_url(url)
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(0, n, 3):
            peak = int(rng.integers(0, 168))
            fields: dict[str, object] = {
                f"h:email_open:{(peak + d) % 168}": int(rng.integers(1, 4)) for d in (-1, 0, 1)
            }
            fields["f:plan"] = "s:" + SEGMENTS[i % len(SEGMENTS)]
            fields["f:ltv"] = f"n:{float(rng.gamma(2.0, 40.0)):.2f}"
            pipe.hset(unit_key(PREFIX, f"r{i:07d}"), mapping=fields)  # type: ignore[arg-type]
            if len(pipe) >= 5000:
                pipe.execute()
        pipe.execute()
    finally:
        client.close()


def send_window() -> dict[str, str]:
    """Three days from tomorrow 06:00 UTC: in the future, so reward windows stay open (as in a
    real campaign) and the learner has nothing to finalise during the run."""
    start = datetime.now(UTC).replace(hour=6, minute=0, second=0, microsecond=0)
    start += timedelta(days=1)
    return {"start": start.isoformat(), "end": (start + timedelta(days=3)).isoformat()}


def bodies(items: list[dict[str, object]], size: int) -> list[bytes]:
    """The campaign split into request bodies of at most ``size`` recipients."""
    window = send_window()
    return [
        _encoder.encode(
            {
                "campaign": "spring-sale",
                "placements": ["subject", "send_time"],
                "send_window": window,
                "recipients": items[start : start + size],
            }
        )
        for start in range(0, len(items), size)
    ]


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def peak_rss_mb(pid: int, field: str = "VmHWM") -> tuple[float, float]:
    """(sum, max) of ``VmHWM`` (or another status field) over the process tree, in MB."""
    peaks = []
    for p in tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        match = re.search(field + r":\s+(\d+) kB", status)
        if match:
            peaks.append(int(match.group(1)) / 1024)
    return sum(peaks), max(peaks, default=0.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by the process tree of ``pid``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (``/proc/<pid>/task/*/comm``) over the process tree."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for p in tree(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            name = re.sub(r"[-_:]?\d+$", "", name) or name
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def redis_process_id(url: str) -> int:
    """The pid of the redis-server behind ``url``."""
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def exposures_written(client: httpx.Client) -> int:
    """Exposure rows the server reports as written to the event log."""
    text = client.get("/metrics").text
    match = re.search(r'^tailor_events_written_total\{table="exposures"\} ([0-9.e+]+)$', text, re.M)
    return int(float(match.group(1))) if match else 0


class Server:
    """A private redis-server plus ``tailor serve`` on free ports, in a temporary directory."""

    def __init__(self, directory: Path, workers: int = 1) -> None:
        self.directory = directory
        self.workers = workers
        self.redis = RedisServer(directory / "redis", persist=False)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.redis.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
        env.update(
            TAILOR_REDIS_URL=self.redis.url,
            TAILOR_REDIS_KEY_PREFIX=PREFIX,
            TAILOR_EVENT_LOG_URL=f"chdb://{self.directory / 'chdb'}",
            TAILOR_EVENT_LOG_SPOOL_DIR=str(self.directory / "spool"),
            TAILOR_DATA_DIR=str(self.directory),
            TAILOR_AUTH_API_KEYS=f"{API_KEY}:admin",
            TAILOR_LOG_LEVEL="warning",
        )
        log = (self.directory / "server.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "decision_api.cli.main", "serve", "--port", str(self.port),
             "--workers", str(self.workers)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("tailor serve did not start:\n" + self.log_tail())

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's output."""
        return (self.directory / "server.log").read_text(errors="replace")[-chars:]

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.redis.stop()


def create_experiments(client: httpx.Client, config: str) -> None:
    """The content and send-time experiments of the configuration, started."""
    content_policy, send_policy = POLICIES[config]
    specs = [
        {
            "key": "subject-test",
            "placement": "subject",
            "variants": [
                {"key": "plain", "payload": {"subject": "Spring sale"}},
                {"key": "emoji", "payload": {"subject": "🌷 Spring sale"}},
                {"key": "urgent", "payload": {"subject": "Last days: spring sale"}},
            ],
            "default_variant": "plain",
            "policy": content_policy,
            "primary_metric": "email_click",
            "holdout": 0.05,
        },
        {
            "key": "send-time",
            "placement": "send_time",
            "kind": "send_time",
            "policy": send_policy,
            "primary_metric": "email_open",
            "holdout": 0.1,
        },
    ]
    for spec in specs:
        client.post("/v1/experiments", json=spec).raise_for_status()
        client.post(f"/v1/experiments/{spec['key']}/start").raise_for_status()
    time.sleep(1.5)  # the config poll and the model poll pick them up


# Answers given without a profile (Redis too slow to answer): reported, never hidden.
TALLY = {"degraded": 0}


CHUNK = 1000
"""Recipients the server decides per chunk (``decision_api.decisions.bulk.CHUNK``): the answer
streams out chunk by chunk, so the time between successive chunks' answers is their latency."""


def send(client: httpx.Client, body: bytes, stream: bool, gaps: list[float] | None = None) -> int:
    """Post one request; returns the number of recipients answered.

    The answer is read as it streams: each time another ``CHUNK`` recipients have arrived, the
    time since the previous chunk (since the request for the first) goes into ``gaps``.
    """
    headers = {"content-type": "application/json"}
    marker = b"\n"
    if stream:
        headers["accept"] = "application/x-ndjson"
    else:
        marker = b'"index":'
    seen = 0
    tail = b""
    last = time.perf_counter()
    body_end = b""
    with client.stream("POST", "/v1/decide/batch", content=body, headers=headers) as r:
        r.raise_for_status()
        for piece in r.iter_raw():
            window = tail + piece
            found = window.count(marker)
            TALLY["degraded"] += piece.count(b'"degraded":true,"decisions"')
            tail = window[-(len(marker) - 1) :] if len(marker) > 1 else b""
            before = seen
            seen += found
            if gaps is not None and seen // CHUNK > before // CHUNK:
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
            body_end = (body_end + piece)[-200:]
    if stream:
        return seen
    count = re.search(rb'"count":(\d+)', body_end)  # the summary follows the recipients
    assert count is not None, body_end
    return int(count.group(1))


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank), NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_written(client: httpx.Client, target: int, timeout: float = 300) -> float:
    """Seconds until the event log holds ``target`` exposures."""
    start = time.perf_counter()
    while exposures_written(client) < target:
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"exposures not written within {timeout} s")
        time.sleep(0.05)
    return time.perf_counter() - start


def run_config(config: str, args: argparse.Namespace) -> dict[str, object]:
    """Benchmark one configuration in its own server; returns its figures."""
    rng = np.random.default_rng(7)
    items = recipients(args.recipients, rng)
    payloads = bodies(items, args.request_size)
    with (
        tempfile.TemporaryDirectory(prefix="tailor-bench-") as tmp,
        Server(Path(tmp), args.workers) as server,
    ):
        seed_histories(server.redis.url, args.recipients, rng)
        headers = {"authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=600) as client:
            create_experiments(client, config)
            assert server.process is not None
            print(f"  {config}: server pid {server.process.pid} at {server.url}", flush=True)
            warm = bodies(items[:2000], 2000)[0]
            send(client, warm, args.stream)
            if args.workers > 1:
                time.sleep(3)  # per-worker metrics: give the writers time instead of counting
            else:
                # Every warm-up exposure (two placements each): counting from a partial figure
                # put the rest of the warm-up into the first run (202,000 of 200,000 written).
                wait_written(client, 2 * 2000)
            baseline, _ = peak_rss_mb(server.process.pid, "VmRSS")
            print(f"  {config}: server RSS after warm-up {baseline:.0f} MB", flush=True)
            rates, durable, cpu_rates = [], [], []
            gaps: list[float] = []
            stored: list[tuple[int, int]] = []
            expected = exposures_written(client)
            pid = server.process.pid
            redis_pid = redis_process_id(server.redis.url)
            for run in range(args.runs):
                if args.workers > 1:
                    time.sleep(3)
                else:
                    expected = wait_for_quiet(client, expected)
                spy = None
                if run == 0 and args.profile is not None:
                    target = args.profile.with_name(f"{args.profile.stem}-{config}.txt")
                    spy = start_profiler(target, pid, 600)
                    time.sleep(1.0)  # py-spy attaches
                cpu0, redis0 = cpu_seconds(pid), cpu_seconds(redis_pid)
                threads0 = thread_cpu(pid)
                start = time.perf_counter()
                if args.workers > 1:
                    # One request in flight per worker: the kernel spreads them over workers.
                    with ThreadPoolExecutor(args.workers) as pool:
                        answered = sum(pool.map(lambda b: send(client, b, args.stream), payloads))
                else:
                    answered = sum(send(client, body, args.stream, gaps) for body in payloads)
                elapsed = time.perf_counter() - start
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
                    spy.wait(timeout=60)
                assert answered == args.recipients, (answered, args.recipients)
                rates.append(args.recipients / elapsed)
                # Two placements per recipient: one exposure each (errors none here).
                expected += 2 * args.recipients
                if args.workers > 1:
                    # Per-worker metrics (one registry per process) cannot tell what all wrote.
                    durable.append(float("nan"))
                else:
                    durable.append(elapsed + wait_written(client, expected))
                    stored.append((exposures_written(client) - (expected - 2 * args.recipients),
                                   2 * args.recipients))  # fmt: skip
                server_cpu = cpu_seconds(pid) - cpu0
                redis_cpu = cpu_seconds(redis_pid) - redis0
                cpu_rates.append(args.recipients / server_cpu)
                threads = thread_cpu(pid)
                rss_now, _ = peak_rss_mb(pid, "VmRSS")
                rss_peak, _ = peak_rss_mb(pid)
                split = sorted(
                    ((threads[n] - threads0.get(n, 0.0), n) for n in threads), reverse=True
                )
                print(f"    server RSS now {rss_now:.0f} MB, peak so far {rss_peak:.0f} MB")
                if args.threads:
                    print(
                        "    server CPU by thread: "
                        + ", ".join(f"{name} {sec:.1f} s" for sec, name in split[:6] if sec >= 0.05)
                    )
                print(
                    f"  {config}: {rates[-1]:,.0f} recipients/s ({elapsed:.2f} s), "
                    f"all exposures written after {durable[-1]:.2f} s; CPU until then: server "
                    f"{server_cpu:.1f} s ({cpu_rates[-1]:,.0f} recipients per CPU-second, "
                    f"{server_cpu / args.recipients * 1000:.3f} CPU-s per 1k recipients), "
                    f"redis {redis_cpu:.1f} s; load {load()}",
                    flush=True,
                )
            rss_sum, rss_max = peak_rss_mb(server.process.pid)
            warnings = []
            for line in server.log_tail(10**7).splitlines():
                if not re.search(r'"level": ?"(warning|error)"', line):
                    continue
                event = re.search(r'"event": ?"([a-z_]+)"', line)
                task = re.search(r'"task": ?"([a-z-]+)"', line)
                if event:
                    warnings.append(event.group(1) + (f"[{task.group(1)}]" if task else ""))
            if warnings:
                counts = {name: warnings.count(name) for name in sorted(set(warnings))}
                print(f"  {config}: server warnings: {counts}")
    return {
        "config": config,
        "gap_p50_ms": quantile(gaps, 0.5) * 1000,
        "gap_p99_ms": quantile(gaps, 0.99) * 1000,
        "stored": stored,
        "rates": rates,
        "median": statistics.median(rates),
        "durable_median_s": statistics.median(durable),
        "cpu_median": statistics.median(cpu_rates),
        "rss_mb": rss_sum,
        "rss_worker_mb": rss_max,
    }


def wait_for_quiet(client: httpx.Client, expected: int) -> int:
    """Let the writer catch up (every exposure so far written); returns the written count."""
    wait_written(client, expected)
    return exposures_written(client)


def load() -> str:
    """The 1/5/15-minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def iter_configs(spec: str) -> Iterator[str]:
    """The configurations named on the command line, checked."""
    for name in spec.split(","):
        if name not in POLICIES:
            raise SystemExit(f"unknown configuration {name!r}; choose from {sorted(POLICIES)}")
        yield name


def main() -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--request-size", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--configs", default="thompson,vw_cb")
    parser.add_argument("--stream", action="store_true", help="ask for NDJSON answers")
    parser.add_argument("--threads", action="store_true", help="print server CPU per thread")
    parser.add_argument("--workers", type=int, default=1, help="API worker processes")
    parser.add_argument(
        "--profile", type=Path, default=None,
        help="sample the server with py-spy during the first run (collapsed stacks per config)",
    )  # fmt: skip
    args = parser.parse_args()
    print(f"load before: {load()}  (cpus: {os.cpu_count()})")
    results = [run_config(name, args) for name in iter_configs(args.configs)]
    print(f"load after: {load()}")
    if TALLY["degraded"]:
        print(f"WARNING: {TALLY['degraded']} answers were degraded (decided without the profile)")
    mode = "NDJSON stream" if args.stream else "JSON"
    print(f"\n{args.recipients:,} recipients, requests of {args.request_size:,}, {mode}:")
    for r in results:
        rates = ", ".join(f"{x:,.0f}" for x in r["rates"])  # type: ignore[attr-defined]
        print(
            f"  {r['config']:<9} median {r['median']:>9,.0f} recipients/s  (runs: {rates}); "
            f"exposures durable after {r['durable_median_s']:.2f} s; "
            f"{r['cpu_median']:,.0f} recipients per server CPU-second; "
            f"server peak RSS {r['rss_mb']:.0f} MB (worker {r['rss_worker_mb']:.0f} MB)"
        )
        cpu_per_1k = 1000 / r["cpu_median"]  # type: ignore[operator]
        stored = r["stored"]
        all_stored = all(got == want for got, want in stored)  # type: ignore[attr-defined]
        print(
            f"            {cpu_per_1k:.3f} server CPU-s per 1k recipients; per {CHUNK}-recipient "
            f"chunk of the streamed answer p50 {r['gap_p50_ms']:.1f} ms, p99 "
            f"{r['gap_p99_ms']:.1f} ms; exposures stored per run (written/expected): "
            + ", ".join(f"{got:,}/{want:,}" for got, want in stored)  # type: ignore[attr-defined]
            + (
                ""
                if all_stored or not stored
                else "  <- NOT EQUAL (fewer: lost; more: counted twice)"
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
