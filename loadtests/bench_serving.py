"""Benchmark: decisions per policy as a ratio to an echo app, with learning off and on.

Run: ``.venv/bin/python loadtests/bench_serving.py [--rounds 3] [--duration 6]
[--concurrency 8]``

Set-up: a private ``redis-server``; the echo app (``loadtests/echo_app.py``: Litestar + msgspec,
decodes a decide request, answers a decide-shaped response) and two ``tailor serve`` servers
(granian, uvloop, one worker each, embedded chdb, JSON logging at ``info``, API keys on), all
on the same server and event loop:

- *learning off*: ``TAILOR_LEARNER_IN_PROCESS=false`` and no learner process, no outcomes;
- *learning on*: ``tailor serve``'s default, the learner in its own process; a click is
  reported for 15 % of decisions (about 13 % of the requests are ``POST /v1/outcomes``), every
  decision's reward window is 5 s, so every decision becomes a training example.

Each server has three running experiments, one per placement: ``fixed`` (3 variants),
``thompson`` (4 variants) and ``vw_cb`` (10 variants with per-action features, epsilon-greedy
0.05, context x action interactions); a decide request asks for one placement, for a random one
of 100,000 units, with a 4-attribute context. A round measures, closed loop over
``--concurrency`` keep-alive connections for ``--duration`` seconds each: the echo app, then
every policy with learning off and on. Printed per round and as medians over ``--rounds``:
decisions/s, the ratio to the echo's decisions/s *of the same round*, the server's CPU per
request (user + system seconds of its whole process tree — worker, event-log threads, learner —
divided by the requests served; on a shared machine the wall-clock ratio is noise and this is
the figure to compare) and its ratio to the echo's, p50/p99 and p99 as a ratio
to the echo's, and the event loop's lag measured by the worker
(``tailor_event_loop_lag_seconds``: the largest bucket reached in the run and the count of 10 ms
timers more than 5 ms late). Targets (issue 15, one worker, learning on, 8 connections):
thompson >= 0.6x and vw_cb >= 0.45x the echo's throughput, each with p99 <= 1.5x the echo's. The
JSON goes to ``loadtests/results/bench_serving-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from decision_api.redis_server import RedisServer, free_port

if __package__ in (None, ""):  # run as a script: make ``loadtests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtests.harness import (
    REPO,
    ServerUnderTest,
    cpu_seconds,
    load_average,
    proc_tree,
    rss_bytes,
    write_result,
)
from loadtests.http_load import LoadGenerator

ADMIN_KEY = "bench-admin-key"
DECIDE_KEY = "bench-decide-key"
PREFIXES = {"off": "bsoff", "on": "bson"}
POLICIES = ("fixed", "thompson", "vw_cb")
CLICK_SHARE = 0.15
WINDOW_S = 5
DECIDE, OUTCOME = 0, 1


def experiment(kind: str) -> dict[str, Any]:
    """The running experiment of ``kind`` on placement ``p-<kind>``."""
    if kind == "vw_cb":
        variants = [{"key": f"offer-{i}", "payload": {"pct": 5 * (i + 1)},
                     "features": {"discount": float(5 * (i + 1)), "kind": ["pct", "ship"][i % 2]}}
                    for i in range(10)]  # fmt: skip
        policy: dict[str, Any] = {"kind": "vw_cb", "exploration": "epsilon", "epsilon": 0.05}
    else:
        n = 3 if kind == "fixed" else 4
        variants = [{"key": f"v{i}", "payload": {"img": f"{i}.png"}} for i in range(n)]
        policy = {"kind": kind}
    definition: dict[str, Any] = {
        "key": f"exp-{kind.replace('_', '-')}", "placement": f"p-{kind}", "variants": variants,
        "default_variant": variants[0]["key"], "policy": policy, "reward_window_s": WINDOW_S,
    }  # fmt: skip
    if kind != "fixed":
        definition["reward"] = {"rules": [{"type": "click"}]}
    return definition


def setup(url: str) -> None:
    """Create and start the three experiments."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for kind in POLICIES:
            definition = experiment(kind)
            http.post("/v1/experiments", json=definition).raise_for_status()
            http.post(f"/v1/experiments/{definition['key']}/start").raise_for_status()


