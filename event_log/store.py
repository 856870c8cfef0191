"""The durable event log: ClickHouse through clickhouse-connect, embedded (chdb) or a server.

``chdb:///abs/dir`` (or ``chdb://./rel/dir``) opens the ClickHouse engine in-process on a data
directory — which only one process may hold open; ``http(s)://user:pass@host:port/db`` talks to a
ClickHouse server. Both run the same SQL from :mod:`event_log.sql`. Calls are
synchronous (the batching writer runs them in a thread); errors from either backend surface as
:class:`EventLogUnavailable`, translated once here (:func:`unavailable`).

The translated message is what API clients see in a 503 and what the writer logs, so it says
only what kind of failure it was — ClickHouse's error code and name, or the socket error — and
never the driver's text: that quotes the server's URL, the query and its bound values (unit ids).
"""

from __future__ import annotations

import errno
import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError

from event_log import sql as event_sql
from event_log.rows import Table
from tailor_contract.errors import EventLogUnavailable

DEFAULT_DATABASE = "tailor"

_CODE = re.compile(r"\bCode: (\d+)\.")
# The error name ClickHouse puts last: "... (UNKNOWN_TABLE)" or "... (UNKNOWN_TABLE) (version ..)".
_NAME = re.compile(r"\(([A-Z][A-Z0-9_]{2,})\)(?: \(version [^\n]*)?\s*\Z")


def unavailable(exc: BaseException) -> EventLogUnavailable:
    """The one translation of a backend failure into :class:`EventLogUnavailable`.

    The message names the ClickHouse error (``event log error: code 60 (UNKNOWN_TABLE)``) or,
    when the server was not reached, the socket error (``event log unreachable
    (ECONNREFUSED)``); it never carries the server's address, the SQL or parameter values.
    """
    text = str(exc).strip()
    code = _CODE.search(text)
    if code is not None:
        name = _NAME.search(text)
        suffix = f" ({name.group(1)})" if name else ""
        return EventLogUnavailable(f"event log error: code {code.group(1)}{suffix}")
    reason = _socket_error(exc)
    return EventLogUnavailable(f"event log unreachable ({reason or type(exc).__name__})")


