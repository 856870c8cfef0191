"""Test-only network pieces for the SDK's socket tests: the API in a subprocess (restartable on
the same port), a slow TCP proxy, and a tiny web site serving demo pages.

Every process and thread here is started and stopped by the test that uses it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from decision_api.redis_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


class ApiServer:
    """``tailor serve`` (granian) in a subprocess, on a port that survives restarts."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
        self._env = {**base, **env}
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> ApiServer:
        """Start and wait until ``/readyz`` answers 200."""
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "decision_api.cli.main", "serve", "--port", str(self.port)],
                cwd=REPO_ROOT,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        tail = self._log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"tailor serve did not become ready:\n{tail}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (graceful: the lifespan flushes the event writer) and wait for the exit."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class SlowProxy:
    """A TCP proxy to ``upstream`` that holds every chunk coming back for ``delay_s``."""

    def __init__(self, upstream_port: int, delay_s: float) -> None:
        self._upstream = upstream_port
        self._delay = delay_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            threading.Thread(target=self._pump, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, self._delay), daemon=True
            ).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, delay_s: float) -> None:
        # A reset on either side ends the connection: both directions are shut down.
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                time.sleep(delay_s)
                sink.sendall(chunk)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting (open connections end when either side closes)."""
        self._closed = True
        self._listener.close()


Page = Callable[[], tuple[int, str, bytes]]


class DemoSite:
    """A small web site on its own port: ``pages`` maps paths to (status, type, body) makers.

    ``/wait`` answers after half a second of real time: a page awaits it so that headless
    Chromium (whose virtual time stands still while a fetch is pending) keeps running while the
    page's beacons go out.
    """

    def __init__(self) -> None:
        self.pages: dict[str, Page] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/wait":
                    time.sleep(0.5)
                    status, kind, body = 200, "text/plain", b"ok"
                elif path in site.pages:
                    status, kind, body = site.pages[path]()
                else:
                    status, kind, body = 404, "text/plain", b"not found"
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


def chromium_dom(url: str, profile_dir: Path, budget_ms: int = 20_000) -> str:
    """The DOM of ``url`` after headless Chromium ran its scripts (``--dump-dom``)."""
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile_dir}",
        f"--virtual-time-budget={budget_ms}",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(command, capture_output=True, timeout=90, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]!r}")
    return done.stdout.decode()
