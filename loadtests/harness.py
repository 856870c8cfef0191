"""Shared pieces of the HTTP load tests: a real server to drive and what it uses.

- :class:`ServerUnderTest` starts ``tailor serve`` (granian, the default) or uvicorn on the
  embedded chdb event log in a temporary directory, against a Redis the caller started, with JSON
  logging at ``info`` and API keys on; optionally several workers (granian's own; uvicorn gets
  the event-log owner started here) and the learner as its own ``tailor learn`` process.
- ``proc_tree`` / ``cpu_seconds`` / ``thread_cpu`` / ``rss_bytes`` read ``/proc`` for what the
  server tree uses (granian main + workers + event-log owner + learner).
- the load generator itself is in :mod:`loadtests.http_load`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "loadtests" / "results"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


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


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of the given processes (their own, not reaped children)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def thread_cpu(pids: Sequence[int]) -> dict[tuple[int, int], float]:
    """CPU seconds of every thread of the given processes, keyed by (pid, tid)."""
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
            out[(pid, int(task.name))] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def busiest_thread_delta(
    before: dict[tuple[int, int], float], after: dict[tuple[int, int], float]
) -> float:
    """CPU seconds of the thread that used the most between two :func:`thread_cpu` readings."""
    return max((v - before.get(k, 0.0) for k, v in after.items()), default=0.0)


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident set size of the given processes, summed (shared pages counted in each)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def process_name(pid: int) -> str:
    """A short label for a server process: its command line's last words."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(w.decode(errors="replace") for w in words if w)
    return text[-60:]


def child_pids(program: str) -> list[int]:
    """Descendants of this process running ``program`` (the base name of their ``argv[0]``)."""
    out = []
    for pid in proc_tree(os.getpid())[1:]:
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        # redis-server retitles itself "<path> <host>:<port>": the program is the first word.
        if Path(argv0.decode(errors="replace").split(" ", 1)[0]).name == program:
            out.append(pid)
    return out


def load_average() -> tuple[float, float, float]:
    """The machine's 1, 5 and 15 minute load averages."""
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


# ---------------------------------------------------------------------------------------------
# The server


