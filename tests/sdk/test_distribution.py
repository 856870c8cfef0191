"""The SDK installs on its own: built from ``sdk/pyproject.toml`` and
``tailor_contract/pyproject.toml`` into a fresh virtualenv without the server's dependencies,
it decides, reports outcomes and decides a batch against a live ``tailor serve``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.sdk.servers import ApiServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("numpy", "vowpal-wabbit-next", "chdb", "litestar", "redis", "scipy", "pyarrow")


@pytest.fixture(scope="module")
def sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with only the contract and the SDK (and their dependencies)."""
    tmp = tmp_path_factory.mktemp("sdk_dist")
    # Build from copies, so that in-tree build files never land in the repository.
    for name in ("tailor_contract", "sdk"):
        shutil.copytree(ROOT / name, tmp / name, ignore=shutil.ignore_patterns("__pycache__"))
    # No pip in the new environment (installing it costs seconds): this pip installs into it.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    python = tmp / "venv" / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--disable-pip-version-check",
            str(tmp / "tailor_contract"),
            str(tmp / "sdk"),
        ],
        check=True,
        timeout=300,
    )
    return python


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """``tailor serve`` on its embedded defaults (private Redis, chdb) in a temp directory."""
    tmp = tmp_path_factory.mktemp("sdk_dist_api")
    env = {
        "TAILOR_DATA_DIR": str(tmp / "data"),
        "TAILOR_LOG_LEVEL": "warning",
        "TAILOR_DECISIONS_CONFIG_POLL_INTERVAL_S": "0.05",
    }
    server = ApiServer(env, tmp / "server.log").start()
    yield server
    server.stop()


def test_the_sdk_environment_has_no_server_dependencies(sdk_python: Path) -> None:
    """pip lists the SDK, the contract, httpx and msgspec, and none of the server's packages."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(sdk_python), "list", "--format=freeze"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.lower()
    names = {line.split("==")[0] for line in listed.splitlines()}
    assert {"tailor-decision-sdk", "tailor-decision-contract", "httpx", "msgspec"} <= names
    assert names.isdisjoint(SERVER_ONLY)
    typed = subprocess.run(
        [
            str(sdk_python),
            "-c",
            "import sdk, pathlib; print((pathlib.Path(sdk.__file__).parent / 'py.typed').exists())",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert typed == "True"


def test_decisions_outcomes_and_a_batch_from_the_installed_sdk(
    sdk_python: Path, live: ApiServer
) -> None:
    """Decide, report an outcome and decide a batch with the SDK from its own environment."""
    experiment = {
        "key": "dist-hero",
        "placement": "dist_hero",
        "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}],
        "default_variant": "a",
    }
    assert httpx.post(live.url + "/v1/experiments", json=experiment).status_code == 201
    assert httpx.post(live.url + "/v1/experiments/dist-hero/start").status_code == 200
    script = textwrap.dedent(f"""
        import sys
        import sdk
        assert "numpy" not in sys.modules and "decision_api" not in sys.modules
        with sdk.TailorClient({live.url!r}, close_at_exit=False) as client:
            result = client.decide("visitor-1", ["dist_hero"])
            answer = result["dist_hero"]
            assert answer.experiment == "dist-hero" and answer.variant in ("a", "b"), answer
            assert not result.fallback and not result.degraded, result
            client.track_outcome("click", decision_id=result.decision_id)
            assert client.flush(timeout_s=10)
            batch = list(client.decide_batch(
                "dist-campaign", [{{"unit_id": f"r{{i}}"}} for i in range(50)], ["dist_hero"]
            ))
            assert len(batch) == 50 and not any(r.fallback for r in batch), batch[:2]
            assert {{r["dist_hero"].variant for r in batch}} == {{"a", "b"}}
        print("ok")
    """)
    run = subprocess.run(  # noqa: PLW1510  (the return code is asserted with the output)
        [str(sdk_python), "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=sdk_python.parents[2],
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "ok"
