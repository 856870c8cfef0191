"""Simulation benchmark: do the learning policies learn, through the real API?

Run: ``.venv/bin/python loadtests/sim_learning.py [--runs 3] [--decisions 50000]
[--concurrency 48] [--units 4000] [--window 5] [--seed 1]``

A synthetic world: 10 variants, 4 visitor segments, 2 devices. Each unit's ``segment`` and
``device`` live in its Redis profile (written through ``PUT /v1/units/{id}/features``). The
click-through rate of variant ``v`` for a visitor of segment ``s`` on device ``d`` is

    ctr = 2% + 3.5% [v is s's favourite] + 1.5% [v == v5] + 1% [v suits device d]

(favourites v0, v3, v6, v9 for s0..s3; v1, v2 suit mobile, v7, v8 desktop). The best variant
depends on the segment (5.5% everywhere); the best single variant for everyone is v5 (3.5%);
uniform play earns 2.7%.

It starts a private ``redis-server`` and one ``tailor serve`` (granian, one worker, embedded chdb,
in-server learner publishing a snapshot every second, workers polling every second), creates one
running experiment per policy, each on its own placement, and sends ``--decisions`` visitors
(random units) through ``POST /v1/decide`` asking for every placement at once, from
``--concurrency`` concurrent asyncio tasks. For each placement a click is drawn from the world's
CTR and, when it happens, posted at once with the decision id and experiment
(``POST /v1/outcomes/batch``); decisions without a click get the default reward 0 when their
``--window``-second reward window closes. So every policy sees the same visitors, and learns only
from what the API joined.

Printed per policy: clicks, mean expected CTR of the chosen variants, expected regret against the
oracle (each segment's best variant), and the mean CTR over the last 10,000 decisions with its
share of the oracle's gain over uniform play. With ``--runs`` > 1 the medians over runs follow.
The JSON goes to ``loadtests/results/sim_learning-<timestamp>.json``. Expected: ``vw_cb`` >
``thompson`` > ``fixed``, and ``vw_cb`` reaches >= 70% of the oracle's gain by the end.
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
import numpy.typing as npt
import uvloop

from decision_api.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "loadtests" / "results"

VARIANTS = [f"v{i}" for i in range(10)]
SEGMENTS = ["s0", "s1", "s2", "s3"]
DEVICES = ["mobile", "desktop"]
FAVOURITE = {"s0": 0, "s1": 3, "s2": 6, "s3": 9}
DEVICE_FRIENDLY = {"mobile": (1, 2), "desktop": (7, 8)}
LAST = 10_000

# Policy name -> policy config. Each runs as its own experiment on its own placement.
POLICIES: dict[str, dict[str, Any]] = {
    "fixed": {"kind": "fixed"},
    "thompson": {"kind": "thompson"},
    "thompson_segment": {"kind": "thompson", "segment_by": "segment"},
    "vw_cb": {
        "kind": "vw_cb",
        "exploration": "squarecb",
        "gamma_scale": 10.0,
        "interactions": ["UA"],
        "extra_args": ["-l", "0.01"],
    },
    "vw_cb_epsilon": {
        "kind": "vw_cb",
        "exploration": "epsilon",
        "epsilon": 0.1,
        "interactions": ["UA"],
        "extra_args": ["-l", "0.01"],
    },
}

FloatArray = npt.NDArray[np.float64]
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class Unavailable(RuntimeError):
    """The server answered 503 (a backend timed out): worth a retry."""


class Connection:
    """One keep-alive HTTP/1.1 connection to the server.

    A plain asyncio client: an httpx pool costs more CPU per request than the server's decision,
    and the load generator shares the machine with the server it drives.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int):
        self._reader = reader
        self._writer = writer
        self._host = f"127.0.0.1:{port}"

    @classmethod
    async def open(cls, port: int) -> Connection:
        """Connect to 127.0.0.1:``port``."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, port)

    async def call(self, method: str, path: str, body: object = None) -> Any:
        """Send one request and return the decoded JSON answer; retries a 503 a few times,
        raises on any other non-2xx status."""
        for attempt in range(5):
            try:
                return await self._call(method, path, body)
            except Unavailable:
                await asyncio.sleep(0.1 * (attempt + 1))
        return await self._call(method, path, body)

    async def _call(self, method: str, path: str, body: object) -> Any:
        payload = _encode(body) if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        self._writer.write(head.encode() + payload)
        raw = await self._reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        lower = raw.lower()
        at = lower.find(b"content-length:")
        if at >= 0:
            end = lower.index(b"\r\n", at)
            data = await self._reader.readexactly(int(lower[at + 15 : end]))
        else:  # chunked
            chunks = []
            while size := int((await self._reader.readuntil(b"\r\n")).strip(), 16):
                chunks.append(await self._reader.readexactly(size))
                await self._reader.readexactly(2)
            await self._reader.readexactly(2)
            data = b"".join(chunks)
        if status == 503:
            raise Unavailable(data.decode(errors="replace"))
        if not 200 <= status < 300:
            raise RuntimeError(f"{method} {path}: {status} {data[:500]!r}")
        return _decode(data) if data else None

    def close(self) -> None:
        """Close the connection."""
        self._writer.close()


def ctr_table() -> FloatArray:
    """Click-through rates, shape ``(segments, devices, variants)``."""
    ctr = np.full((len(SEGMENTS), len(DEVICES), len(VARIANTS)), 0.02)
    for s, segment in enumerate(SEGMENTS):
        ctr[s, :, FAVOURITE[segment]] += 0.035
    ctr[:, :, 5] += 0.015
    for d, device in enumerate(DEVICES):
        for v in DEVICE_FRIENDLY[device]:
            ctr[:, d, v] += 0.01
    return ctr


def experiment(name: str, policy: dict[str, Any], window_s: int) -> dict[str, Any]:
    """The experiment definition for one policy (payload metadata becomes action features)."""
    return {
        "key": f"sim-{name.replace('_', '-')}",
        "placement": f"sim_{name}",
        "default_variant": "v0",
        "variants": [
            {"key": v, "payload": {"headline": f"Offer {i}", "layout": "grid" if i % 2 else "list"}}
            for i, v in enumerate(VARIANTS)
        ],
        "policy": policy,
        "reward_window_s": window_s,
        "reward": {
            "rules": [{"type": "click", "reward": 1.0}],
            "aggregation": "first",
            "default": 0.0,
        },
    }


class Server:
    """A private redis-server and one ``tailor serve`` with the in-server learner."""

    def __init__(self, workdir: Path, snapshot_interval_s: float) -> None:
        self.redis = RedisServer(workdir / "redis", persist=False).start()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
        env.update(
            TAILOR_REDIS_URL=self.redis.url,
            TAILOR_REDIS_KEY_PREFIX="sim",
            TAILOR_DATA_DIR=str(workdir / "data"),
            TAILOR_EVENT_LOG_URL=f"chdb://{workdir / 'data' / 'chdb'}",
            TAILOR_EVENT_LOG_SPOOL_DIR=str(workdir / "data" / "spool"),
            TAILOR_AUTH_RATE_LIMIT_PER_S="1000000",
            TAILOR_AUTH_RATE_LIMIT_BURST="1000000",
            # The machine is shared with the load generator: allow slow Redis answers.
            TAILOR_REDIS_SOCKET_TIMEOUT_S="2",
            TAILOR_LEARNER_SNAPSHOT_INTERVAL_S=str(snapshot_interval_s),
            TAILOR_LEARNER_MODEL_POLL_INTERVAL_S="1.0",
            TAILOR_LEARNER_REWARD_SWEEP_INTERVAL_S="0.5",
            TAILOR_LOG_FORMAT="json",
            TAILOR_LOG_LEVEL="warning",
        )
        self.log_path = workdir / "serve.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "decision_api.cli.main", "serve", "--port", str(self.port)],
            cwd=workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group: stop() reaches granian's worker too
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until ``/readyz`` answers 200."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.log_path.read_text(errors="replace")[-3000:])
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        """SIGTERM the server (graceful: flushes its writer), then stop Redis."""
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the group
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()
        self.redis.stop()


class PolicyResult(msgspec.Struct, kw_only=True):
    """What one policy earned in one run."""

    policy: str
    decisions: int
    clicks: int
    mean_ctr: float
    regret: float
    last_ctr: float
    last_gain_share: float
    learned_examples: int
    model_version: int
    not_policy: int


class RunResult(msgspec.Struct, kw_only=True):
    """One simulation run."""

    seed: int
    seconds: float
    decisions_per_s: float
    decide_p50_ms: float
    decide_p99_ms: float
    oracle_ctr: float
    uniform_ctr: float
    policies: list[PolicyResult]


async def setup(
    conns: list[Connection],
    units: list[tuple[str, str, str]],
    window_s: int,
    policies: dict[str, dict[str, Any]],
) -> None:
    """Write unit profiles, create and start one experiment per policy, wait until live."""
    queue = list(units)

    async def put_features(conn: Connection) -> None:
        while queue:
            unit, segment, device = queue.pop()
            await conn.call(
                "PUT",
                f"/v1/units/{unit}/features",
                {"features": {"segment": segment, "device": device}},
            )

    await asyncio.gather(*(put_features(c) for c in conns))
    admin = conns[0]
    for name, policy in policies.items():
        spec = experiment(name, policy, window_s)
        await admin.call("POST", "/v1/experiments", spec)
        await admin.call("POST", f"/v1/experiments/{spec['key']}/start")
    placements = [f"sim_{name}" for name in policies]
    while True:  # consent=false: nothing is learned from these probes
        got = await admin.call(
            "POST", "/v1/decide", {"unit_id": "probe", "placements": placements, "consent": False}
        )
        if all(d.get("experiment") for d in got["decisions"]):
            return
        await asyncio.sleep(0.1)


async def drive(
    conns: list[Connection],
    units: list[tuple[str, str, str]],
    policies: list[str],
    n: int,
    rng: np.random.Generator,
) -> dict[str, dict[str, npt.NDArray[Any]]]:
    """Send ``n`` visitors; returns per policy arrays (by visitor order) of the chosen
    variant's CTR, the click, the oracle CTR, whether a policy decided, and the request's
    latency (one decide request serves every policy)."""
    ctr = ctr_table()
    visitor_units = rng.integers(0, len(units), size=n)
    click_u = rng.random((n, len(policies)))
    placements = [f"sim_{p}" for p in policies]
    index = {f"sim_{p}": j for j, p in enumerate(policies)}
    seg_index = {s: i for i, s in enumerate(SEGMENTS)}
    dev_index = {d: i for i, d in enumerate(DEVICES)}
    chosen_ctr = np.zeros((n, len(policies)))
    clicks = np.zeros((n, len(policies)), dtype=bool)
    learned = np.zeros((n, len(policies)), dtype=bool)
    oracle = np.zeros(n)
    latency = np.zeros(n)
    next_visitor = 0

    async def visitor_loop(conn: Connection) -> None:
        nonlocal next_visitor
        while next_visitor < n:
            i = next_visitor
            next_visitor += 1
            unit, segment, device = units[int(visitor_units[i])]
            table = ctr[seg_index[segment], dev_index[device]]
            oracle[i] = table.max()
            sent = time.perf_counter()
            body = await conn.call(
                "POST", "/v1/decide", {"unit_id": unit, "placements": placements}
            )
            latency[i] = time.perf_counter() - sent
            outcomes = []
            for decision in body["decisions"]:
                j = index[decision["placement"]]
                p = float(table[VARIANTS.index(decision["variant"])])
                chosen_ctr[i, j] = p
                learned[i, j] = decision["reason"] in ("policy", "split")
                if click_u[i, j] < p:
                    clicks[i, j] = True
                    outcomes.append(
                        {
                            "decision_id": body["decision_id"],
                            "experiment": decision["experiment"],
                            "type": "click",
                        }
                    )
            if outcomes:
                await conn.call("POST", "/v1/outcomes/batch", {"outcomes": outcomes})

    await asyncio.gather(*(visitor_loop(c) for c in conns))
    return {
        p: {
            "ctr": chosen_ctr[:, j],
            "click": clicks[:, j],
            "learned": learned[:, j],
            "oracle": oracle,
            "latency": latency,
        }
        for j, p in enumerate(policies)
    }


def analytic_baselines(units: list[tuple[str, str, str]]) -> tuple[float, float]:
    """(oracle CTR, uniform CTR) averaged over the unit population."""
    ctr = ctr_table()
    seg = [SEGMENTS.index(s) for _, s, _ in units]
    dev = [DEVICES.index(d) for _, _, d in units]
    tables = ctr[seg, dev]
    return float(tables.max(axis=1).mean()), float(tables.mean())


def model_info(url: str, name: str) -> tuple[int, int]:
    """(examples learned, version) of a policy's published model; (0, 0) for none."""
    got = httpx.get(f"{url}/v1/experiments/sim-{name.replace('_', '-')}/model")
    if got.status_code != 200:
        return 0, 0
    return int(got.json()["examples"]), int(got.json()["version"])


