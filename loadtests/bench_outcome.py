"""Benchmark: what one ``POST /v1/outcomes`` costs the server, in CPU per outcome.

Run: ``.venv/bin/python loadtests/bench_outcome.py [--rounds 3] [--duration 5]
[--concurrency 8]``

Set-up: a private ``redis-server`` and one ``tailor serve`` (granian, uvloop, one worker,
embedded chdb, JSON logging at ``info``, API keys on, the learner in its own process) with one
running Thompson experiment (4 variants, clicks rewarded, reward window 120 s, so every outcome
below joins an open decision). Each round, closed loop over ``--concurrency`` keep-alive
connections:

1. *decisions*: ``POST /v1/decide`` only, for ``--duration`` seconds; the decision ids are kept;
2. *outcomes*: ``POST /v1/outcomes`` only (``{"decision_id", "type": "click"}``, each for a
   different decision of step 1), for ``--duration`` seconds;
3. *mixed*: decisions with a click reported for 15 % of them (a few hundred decisions later),
   as ``bench_serving.py``'s learning-on traffic.

Wall-clock throughput on a shared machine is noise, so the figure that counts is CPU time: the
server's process tree (granian main and worker, event-log writer threads, learner process) and
Redis, in user + system seconds from ``/proc``, divided by the requests of the step. For *mixed*
the outcomes' share is what remains after the decisions are charged step 1's CPU per decision:
``(cpu_mixed - decisions_mixed x cpu_per_decision) / outcomes_mixed``. Printed per round and as
medians, with the load average; the JSON goes to
``loadtests/results/bench_outcome-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from decision_api.redis_server import RedisServer, free_port

if __package__ in (None, ""):  # run as a script: make ``loadtests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtests.bench_serving import ADMIN_KEY, DECIDE, DECIDE_KEY, OUTCOME, Traffic
from loadtests.harness import (
    REPO,
    ServerUnderTest,
    cpu_seconds,
    load_average,
    start_profiler,
    write_result,
)
from loadtests.http_load import LoadGenerator

PLACEMENT = "p-thompson"
WINDOW_S = 120


def setup(url: str) -> None:
    """Create and start the Thompson experiment."""
    variants = [{"key": f"v{i}", "payload": {"img": f"{i}.png"}} for i in range(4)]
    definition = {
        "key": "exp-thompson", "placement": PLACEMENT, "variants": variants,
        "default_variant": "v0", "policy": {"kind": "thompson"}, "reward_window_s": WINDOW_S,
        "reward": {"rules": [{"type": "click"}]},
    }  # fmt: skip
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        http.post("/v1/experiments", json=definition).raise_for_status()
        http.post("/v1/experiments/exp-thompson/start").raise_for_status()


class Decisions(Traffic):
    """Decisions only; every decision id is kept (for the outcome step)."""

    def __init__(self, port: int, seed: int) -> None:
        super().__init__(port, PLACEMENT, False, seed)
        self.ids: list[bytes] = []

    def response(self, kind: int, tag: int, status: int, body: bytes) -> None:
        """Keep the decision id."""
        at = body.find(b'"decision_id":"')
        if at >= 0:
            self.ids.append(body[at + 15 : body.index(b'"', at + 15)])


class Outcomes:
    """A click for each decision id in turn (each decision clicked at most once)."""

    kinds = ("decide", "outcome")

    def __init__(self, port: int, ids: list[bytes]) -> None:
        self._port = port
        self._ids = ids

    def request(self, i: int) -> tuple[int, bytes, int]:
        """The click of the ``i``-th decision."""
        body = b'{"decision_id":"%s","type":"click"}' % self._ids[i % len(self._ids)]
        head = (b"POST /v1/outcomes HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s"
                b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (self._port, DECIDE_KEY.encode(), len(body)))  # fmt: skip
        return OUTCOME, head + body, 0

    def response(self, kind: int, tag: int, status: int, body: bytes) -> None:
        """Nothing to keep."""


async def step(server: ServerUnderTest, redis_pid: int, workload: Any, args: argparse.Namespace
               ) -> dict[str, float]:  # fmt: skip
    """One closed-loop step: requests per kind, CPU of the server tree and of Redis, latency."""
    pids = server.pids()
    cpu0, redis0 = cpu_seconds(pids), cpu_seconds([redis_pid])
    gen = LoadGenerator(server.port, workload, args.concurrency, rate=0)
    elapsed = await gen.run(args.duration)
    await asyncio.sleep(0.3)  # the join flusher and the event writer finish their share
    cpu, redis_cpu = cpu_seconds(server.pids()) - cpu0, cpu_seconds([redis_pid]) - redis0
    sample = gen.take()
    out = {"elapsed_s": elapsed, "cpu_s": cpu, "redis_cpu_s": redis_cpu,
           "errors": float(sum(sample.errors))}  # fmt: skip
    for kind, name in ((DECIDE, "decisions"), (OUTCOME, "outcomes")):
        lat = np.frombuffer(sample.latencies[kind], dtype=np.int64).astype(np.float64) / 1e6
        out[name] = float(lat.size)
        if lat.size:
            p50, p99 = np.percentile(lat, [50, 99])
            out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = float(p50), float(p99)
    return out


async def measure(args: argparse.Namespace, server: ServerUnderTest, redis_pid: int
                  ) -> list[dict[str, Any]]:  # fmt: skip
    """Warm up, then ``--rounds`` rounds of decisions, outcomes and the mix."""
    warm = Decisions(server.port, 99)
    await LoadGenerator(server.port, warm, args.concurrency, rate=0).run(1.0)
    await LoadGenerator(server.port, Outcomes(server.port, warm.ids), args.concurrency, 0).run(1.0)
    rounds = []
    for r in range(args.rounds):
        decisions = Decisions(server.port, r)
        d = await step(server, redis_pid, decisions, args)
        spy = None
        if r == 0 and args.profile is not None:
            spy = start_profiler(args.profile, server.main.pid, args.duration + 2)
            await asyncio.sleep(1.0)  # py-spy attaches
        o = await step(server, redis_pid, Outcomes(server.port, decisions.ids), args)
        if spy is not None:
            spy.wait(timeout=60)
        m = await step(server, redis_pid, Traffic(server.port, PLACEMENT, True, 50 + r), args)
        per_decision = d["cpu_s"] / d["decisions"]
        per_outcome = o["cpu_s"] / o["outcomes"]
        mixed = (m["cpu_s"] - m["decisions"] * per_decision) / max(m["outcomes"], 1.0)
        row = {
            "decisions": d, "outcomes": o, "mixed": m, "load": load_average(),
            "cpu_us_per_decision": 1e6 * per_decision,
            "cpu_us_per_outcome": 1e6 * per_outcome,
            "redis_cpu_us_per_outcome": 1e6 * o["redis_cpu_s"] / o["outcomes"],
            "cpu_us_per_outcome_mixed": 1e6 * mixed,
        }  # fmt: skip
        rounds.append(row)
        print(f"round {r + 1} (load {' '.join(f'{x:.2f}' for x in row['load'])}): "
              f"decide {d['decisions'] / d['elapsed_s']:6.0f}/s {row['cpu_us_per_decision']:5.0f}"
              f" us CPU each; outcomes {o['outcomes'] / o['elapsed_s']:6.0f}/s "
              f"{row['cpu_us_per_outcome']:5.0f} us CPU each (+ redis "
              f"{row['redis_cpu_us_per_outcome']:4.0f} us), p99 {o.get('outcomes_p99_ms', 0):.2f}"
              f" ms; mixed: {m['outcomes']:.0f} outcomes at {row['cpu_us_per_outcome_mixed']:5.0f}"
              f" us CPU each; errors {d['errors'] + o['errors'] + m['errors']:.0f}",
              flush=True)  # fmt: skip
    return rounds


def main() -> int:
    """Set up, measure, print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per step")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy collapsed stacks of the server during round 1's outcomes",
    )
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    workdir = Path(tempfile.mkdtemp(prefix="bench-outcome-"))
    redis_server = RedisServer(workdir / "redis", persist=False).start()
    server = ServerUnderTest(workdir, redis_server.url, free_port(), prefix="bo",
                             api_keys=f"{ADMIN_KEY}:admin,{DECIDE_KEY}:decide")  # fmt: skip
    try:
        server.wait_ready()
        setup(server.url)
        time.sleep(1.0)  # the experiment cache polls every 0.25 s
        assert redis_server.pid is not None
        rounds = asyncio.run(measure(args, server, redis_server.pid))
    finally:
        server.stop()
        redis_server.stop()
    keys = ("cpu_us_per_decision", "cpu_us_per_outcome", "redis_cpu_us_per_outcome",
            "cpu_us_per_outcome_mixed")  # fmt: skip
    median = {k: statistics.median(r[k] for r in rounds) for k in keys}
    print(f"\nmedians of {len(rounds)} rounds, one worker, {args.concurrency} connections: "
          f"CPU per decision {median['cpu_us_per_decision']:.0f} us, per outcome "
          f"{median['cpu_us_per_outcome']:.0f} us (+ redis "
          f"{median['redis_cpu_us_per_outcome']:.0f} us), per outcome in the mix "
          f"{median['cpu_us_per_outcome_mixed']:.0f} us")  # fmt: skip
    out = write_result("bench_outcome", {"command": " ".join(sys.argv), "rounds": rounds,
                                         "median": median})  # fmt: skip
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
