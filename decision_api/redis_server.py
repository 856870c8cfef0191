"""A private ``redis-server``: the embedded default of ``tailor serve`` and the tests' Redis.

It listens on 127.0.0.1 on a free port, keeps its files in its own directory (append-only file
on, so ``tailor serve`` keeps profiles and definitions across restarts), and is stopped with the
process that started it. It never touches a Redis already running on the machine.

:class:`PrivateRedisServer` (the one ``tailor serve`` starts) promises one redis-server per
directory, whatever happened before: two servers on the same append-only files lose writes and
can corrupt them. Its directory holds

    owner.lock    flock-ed by the owning process for as long as it runs (the kernel releases it
                  when that process dies, even by SIGKILL)
    state.json    {"url", "port", "pid", "owner_pid", "directory"} of the running server,
                  written once it answers PING and removed on a clean stop; other tools
                  (``tailor keys``) read it to find the embedded server's Redis

On start it takes the lock (or fails with :class:`RedisDirectoryInUse`), shuts down any
redis-server left running on the directory by an earlier run (SIGTERM, which fsyncs the
append-only file, then waits; SIGKILL after a timeout), and starts its own, which on Linux is
asked to receive SIGTERM when its parent dies, so a ``kill -9`` of the owner does not orphan it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import redis

STATE_FILE: Final = "state.json"
LOCK_FILE: Final = "owner.lock"
_PR_SET_PDEATHSIG: Final = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (a no-op elsewhere).

    Call it in a child: as ``preexec_fn`` before exec, or first thing in a forked worker. If the
    parent is already gone (re-parented before the call), the signal is sent at once.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig))
    except (OSError, AttributeError):
        return  # best effort: the owner's own cleanup and the next start's sweep remain
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` child process."""

    def __init__(self, directory: Path, port: int | None = None, persist: bool = True) -> None:
        self.directory = directory.resolve()
        self.port = port or free_port()
        self.persist = persist
        self._proc: subprocess.Popen[bytes] | None = None
        # Only the owned server asks to die with its parent: preexec_fn is unsafe in a process
        # that runs threads (a test session), and tests stop their servers themselves.
        self._tie_to_parent = False

    @property
    def pid(self) -> int | None:
        """The redis-server's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persist else "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self._proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent if self._tie_to_parent else None,  # noqa: PLW1509
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5)
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if self._proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"redis-server did not start on port {self.port}; see "
                            f"{self.directory / 'redis.log'}"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.poll() is None


class RedisDirectoryInUse(RuntimeError):
    """Another live process owns the private Redis of this directory."""


class PrivateRedisServer(RedisServer):
    """The one redis-server of a data directory, owned by this process (see the module doc)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        super().__init__(directory, port, persist=True)
        self._tie_to_parent = True
        self._lock_fd: int | None = None

    def start(self, timeout_s: float = 10.0) -> PrivateRedisServer:
        """Take the directory, stop what an earlier run left running on it, start, record.

        Raises:
            RedisDirectoryInUse: another live process owns this directory.
            RuntimeError: redis-server is missing or did not start.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock_directory(self.directory)
        try:
            stop_leftovers(self.directory)
            super().start(timeout_s)
            self._write_state()
        except BaseException:
            self.stop()
            raise
        return self

    def _write_state(self) -> None:
        state = {
            "url": self.url,
            "port": self.port,
            "pid": self.pid,
            "owner_pid": os.getpid(),
            "directory": str(self.directory),
        }
        temporary = self.directory / f".{STATE_FILE}.tmp"
        temporary.write_text(json.dumps(state) + "\n")
        os.replace(temporary, self.directory / STATE_FILE)

    def stop(self) -> None:
        """Stop the server, remove the state file and release the directory."""
        super().stop()
        with contextlib.suppress(FileNotFoundError):
            (self.directory / STATE_FILE).unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None


def read_state(directory: Path) -> dict[str, object] | None:
    """The state file of a private Redis directory, or None if there is none (or it is torn)."""
    try:
        state = json.loads((directory / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def _lock_directory(directory: Path) -> int:
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        owner = (read_state(directory) or {}).get("owner_pid", "unknown")
        raise RedisDirectoryInUse(
            f"{directory} is in use by another process (pid {owner}); stop it or use another "
            "data directory"
        ) from None
    return fd


def stop_leftovers(directory: Path, timeout_s: float = 10.0) -> list[int]:
    """Stop every redis-server still running on ``directory``; returns their pids.

    Found on Linux by the state file's pid and by scanning ``/proc`` for redis-server processes
    whose working directory (redis chdirs to ``--dir``) is ``directory`` — which also finds
    servers started before the state file existed; elsewhere this finds nothing. Each gets
    SIGTERM (redis then fsyncs its append-only file and exits) and is waited for; SIGKILL after
    ``timeout_s``.
    """
    directory = directory.resolve()
    pids = set(_redis_pids_in(directory))
    state_pid = (read_state(directory) or {}).get("pid")
    if isinstance(state_pid, int) and _is_redis_in(state_pid, directory):
        pids.add(state_pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while _running(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
    return sorted(pids)


def _redis_pids_in(directory: Path) -> list[int]:
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    return [
        int(entry.name)
        for entry in proc.iterdir()
        if entry.name.isdigit() and _is_redis_in(int(entry.name), directory)
    ]


def _is_redis_in(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is a live redis-server working in ``directory`` (not a reused pid)."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    return name.startswith("redis-server") and cwd == directory and _running(pid)


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (an orphan nobody reaped has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
