"""A real Redis Cluster for the tests: 3 primaries and 3 replicas of ``redis-server``.

Each node runs ``redis-server --cluster-enabled yes`` on a free port of 127.0.0.1 below 55535
(the cluster bus listens on port + 10000, which must be free too), in its own temporary
directory, with nothing persisted. ``redis-cli --cluster create ... --cluster-replicas 1`` joins
them and assigns the 16,384 slots; :meth:`RedisCluster.start` returns once every node reports
``cluster_state:ok``. ``cluster-node-timeout`` is short (1 s), so a replica takes over from a
killed primary within a few seconds (the failover test relies on it).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

NODE_TIMEOUT_MS = 1000
PORT_CEILING = 55535  # the bus port (port + 10000) must stay a valid port
BUS_OFFSET = 10000


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """``count`` ports below 55535 whose bus ports (+10000) are free too, a moment ago."""
    rng = rng or random.Random()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(20000, PORT_CEILING - BUS_OFFSET - 1)
        if port in ports or port + BUS_OFFSET in ports or port - BUS_OFFSET in ports:
            continue
        if _port_free(port) and _port_free(port + BUS_OFFSET):
            ports.append(port)
    return ports


class ClusterNode:
    """One ``redis-server`` in cluster mode."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process (returns at once; see :meth:`RedisCluster.start`)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def client(self) -> redis.Redis:
        """A plain client of this node alone."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)

    def info(self, section: str) -> dict[str, str]:
        """``INFO <section>`` or ``CLUSTER INFO`` (section ``cluster-info``) as text fields."""
        with contextlib.closing(self.client()) as c:
            if section == "cluster-info":
                raw = c.execute_command("CLUSTER", "INFO")
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            return {k: str(v) for k, v in c.info(section).items()}

    def kill(self) -> None:
        """``kill -9`` the node (what a crashed machine looks like to the cluster)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        """Stop the node (SIGTERM, then SIGKILL after 5 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


class RedisCluster:
    """Six ``redis-server`` nodes joined into a cluster of 3 primaries with a replica each."""

    def __init__(self, directory: Path, primaries: int = 3) -> None:
        self.directory = directory
        ports = cluster_ports(primaries * 2)
        self.nodes = [ClusterNode(directory / f"n{p}", p) for p in ports]
        self.primaries = primaries

    @property
    def url(self) -> str:
        """The URL of one node (a cluster client discovers the rest)."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout_s: float = 30.0) -> RedisCluster:
        """Start the nodes, create the cluster, wait until every node says ``cluster_state:ok``."""
        for node in self.nodes:
            node.start()
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            self._wait(lambda n=node: n.client().ping(), deadline, f"node {node.address}")
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *[n.address for n in self.nodes],
                "--cluster-replicas",
                str(len(self.nodes) // self.primaries - 1),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
        self.wait_ok(deadline - time.monotonic())
        return self

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and all slots served."""

        def ok(node: ClusterNode) -> bool:
            info = node.info("cluster-info")
            return info.get("cluster_state") == "ok" and info.get("cluster_slots_ok") == "16384"

        deadline = time.monotonic() + timeout_s
        for node in self.running():
            self._wait(lambda n=node: ok(n), deadline, f"cluster_state:ok on {node.address}")

    def running(self) -> list[ClusterNode]:
        """The nodes whose process is alive."""
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def primary_nodes(self) -> list[ClusterNode]:
        """The running nodes that are primaries now."""
        return [n for n in self.running() if n.info("replication").get("role") == "master"]

    def replica_of(self, primary: ClusterNode) -> ClusterNode | None:
        """The running replica of ``primary``, if any."""
        for node in self.running():
            info = node.info("replication")
            if info.get("role") == "slave" and info.get("master_port") == str(primary.port):
                return node
        return None

    def primary_of(self, slot: int) -> ClusterNode:
        """The running primary serving ``slot``."""
        with contextlib.closing(self.running()[0].client()) as client:
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(primary[1])
                    return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no primary serves slot {slot}")

    def fail_over(self, primary: ClusterNode, timeout_s: float = 30.0) -> float:
        """``kill -9`` a primary once its replica is in sync, wait until the replica has taken
        over and every slot is served again; returns the seconds from the kill to the takeover."""
        replica = self.replica_of(primary)
        assert replica is not None, f"{primary.address} has no replica"
        deadline = time.monotonic() + timeout_s
        self._wait(
            lambda: replica.info("replication").get("master_link_status") == "up",
            deadline,
            f"replica {replica.address} in sync",
        )
        killed_at = time.monotonic()
        primary.kill()
        self._wait(
            lambda: replica.info("replication").get("role") == "master",
            deadline,
            f"{replica.address} taking over",
        )
        took_over_s = time.monotonic() - killed_at
        self.wait_ok(deadline - time.monotonic())
        return took_over_s

    @staticmethod
    def _wait(probe: object, deadline: float, what: str) -> None:
        last: object = None
        while time.monotonic() < deadline:
            try:
                if probe():  # type: ignore[operator]
                    return
            except (redis.RedisError, OSError) as exc:
                last = exc
            time.sleep(0.05)
        raise RuntimeError(f"{what} did not hold in time (last error: {last!r})")

    def stop(self) -> None:
        """Stop every node; the directories are left to the caller's temporary directory."""
        for node in self.nodes:
            node.stop()
