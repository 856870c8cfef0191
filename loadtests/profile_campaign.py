"""Profile one worker's bulk path in-process: CPU per 1k recipients of ``POST /v1/decide/batch``.

Run: ``.venv/bin/python loadtests/profile_campaign.py [--config thompson] [--recipients 100000]
[--rounds 3] [--profile /tmp/campaign.prof]``

The campaign of ``bench_campaign.py`` (its recipients, open-hour histories, content and send-time
experiments, requests of 50,000), but no HTTP server: the ASGI app that ``tailor serve`` runs
(``create_asgi_app``) is called directly on one uvloop event loop, with its embedded chdb event
log. Printed per round: CPU-seconds per 1k recipients of this process (``time.process_time``:
the event loop plus the event-log writer threads, until every exposure is written), of the
event-loop thread alone, and of Redis; the RSS after each round (a growth from round to round is
memory the worker keeps). ``--profile`` writes a cProfile (CPU clock) of one more round's
event-loop thread. Far less noisy than the HTTP figures on a shared machine; what is left out
is granian, the socket and the client's JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``loadtests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from decision_api.redis_server import RedisServer
from loadtests.bench_campaign import POLICIES, bodies, recipients, seed_histories
from loadtests.harness import cpu_seconds, start_asgi_app, tailor_env
from loadtests.profile_serving import Client

ADMIN = "prof-admin-key"


def rss_mb() -> float:
    """This process's resident set size, in MB."""
    status = Path("/proc/self/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


async def written(client: Client) -> int:
    """Exposure rows the app reports as written to the event log."""
    _status, text = await client.get("/metrics")
    pattern = rb'^tailor_events_written_total\{table="exposures"\} ([0-9.e+]+)$'
    match = re.search(pattern, text, re.M)
    return int(float(match.group(1))) if match else 0


class AppClient(Client):
    """ASGI calls with the admin key, and a GET."""

    async def get(self, path: str) -> tuple[int, bytes]:
        """A GET through the same ASGI call (an empty body)."""
        return await self.post(path, b"", ADMIN, method="GET")

    async def post(
        self, path: str, body: bytes, key: str = ADMIN, method: str = "POST"
    ) -> tuple[int, bytes]:
        """``Client.post`` with the admin key by default."""
        return await super().post(path, body, key, method)


async def create(client: AppClient, config: str) -> None:
    """The content and send-time experiments of ``bench_campaign``, started."""
    import msgspec

    from loadtests import bench_campaign

    posted: list[tuple[str, bytes]] = []

    class Recorder:
        def post(self, path: str, json: Any = None) -> Recorder:
            posted.append((path, msgspec.json.encode(json) if json is not None else b""))
            return self

        def raise_for_status(self) -> None:
            return None

    sleep = bench_campaign.time.sleep
    bench_campaign.time.sleep = lambda _s: None  # type: ignore[assignment]
    try:
        bench_campaign.create_experiments(Recorder(), config)  # type: ignore[arg-type]
    finally:
        bench_campaign.time.sleep = sleep  # type: ignore[assignment]
    for path, body in posted:
        status, answer = await client.post(path, body)
        assert status in (200, 201), (path, status, answer)
    await asyncio.sleep(1.5)


async def campaign(client: AppClient, payloads: list[bytes]) -> int:
    """Send the campaign's requests one after the other; returns the recipients answered."""
    answered = 0
    for body in payloads:
        status, answer = await client.post("/v1/decide/batch", body)
        assert status == 200, answer[:500]
        answered += answer.count(b'"index":')
    return answered


async def run(args: argparse.Namespace, env: dict[str, str], redis_pid: int, url: str) -> None:
    app, stop = await start_asgi_app(env)  # the worker's settings only (a script, not the server)
    client = AppClient(app)
    rng = np.random.default_rng(7)
    items = recipients(args.recipients, rng)
    payloads = bodies(items, args.request_size)
    seed_histories(url, args.recipients, rng)
    await create(client, args.config)
    warm = bodies(items[:2000], 2000)[0]
    await campaign(client, [warm])
    expected = 4000
    while await written(client) < expected:
        await asyncio.sleep(0.05)
    print(f"RSS after warm-up {rss_mb():.0f} MB", flush=True)
    cpus, loops = [], []
    rounds = args.rounds + (1 if args.profile else 0)
    for r in range(rounds):
        profiler = None
        if args.profile and r == rounds - 1:
            profiler = cProfile.Profile(time.thread_time)
            profiler.enable()
        cpu0, loop0, redis0 = time.process_time(), time.thread_time(), cpu_seconds([redis_pid])
        wall0 = time.perf_counter()
        answered = await campaign(client, payloads)
        wall = time.perf_counter() - wall0
        expected += 2 * args.recipients
        while await written(client) < expected:
            await asyncio.sleep(0.02)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        assert answered == args.recipients, answered
        cpu = time.process_time() - cpu0
        loop = time.thread_time() - loop0
        red = cpu_seconds([redis_pid]) - redis0
        k = args.recipients / 1000
        label = "profiled" if profiler is not None else f"round {r + 1}"
        backlog = app.app.state.services.learning.join.pending
        print(f"{label} {args.config}: CPU {cpu / k:.4f} s per 1k recipients (event loop "
              f"{loop / k:.4f}), redis {red / k:.4f}; wall {wall:.2f} s; written "
              f"{await written(client):,}; join backlog {backlog:,}; RSS {rss_mb():.0f} MB; load "
              f"{os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
        if profiler is None:
            cpus.append(cpu / k)
            loops.append(loop / k)
    print(f"median {args.config}: {statistics.median(cpus):.4f} CPU-s per 1k recipients "
          f"(rounds {', '.join(f'{c:.4f}' for c in cpus)}), event loop "
          f"{statistics.median(loops):.4f}; load {os.getloadavg()[0]:.2f}")  # fmt: skip
    await stop()


def main() -> int:
    """Run the rounds and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="thompson", choices=sorted(POLICIES))
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--request-size", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", default="")
    args = parser.parse_args()
    import uvloop

    workdir = Path(tempfile.mkdtemp(prefix="profile-campaign-"))
    redis_server = RedisServer(workdir / "redis", persist=False).start()
    worker = {"TAILOR_LOG_LEVEL": "warning", "TAILOR_LEARNER_IN_PROCESS": "false"}
    env = tailor_env(workdir, redis_server.url, "bench", f"{ADMIN}:admin", worker)
    try:
        uvloop.run(run(args, env, int(redis_server.pid or 0), redis_server.url))
    finally:
        redis_server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
