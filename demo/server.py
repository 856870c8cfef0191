"""The demo's own ``tailor serve``: a child process on the embedded defaults, always stopped.

The server runs in a fresh data directory (``./data/demo``, wiped at start; a marker file
makes sure the demo only ever wipes a directory it created), starts its private
``redis-server`` the usual way (``decision_api.cli.main.ensure_redis``) and keeps the chdb event log
under that directory. Every inherited ``TAILOR_*`` variable is dropped, so a configured
production Redis or ClickHouse is never touched. The learner runs in the server with a 1-second
snapshot cadence.

The child gets its own session, so a Ctrl-C in the terminal reaches only the demo, which then
stops the server gracefully (SIGTERM: granian drains, the event log flushes, the server stops its
Redis). On Linux the child also receives SIGTERM if the demo dies without cleaning up. Should
the private Redis outlive the server, :meth:`DemoServer.stop` shuts it down by its URL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Final

import httpx
import redis

from decision_api.redis_server import free_port, read_state

__all__ = ["DemoServer", "DemoSetupError", "prepare_data_dir"]

MARKER: Final = ".tailor-demo"
_PR_SET_PDEATHSIG: Final = 1


class DemoSetupError(RuntimeError):
    """The demo cannot start: a busy port, a foreign data directory, a server that failed."""


def prepare_data_dir(path: Path) -> Path:
    """Empty ``path`` (only if the demo made it) and return it, absolute.

    Raises:
        DemoSetupError: ``path`` exists, is not empty and was not created by the demo.
    """
    path = path.resolve()
    if path.exists():
        if not path.is_dir() or (any(path.iterdir()) and not (path / MARKER).exists()):
            raise DemoSetupError(
                f"{path} exists and was not made by `tailor demo`; remove it or pick another "
                "directory with --data-dir"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("made by `tailor demo`: wiped at the start of every demo run\n")
    return path


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the demo process dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # best effort: the demo's own cleanup still stops the server


def port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:``port`` can be bound now."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class DemoServer:
    """One ``tailor serve`` child process for the demo."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = data_dir / "server.log"
        self.redis_url: str | None = None
        self.ready = False
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def choose_port(cls, requested: int | None) -> int:
        """``requested`` if free (``0``: any free port); without one, 8000 or else a free port.

        Raises:
            DemoSetupError: the requested port is taken.
        """
        if requested == 0:
            return free_port()
        if requested is not None:
            if not port_is_free(requested):
                raise DemoSetupError(f"port {requested} is in use; pick another with --port")
            return requested
        return 8000 if port_is_free(8000) else free_port()

    def environment(self) -> dict[str, str]:
        """The child's environment: ours without ``TAILOR_*``, plus the demo's settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
        env.update(
            TAILOR_DATA_DIR=str(self.data_dir),
            TAILOR_EVENT_LOG_URL=f"chdb://{self.data_dir / 'chdb'}",
            TAILOR_EVENT_LOG_SPOOL_DIR=str(self.data_dir / "spool"),
            TAILOR_LEARNER_SNAPSHOT_INTERVAL_S="1",
            TAILOR_LEARNER_MODEL_POLL_INTERVAL_S="0.5",
            TAILOR_LEARNER_REWARD_SWEEP_INTERVAL_S="0.5",
            # A busy laptop can be slow to answer: wait for Redis rather than answer degraded.
            TAILOR_REDIS_SOCKET_TIMEOUT_S="3",
            TAILOR_PSEUDONYM_SECRET=secrets.token_hex(16),
            TAILOR_LOG_FORMAT="json",
            TAILOR_LOG_LEVEL="warning",
            # The demo compresses days into minutes: its newsletter opens are dated in the
            # simulated days ahead, which a real server refuses beyond an hour from now.
            TAILOR_EVENT_LOG_MAX_EVENT_LEAD_S=str(31 * 86400),
        )
        return env

    def start(self) -> None:
        """Start ``tailor serve`` (returns at once; see :meth:`wait_ready`)."""
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "decision_api.cli.main",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=self.data_dir,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads exist yet
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until ``/readyz`` answers 200 and the private Redis is known.

        Raises:
            DemoSetupError: the server exited or was not ready in time (with its log's tail).
        """
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise DemoSetupError(f"the server exited:\n{self.log_tail()}")
                self.redis_url = self.redis_url or self._find_redis_url()
                try:
                    if self.redis_url and http.get(self.url + "/readyz").status_code == 200:
                        self.ready = True
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise DemoSetupError(
            f"the server was not ready within {timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        """Whether the server process is still running."""
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the server to exit; True when it has."""
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the server wrote."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _find_redis_url(self) -> str | None:
        """The private Redis's URL, from its state file in the data directory (the server
        writes it before it serves)."""
        state = read_state(self.data_dir / "redis")
        url = state.get("url") if state else None
        return url if isinstance(url, str) else None

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM the server and wait (SIGKILL after ``timeout_s``: 20 s once it served, to
        let it flush the event log; 5 s while starting, when granian may not exit on SIGTERM);
        then stop whatever it left and make sure its private Redis is gone. Idempotent."""
        if timeout_s is None:
            timeout_s = 20.0 if self.ready else 5.0
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if not self.wait(timeout_s):
                proc.kill()
                proc.wait(timeout=10)
        if proc is not None:
            # A server stopped while it was still starting can leave a granian worker behind;
            # everything it started shares its process group (its own session).
            _stop_group(proc.pid)
        self.redis_url = self.redis_url or self._find_redis_url()
        if self.redis_url:
            _shutdown_redis(self.redis_url)
        if self._log is not None:
            self._log.close()
            self._log = None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(pgid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM what is left of the server's process group, then SIGKILL it after
    ``timeout_s``."""
    if not _group_alive(pgid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def _shutdown_redis(url: str) -> None:
    """Shut down the Redis at ``url`` if it still answers (it should have stopped already)."""
    client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        client.ping()
    except redis.RedisError:
        return  # already gone
    try:
        # The connection drops as the server exits: an error here is expected.
        with contextlib.suppress(redis.RedisError):
            client.shutdown(nosave=True)
    finally:
        client.close()
