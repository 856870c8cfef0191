"""A ClickHouse server that is down when the API starts: the API serves, events wait in the
spool, and they are stored once the server answers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import msgspec
from litestar.testing import AsyncTestClient

from decision_api.app import create_app
from decision_api.redis_server import free_port
from decision_api.settings import EventLogSettings, Settings
from event_log.store import open_event_log

REPO = Path(__file__).resolve().parents[2]


async def test_api_starts_without_clickhouse_and_catches_up(
    settings: Settings, tmp_path: Path
) -> None:
    """Decisions are served while ClickHouse is unreachable; their exposures are inserted
    (once) after it comes up."""
    port = free_port()
    url = f"http://default:@127.0.0.1:{port}/late"
    late = msgspec.structs.replace(
        settings,
        event_log=EventLogSettings(
            url=url, flush_interval_s=0.05, spool_dir=str(tmp_path / "spool")
        ),
    )
    app = create_app(late)
    front: subprocess.Popen[bytes] | None = None
    try:
        async with AsyncTestClient(app=app) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["event_log"] == "down"
            spec = {"key": "late", "placement": "late_slot",
                    "variants": [{"key": "a"}, {"key": "b"}], "default_variant": "a"}  # fmt: skip
            assert (await client.post("/v1/experiments", json=spec)).status_code == 201
            assert (await client.post("/v1/experiments/late/start")).status_code == 200
            ids = set()
            for i in range(30):
                r = await client.post(
                    "/v1/decide", json={"unit_id": f"u{i}", "placements": ["late_slot"]}
                )
                assert r.status_code == 200
                ids.add(r.json()["decision_id"])
            front = subprocess.Popen(
                [sys.executable, "-m", "tests.support.clickhouse_front",
                 "--path", str(tmp_path / "ch"), "--host", "127.0.0.1", "--port", str(port)],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while (await client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "the API never connected"
                await asyncio.sleep(0.5)
            log = open_event_log(url)
            try:
                while True:
                    rows = log.query("SELECT decision_id FROM exposures FINAL")
                    if len(rows) >= len(ids) or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.5)
                assert sorted(r[0] for r in rows) == sorted(ids)
            finally:
                log.close()
    finally:
        if front is not None:
            front.terminate()
            front.wait(timeout=10)
