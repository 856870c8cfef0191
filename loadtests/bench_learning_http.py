"""Learning benchmark through the real HTTP API, at full speed, with the server's own learner.

Run: ``.venv/bin/python loadtests/bench_learning_http.py [--worlds 2way,3way] [--seeds 1]
[--n 50000] [--window 2] [--concurrency 32] [--policy '{"kind":"vw_cb"}']``

The worlds of ``loadtests/bench_learning.py`` (``World``: ``segment`` is a profile attribute,
written with ``PUT /v1/units/{id}/features``; ``device``, ``region``, ``n1``..``n3`` come with
each request's ``context``), one experiment per world on its own placement, all with the same
policy config (``vw_cb`` defaults unless ``--policy``). One private ``redis-server`` and one
``tailor serve`` (granian, one worker, embedded chdb, in-server learner publishing a snapshot
every second). Every visitor is one ``POST /v1/decide`` asking every world's placement, sent as
fast as ``--concurrency`` connections allow; visitor ``i`` has the same attributes in every
world, and each world's click rates decide its clicks.

Rewards are spread over the reward window: a click is posted (``POST /v1/outcomes/batch``) at a
uniformly random time within ``--window`` seconds of its decision; decisions without one get
the default reward 0 when their window closes, and the server learns every decision then (its
unbiased join). The issue's 60 s window is scaled with the traffic: at full speed here (about
1,000 visitors/s, each deciding every world) a 60 s window would hold back 60,000 decisions, more
than a run, so the default ``--window`` is 2 s (about 2,000 decisions, as if the traffic were 30
times slower); ``--window 60`` with a larger ``--n`` is the unscaled thing. A 6 s window at 2,700
visitors/s held back 16,000 decisions: 3-way 0.28 instead of 0.55.

Printed per world (medians over seeds when several): ``share`` = mean click rate of the chosen
variants over the last fifth of the visitors, as a share of the oracle's gain over uniform play
(the oracle knows every click rate; uniform earns the mean); ``single`` = the same share for the
best single variant; a regret curve (cumulative expected regret against the oracle at a few
visitor counts); ``cover`` = whether the SNIPS 95 % interval of uniform play's value from the
logged propensities covers the truth; ``learner_lag`` = the most decisions whose reward window
had closed (plus a second) that the published model had not learned yet, sampled every 2 s (the
learner falling behind the traffic); the serving member (``model_version`` of the last
decisions). The JSON goes to ``loadtests/results/bench_learning_http-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

from loadtests.bench_learning import World, parse_world
from loadtests.sim_learning import Connection, Server

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "loadtests" / "results"
UNITS_PER_SEGMENT = 200
REQUEST_ATTRIBUTES = ("device", "region", "n1", "n2", "n3")


def experiment(world: str, k: int, policy: dict[str, Any], window_s: int) -> dict[str, Any]:
    """The experiment of one world: ``k`` variants, a click is worth 1, no click 0."""
    name = world.replace("@", "-")
    return {
        "key": f"lw-{name}",
        "placement": f"lw_{name.replace('-', '_')}",
        "default_variant": "v0",
        "variants": [{"key": f"v{j}"} for j in range(k)],
        "policy": policy,
        "reward_window_s": window_s,
        "reward": {
            "rules": [{"type": "click", "reward": 1.0}],
            "aggregation": "first",
            "default": 0.0,
        },
    }


class Clicks:
    """Clicks due at future times, posted in batches by one background task."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, dict[str, str]]] = []
        self._seq = 0
        self.posted = 0

    def add(self, at: float, outcome: dict[str, str]) -> None:
        self._seq += 1
        heapq.heappush(self._due, (at, self._seq, outcome))

    async def run(self, conn: Connection, stop: asyncio.Event) -> None:
        """Post every click when due (every 50 ms) until ``stop`` and none is left."""
        while not (stop.is_set() and not self._due):
            now = time.monotonic()
            batch = []
            while self._due and self._due[0][0] <= now and len(batch) < 500:
                batch.append(heapq.heappop(self._due)[2])
            if batch:
                await conn.call("POST", "/v1/outcomes/batch", {"outcomes": batch})
                self.posted += len(batch)
            else:
                await asyncio.sleep(0.05)


