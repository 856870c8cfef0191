"""Profile one worker's serving path in-process: CPU per decision per policy, learning on.

Run: ``.venv/bin/python loadtests/profile_serving.py [--policy thompson] [--requests 6000]
[--profile /tmp/serving.prof] [--learning off] [--redis-client redis-py]``

The same experiments and traffic as ``bench_serving.py`` (one placement per decide, a click for
15 % of the decisions, 5 s windows), but no HTTP server: the ASGI app that ``tailor serve`` runs
(``create_asgi_app``, its ``/v1/decide`` and ``/v1/outcomes`` front included) is called
directly by ``--concurrency`` asyncio tasks on one uvloop event loop, while a ``tailor learn``
process learns (learning on). What is left out is granian and the socket; what remains is the
Python a worker runs per request, so the CPU per decision (``time.process_time`` of this process:
the event loop plus its event-log threads, over the decisions) is far less noisy on a shared
machine than the HTTP figures, and ``--profile`` writes a cProfile of it (the event-loop thread).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``loadtests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from decision_api.redis_server import RedisServer
from loadtests.bench_serving import ADMIN_KEY, CLICK_SHARE, DECIDE_KEY, experiment
from loadtests.harness import cpu_seconds, start_asgi_app, tailor_env


class Client:
    """ASGI calls against the app, with the bench's headers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def post(
        self, path: str, body: bytes, key: str = DECIDE_KEY, method: str = "POST"
    ) -> tuple[int, bytes]:
        """POST (or ``method``) ``body`` to ``path``; returns (status, whole answer)."""
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
            "headers": [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer " + key.encode()),
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
            "state": {},
        }  # fmt: skip
        sent = False
        status = 0
        chunks: list[bytes] = []
        done = asyncio.Event()  # a streamed answer listens for the disconnect that follows it

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done.set()

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


def bodies(placement: str, seed: int) -> list[bytes]:
    """Decide bodies as ``bench_serving.Traffic`` makes them."""
    rng = np.random.default_rng(seed)
    units = rng.integers(0, 100_000, 4_001).tolist()
    devices, pages = ("mobile", "desktop", "tablet"), ("/", "/sale", "/shoes", "/cart")
    out = []
    for n, u in enumerate(units):
        returning = "true" if n % 2 else "false"
        out.append(
            (f'{{"unit_id":"u-{u}","placements":["{placement}"],"context":{{"device":'
             f'"{devices[n % 3]}","page":"{pages[n % 4]}","hour":{n % 24},'
             f'"returning":{returning}}},"consent":true}}').encode()
        )  # fmt: skip
    return out


GC_PAUSES: dict[int, list[float]] = {0: [], 1: [], 2: []}
"""Milliseconds per garbage collection of each generation, on the measured runs."""
_gc_started = [0.0]


