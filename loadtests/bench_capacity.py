"""Capacity figures for sizing a deployment (docs/operations.md, "Production topology").

Run: ``.venv/bin/python loadtests/bench_capacity.py [--rows 1000000] [--duration 4]``

Three measurements, each per unit of traffic so that they survive a loaded machine:

1. **ClickHouse bytes per event.** ``--rows`` exposures and as many outcomes of the report
   benchmark's synthetic traffic (``loadtests/report_data.py``) in a fresh chdb, merged
   (``OPTIMIZE ... FINAL``), then ``system.parts``: compressed bytes on disk and uncompressed
   bytes per row, per table. The same for the rows a real server wrote in step 2 (a 4-attribute
   context, random ids), which compress less.
2. **Redis work per decision and per outcome.** A private ``redis-server`` and one ``tailor
   serve`` (one worker, the learner in its own process, chdb) with the three experiments of
   ``bench_serving.py`` (fixed 3 variants, thompson 4, vw_cb 10; reward window 5 s). Per policy:
   ``CONFIG RESETSTAT``, decisions for ``--duration`` seconds (closed loop, 8 connections), then
   7 s for every window to close, the sweeper to finalise and the learner to learn; then ``INFO
   commandstats`` and ``INFO cpu``. Commands and Redis CPU of an idle stretch of the same length
   (polls, heartbeats, leases) are subtracted. Reported: commands per decision (every command,
   those run inside scripts included, as ``commandstats`` counts them), of which script calls,
   and Redis CPU per decision. Then outcomes: thompson decisions, a click by decision id for
   most of them within their window, the settle; the decisions' share (thompson's figures) is
   taken off what remains per click.
3. **Decisions per worker.** The server's CPU (whole process tree: worker, event-log threads,
   learner) per decision in step 2: ``1 / cpu`` is what one core sustains.

Printed with the load average; the JSON goes to ``loadtests/results/bench_capacity-<ts>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from decision_api.redis_server import RedisServer, free_port
from event_log.store import ClickHouseEventLog, open_event_log

if __package__ in (None, ""):  # run as a script: make ``loadtests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtests.bench_outcome import Decisions, Outcomes
from loadtests.bench_serving import ADMIN_KEY, DECIDE_KEY, POLICIES, Traffic, setup
from loadtests.harness import REPO, ServerUnderTest, cpu_seconds, load_average, write_result
from loadtests.http_load import LoadGenerator
from loadtests.report_data import generate

SETTLE_S = 7.0  # > the 5 s reward window plus a sweep and a learner step
PARTS_SQL = """
SELECT table, sum(rows), sum(bytes_on_disk), sum(data_uncompressed_bytes)
FROM system.parts
WHERE database = currentDatabase() AND active AND table IN ('exposures', 'outcomes')
GROUP BY table ORDER BY table
"""


def table_bytes(log: ClickHouseEventLog) -> dict[str, dict[str, float]]:
    """Rows, bytes on disk and uncompressed bytes per row of exposures and outcomes, merged."""
    for table in ("exposures", "outcomes"):
        log.command(f"OPTIMIZE TABLE {table} FINAL")
    out = {}
    for table, count, disk, raw in log.query(PARTS_SQL):
        rows = int(count)
        out[str(table)] = {
            "rows": float(rows),
            "disk_bytes_per_row": int(disk) / max(rows, 1),
            "raw_bytes_per_row": int(raw) / max(rows, 1),
            "disk_mib_per_million": int(disk) / max(rows, 1) * 1e6 / 2**20,
        }
    return out


def print_bytes(title: str, figures: dict[str, dict[str, float]]) -> None:
    """One line per table."""
    for table, f in figures.items():
        print(f"  {title} {table:<9} {f['rows']:>10,.0f} rows: {f['disk_bytes_per_row']:6.1f} B "
              f"on disk per row ({f['disk_mib_per_million']:5.1f} MiB per million), "
              f"{f['raw_bytes_per_row']:6.1f} B uncompressed")  # fmt: skip


def synthetic_bytes(rows: int, workdir: Path) -> dict[str, dict[str, float]]:
    """Bytes per row of the report benchmark's synthetic traffic."""
    log = open_event_log(f"chdb://{workdir / 'synthetic'}")
    try:
        generate(log, exposures=rows, outcomes=rows, units=max(rows // 5, 1))
        return table_bytes(log)
    finally:
        log.close()


class RedisCounters:
    """``INFO commandstats`` and ``INFO cpu`` of one Redis, as deltas since :meth:`reset`."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._cpu0 = 0.0

    def _cpu(self) -> float:
        info: Any = self._client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def reset(self) -> None:
        """Zero the command counters; remember the CPU used so far."""
        self._client.config_resetstat()
        self._cpu0 = self._cpu()

    def read(self) -> dict[str, float]:
        """Commands (all, and script calls) and CPU seconds since :meth:`reset`."""
        stats: Any = self._client.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        for own in ("info", "config|resetstat", "config"):
            calls.pop(own, None)
        scripts = sum(n for name, n in calls.items() if name.startswith(("eval", "fcall")))
        return {
            "commands": float(sum(calls.values())),
            "scripts": float(scripts),
            "cpu_s": self._cpu() - self._cpu0,
            "by_command": calls,
        }  # type: ignore[dict-item]

    def close(self) -> None:
        """Close the connection."""
        self._client.close()


async def measured(server: ServerUnderTest, counters: RedisCounters, workload: Any,
                   duration: float) -> dict[str, Any]:  # fmt: skip
    """Drive ``workload`` for ``duration`` s, let the join and the learner finish; the counts."""
    counters.reset()
    cpu0 = cpu_seconds(server.pids())
    gen = LoadGenerator(server.port, workload, 8, rate=0)
    await gen.run(duration)
    await asyncio.sleep(SETTLE_S)
    sample = gen.take()
    got = counters.read()
    got["server_cpu_s"] = cpu_seconds(server.pids()) - cpu0
    got["requests"] = float(sum(len(x) for x in sample.latencies))
    got["errors"] = float(sum(sample.errors))
    got["seconds"] = duration + SETTLE_S
    return got


def per_request(run: dict[str, Any], idle: dict[str, Any]) -> dict[str, float]:
    """Commands, script calls and Redis CPU per request, net of the idle rate."""
    n = max(run["requests"], 1.0)
    scale = run["seconds"] / idle["seconds"]
    return {
        "commands": (run["commands"] - scale * idle["commands"]) / n,
        "scripts": (run["scripts"] - scale * idle["scripts"]) / n,
        "redis_cpu_us": 1e6 * (run["cpu_s"] - scale * idle["cpu_s"]) / n,
        "server_cpu_us": 1e6 * (run["server_cpu_s"] - scale * idle["server_cpu_s"]) / n,
    }


async def redis_work(server: ServerUnderTest, counters: RedisCounters, duration: float
                     ) -> dict[str, Any]:  # fmt: skip
    """Per policy: Redis commands, script calls, Redis and server CPU per decision; outcomes."""
    port = server.port
    for kind in POLICIES:  # warm-up: caches, first models
        await LoadGenerator(port, Traffic(port, f"p-{kind}", False, 1), 8, 0).run(1.0)
    await asyncio.sleep(SETTLE_S)

    counters.reset()
    cpu0 = cpu_seconds(server.pids())
    await asyncio.sleep(duration + SETTLE_S)
    idle = counters.read()
    idle.update(server_cpu_s=cpu_seconds(server.pids()) - cpu0, seconds=duration + SETTLE_S)
    out: dict[str, Any] = {"idle_commands_per_s": idle["commands"] / idle["seconds"]}
    print(f"  idle: {out['idle_commands_per_s']:.0f} Redis commands/s (polls, leases, heartbeats)")
    for kind in POLICIES:
        run = await measured(server, counters, Traffic(port, f"p-{kind}", False, 7), duration)
        figures = per_request(run, idle)
        out[kind] = {**figures, "decisions": run["requests"], "errors": run["errors"],
                     "by_command": run["by_command"]}  # fmt: skip
        print(f"  {kind:<8} {run['requests']:7.0f} decisions: {figures['commands']:5.2f} Redis "
              f"commands per decision ({figures['scripts']:4.2f} script calls), Redis CPU "
              f"{figures['redis_cpu_us']:5.1f} us, server CPU {figures['server_cpu_us']:5.0f} us "
              f"per decision ({1e6 / figures['server_cpu_us']:,.0f} per core-second)")  # fmt: skip
    # Outcomes: thompson decisions, then a click by decision id on each (within its 5 s window),
    # then the settle; the decisions' share (thompson's figures above) is taken off.
    counters.reset()
    cpu0 = cpu_seconds(server.pids())
    decisions = Decisions(port, 11)
    await LoadGenerator(port, decisions, 8, 0).run(duration / 2)
    gen = LoadGenerator(port, Outcomes(port, decisions.ids[: 8 * len(decisions.ids) // 10]), 8, 0)
    await gen.run(duration / 2)
    await asyncio.sleep(SETTLE_S)
    sample = gen.take()
    run = counters.read()
    run.update(server_cpu_s=cpu_seconds(server.pids()) - cpu0, seconds=duration + SETTLE_S,
               requests=float(len(decisions.ids)))  # fmt: skip
    both = per_request(run, idle)  # per decision, with the outcomes in
    clicks = float(sum(len(x) for x in sample.latencies))
    share = len(decisions.ids) / max(clicks, 1.0)
    figures = {k: (both[k] - out["thompson"][k]) * share for k in both}
    out["outcome"] = {**figures, "outcomes": clicks, "errors": float(sum(sample.errors))}
    print(f"  outcome  {clicks:7.0f} clicks:    {figures['commands']:5.2f} Redis commands "
          f"per outcome ({figures['scripts']:4.2f} script calls), Redis CPU "
          f"{figures['redis_cpu_us']:5.1f} us, server CPU {figures['server_cpu_us']:5.0f} us "
          f"per outcome")  # fmt: skip
    return out


def main() -> int:
    """Measure and print the three sets of figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows per table")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of load per policy")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    workdir = Path(tempfile.mkdtemp(prefix="bench-capacity-"))
    print(f"load {' '.join(f'{x:.2f}' for x in load_average())}")
    synthetic = synthetic_bytes(args.rows, workdir)
    print_bytes("synthetic", synthetic)
    redis_server = RedisServer(workdir / "redis", persist=False).start()
    (workdir / "serve").mkdir()
    server = ServerUnderTest(workdir / "serve", redis_server.url, free_port(), prefix="cap",
                             api_keys=f"{ADMIN_KEY}:admin,{DECIDE_KEY}:decide")  # fmt: skip
    counters = RedisCounters(redis_server.url)
    try:
        server.wait_ready()
        setup(server.url)
        time.sleep(1.0)
        work = asyncio.run(redis_work(server, counters, args.duration))
        httpx.get(server.url + "/healthz", timeout=10)
    finally:
        counters.close()
        server.stop()
        redis_server.stop()
    api_log = open_event_log(f"chdb://{workdir / 'serve' / 'data' / 'chdb'}")
    try:
        written = table_bytes(api_log)
    finally:
        api_log.close()
    print_bytes("API-written", written)
    print(f"load {' '.join(f'{x:.2f}' for x in load_average())}")
    out = write_result("bench_capacity", {"command": " ".join(sys.argv), "load": load_average(),
                                          "clickhouse_synthetic": synthetic,
                                          "clickhouse_api": written, "redis": work})  # fmt: skip
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
