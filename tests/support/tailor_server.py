"""Run ``tailor serve`` (granian) in a subprocess for tests that need a real server process.

:func:`running_tailor` starts it with a given environment on a free port, waits for
``/healthz``, and yields a :class:`TailorProcess`; on exit it sends SIGTERM (the graceful path:
granian runs the lifespan shutdown, which flushes the event writer) and waits.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from decision_api.redis_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


class TailorProcess:
    """A running ``tailor serve`` child."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's stderr."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code (raises if it does not stop in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def tailor_env(base: Mapping[str, str], **settings: str) -> dict[str, str]:
    """``base`` without ``TAILOR_*`` variables, plus ``TAILOR_<NAME>`` for each keyword."""
    env = {k: v for k, v in base.items() if not k.startswith("TAILOR_")}
    env.update({f"TAILOR_{k.upper()}": v for k, v in settings.items()})
    return env


@contextmanager
def running_tailor(
    env: Mapping[str, str], log_path: Path, *, timeout: float = 30.0
) -> Iterator[TailorProcess]:
    """Start ``tailor serve`` with ``env`` on a free port; stop it (SIGTERM) on exit."""
    port = free_port()
    command = [sys.executable, "-m", "decision_api.cli", "serve", "--port", str(port)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT
        )
    server = TailorProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        _await_healthy(server, timeout)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _await_healthy(server: TailorProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            if httpx.get(server.url + "/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(
        f"tailor serve did not become healthy (exit {server.process.poll()}):\n"
        + server.log_tail()
    )