def _gc_timer(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        GC_PAUSES[info["generation"]].append(1e3 * (time.perf_counter() - _gc_started[0]))


OTHERS: dict[str, int] = {}
"""Other processes whose CPU per decision is printed too (the learner, Redis)."""


async def drive(client: Client, kind: str, requests: int, concurrency: int, clicks: bool,
                seed: int) -> dict[str, float]:  # fmt: skip
    """``requests`` decides over ``concurrency`` tasks (plus clicks); CPU per decision."""
    decide = bodies(f"p-{kind}", seed)
    ids: collections.deque[bytes] = collections.deque(maxlen=2_000)  # as bench_serving
    owed = 0.0
    counter = iter(range(10**9))
    done = {"decisions": 0, "outcomes": 0, "errors": 0}

    async def worker() -> None:
        nonlocal owed
        while True:
            if clicks and owed >= 1.0 and ids:
                owed -= 1.0
                body = b'{"decision_id":"%s","type":"click"}' % ids.popleft()
                status, _ = await client.post("/v1/outcomes", body)
                done["outcomes"] += 1
                done["errors"] += status != 202
                continue
            n = next(counter)
            if n >= requests:
                return
            status, answer = await client.post("/v1/decide", decide[n % len(decide)])
            done["decisions"] += 1
            done["errors"] += status != 200
            if clicks:
                at = answer.find(b'"decision_id":"')
                ids.append(answer[at + 15 : answer.index(b'"', at + 15)])
                owed += CLICK_SHARE

    others0 = {name: cpu_seconds([pid]) for name, pid in OTHERS.items()}
    cpu0, loop0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    loop = time.thread_time() - loop0
    others = {f"{name}_us": 1e6 * (cpu_seconds([pid]) - others0[name]) / done["decisions"]
              for name, pid in OTHERS.items()}  # fmt: skip
    return {**{k: float(v) for k, v in done.items()}, **others,
            "cpu_us": 1e6 * cpu / done["decisions"],
            "loop_us": 1e6 * loop / done["decisions"],
            "wall_us": 1e6 * wall / done["decisions"]}  # fmt: skip


async def run(args: argparse.Namespace, env: dict[str, str]) -> None:
    app, stop = await start_asgi_app(env)  # the worker's settings only (a script, not the server)
    from decision_api.asgi import tune_process

    tune_process()  # the worker's GC thresholds (granian's worker calls it after build())
    gc.callbacks.append(_gc_timer)
    client = Client(app)
    import msgspec

    for kind in ("fixed", "thompson", "vw_cb"):
        definition = experiment(kind)
        status, answer = await client.post("/v1/experiments", msgspec.json.encode(definition),
                                           ADMIN_KEY)  # fmt: skip
        assert status == 201, answer
        status, answer = await client.post(f"/v1/experiments/{definition['key']}/start", b"",
                                           ADMIN_KEY)  # fmt: skip
        assert status in (200, 201), answer
    await asyncio.sleep(1.0)
    clicks = args.learning == "on"
    kinds = [args.policy] if args.policy != "all" else ["fixed", "thompson", "vw_cb"]
    for kind in kinds:  # warm-up: caches, first models
        await drive(client, kind, args.warmup, args.concurrency, clicks, 1)
    await asyncio.sleep(3.0)
    results: dict[str, list[float]] = {k: [] for k in kinds}
    loops: dict[str, list[float]] = {k: [] for k in kinds}
    profiler = cProfile.Profile(time.thread_time) if args.profile else None  # CPU, not wall
    for r in range(args.rounds):
        for kind in kinds:
            got = await drive(client, kind, args.requests, args.concurrency, clicks, 10 + r)
            results[kind].append(got["cpu_us"])
            loops[kind].append(got["loop_us"])
            print(f"round {r + 1} {kind:<8} learning {args.learning}: CPU {got['cpu_us']:6.1f} us"
                  f" per decision (event loop {got['loop_us']:6.1f}), wall {got['wall_us']:6.1f}"
                  f" us, outcomes {got['outcomes']:.0f}, errors {got['errors']:.0f};"
                  + "".join(f" {n} {got[n + '_us']:.1f} us" for n in OTHERS),
                  flush=True)  # fmt: skip
    if profiler is not None:  # one more run per policy, not counted in the medians
        for kind in kinds:
            profiler.enable()
            await drive(client, kind, args.requests, args.concurrency, clicks, 99)
            profiler.disable()
    for kind, cpus in results.items():
        print(f"median {kind:<8} learning {args.learning} {args.redis_client}: "
              f"{statistics.median(cpus):6.1f} us CPU "
              f"per decision (rounds {', '.join(f'{c:.1f}' for c in cpus)}), event loop "
              f"{statistics.median(loops[kind]):6.1f} us; load "
              f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    for generation, pauses in GC_PAUSES.items():
        if pauses:
            print(f"gc generation {generation}: {len(pauses)} collections, median "
                  f"{statistics.median(pauses):.2f} ms, max {max(pauses):.2f} ms")  # fmt: skip
    if profiler is not None:
        profiler.dump_stats(args.profile)
    await stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="all", choices=("all", "fixed", "thompson", "vw_cb"))
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--learning", default="on", choices=("on", "off"))
    parser.add_argument("--warmup", type=int, default=2000, help="decisions per policy first")
    parser.add_argument("--profile", default="")
    parser.add_argument(
        "--redis-client",
        default="lean",
        choices=("lean", "redis-py"),
        help="the worker's client for hot commands (TAILOR_REDIS_LEAN_CLIENT)",
    )
    args = parser.parse_args()
    import uvloop

    workdir = Path(tempfile.mkdtemp(prefix="profile-serving-"))
    redis_server = RedisServer(workdir / "redis", persist=False).start()
    lean = str(args.redis_client == "lean").lower()
    env = tailor_env(workdir, redis_server.url, "prof", f"{ADMIN_KEY}:admin,{DECIDE_KEY}:decide",
                     {"TAILOR_LEARNER_IN_PROCESS": "false",
                      "TAILOR_REDIS_LEAN_CLIENT": lean})  # fmt: skip
    learner = None
    OTHERS["redis"] = int(redis_server.pid or 0)
    if args.learning == "on":
        learner = subprocess.Popen([sys.executable, "-m", "decision_api.cli.main", "learn"],
                                   env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        OTHERS["learner"] = learner.pid
    try:
        uvloop.run(run(args, env))
    finally:
        if learner is not None:
            learner.terminate()
            learner.wait(timeout=30)
        redis_server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
