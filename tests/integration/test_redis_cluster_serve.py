"""``tailor serve`` on a real Redis Cluster (3 primaries, a replica each).

Pointed at a cluster before cluster support, every request answered 503 ("API keys are not loaded
yet") and the log filled with MOVED errors. Here: a key created with ``tailor keys`` on the
cluster loads, two workers (sharing chdb through the event relay, itself on the cluster) decide,
take outcomes, learn a Thompson model through the reward join and the learner process, and
report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.processes import TailorServer, server_env
from tests.support.redis_cluster import RedisCluster

pytestmark = [pytest.mark.slow, pytest.mark.redis_cluster]

REPO = Path(__file__).resolve().parents[2]
UNITS = 120


def tailor_keys(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``tailor keys ...`` in a child process with exactly ``env`` as its TAILOR_* settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    return subprocess.run(
        [sys.executable, "-m", "decision_api.cli.main", "keys", *args],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_on_a_cluster_loads_keys_decides_learns_and_reports(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """Keys load (no 503), decisions and outcomes are answered, the learner publishes a model
    the workers load, the report counts every exposure, and no MOVED error is logged."""
    prefix = "c" + uuid.uuid4().hex[:10]
    env = server_env(redis_cluster.url, prefix, tmp_path / "srv", TAILOR_REDIS_CLUSTER="true")
    created = tailor_keys(
        env, "create", *("--scope", "admin", "--scope", "decide", "--scope", "ingest"),
        "--scope", "report", "--name", "ops",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    secret = dict(line.split(": ", 1) for line in created.stdout.splitlines())["secret"]
    server = TailorServer(env, tmp_path / "serve.log", workers=2)
    try:
        server.wait_ready(timeout_s=60)
        headers = {"Authorization": f"Bearer {secret}"}
        spec = {"key": "hero", "placement": "home", "default_variant": "a",
                "variants": [{"key": k, "payload": {"c": k}} for k in ("a", "b", "c")],
                "policy": {"kind": "thompson"}, "reward_window_s": 1,
                "reward": {"rules": [{"type": "click"}]}}  # fmt: skip
        with httpx.Client(base_url=server.url, timeout=10, headers=headers) as http:
            assert http.get("/v1/experiments").status_code == 200  # the stored key loaded
            assert http.post("/v1/experiments", json=spec).status_code == 201
            assert http.post("/v1/experiments/hero/start").status_code == 200
            assert httpx.get(server.url + "/v1/experiments").status_code == 401  # not open
            deadline = time.monotonic() + 20
            while (
                http.post("/v1/decide", json={"unit_id": "warm", "placements": ["home"]})
                .json()["decisions"][0]
                .get("reason")
                == "no_experiment"
            ):
                assert time.monotonic() < deadline, "the workers never saw the experiment"
                time.sleep(0.1)
            for i in range(UNITS):
                answer = http.post("/v1/decide", json={"unit_id": f"u{i}", "placements": ["home"]})
                assert answer.status_code == 200, answer.text
                body = answer.json()
                assert body["degraded"] is False
                (placed,) = body["decisions"]
                if placed["variant"] == "c" or i % 4 == 0:
                    outcome = {"decision_id": body["decision_id"], "type": "click"}
                    done = http.post("/v1/outcomes", json=outcome)
                    assert done.status_code == 202, done.text
                    assert done.json()["degraded"] is False
            loaded = 'tailor_model_version_loaded{experiment="hero"}'
            deadline = time.monotonic() + 30
            version = 0.0
            while version < 1:
                assert time.monotonic() < deadline, "no model version reached the workers"
                metrics = http.get("/metrics").text
                version = next((float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                                if line.startswith(loaded)), 0.0)  # fmt: skip
                time.sleep(0.2)
            deadline = time.monotonic() + 30
            while True:
                report = http.get("/v1/experiments/hero/report")
                assert report.status_code == 200, report.text
                units = sum(a["units"] for a in report.json()["arms"])
                if units >= UNITS + 1:
                    break
                assert time.monotonic() < deadline, f"the report counts {units} units"
                time.sleep(0.2)
            assert units == UNITS + 1  # every decided unit, "warm" included
    finally:
        server.stop()
    log = server.output()
    assert "MOVED" not in log and "CROSSSLOT" not in log, log[-3000:]
    assert "keys_load_failed" not in log, log[-3000:]