async def run_once(
    args: argparse.Namespace, seed: int, policies: dict[str, dict[str, Any]]
) -> RunResult:
    """Start a fresh server, simulate, stop; returns the figures of this run."""
    rng = np.random.default_rng(seed)
    units = [
        (f"unit-{i}", SEGMENTS[int(rng.integers(4))], DEVICES[int(rng.random() < 0.4)])
        for i in range(args.units)
    ]
    oracle_ctr, uniform_ctr = analytic_baselines(units)
    with tempfile.TemporaryDirectory(prefix="tailor-sim-") as tmp:
        server = Server(Path(tmp), args.snapshot_interval)
        try:
            server.wait_ready()
            conns = [await Connection.open(server.port) for _ in range(args.concurrency)]
            try:
                await setup(conns, units, args.window, policies)
                started = time.monotonic()
                series = await drive(conns, units, list(policies), args.decisions, rng)
                seconds = time.monotonic() - started
            finally:
                for conn in conns:
                    conn.close()
            await asyncio.sleep(args.window + 2.5)  # let the last windows close and publish
            infos = {name: model_info(server.url, name) for name in policies}
        finally:
            server.stop()
    results = []
    for name, s in series.items():
        ctr, click, oracle = s["ctr"], s["click"], s["oracle"]
        last = float(ctr[-LAST:].mean())
        results.append(
            PolicyResult(
                policy=name,
                decisions=len(ctr),
                clicks=int(click.sum()),
                mean_ctr=float(ctr.mean()),
                regret=float((oracle - ctr).sum()),
                last_ctr=last,
                last_gain_share=(last - uniform_ctr) / (oracle_ctr - uniform_ctr),
                learned_examples=infos[name][0],
                model_version=infos[name][1],
                not_policy=int((~s["learned"]).sum()),
            )
        )
    latency = next(iter(series.values()))["latency"]
    return RunResult(
        seed=seed,
        seconds=seconds,
        decisions_per_s=args.decisions / seconds,
        decide_p50_ms=float(np.percentile(latency, 50) * 1000),
        decide_p99_ms=float(np.percentile(latency, 99) * 1000),
        oracle_ctr=oracle_ctr,
        uniform_ctr=uniform_ctr,
        policies=results,
    )