async def run_seed(args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    """One server, every world at once; returns one row of figures per world."""
    specs = [(w, *parse_world(w)) for w in args.worlds.split(",")]
    base = World("2way", 8, args.n, seed)  # every world sees these attributes
    worlds = {}
    for spec, kind, k in specs:
        world = World(kind, k, args.n, seed)
        world.x = base.x
        worlds[spec] = (world, world.ctr_all())
    policy = json.loads(args.policy)
    exps = {spec: experiment(spec, k, policy, args.window) for spec, _, k in specs}
    n = args.n
    chosen = {spec: np.zeros(n, dtype=np.int64) for spec in worlds}
    propensity = {spec: np.ones(n) for spec in worlds}
    clicked = {spec: np.zeros(n) for spec in worlds}
    members: dict[str, Counter[str]] = {spec: Counter() for spec in worlds}
    rng = np.random.default_rng(seed)
    unit_pick = rng.integers(UNITS_PER_SEGMENT, size=n)
    delays = rng.random((n, len(worlds))) * args.window
    placements = [e["placement"] for e in exps.values()]
    by_placement = {e["placement"]: spec for spec, e in exps.items()}
    column = {spec: j for j, spec in enumerate(worlds)}
    latency = np.zeros(n)
    with tempfile.TemporaryDirectory(prefix="tailor-lw-") as tmp:
        server = Server(Path(tmp), 1.0)
        try:
            server.wait_ready()
            conns = [await Connection.open(server.port) for _ in range(args.concurrency + 1)]
            admin = conns[0]
            profiles = [
                (s, j) for s in sorted(set(base.x[:, 0].tolist())) for j in range(UNITS_PER_SEGMENT)
            ]

            async def put_profiles(conn: Connection) -> None:
                while profiles:
                    s, j = profiles.pop()
                    await conn.call(
                        "PUT", f"/v1/units/s{s}-{j}/features", {"features": {"segment": f"s{s}"}}
                    )

            await asyncio.gather(*(put_profiles(c) for c in conns[1:]))
            for spec in exps.values():
                await admin.call("POST", "/v1/experiments", spec)
                await admin.call("POST", f"/v1/experiments/{spec['key']}/start")
            while True:  # consent=false: nothing is learned from the probe
                got = await admin.call(
                    "POST",
                    "/v1/decide",
                    {"unit_id": "probe", "placements": placements, "consent": False},
                )
                if all(d.get("experiment") for d in got["decisions"]):
                    break
                await asyncio.sleep(0.1)
            clicks = Clicks()
            stop = asyncio.Event()
            poster = asyncio.create_task(clicks.run(admin, stop))
            next_i = 0
            started = time.monotonic()
            lags: dict[str, list[int]] = {spec: [] for spec in worlds}
            done_at: list[tuple[float, int]] = []

            async def watch_learner() -> None:
                """Every 2 s: how many decisions whose window has closed the model still lacks."""
                conn = await Connection.open(server.port)
                try:
                    while not stop.is_set():
                        await asyncio.sleep(2.0)
                        now = time.monotonic()
                        done_at.append((now, next_i))
                        closed = max(
                            (i for t, i in done_at if t <= now - args.window - 1.0), default=0
                        )
                        for spec, e in exps.items():
                            try:
                                info = await conn.call("GET", f"/v1/experiments/{e['key']}/model")
                                learned = int(info["examples"])
                            except RuntimeError:  # 404: nothing published yet
                                learned = 0
                            lags[spec].append(closed - learned)
                finally:
                    conn.close()

            watcher = asyncio.create_task(watch_learner())

            async def visitor_loop(conn: Connection) -> None:
                nonlocal next_i
                while next_i < n:
                    i = next_i
                    next_i += 1
                    context = base.context(i)
                    body = {
                        "unit_id": f"s{base.x[i, 0]}-{unit_pick[i]}",
                        "placements": placements,
                        "context": {a: context[a] for a in REQUEST_ATTRIBUTES},
                    }
                    sent = time.monotonic()
                    got = await conn.call("POST", "/v1/decide", body)
                    latency[i] = time.monotonic() - sent
                    for d in got["decisions"]:
                        spec = by_placement[d["placement"]]
                        world, ctr = worlds[spec]
                        a = int(d["variant"][1:])
                        chosen[spec][i] = a
                        propensity[spec][i] = float(d.get("propensity", 1.0))
                        members[spec][str(d.get("model_version")).partition("/")[2]] += (
                            i >= n - n // 5
                        )
                        if world.clicks_u[i] < ctr[i, a]:
                            clicked[spec][i] = 1.0
                            clicks.add(
                                sent + delays[i, column[spec]],
                                {
                                    "decision_id": got["decision_id"],
                                    "experiment": d["experiment"],
                                    "type": "click",
                                },
                            )

            await asyncio.gather(*(visitor_loop(c) for c in conns[1:]))
            seconds = time.monotonic() - started
            stop.set()
            await poster
            await watcher
            for conn in conns:
                conn.close()
        finally:
            server.stop()
    rows = []
    for spec, (world, ctr) in worlds.items():
        a = chosen[spec]
        got_ctr = ctr[np.arange(n), a]
        orc, uni = ctr.max(1), ctr.mean(1)
        last = slice(n - n // 5, n)
        gain = orc[last].mean() - uni[last].mean()
        share = float((got_ctr[last].mean() - uni[last].mean()) / gain)
        single = float((ctr[last].mean(0).max() - uni[last].mean()) / gain)
        regret = np.cumsum(orc - got_ctr)
        points = [p for p in (1000, 5000, 10_000, 20_000, 35_000, 50_000, 100_000) if p <= n]
        w = (1.0 / world.k) / propensity[spec]
        r = clicked[spec]
        est = float((w * r).sum() / w.sum())
        se = float(np.sqrt(((w * (r - est)) ** 2).sum()) / w.sum())
        rows.append(
            {
                "world": spec,
                "seed": seed,
                "n": n,
                "seconds": round(seconds, 1),
                "decisions_per_s": round(n / seconds),
                "p99_ms": round(float(np.percentile(latency, 99) * 1000), 1),
                "share": share,
                "single": single,
                "regret": {str(p): round(float(regret[p - 1]), 1) for p in points},
                "cover": bool(abs(est - float(uni.mean())) <= 1.96 * se),
                "learner_lag": max(lags[spec], default=0),
                "serving": members[spec].most_common(2),
            }
        )
    return rows


def main() -> int:
    """Run every seed, print each world's row and the medians, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", default="additive,2way,3way,rare,change,wide")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--n", type=int, default=50_000, help="visitors per seed")
    ap.add_argument("--window", type=int, default=2, help="reward window, seconds")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--policy", default='{"kind":"vw_cb"}', help="the policy config, JSON")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for seed in map(int, args.seeds.split(",")):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            got = runner.run(run_seed(args, seed))
        for row in got:
            print(json.dumps(row), flush=True)
        rows += got
    print(
        f"\n{'world':<10}{'seeds':>6}{'share':>8}{'single':>8}{'cover':>7}{'lag':>8}  regret curve"
    )
    for spec in args.worlds.split(","):
        rs = [r for r in rows if r["world"] == spec]
        curve = {p: statistics.median(r["regret"][p] for r in rs) for p in rs[0]["regret"]}
        print(
            f"{spec:<10}{len(rs):>6}{statistics.median(r['share'] for r in rs):>8.2f}"
            f"{statistics.median(r['single'] for r in rs):>8.2f}"
            f"{sum(r['cover'] for r in rs):>5}/{len(rs)}"
            f"{statistics.median(r['learner_lag'] for r in rs):>8.0f}  {curve}"
        )
    speed = statistics.median(r["decisions_per_s"] for r in rows)
    print(f"visitors/s (each asks every world's placement): {speed:,.0f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench_learning_http-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
