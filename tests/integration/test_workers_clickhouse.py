"""With a ClickHouse server configured, every API worker writes its events to it directly.

``tailor serve --workers 2`` against a ClickHouse server (the project's HTTP front on chdb,
spoken to by clickhouse-connect exactly as a server is) starts no event-log owner and uses no
Redis relay: decisions answered by either worker have their exposures in ClickHouse.
"""

from __future__ import annotations

import time
from pathlib import Path

import clickhouse_connect
import httpx
import pytest
import redis

from tests.support.clickhouse_front import running_clickhouse_front
from tests.support.processes import TailorServer, server_env

pytestmark = pytest.mark.slow

EXPERIMENT = {
    "key": "direct-hero",
    "placement": "direct_hero",
    "variants": [{"key": "a"}, {"key": "b"}],
    "default_variant": "a",
}


COUNT_SQL = "SELECT count() FROM exposures WHERE decision_id IN {ids:Array(String)}"


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _command_lines(pids: list[int]) -> list[str]:
    lines = []
    for pid in pids:
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return lines


def test_two_workers_write_to_a_clickhouse_server_without_a_relay(
    tmp_path: Path, redis_url: str, namespace: str
) -> None:
    """Both workers answer decisions; every exposure reaches the ClickHouse server; no
    event-log owner process runs and the relay stream does not exist."""
    with running_clickhouse_front(tmp_path / "clickhouse") as dsn:
        env = server_env(redis_url, namespace, tmp_path / "data", TAILOR_EVENT_LOG_URL=dsn,
                         TAILOR_EVENT_LOG_FLUSH_INTERVAL_S="0.1")  # fmt: skip
        server = TailorServer(env, tmp_path / "serve.log", workers=2)
        try:
            server.wait_ready(60)
            for path in ("/v1/experiments", "/v1/experiments/direct-hero/start"):
                body = EXPERIMENT if path == "/v1/experiments" else None
                assert httpx.post(server.url + path, json=body, timeout=10).status_code < 300
            time.sleep(0.5)  # the workers' experiment caches poll
            workers: dict[str, list[str]] = {}
            for i in range(400):  # a new connection each time: the kernel spreads them
                body = {"unit_id": f"u{i}", "placements": ["direct_hero"]}
                got = httpx.post(server.url + "/v1/decide", json=body, timeout=10)
                assert got.status_code == 200, got.text
                assert got.json()["decisions"][0]["experiment"] == "direct-hero"
                pid = got.headers["x-request-id"].split("-", 1)[0]  # "<worker pid hex>-<n>"
                workers.setdefault(pid, []).append(got.json()["decision_id"])
                if len(workers) == 2 and min(len(v) for v in workers.values()) >= 5:
                    break
            assert len(workers) == 2, "only one worker answered"
            commands = _command_lines(_tree(server.pid))
            assert not [c for c in commands if "event-log-owner" in c], commands
            relay = redis.Redis.from_url(redis_url)
            try:
                assert relay.exists(f"{namespace}:evlog:events") == 0
            finally:
                relay.close()
            client = clickhouse_connect.get_client(dsn=dsn)
            try:
                for pid, ids in workers.items():
                    deadline = time.monotonic() + 20
                    while True:
                        found = client.query(COUNT_SQL, parameters={"ids": ids}).result_rows[0][0]
                        if found == len(ids) or time.monotonic() > deadline:
                            break
                        time.sleep(0.2)
                    assert found == len(ids), f"worker {pid}: {found} of {len(ids)} exposures"
            finally:
                client.close()
        finally:
            server.stop()