def print_run(run: RunResult) -> None:
    """One run's table."""
    print(
        f"\nrun seed={run.seed}: {run.seconds:.1f} s, {run.decisions_per_s:,.0f} visitors/s "
        f"(decide p50 {run.decide_p50_ms:.1f} ms, p99 {run.decide_p99_ms:.1f} ms), "
        f"oracle CTR {run.oracle_ctr:.4f}, uniform CTR {run.uniform_ctr:.4f}"
    )
    print(
        f"{'policy':<18}{'clicks':>8}{'mean CTR':>10}{'regret':>10}{'last-10k CTR':>14}"
        f"{'gain share':>12}{'learned':>9}{'version':>9}"
    )
    for p in run.policies:
        print(
            f"{p.policy:<18}{p.clicks:>8}{p.mean_ctr:>10.4f}{p.regret:>10.1f}"
            f"{p.last_ctr:>14.4f}{p.last_gain_share:>11.0%}{p.learned_examples:>9}"
            f"{p.model_version:>9}"
        )


def medians(runs: list[RunResult]) -> dict[str, dict[str, float]]:
    """Median of each policy's figures over the runs."""
    out: dict[str, dict[str, float]] = {}
    for name in [p.policy for p in runs[0].policies]:
        rows = [next(p for p in r.policies if p.policy == name) for r in runs]
        out[name] = {
            field: statistics.median(float(getattr(row, field)) for row in rows)
            for field in ("clicks", "mean_ctr", "regret", "last_ctr", "last_gain_share")
        }
    return out


