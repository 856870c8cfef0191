"""``tailor serve`` as a real process on its embedded defaults: private Redis, chdb, clean stop."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from decision_api.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
TAILOR = Path(sys.executable).with_name("tailor")

# Counted in a separate interpreter: chdb opens one data directory per process, and this test
# process may already hold the session's.
COUNT_EXPOSURES = """
import json, sys
from event_log.store import open_event_log
log = open_event_log(sys.argv[1])
rows = log.query("SELECT decision_id, unit_id, experiment, variant, reason FROM exposures")
print(json.dumps([list(r) for r in rows]))
log.close()
"""


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live direct children of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        # Field 4 of /proc/<pid>/stat is the parent pid; the command name may contain spaces.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append((int(entry.name), cmdline))
    return found


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (granian's worker, the private redis-server)."""
    out, todo = [], [pid]
    while todo:
        for child, _ in children_of(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_serve(
    tmp_path: Path, data: Path, name: str = "serve", workers: int = 1
) -> tuple[subprocess.Popen[bytes], str]:
    """``tailor serve --host 127.0.0.1 --port <free>`` on ``data``, without TAILOR_REDIS_URL,
    healthy; its output goes to ``tmp_path/<name>.log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env.update(
        TAILOR_DATA_DIR=str(data),
        TAILOR_EVENT_LOG_URL=f"chdb://{data / 'chdb'}",
        TAILOR_EVENT_LOG_SPOOL_DIR=str(data / "spool"),
        TAILOR_EVENT_LOG_FLUSH_INTERVAL_S="0.1",
        TAILOR_LOG_FORMAT="json",
    )
    port = free_port()
    command = [str(TAILOR)] if TAILOR.exists() else [sys.executable, "-m", "decision_api.cli.main"]
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "serve", "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log_path)
    except BaseException:
        stop_tree(process)
        raise
    return process, url


def wait_healthy(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 30
) -> None:
    """Block until ``url``/healthz answers 200 (fails with the server's output otherwise)."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "not healthy: " + log_path.read_text()[-3000:]
        time.sleep(0.05)


def stop_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM ``process``, then SIGKILL whatever of its tree is left: killing only the main
    process would orphan granian's worker and the redis-server, so remember them first."""
    tree = descendants(process.pid)
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in tree:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """``tailor serve --host 127.0.0.1 --port <free>`` in a temp dir, without TAILOR_REDIS_URL."""
    data = tmp_path / "data"
    process, url = start_serve(tmp_path, data)
    try:
        yield process, url, data
    finally:
        stop_tree(process)


@pytest.mark.slow
def test_serve_decides_logs_and_stops_cleanly(
    server: tuple[subprocess.Popen[bytes], str, Path],
) -> None:
    """The server starts its own redis-server, serves a decision whose exposure reaches chdb,
    and on SIGTERM exits 0 after stopping its redis-server child."""
    process, url, data = server
    redis_children = [(pid, cmd) for pid, cmd in children_of(process.pid) if "redis-server" in cmd]
    assert len(redis_children) == 1, children_of(process.pid)
    redis_pid = redis_children[0][0]
    assert Path(os.readlink(f"/proc/{redis_pid}/cwd")) == (data / "redis").resolve()  # its --dir

    with httpx.Client(base_url=url, timeout=10) as http:
        spec = {"key": "hero-banner", "placement": "home_hero",
                "variants": [{"key": "control", "payload": {"img": "a.png"}},
                             {"key": "spring", "payload": {"img": "b.png"}}],
                "default_variant": "control"}  # fmt: skip
        assert http.post("/v1/experiments", json=spec).status_code == 201
        assert http.post("/v1/experiments/hero-banner/start").status_code == 200
        decided = http.post(
            "/v1/decide",
            json={"unit_id": "u-123", "placements": ["home_hero"], "context": {"device": "m"}},
        )
        assert decided.status_code == 200
        answer = decided.json()
        (placed,) = answer["decisions"]
        assert placed["reason"] == "split"
        assert placed["variant"] in {"control", "spring"}
        assert http.get("/readyz").status_code == 200

    tree = descendants(process.pid)
    assert redis_pid in tree
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(redis_pid), "the private redis-server outlived the server"
    assert not [pid for pid in tree if alive(pid)], "a server process outlived SIGTERM"

    counted = subprocess.run(
        [sys.executable, "-c", COUNT_EXPOSURES, f"chdb://{data / 'chdb'}"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
    )  # fmt: skip
    rows = json.loads(counted.stdout)
    assert rows == [[answer["decision_id"], "u-123", "hero-banner", placed["variant"], "split"]]
    log_text = (data.parent / "serve.log").read_text(errors="replace")
    assert re.search(r"started a private redis-server at redis://127\.0\.0\.1:\d+", log_text)


def redis_servers_on(directory: Path) -> list[int]:
    """Live redis-server processes working in ``directory`` (redis chdirs to its ``--dir``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        pid = int(entry.name)
        if comm.startswith("redis-server") and cwd == directory.resolve() and alive(pid):
            found.append(pid)
    return found


def worker_pids(process: subprocess.Popen[bytes]) -> list[int]:
    """Granian's worker processes of a ``tailor serve`` (its python children but the owner)."""
    return [
        pid
        for pid, cmd in children_of(process.pid)
        if "redis-server" not in cmd and "event-log-owner" not in cmd and " learn " not in f"{cmd} "
    ]


def create_experiment(url: str, key: str) -> None:
    """Define and start a two-variant experiment ``key`` on its own placement."""
    spec = {"key": key, "placement": f"{key}-slot",
            "variants": [{"key": "control"}, {"key": "treatment"}],
            "default_variant": "control"}  # fmt: skip
    with httpx.Client(base_url=url, timeout=10) as http:
        assert http.post("/v1/experiments", json=spec).status_code == 201
        assert http.post(f"/v1/experiments/{key}/start").status_code == 200


def experiment_keys(url: str) -> set[str]:
    """The keys of the experiments the server knows."""
    listed = httpx.get(url + "/v1/experiments", timeout=10)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    items = body["experiments"] if isinstance(body, dict) else body
    return {item["key"] for item in items}


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"after {timeout_s} s: {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_of_serve_leaves_no_redis_and_the_restart_keeps_every_write(
    tmp_path: Path,
) -> None:
    """After ``kill -9`` of ``tailor serve`` its redis-server and worker do not live on; the
    restart runs exactly one redis-server on the data directory, keeps what was written before
    and after, and publishes its URL in ``redis/state.json``."""
    data = tmp_path / "data"
    first, url = start_serve(tmp_path, data, "first")
    tree = descendants(first.pid)
    try:
        create_experiment(url, "before-crash")
        assert len(redis_servers_on(data / "redis")) == 1
        first.kill()  # SIGKILL to serve alone: no cleanup runs
        first.wait(timeout=10)
        wait_until(lambda: not any(alive(pid) for pid in tree), 10,
                   f"orphans of the killed server live on: {tree}")  # fmt: skip
    finally:
        stop_tree(first)
        for pid in tree:  # its orphans, on failure
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    second, url = start_serve(tmp_path, data, "second")
    try:
        assert len(redis_servers_on(data / "redis")) == 1
        state = json.loads((data / "redis" / "state.json").read_text())
        assert state["owner_pid"] == second.pid
        assert state["pid"] in redis_servers_on(data / "redis")
        assert state["url"] == f"redis://127.0.0.1:{state['port']}/0"
        create_experiment(url, "after-crash")
        assert experiment_keys(url) >= {"before-crash", "after-crash"}
    finally:
        stop_tree(second)
    assert second.returncode == 0
    assert not (data / "redis" / "state.json").exists(), "a clean stop removes the state file"
    assert redis_servers_on(data / "redis") == []

    third, url = start_serve(tmp_path, data, "third")
    try:
        assert experiment_keys(url) >= {"before-crash", "after-crash"}
    finally:
        stop_tree(third)


@pytest.mark.slow
def test_serve_shuts_down_a_redis_left_running_on_its_data_directory(tmp_path: Path) -> None:
    """A redis-server an earlier run left on the data directory (one that could not be told to
    die with its parent) is shut down cleanly before serve starts its own: one server, and what
    the leftover had acknowledged is kept."""
    import redis as redis_client

    from decision_api.redis_server import RedisServer

    data = tmp_path / "data"
    leftover = RedisServer(data / "redis", persist=True).start()
    with redis_client.Redis.from_url(leftover.url) as client:
        client.set("written-before-restart", "kept")
    process, _ = start_serve(tmp_path, data)
    try:
        assert not leftover.running, "the leftover redis-server was not stopped"
        assert len(redis_servers_on(data / "redis")) == 1
        state = json.loads((data / "redis" / "state.json").read_text())
        with redis_client.Redis.from_url(state["url"]) as client:
            assert client.get("written-before-restart") == b"kept"
    finally:
        stop_tree(process)
        leftover.stop()


@pytest.mark.slow
def test_a_second_serve_on_the_same_data_directory_is_refused(
    server: tuple[subprocess.Popen[bytes], str, Path], tmp_path: Path
) -> None:
    """While one ``tailor serve`` owns a data directory, a second exits 2 naming the directory
    and the owner's pid, and starts no redis-server."""
    process, _, data = server
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env.update(TAILOR_DATA_DIR=str(data), TAILOR_EVENT_LOG_URL=f"chdb://{tmp_path / 'other'}")
    second = subprocess.Popen(
        [sys.executable, "-m", "decision_api.cli.main", "serve", "--port", str(free_port())],
        env=env, stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = second.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a second server that did start
            os.killpg(second.pid, signal.SIGKILL)
    assert second.returncode == 2, stderr[-3000:]
    assert f"pid {process.pid}" in stderr
    assert str((data / "redis").resolve()) in stderr
    assert len(redis_servers_on(data / "redis")) == 1


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_worker_is_replaced(tmp_path: Path, workers: int) -> None:
    """``kill -9`` of a granian worker: serve respawns it, keeps its redis-server (and event-log
    owner), answers /healthz again within 20 s, and decisions made afterwards reach chdb."""
    data = tmp_path / "data"
    process, url = start_serve(tmp_path, data, workers=workers)
    try:
        create_experiment(url, "hero")
        log = tmp_path / "serve.log"
        started = lambda: log.read_text(errors="replace").count("Started worker-")  # noqa: E731
        wait_until(lambda: started() == workers, 30, "the workers did not start")
        others = [pid for pid, _ in children_of(process.pid) if pid not in worker_pids(process)]
        victim = worker_pids(process)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: started() == workers + 1, 30, f"worker {victim} was not replaced")
        assert victim not in worker_pids(process)
        assert len(worker_pids(process)) == workers
        wait_healthy(url, process, log, timeout_s=20)
        assert all(alive(pid) for pid in others), "redis-server or event-log owner died"
        decided = []
        with httpx.Client(base_url=url, timeout=10) as http:
            for i in range(20):  # with 2 workers, both the survivor and the new one answer
                answer = http.post("/v1/decide", json={"unit_id": f"u-{i}",
                                                       "placements": ["hero-slot"]})  # fmt: skip
                assert answer.status_code == 200, answer.text
                decided.append(answer.json()["decision_id"])
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        stop_tree(process)
    counted = subprocess.run(
        [sys.executable, "-c", COUNT_EXPOSURES, f"chdb://{data / 'chdb'}"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
    )  # fmt: skip
    stored = {row[0] for row in json.loads(counted.stdout)}
    assert set(decided) <= stored


def _learners(pid: int) -> list[int]:
    return [p for p, cmd in children_of(pid) if cmd.endswith(f"learn --name serve-{pid}")]


@pytest.mark.slow
def test_serve_learns_in_its_own_process_and_restarts_it(
    server: tuple[subprocess.Popen[bytes], str, Path],
) -> None:
    """``tailor serve`` runs the learner as a child process, not in the API worker: decisions
    and clicks become a new model version that the worker loads while its own learned-examples
    counter stays absent; a killed learner is started again; SIGTERM stops it with the rest."""
    process, url, _ = server
    (learner,) = _learners(process.pid)
    spec = {"key": "hero", "placement": "home", "default_variant": "a",
            "variants": [{"key": k, "payload": {"c": k}} for k in ("a", "b", "c")],
            "policy": {"kind": "thompson"}, "reward_window_s": 1,
            "reward": {"rules": [{"type": "click"}]}}  # fmt: skip
    loaded = 'tailor_model_version_loaded{experiment="hero"}'
    with httpx.Client(base_url=url, timeout=10) as http:
        assert http.post("/v1/experiments", json=spec).status_code == 201
        assert http.post("/v1/experiments/hero/start").status_code == 200
        deadline = time.monotonic() + 30
        version = 0.0
        i = 0
        while version < 1 and time.monotonic() < deadline:
            i += 1
            answer = http.post("/v1/decide", json={"unit_id": f"u{i}", "placements": ["home"]})
            (placed,) = answer.json()["decisions"]
            if placed["variant"] == "c":
                outcome = {"decision_id": answer.json()["decision_id"], "type": "click"}
                assert http.post("/v1/outcomes", json=outcome).status_code in (200, 202)
            metrics = http.get("/metrics").text
            version = next((float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                            if line.startswith(loaded)), 0.0)  # fmt: skip
            time.sleep(0.05)
        assert version >= 1, "no model version reached the worker"
        assert "tailor_examples_learned_total{" not in metrics  # the worker learned nothing
        assert "tailor_event_loop_lag_seconds_count" in metrics

    os.kill(learner, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while not [p for p in _learners(process.pid) if p != learner and alive(p)]:
        assert time.monotonic() < deadline, "the learner was not started again"
        time.sleep(0.1)
    (restarted,) = [p for p in _learners(process.pid) if alive(p)]
    log_path = server[2].parent / "serve.log"
    while log_path.read_text(errors="replace").count('"learner_started"') < 2:
        assert time.monotonic() < deadline, "the restarted learner did not start"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert not alive(restarted), "the learner outlived the server"
    log_text = log_path.read_text(errors="replace")
    assert "child_exited" in log_text
    assert '"learner_stopped"' in log_text, log_text[-3000:]  # stopped, not killed