class Traffic:
    """Decide requests for one placement; with ``clicks``, an outcome for 15 % of decisions."""

    kinds = ("decide", "outcome")

    def __init__(self, port: int, placement: str, clicks: bool, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self._port = port
        self._clicks = clicks
        units = rng.integers(0, 100_000, 20_011).tolist()
        devices, pages = ("mobile", "desktop", "tablet"), ("/", "/sale", "/shoes", "/cart")
        self._decide = []
        for n, u in enumerate(units[:4_001]):
            returning = "true" if n % 2 else "false"
            body = (f'{{"unit_id":"u-{u}","placements":["{placement}"],"context":{{"device":'
                    f'"{devices[n % 3]}","page":"{pages[n % 4]}","hour":{n % 24},'
                    f'"returning":{returning}}},"consent":true}}')  # fmt: skip
            self._decide.append(self._http(b"/v1/decide", body.encode()))
        self._u = rng.random(20_011).tolist()
        self._ids: collections.deque[bytes] = collections.deque(maxlen=2_000)
        self._owed = 0.0

    def _http(self, path: bytes, body: bytes) -> bytes:
        head = (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (path, self._port, DECIDE_KEY.encode(), len(body)))  # fmt: skip
        return head + body

    def request(self, i: int) -> tuple[int, bytes, int]:
        """A click for an earlier decision when one is owed, else a decision."""
        if self._clicks and self._owed >= 1.0 and self._ids:
            self._owed -= 1.0
            body = b'{"decision_id":"%s","type":"click"}' % self._ids.popleft()
            return OUTCOME, self._http(b"/v1/outcomes", body), 0
        return DECIDE, self._decide[i % len(self._decide)], 0

    def response(self, kind: int, tag: int, status: int, body: bytes) -> None:
        """Remember decision ids; owe a click for 15 % of the decisions."""
        if kind != DECIDE or not self._clicks:
            return
        at = body.find(b'"decision_id":"')
        if at >= 0:
            self._ids.append(body[at + 15 : body.index(b'"', at + 15)])
            self._owed += CLICK_SHARE


def lag_buckets(url: str) -> dict[float, float]:
    """Cumulative counts of ``tailor_event_loop_lag_seconds`` by upper bound (/metrics)."""
    out = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("tailor_event_loop_lag_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return out


def lag_figures(before: dict[float, float], after: dict[float, float]) -> tuple[float, int]:
    """(the smallest bucket bound every lag of the run stayed under (ms), timers > 5 ms late)."""
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    bound = 0.0
    for le in sorted(after):
        if after[le] - before.get(le, 0.0) >= total:
            bound = le
            break
    late = total - (after.get(0.005, 0.0) - before.get(0.005, 0.0))
    return bound * 1e3, int(late)


async def run_one(port: int, workload: Traffic, concurrency: int, duration: float,
                  pids: Callable[[], list[int]]) -> dict[str, float]:  # fmt: skip
    """One closed-loop run: decisions/s, p50/p99 (ms) of decisions, errors, and the server's
    CPU per request (user + system seconds of ``pids()``, its process tree, over requests)."""
    gen = LoadGenerator(port, workload, concurrency, rate=0)
    cpu0 = cpu_seconds(pids())
    elapsed = await gen.run(duration)
    cpu = cpu_seconds(pids()) - cpu0
    sample = gen.take()
    lat = np.frombuffer(sample.latencies[DECIDE], dtype=np.int64).astype(np.float64) / 1e6
    p50, p99 = np.percentile(lat, [50, 99]) if lat.size else (float("nan"),) * 2
    requests = lat.size + len(sample.latencies[OUTCOME])
    return {"decisions_s": lat.size / elapsed, "p50_ms": float(p50), "p99_ms": float(p99),
            "errors": float(sum(sample.errors)),
            "outcomes": float(len(sample.latencies[OUTCOME])),
            "cpu_us": 1e6 * cpu / max(requests, 1)}  # fmt: skip


def start_echo(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """The echo app under granian (uvloop, one worker)."""
    granian = Path(sys.executable).with_name("granian")
    log = (workdir / "echo.log").open("ab")
    return subprocess.Popen(
        [str(granian), "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
         "--loop", "uvloop", "--workers", "1", "--no-access-log", "--backlog", "2048",
         "loadtests.echo_app:app"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def wait_echo(port: int) -> None:
    """Until the echo app answers a decide request."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            got = httpx.post(f"http://127.0.0.1:{port}/v1/decide",
                             json={"unit_id": "u", "placements": ["p"]}, timeout=1)  # fmt: skip
            if got.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the echo app did not start")


async def measure(args: argparse.Namespace, echo_port: int, echo_pid: int,
                  servers: dict[str, ServerUnderTest]) -> list[dict[str, Any]]:  # fmt: skip
    """Warm up, then ``--rounds`` rounds of echo + every (mode, policy)."""
    for mode, server in servers.items():  # warm-up: caches, first models, VW parsers
        for kind in POLICIES:
            await run_one(server.port, Traffic(server.port, f"p-{kind}", mode == "on", 1),
                          args.concurrency, 1.0, server.pids)  # fmt: skip
    rounds = []
    for r in range(args.rounds):
        echo = await run_one(echo_port, Traffic(echo_port, "p-echo", False, r), args.concurrency,
                             args.duration, lambda: proc_tree(echo_pid))  # fmt: skip
        row: dict[str, Any] = {"echo": echo, "load": load_average()}
        print(f"round {r + 1} (load {' '.join(f'{x:.2f}' for x in row['load'])}): echo "
              f"{echo['decisions_s']:8.0f}/s  p50 {echo['p50_ms']:5.2f} ms  p99 "
              f"{echo['p99_ms']:5.2f} ms  CPU {echo['cpu_us']:5.0f} us per request",
              flush=True)  # fmt: skip
        for mode, server in servers.items():
            for kind in POLICIES:
                before = lag_buckets(server.url)
                got = await run_one(server.port, Traffic(server.port, f"p-{kind}", mode == "on",
                                                         100 * r + len(kind)),
                                    args.concurrency, args.duration, server.pids)  # fmt: skip
                got["lag_le_ms"], got["lag_over_5ms"] = lag_figures(before, lag_buckets(server.url))
                got["ratio"] = got["decisions_s"] / echo["decisions_s"]
                got["p99_ratio"] = got["p99_ms"] / echo["p99_ms"]
                row[f"{kind} learning {mode}"] = got
                clicks = f", outcomes {got['outcomes']:.0f}" if got["outcomes"] else ""
                got["cpu_ratio"] = got["cpu_us"] / echo["cpu_us"]
                print(f"  {kind:<8} learning {mode:<3} {got['decisions_s']:8.0f}/s "
                      f"{got['ratio']:5.2f}x  CPU {got['cpu_us']:5.0f} us per request "
                      f"({got['cpu_ratio']:4.2f}x the echo's)  p50 {got['p50_ms']:5.2f} ms  "
                      f"p99 {got['p99_ms']:6.2f}"
                      f" ms ({got['p99_ratio']:4.2f}x)  loop lag <= {got['lag_le_ms']:g} ms, "
                      f"{got['lag_over_5ms']} timers > 5 ms late, errors {got['errors']:.0f}"
                      f"{clicks}",
                      flush=True)  # fmt: skip
        rounds.append(row)
    return rounds


def main() -> int:
    """Set up, measure, print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--redis-client",
        default="lean",
        choices=("lean", "redis-py"),
        help="the workers' client for hot commands (TAILOR_REDIS_LEAN_CLIENT), for an A/B",
    )
    args = parser.parse_args()
    lean = {"TAILOR_REDIS_LEAN_CLIENT": str(args.redis_client == "lean").lower()}
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    redis_server = RedisServer(workdir / "redis", persist=False).start()
    echo_port = free_port()
    echo = start_echo(workdir, echo_port)
    servers: dict[str, ServerUnderTest] = {}
    try:
        for mode in ("off", "on"):
            (workdir / mode).mkdir()
            servers[mode] = ServerUnderTest(
                workdir / mode, redis_server.url, free_port(), prefix=PREFIXES[mode],
                api_keys=f"{ADMIN_KEY}:admin,{DECIDE_KEY}:decide",
                extra_env={**lean, "TAILOR_LEARNER_IN_PROCESS": "false"} if mode == "off" else lean,
            )  # fmt: skip
        wait_echo(echo_port)
        for server in servers.values():
            server.wait_ready()
            setup(server.url)
        time.sleep(1.0)  # the experiment cache polls every 0.25 s
        rounds = asyncio.run(measure(args, echo_port, echo.pid, servers))
        rss = {mode: rss_bytes(s.pids()) / 2**20 for mode, s in servers.items()}
        lag_max = {}
        for mode, server in servers.items():
            for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
                if line.startswith("tailor_event_loop_lag_max_seconds "):
                    lag_max[mode] = float(line.rsplit(" ", 1)[1]) * 1e3
    finally:
        for server in servers.values():
            server.stop()
        echo.terminate()
        echo.wait(timeout=30)
        redis_server.stop()

    print(f"\nmedians of {len(rounds)} rounds, one worker, {args.concurrency} connections, "
          f"{args.duration:g} s per run:")  # fmt: skip
    echo_med = statistics.median(r["echo"]["decisions_s"] for r in rounds)
    echo_p99 = statistics.median(r["echo"]["p99_ms"] for r in rounds)
    echo_cpu = statistics.median(r["echo"]["cpu_us"] for r in rounds)
    print(f"  echo                {echo_med:8.0f}/s        CPU {echo_cpu:5.0f} us per request"
          f"                          p99 {echo_p99:6.2f} ms")  # fmt: skip
    summary: dict[str, dict[str, float]] = {}
    for name in rounds[0]:
        if name in ("echo", "load"):
            continue
        med = {k: statistics.median(r[name][k] for r in rounds)
               for k in ("decisions_s", "ratio", "cpu_us", "cpu_ratio", "p50_ms", "p99_ms",
                         "p99_ratio", "lag_le_ms", "lag_over_5ms")}  # fmt: skip
        summary[name] = med
        print(
            f"  {name:<19} {med['decisions_s']:8.0f}/s {med['ratio']:5.2f}x  CPU "
            f"{med['cpu_us']:5.0f} us per request ({med['cpu_ratio']:4.2f}x)  p50 "
            f"{med['p50_ms']:5.2f} ms  p99 {med['p99_ms']:6.2f} ms ({med['p99_ratio']:4.2f}x)"
            f"  loop lag <= {med['lag_le_ms']:g} ms, {med['lag_over_5ms']:g} timers > 5 ms late"
        )
    for kind, target in (("thompson", 0.6), ("vw_cb", 0.45)):
        med = summary[f"{kind} learning on"]
        ok = med["ratio"] >= target and med["p99_ratio"] <= 1.5
        print(f"  target {kind} learning on >= {target}x, p99 <= 1.5x: {'OK' if ok else 'MISSED'}")
    print(f"  largest event-loop lag since start: {lag_max} ms; server RSS {rss} MiB")
    out = write_result("bench_serving", {
        "command": " ".join(sys.argv), "rounds": rounds, "median": summary,
        "echo": {"decisions_s": echo_med, "p99_ms": echo_p99, "cpu_us": echo_cpu},
        "lag_max_ms": lag_max,
        "rss_mib": rss,
    })  # fmt: skip
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