def main() -> int:
    """Run the simulation ``--runs`` times, print tables and medians, write the JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--decisions", type=int, default=50_000, help="visitors per run")
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--units", type=int, default=4000)
    parser.add_argument("--window", type=int, default=5, help="reward window, seconds")
    parser.add_argument("--snapshot-interval", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help="comma-separated subset of " + ",".join(POLICIES),
    )
    parser.add_argument(
        "--vw-args", default="", help="extra VW arguments for the vw_cb policies, e.g. '-l 0.1'"
    )
    args = parser.parse_args()
    policies = {name: dict(POLICIES[name]) for name in args.policies.split(",")}
    for config in policies.values():
        if config["kind"] == "vw_cb" and args.vw_args:
            config["extra_args"] = args.vw_args.split()
    runs = []
    for r in range(args.runs):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            run = runner.run(run_once(args, args.seed + r, policies))
        print_run(run)
        runs.append(run)
    summary = medians(runs)
    if args.runs > 1:
        print(f"\nmedians over {args.runs} runs")
        print(
            f"{'policy':<18}{'clicks':>8}{'mean CTR':>10}{'regret':>10}{'last-10k CTR':>14}"
            f"{'gain share':>12}"
        )
        for name, m in summary.items():
            print(
                f"{name:<18}{m['clicks']:>8.0f}{m['mean_ctr']:>10.4f}{m['regret']:>10.1f}"
                f"{m['last_ctr']:>14.4f}{m['last_gain_share']:>11.0%}"
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"sim_learning-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "policies": policies,
                "runs": msgspec.to_builtins(runs),
                "medians": summary,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
