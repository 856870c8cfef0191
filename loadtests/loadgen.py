"""Realistic load against a real ``tailor serve``: decisions, outcomes and feature updates.

Run: ``.venv/bin/python loadtests/loadgen.py [--rate 3750 | --rate 0] [--runs 3] [--duration 30]
[--workers 1] [--vw-only] [--soak 600]`` (see ``loadtests/README.md`` for the recorded figures).

Set-up: a private ``redis-server``; ``tailor serve`` (granian, embedded chdb in a temporary
directory, JSON logging at ``info``, API keys on; ``--server uvicorn`` for comparison,
by default the learner ``tailor serve`` supervises as its own process, ``--learner process``
for a ``tailor learn`` started beside the server instead); a population of
``--units`` (100,000) profiles written straight into Redis in the server's key format (pipelined:
segment, device, 14 numeric features, a category list, a flag); six placements served by six
running experiments — two ``fixed`` (A/B/n with targeting), two ``thompson`` (one per segment) and
two ``vw_cb`` (10 variants with per-action features, ``-q UA``), or all six ``vw_cb`` with
``--vw-only``.

The mix (``--mix 80,15,5``): 80 % ``POST /v1/decide`` for a random unit with 1-3 of the six
placements; 15 % ``POST /v1/outcomes`` (click, or purchase with a value) for the decision id of
a recent decision; 5 % ``PUT /v1/units/{id}/features``. ``--mix 100,0,0`` is decide only.

Modes: open loop (``--rate R`` requests/s in all, latency from each request's scheduled send time
— the honest "p99 at that rate") or closed loop (``--rate 0``: ``--concurrency`` connections
back to back, the maximum throughput). ``--soak S`` runs one open-loop run of ``S`` seconds and
prints every 30 s the throughput, p50/p99 and the server's RSS, then a verdict: flat when the
median p99 of the last third of the windows is within 1.5x (or +2 ms) of the first third's and
the server's RSS grew by at most 10 % between the two thirds.

Printed per run: throughput, p50/p95/p99/max per request kind and overall, errors, the CPU of
the server tree (granian main + workers + event-log owner + learner, each listed), its busiest
thread (the single-core bound of one worker), Redis and the generator, the server's RSS and the
load average. The JSON goes to ``loadtests/results/loadgen-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from decision_api.redis_server import RedisServer, free_port

if __package__ in (None, ""):  # run as a script: make ``loadtests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtests.figures import (
    KINDS,
    Meters,
    RunFigures,
    SoakWindow,
    make_run,
    median_summary,
    print_run,
    sample_figures,
    verdict,
)
from loadtests.harness import (
    ServerUnderTest,
    child_pids,
    load_average,
    server_counters,
    start_profiler,
    write_result,
)
from loadtests.http_load import LoadGenerator, Sample
from loadtests.population import (
    ADMIN_KEY,
    CLIENT_KEY,
    DEVICES,
    GEOS,
    PAGES,
    PLACEMENTS,
    PREFIX,
    REFERRERS,
    SEGMENTS,
    experiments,
    load_population,
    setup_experiments,
)

DECIDE, OUTCOME, FEATURES = range(3)

# ---------------------------------------------------------------------------------------------
# The mix


class _Decisions(msgspec.Struct):
    placement: str
    reason: str
    policy: str = "none"


class _Answer(msgspec.Struct):
    decision_id: str
    decisions: list[_Decisions]


class MixWorkload:
    """Decide / outcome / feature-update requests in the configured proportions."""

    kinds = KINDS

    def __init__(
        self, units: int, mix: tuple[float, float, float], port: int, rng: np.random.Generator
    ) -> None:
        total = sum(mix)
        self._kinds = rng.choice(3, size=100_003, p=[m / total for m in mix]).tolist()
        self._head = (
            f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self._decides = self._decide_requests(units, 50_021, rng)
        self._features = self._feature_requests(units, 10_007, rng)
        self._outcome_u = rng.random(20_011).tolist()
        self._recent: list[tuple[bytes, int]] = []  # ring of (decision id, unit) to reward
        self._ring_at = 0
        self._n_decide = self._n_features = self._n_outcome = 0
        self.answers: dict[tuple[str, str, str], int] = {}
        self._answer = msgspec.json.Decoder(_Answer)
        self._answered = 0

    def _request(self, method: bytes, path: bytes, body: bytes) -> bytes:
        return b"%s %s HTTP/1.1\r\n%s%d\r\n\r\n%s" % (method, path, self._head, len(body), body)

    def _decide_requests(
        self, units: int, count: int, rng: np.random.Generator
    ) -> list[tuple[bytes, int]]:
        names = [p.encode() for p in PLACEMENTS]
        ids = rng.integers(0, units, count).tolist()
        sizes = rng.integers(1, 4, count).tolist()
        out = []
        for n, (unit, k) in enumerate(zip(ids, sizes, strict=True)):
            chosen = rng.choice(len(names), size=k, replace=False)
            placements = b",".join(b'"%s"' % names[j] for j in chosen)
            body = (
                b'{"unit_id":"u-%d","placements":[%s],"context":{"device":"%s","page":"%s",'
                b'"geo":"%s","referrer":"%s","hour":%d},"consent":true}'
                % (unit, placements, DEVICES[n % 3].encode(), PAGES[n % 7].encode(),
                   GEOS[n % 6].encode(), REFERRERS[n % 5].encode(), n % 24)
            )  # fmt: skip
            out.append((self._request(b"POST", b"/v1/decide", body), unit))
        return out

    def _feature_requests(
        self, units: int, count: int, rng: np.random.Generator
    ) -> list[tuple[bytes, int]]:
        ids = rng.integers(0, units, count).tolist()
        out = []
        for n, unit in enumerate(ids):
            body = (
                b'{"features":{"churn_risk":%.3f,"visits_30d":%d,"segment":"%s",'
                b'"last_page":"%s"}}'
                % (rng.random(), n % 17, SEGMENTS[n % 4].encode(), PAGES[n % 7].encode())
            )
            out.append((self._request(b"PUT", b"/v1/units/u-%d/features" % unit, body), unit))
        return out

    def request(self, i: int) -> tuple[int, bytes, int]:
        """The ``i``-th request of the mix (an outcome needs an earlier decision to reward)."""
        kind = self._kinds[i % len(self._kinds)]
        if kind == OUTCOME and self._recent:
            n = self._n_outcome
            self._n_outcome = n + 1
            u = self._outcome_u[n % len(self._outcome_u)]
            decision, unit = self._recent[int(u * len(self._recent))]
            if u < 0.8:
                body = b'{"decision_id":"%s","unit_id":"u-%d","type":"click"}' % (decision, unit)
            else:
                body = b'{"decision_id":"%s","unit_id":"u-%d","type":"purchase","value":%.2f}' % (
                    decision, unit, 10 + 200 * u - 160)  # fmt: skip
            return OUTCOME, self._request(b"POST", b"/v1/outcomes", body), unit
        if kind == FEATURES:
            n = self._n_features
            self._n_features = n + 1
            data, unit = self._features[n % len(self._features)]
            return FEATURES, data, unit
        n = self._n_decide
        self._n_decide = n + 1
        data, unit = self._decides[n % len(self._decides)]
        return DECIDE, data, unit

    def response(self, kind: int, tag: int, status: int, body: bytes) -> None:
        """Keep decision ids for outcomes; tally what every 50th decision answered."""
        if kind != DECIDE or status != 200:
            return
        at = body.find(b'"decision_id":"')
        if at >= 0:
            item = (body[at + 15 : at + 47], tag)
            if len(self._recent) < 10_000:
                self._recent.append(item)
            else:
                self._recent[self._ring_at] = item
                self._ring_at = (self._ring_at + 1) % 10_000
        self._answered += 1
        if self._answered % 50 == 0:
            for d in self._answer.decode(body).decisions:
                key = (PLACEMENTS_SERVED.get(d.placement, d.placement), d.policy, d.reason)
                self.answers[key] = self.answers.get(key, 0) + 1


PLACEMENTS_SERVED: dict[str, str] = {}  # placement -> "<kind>:<placement>", set in main()


# ---------------------------------------------------------------------------------------------
# Figures


# ---------------------------------------------------------------------------------------------
# Modes


async def measure(
    args: argparse.Namespace, gen: LoadGenerator, meters: Meters, server: ServerUnderTest
) -> list[RunFigures]:
    """Warm up (closed loop), then ``--runs`` runs of ``--duration`` seconds."""
    rate = gen.rate
    if args.warmup > 0:
        gen.rate = 0
        await gen.run(args.warmup)
        gen.take()
    gen.rate = rate
    mode = f"open loop at {rate:g}/s" if rate > 0 else f"closed loop, {gen.concurrency} conns"
    runs = []
    for n in range(args.runs):
        spy = None
        if args.profile is not None and n == 0:
            spy = start_profiler(args.profile, server.main.pid, args.duration)
        meters.reset()
        elapsed = await gen.run(args.duration)
        run = make_run(mode, elapsed, gen.take(), meters.read(), int(args.duration * rate))
        if spy is not None:
            await asyncio.to_thread(spy.wait, 60)
        print_run(f"run {n + 1} ({mode})", run)
        runs.append(run)
    return runs


async def soak(
    args: argparse.Namespace, gen: LoadGenerator, meters: Meters
) -> tuple[list[SoakWindow], dict[str, Any], RunFigures]:
    """One long open-loop run, a window every ``--soak-every`` seconds, and the verdict."""
    if args.warmup > 0:
        rate, gen.rate = gen.rate, 0
        await gen.run(args.warmup)
        gen.take()
        gen.rate = rate
    windows: list[SoakWindow] = []
    everything = Sample(len(KINDS))
    began = time.perf_counter()
    last = [began]
    meters.reset()
    whole = Meters(meters.server, meters.redis_pids)

    def tick() -> None:
        now = time.perf_counter()
        sample = gen.take()
        everything.absorb(sample)
        overall, kinds = sample_figures(sample, now - last[0])
        m = meters.read()
        meters.reset()
        window = SoakWindow(
            t_s=round(now - began, 1), per_s=overall.per_s,
            decide_per_s=kinds["decide"].per_s if "decide" in kinds else 0.0,
            p50_ms=overall.p50_ms, p99_ms=overall.p99_ms, errors=overall.errors,
            server_rss_mb=m["server_rss_mb"], server_cpu_share=m["server_cpu_share"],
            not_sent=max(0, int(gen.rate * (now - last[0])) - sample.sent),
            load_avg_1m=load_average()[0],
        )  # fmt: skip
        last[0] = now
        windows.append(window)
        print(
            f"t={window.t_s:6.0f} s  {window.per_s:7.1f} req/s ({window.decide_per_s:.0f} "
            f"decisions/s)  p50 {window.p50_ms:6.2f} ms  p99 {window.p99_ms:6.2f} ms  "
            f"errors {window.errors}  not sent {window.not_sent}  server RSS "
            f"{window.server_rss_mb:6.1f} MB  cpu {window.server_cpu_share:.2f} cores  "
            f"load {window.load_avg_1m:.2f}",
            flush=True,
        )

    elapsed = await gen.run(args.soak, every=args.soak_every, tick=tick)
    everything.absorb(gen.take())
    mode = f"soak, open loop at {gen.rate:g}/s"
    run = make_run(mode, elapsed, everything, whole.read(), int(args.soak * gen.rate))
    return windows, verdict(windows), run


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="open loop: requests/s in all (0: closed loop, max throughput)",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="closed-loop seconds first")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="keep-alive connections (default: 32 closed, 64 open loop)",
    )
    parser.add_argument("--mix", default="80,15,5", help="decide,outcome,features shares")
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--vw-only", action="store_true", help="every placement is vw_cb")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--server", choices=["granian", "granian-cli", "uvicorn"], default="granian"
    )
    parser.add_argument(
        "--server-args", default="", help="granian-cli options, e.g. '--task-impl rust'"
    )
    parser.add_argument(
        "--learner",
        choices=["serve", "process"],
        default="serve",
        help="serve: tailor serve's own learner process (the default); process: a tailor learn "
        "started beside the server",
    )
    parser.add_argument("--reward-window", type=int, default=60, help="seconds")
    parser.add_argument("--soak", type=float, default=0.0, help="soak for this many seconds")
    parser.add_argument("--soak-every", type=float, default=30.0)
    parser.add_argument(
        "--profile", type=Path, help="py-spy the server tree during the first run (raw stacks here)"
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--redis-client",
        default="lean",
        choices=("lean", "redis-py"),
        help="the workers' client for hot commands (TAILOR_REDIS_LEAN_CLIENT), for an A/B",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if args.soak and args.rate <= 0:
        parser.error("--soak needs --rate (an open-loop rate)")
    args.mix_shares = tuple(float(x) for x in args.mix.split(","))
    if len(args.mix_shares) != 3 or sum(args.mix_shares) <= 0:
        parser.error("--mix takes three non-negative shares: decide,outcome,features")
    if not args.concurrency:
        args.concurrency = 64 if args.rate > 0 else 32
    return args


def main() -> int:
    """Set up, measure (runs or soak), report."""
    args = parse_args()
    import uvloop

    uvloop.install()
    for placement, kind in PLACEMENTS.items():
        PLACEMENTS_SERVED[placement] = f"{'vw_cb' if args.vw_only else kind}:{placement}"
    workdir = Path(tempfile.mkdtemp(prefix="loadgen-"))
    redis_server = RedisServer(workdir / "redis", persist=False).start()
    port = free_port()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = load_average()
    server = ServerUnderTest(
        workdir, redis_server.url, port, prefix=PREFIX,
        api_keys=f"{ADMIN_KEY}:admin,{CLIENT_KEY}:decide+ingest",
        workers=args.workers, server=args.server, learner=args.learner,
        server_args=args.server_args.split(),
        extra_env={"TAILOR_REDIS_LEAN_CLIENT": str(args.redis_client == "lean").lower()},
    )  # fmt: skip
    windows: list[SoakWindow] = []
    soak_verdict: dict[str, Any] = {}
    try:
        server.wait_ready()
        setup_experiments(server.url, experiments(args.vw_only, args.reward_window))
        rng = np.random.default_rng(args.seed)
        loaded = load_population(redis_server.url, args.units, rng)
        print(f"profiles of {args.units:,} units loaded in {loaded:.1f} s; load average "
              f"{load_before[0]:.2f} before start", flush=True)  # fmt: skip
        workload = MixWorkload(args.units, args.mix_shares, port, rng)
        gen = LoadGenerator(port, workload, args.concurrency, args.rate)
        meters = Meters(server, child_pids("redis-server"))
        if args.soak:
            windows, soak_verdict, soak_run = asyncio.run(soak(args, gen, meters))
            runs = [soak_run]
            print_run("whole soak", soak_run)
        else:
            runs = asyncio.run(measure(args, gen, meters, server))
        deadline = time.monotonic() + 20
        counters = server_counters(server.url)
        while counters["exposures_written"] < counters["decisions"] and time.monotonic() < deadline:
            time.sleep(0.5)
            counters = server_counters(server.url)
    finally:
        server.stop()
        redis_server.stop()
    summary = median_summary(runs)
    o = summary["overall"]
    print(
        f"median of {len(runs)} run(s) ({runs[0].mode}, mix {args.mix}, "
        f"{'vw_cb everywhere' if args.vw_only else 'fixed+thompson+vw_cb'}, {args.workers} "
        f"{args.server} worker(s), learner {args.learner}): {o['per_s']:.0f} req/s, "
        f"p50 {o['p50_ms']:.2f} ms, p95 {o['p95_ms']:.2f} ms, p99 {o['p99_ms']:.2f} ms, "
        f"max {o['max_ms']:.2f} ms, errors {o['errors']}; load average {summary['load_avg_1m']}"
    )
    if "decide" in summary:
        d = summary["decide"]
        print(f"  decide: {d['per_s']:.0f}/s, p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms")
    print("  answers (every 50th decision, kind:placement, policy, reason):")
    for (where, policy, reason), n in sorted(workload.answers.items()):
        print(f"    {where:28s} {policy:9s} {reason:18s} {n}")
    print(
        f"server: {counters['decisions']:.0f} placement decisions (warm-up included), "
        f"{counters['exposures_written']:.0f} exposures and {counters['outcomes_written']:.0f} "
        f"outcomes written to chdb, flush errors {counters['flush_errors']:.0f}"
    )
    if soak_verdict:
        v = soak_verdict
        print(
            f"soak verdict: {'FLAT' if v['flat'] else 'NOT FLAT'} — p99 {v['p99_first_third_ms']}"
            f" -> {v['p99_last_third_ms']} ms, RSS {v['rss_first_third_mb']} -> "
            f"{v['rss_last_third_mb']} MB ({100 * v['rss_growth']:+.1f} %, slope "
            f"{v['rss_slope_mb_per_min']} MB/min); {v['tolerance']}"
        )
    out = write_result(
        "loadgen",
        {
            "command": " ".join(sys.argv),
            "started": started,
            "machine": {
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "load_avg_before": load_before,
            },
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "runs": [msgspec.to_builtins(r) for r in runs],
            "median": summary,
            "answers": [[*k, n] for k, n in sorted(workload.answers.items())],
            "server": counters,
            "soak": {"windows": [msgspec.to_builtins(w) for w in windows], "verdict": soak_verdict}
            if windows
            else None,
        },
    )
    print(f"wrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    if args.keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
