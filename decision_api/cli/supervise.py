"""A child process that ``tailor serve`` keeps running beside its API workers: the learner.

:class:`SupervisedProcess` starts a command, watches it from a daemon thread and starts it again
when it dies (after a back-off that doubles from 1 s up to 30 s while it keeps dying within a
minute of being started), logging every exit. :meth:`SupervisedProcess.stop` sends SIGTERM and
waits — the learner publishes its last snapshots and acknowledges what they hold on SIGTERM — and
SIGKILLs after the timeout.

The learner started by ``tailor serve`` holds the learner lease under a name fixed for the life
of the server (``serve-<pid>``), so a respawned learner takes the lease over at once instead of
waiting for the dead one's to expire; what the dead one had read but not published is
re-delivered to it (``bandits.learner``).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

import structlog

from decision_api.redis_server import die_with_parent

log = structlog.get_logger("tailor.serve")

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0
"""A child that ran this long before dying is restarted after the first back-off again."""


class SupervisedProcess:
    """Run ``command`` until :meth:`stop`, restarting it whenever it exits on its own."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str]) -> None:
        self.name = name
        self._command = list(command)
        self._env = dict(env)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.proc = self._spawn()
        self.restarts = 0
        self._watcher = threading.Thread(target=self._watch, name=f"watch-{name}", daemon=True)
        self._watcher.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # SIGTERM when serve dies, even by kill -9: the child must not outlive it. (Linux sends
        # it when the spawning *thread* ends: the main thread, or this object's watcher, both
        # live as long as the child should.)
        proc = subprocess.Popen(
            self._command,
            env=self._env,
            preexec_fn=die_with_parent,  # noqa: PLW1509 (no lock is taken between fork and exec)
        )
        log.info("child_started", child=self.name, pid=proc.pid)
        return proc

    def _watch(self) -> None:
        backoff = FIRST_BACKOFF_S
        while not self._stopping.is_set():
            started = time.monotonic()
            code = self.proc.wait()
            if self._stopping.is_set():
                return
            ran = time.monotonic() - started
            if ran >= STABLE_AFTER_S:
                backoff = FIRST_BACKOFF_S
            log.error("child_exited", child=self.name, pid=self.proc.pid, code=code,
                      restart_in_s=backoff)  # fmt: skip
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            with self._lock:
                if self._stopping.is_set():
                    return
                self.proc = self._spawn()
                self.restarts += 1

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM the child and wait for it (SIGKILL after ``timeout_s``); no more restarts.

        Returns the child's exit code (None if it had to be killed).
        """
        with self._lock:
            self._stopping.set()
            proc = self.proc
        if proc.poll() is None:
            proc.terminate()
            try:
                return proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.error("child_killed", child=self.name, pid=proc.pid, after_s=timeout_s)
                proc.kill()
                proc.wait()
                return None
        return proc.returncode


def learner_command(holder: str) -> list[str]:
    """The command line of a ``tailor learn`` child holding the lease as ``holder``."""
    return [sys.executable, "-m", "decision_api.cli.main", "learn", "--name", holder]