def _socket_error(exc: BaseException) -> str | None:
    """The errno name (``ECONNREFUSED``) or timeout behind ``exc``, from its cause chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TimeoutError) or "Timeout" in type(current).__name__:
            return "timeout"
        if isinstance(current, OSError) and current.errno is not None:
            return errno.errorcode.get(current.errno, f"errno {current.errno}")
        reason = getattr(current, "reason", None)  # urllib3's MaxRetryError keeps its cause here
        current = (
            reason if isinstance(reason, BaseException)
            else current.__cause__ or current.__context__
        )  # fmt: skip
    return None


class EventLog(Protocol):
    """Append-only store of exposures, outcomes and audit entries, queryable by SQL."""

    def migrate(self) -> list[int]:
        """Create and migrate tables; returns the migration versions applied now."""
        ...

    def insert(self, table: Table, rows: Sequence[tuple[object, ...]], token: str) -> None:
        """Insert rows (in ``event_sql.COLUMNS[table]`` order); a repeated token is a no-op."""
        ...

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a read query and return its rows."""
        ...

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns nothing useful (DDL, mutations)."""
        ...

    def ping(self) -> bool:
        """Whether the store answers."""
        ...

    def close(self) -> None:
        """Release the connection (and, for chdb, the data directory)."""
        ...


class ClickHouseEventLog:
    """An :class:`EventLog` over a clickhouse-connect client (chdb or HTTP)."""

    def __init__(
        self, client: Any, *, embedded: bool, cluster: str = "", database: str = DEFAULT_DATABASE
    ) -> None:
        self._client = client
        self.embedded = embedded
        self.cluster = cluster
        self._database = database
        self._insert_settings: dict[str, Any] = dict(
            event_sql.CLUSTER_INSERT_SETTINGS if cluster else {}
        )
        # chdb is one engine per process and not safe for concurrent use: serialise calls.
        self._lock = threading.Lock() if embedded else None

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            if self._lock is None:
                return fn(*args, **kwargs)
            with self._lock:
                return fn(*args, **kwargs)
        except (ClickHouseError, OSError) as exc:
            # Not chained: a traceback of the cause would print the URL with the query.
            raise unavailable(exc) from None

    def migrate(self) -> list[int]:
        """Create and migrate tables; returns the migration versions applied now.

        On a cluster the statements run ``ON CLUSTER`` (:func:`event_sql.cluster_migration`);
        ``schema_migrations`` stays local to the node connected to, and every statement is
        ``IF NOT EXISTS``, so migrating through another node repeats nothing harmful.
        """
        self._run(self._client.command, event_sql.CREATE_MIGRATIONS)
        applied = {row[0] for row in self.query(event_sql.APPLIED_MIGRATIONS)}
        done = []
        for version, statements in self._migrations():
            if version in applied:
                continue
            for statement in statements:
                self._run(self._client.command, statement)
            self.command(event_sql.RECORD_MIGRATION, {"version": version})
            done.append(version)
        return done

    def _migrations(self) -> tuple[tuple[int, tuple[str, ...]], ...]:
        if self.cluster:
            return event_sql.cluster_migrations(self.cluster, self._database)
        return tuple((version, (statement,)) for version, statement in event_sql.MIGRATIONS)

    def insert(self, table: Table, rows: Sequence[tuple[object, ...]], token: str) -> None:
        """Insert a batch with a deduplication token (a replay of the same batch is dropped)."""
        if not rows:
            return
        self.insert_encoded(table, event_sql.encode_rows(table, rows), token)

    def insert_encoded(self, table: Table, body: bytes, token: str) -> None:
        """Insert rows already encoded by :func:`event_sql.encode_rows` (same token rules)."""
        if not body:
            return
        self._run(
            self._client.raw_insert,
            table,
            list(event_sql.COLUMNS[table]),
            body,
            settings={**self._insert_settings, "insert_deduplication_token": token},
            fmt=event_sql.INSERT_FORMAT,
        )

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a read query with server-side parameters."""
        result = self._run(self._client.query, sql, parameters=dict(parameters or {}))
        return list(result.result_rows)

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Run a statement."""
        self._run(self._client.command, sql, parameters=dict(parameters or {}))

    def ping(self) -> bool:
        """Whether a trivial query succeeds."""
        try:
            self.query("SELECT 1")
        except EventLogUnavailable:
            return False
        return True

    def close(self) -> None:
        """Close the client."""
        self._run(self._client.close)


def open_event_log(url: str, cluster: str = "") -> ClickHouseEventLog:
    """Open the event log a URL names and make sure its database exists.

    ``chdb://<path>[?database=name]`` or ``http(s)://user:pass@host:port/<database>``;
    the database defaults to ``tailor``. ``cluster`` names the ClickHouse cluster of a server
    (the database is then created ``ON CLUSTER``); empty, a single node.

    Raises:
        ValueError: a bad URL or name, or a cluster with the embedded chdb.
    """
    parts = urlsplit(url)
    if cluster and parts.scheme == "chdb":
        raise ValueError("an event log cluster needs a ClickHouse server, not chdb://")
    if cluster and not event_sql.CLUSTER_NAME.match(cluster):
        raise ValueError(f"cluster name {cluster!r} must be letters, digits and underscores")
    query = parse_qs(parts.query)
    if parts.scheme == "chdb":
        raw_path = (parts.netloc + parts.path) or "./data/chdb"
        path = Path(unquote(raw_path)).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        database = query.get("database", [DEFAULT_DATABASE])[0]
        try:
            boot = clickhouse_connect.get_client(interface="chdb", path=str(path))
            boot.command(f"CREATE DATABASE IF NOT EXISTS `{_identifier(database)}`")
            client = clickhouse_connect.get_client(
                interface="chdb", path=str(path), database=database
            )
            boot.close()
        except (ClickHouseError, RuntimeError) as exc:
            raise EventLogUnavailable(f"cannot open chdb at {path}: {unavailable(exc)}") from None
        return ClickHouseEventLog(client, embedded=True)
    if parts.scheme in ("http", "https"):
        database = parts.path.strip("/") or DEFAULT_DATABASE
        common: dict[str, Any] = {
            "host": parts.hostname or "localhost",
            "port": parts.port or (8443 if parts.scheme == "https" else 8123),
            "username": unquote(parts.username or "default"),
            "password": unquote(parts.password or ""),
            "secure": parts.scheme == "https",
            "connect_timeout": 5,
            "send_receive_timeout": 30,
            # No HTTP session: a session admits one query at a time, and the writer's inserts
            # run concurrently with readiness pings and report queries from other threads.
            "autogenerate_session_id": False,
        }
        try:
            on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
            boot = clickhouse_connect.get_client(**common)
            boot.command(f"CREATE DATABASE IF NOT EXISTS `{_identifier(database)}`{on_cluster}")
            boot.close()
            client = clickhouse_connect.get_client(database=database, **common)
        except (ClickHouseError, OSError) as exc:
            raise EventLogUnavailable(f"cannot reach ClickHouse: {unavailable(exc)}") from None
        return ClickHouseEventLog(client, embedded=False, cluster=cluster, database=database)
    raise ValueError(f"event log URL must start with chdb:// or http(s)://, got {parts.scheme!r}")


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"database name {name!r} must be letters, digits and underscores")
    return name


class DeferredEventLog:
    """A ClickHouse server that was unreachable at start-up, connected to when it answers.

    Until then every call raises :class:`EventLogUnavailable` — so the batching writer spools
    exposures and outcomes to disk and replays them later — and a call at most every
    ``retry_s`` seconds tries to connect and migrate. The API serves meanwhile.
    """

    def __init__(self, url: str, retry_s: float = 5.0, cluster: str = "") -> None:
        self._url = url
        self._cluster = cluster
        self._retry_s = retry_s
        self._log: ClickHouseEventLog | None = None
        self._last_try = 0.0
        self._lock = threading.Lock()

    def _connected(self) -> ClickHouseEventLog:
        if self._log is not None:
            return self._log
        with self._lock:
            if self._log is not None:
                return self._log
            now = time.monotonic()
            if now - self._last_try < self._retry_s:
                raise EventLogUnavailable("ClickHouse was unreachable; retrying")
            self._last_try = now
            connected = open_event_log(self._url, self._cluster)
            connected.migrate()
            self._log = connected
            return connected

    def migrate(self) -> list[int]:
        """Connect and migrate now if possible (a no-op answer while unreachable)."""
        try:
            self._connected()
        except EventLogUnavailable:
            return []
        return []

    def insert(self, table: Table, rows: Sequence[tuple[object, ...]], token: str) -> None:
        """Insert once connected."""
        self._connected().insert(table, rows, token)

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Query once connected."""
        return self._connected().query(sql, parameters)

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Run a statement once connected."""
        self._connected().command(sql, parameters)

    def ping(self) -> bool:
        """Whether the server answers (connecting if it does)."""
        try:
            return self._connected().ping()
        except EventLogUnavailable:
            return False

    def close(self) -> None:
        """Close the connection if there is one."""
        if self._log is not None:
            self._log.close()
