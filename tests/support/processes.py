"""Real ``tailor`` processes for multi-process tests: servers and learners, stopped by pid.

Each process gets an explicit environment (the parent's minus every ``TAILOR_*`` variable, plus
what the test passes), its output in a log file under the test's tmp dir, and is stopped with
SIGTERM (then SIGKILL) by the test that started it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from decision_api.redis_server import free_port


class TailorProcess:
    """One ``python -m decision_api.cli.main <args>`` child process."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "decision_api.cli.main", *args],
            env={**base, "TAILOR_LOG_FORMAT": "json", **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(log_path.parent),
            start_new_session=True,  # its own process group: stop() reaches granian's workers
        )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self.proc.poll() is None

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group has exited already
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL to the process and its children: they die where they stand, no cleanup."""
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout_s``); returns the exit code. Children left
        behind by the process (a granian worker) are killed with it."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._signal_group(signal.SIGKILL)
        self._log.close()
        return int(self.proc.returncode)

    def output(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")


class TailorServer(TailorProcess):
    """``tailor serve`` on a free port of 127.0.0.1."""

    def __init__(self, env: Mapping[str, str], log_path: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            ["serve", "--port", str(self.port), "--workers", str(workers)], env, log_path
        )

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until ``/readyz`` answers 200; raises with the server's output otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"server exited early:\n{self.output()[-4000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout_s} s:\n{self.output()[-4000:]}")


def server_env(redis_url: str, prefix: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a server sharing Redis (and key prefix) but owning its chdb and spool."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return {
        "TAILOR_REDIS_URL": redis_url,
        "TAILOR_REDIS_KEY_PREFIX": prefix,
        "TAILOR_EVENT_LOG_URL": f"chdb://{data_dir / 'chdb'}",
        "TAILOR_EVENT_LOG_SPOOL_DIR": str(data_dir / "spool"),
        "TAILOR_DATA_DIR": str(data_dir),
        "TAILOR_LOG_LEVEL": "info",
        **extra,
    }