def tailor_env(
    workdir: Path, redis_url: str, prefix: str, api_keys: str, extra: dict[str, str] | None
) -> dict[str, str]:
    """The environment of a server under test: private Redis, embedded chdb, JSON logs on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env.update(
        TAILOR_REDIS_URL=redis_url,
        TAILOR_REDIS_KEY_PREFIX=prefix,
        TAILOR_DATA_DIR=str(workdir / "data"),
        TAILOR_EVENT_LOG_URL=f"chdb://{workdir / 'data' / 'chdb'}",
        TAILOR_EVENT_LOG_SPOOL_DIR=str(workdir / "data" / "spool"),
        TAILOR_AUTH_API_KEYS=api_keys,
        TAILOR_AUTH_RATE_LIMIT_PER_S="1000000",
        TAILOR_AUTH_RATE_LIMIT_BURST="1000000",
        TAILOR_LOG_FORMAT="json",
        TAILOR_LOG_LEVEL="info",
    )
    env.update(extra or {})
    return env


def _tailor_command() -> list[str]:
    tailor = Path(sys.executable).with_name("tailor")
    return [str(tailor)] if tailor.exists() else [sys.executable, "-m", "decision_api.cli.main"]


class ServerUnderTest:
    """``tailor serve`` (or uvicorn), optionally with a separate ``tailor learn``.

    Args:
        workdir: Temporary directory (data, logs).
        redis_url: The private Redis the caller started.
        port: Where to listen.
        prefix: Redis key prefix.
        api_keys: ``TAILOR_AUTH_API_KEYS``.
        workers: API worker processes.
        server: ``granian`` (``tailor serve``), ``granian-cli`` (granian's own command line with
            ``server_args``, one worker) or ``uvicorn``.
        learner: ``serve`` (the default: the server's own choice, as a user gets it:
            ``tailor serve`` supervises a ``tailor learn`` process of its own; an app uvicorn
            builds directly learns inside its workers) or ``process``
            (``TAILOR_LEARNER_IN_PROCESS=false`` and a ``tailor learn`` started here beside it).
        extra_env: More ``TAILOR_*`` settings.
        server_args: Extra options for ``granian-cli``.
    """

    def __init__(
        self,
        workdir: Path,
        redis_url: str,
        port: int,
        *,
        prefix: str,
        api_keys: str,
        workers: int = 1,
        server: str = "granian",
        learner: str = "serve",
        extra_env: dict[str, str] | None = None,
        server_args: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "serve.log"
        extra = dict(extra_env or {})
        if learner == "process":
            extra["TAILOR_LEARNER_IN_PROCESS"] = "false"
        self.env = tailor_env(workdir, redis_url, prefix, api_keys, extra)
        self._log = self.log_path.open("ab")
        self.processes: list[subprocess.Popen[bytes]] = []
        if server == "granian":
            command = [*_tailor_command(), "serve", "--host", "127.0.0.1", "--port", str(port),
                       "--workers", str(workers)]  # fmt: skip
            self.main = self._spawn(command, self.env)
        elif server == "granian-cli":  # granian's own CLI, to try options tailor serve fixes
            if workers > 1:
                raise ValueError("granian-cli runs one worker (tailor serve starts the owner)")
            command = [str(Path(sys.executable).with_name("granian")), "--interface", "asgi",
                       "--factory", "--host", "127.0.0.1", "--port", str(port), "--loop",
                       "uvloop", "--no-access-log", "--backlog", "2048", *server_args,
                       "decision_api.asgi:build"]  # fmt: skip
            self.main = self._spawn(command, self.env)
        elif server == "uvicorn":
            env = dict(self.env)
            if workers > 1:  # what tailor serve does for granian: one process holds chdb
                self._spawn([*_tailor_command(), "event-log-owner"], env)
                env["TAILOR_EVENT_LOG_URL"] = "relay://"
            command = [sys.executable, "-m", "uvicorn", "decision_api.asgi:build", "--factory",
                       "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                       "--loop", "uvloop", "--no-access-log", "--backlog", "2048",
                       "--log-level", "warning"]  # fmt: skip
            self.main = self._spawn(command, env)
        else:
            raise ValueError(f"unknown server {server!r}")
        if learner == "process":
            self._spawn([*_tailor_command(), "learn"], self.env)

    def _spawn(self, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            command, cwd=self.workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        return process

    def pids(self) -> list[int]:
        """Every process of the server: the trees of what was started here."""
        out: list[int] = []
        for process in self.processes:
            out.extend(proc_tree(process.pid))
        return out

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Block until ``/readyz`` answers 200; exits with the log's tail if it never does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.processes):
                break
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise SystemExit("server did not become ready:\n" + self.log_path.read_text()[-3000:])

    def stop(self) -> None:
        """SIGTERM everything started here (the server drains its writer), then SIGKILL the
        leftovers of those trees (granian workers orphaned when only the parent dies)."""
        tree = self.pids()
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        own = {p.pid for p in self.processes}
        for pid in tree:
            if pid in own:
                continue
            with contextlib.suppress(OSError):  # still there and not a reused pid?
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"decision_api" in cmdline or b"tailor" in cmdline or b"uvicorn" in cmdline:
                    os.kill(pid, signal.SIGKILL)
        self._log.close()


def server_counters(url: str) -> dict[str, float]:
    """Decisions served, exposures and outcomes written, queue depth, flush errors (/metrics)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out = {"decisions": 0.0, "exposures_written": 0.0, "outcomes_written": 0.0,
           "queue_depth": 0.0, "flush_errors": 0.0}  # fmt: skip
    for line in text.splitlines():
        if line.startswith("tailor_decisions_total{"):
            out["decisions"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith('tailor_events_written_total{table="exposures"}'):
            out["exposures_written"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith('tailor_events_written_total{table="outcomes"}'):
            out["outcomes_written"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("tailor_event_queue_depth "):
            out["queue_depth"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("tailor_event_flush_errors_total{"):
            out["flush_errors"] += float(line.rsplit(" ", 1)[1])
    return out


def start_profiler(
    path: Path | None, pid: int, duration: float, *, subprocesses: bool = True
) -> subprocess.Popen[bytes] | None:
    """py-spy sampling ``pid`` (and its children) for ``duration`` seconds, if asked for."""
    if path is None:
        return None
    spy = Path(sys.executable).with_name("py-spy")
    command = [str(spy), "record", "--pid", str(pid), "--nonblocking", "--threads",
               "--duration", str(int(duration)), "--rate", "200", "--format", "raw",
               "--output", str(path)]  # fmt: skip
    if subprocesses:
        command.append("--subprocesses")
    if os.environ.get("BENCH_PYSPY_NATIVE"):
        command.append("--native")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``loadtests/results/<name>-<timestamp>.json``; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return out


async def start_asgi_app(env: dict[str, str]) -> tuple[Any, Callable[[], Awaitable[None]]]:
    """One API worker's ASGI app, in this process, built from ``env`` as a worker reads its
    settings (``env`` is also put in ``os.environ``), tuned as a worker is
    (:func:`decision_api.asgi.tune_process`) and started through its lifespan; returns
    the app and the coroutine function that shuts it down. For in-process profiling without
    HTTP (``profile_serving.py``, ``profile_campaign.py``)."""
    from decision_api.app import create_asgi_app
    from decision_api.asgi import tune_process
    from decision_api.settings import Settings

    os.environ.update(env)
    app = create_asgi_app(Settings.from_env(env))
    tune_process()  # as a server worker does (decision_api.asgi.build): the collector's tuning
    lifespan_in: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    lifespan_out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    lifespan = asyncio.create_task(app(scope, lifespan_in.get, lifespan_out.put))
    await lifespan_in.put({"type": "lifespan.startup"})
    print("startup:", (await lifespan_out.get())["type"], flush=True)

    async def stop() -> None:
        await lifespan_in.put({"type": "lifespan.shutdown"})
        await lifespan_out.get()
        await lifespan

    return app, stop
