"""A test-only HTTP front that serves an embedded chdb engine over ClickHouse's HTTP interface.

No ClickHouse server can be installed where the tests run, so clickhouse-connect's HTTP client is
tested against chdb (ClickHouse's engine as a library) behind this front. It speaks the part of
the HTTP interface that clickhouse-connect uses:

- ``GET|POST /ping`` and ``GET /`` answer ``Ok.``; any other path is a 404.
- The statement is the ``query`` URL parameter, a newline, and the request body, as ClickHouse
  builds it. For ``INSERT ... FORMAT <fmt>`` the rest is data: it is staged in a scratch file and
  inserted with ``INSERT ... FROM INFILE`` (chdb cuts inline Native data short). GET, or
  ``readonly=1``, refuses writes. ``multipart/form-data`` bodies (clickhouse-connect's form
  encoding for large bound parameters) carry ``query`` and ``param_*`` fields.
- ``param_<name>`` values go to chdb's own ``{name:Type}`` binding, so quoting and escaping are
  the engine's, exactly as a server would apply them.
- ``database`` (or ``X-ClickHouse-Database``) is the default database of the statement; a ``USE``
  inside an HTTP ``session_id`` persists for that session. ``default_format`` (or the
  ``X-ClickHouse-Format`` request header) is the output format when the SQL names none.
- Other URL parameters that name an engine setting are applied with ``SET`` for that request
  only (a per-request diff, so steady traffic issues no extra statements); transport parameters
  and unknown names are ignored. Explicit ``SET`` statements are engine-wide: chdb has one session.
- Request bodies may be compressed with ``Content-Encoding`` lz4/zstd/gzip/deflate/br or, with
  ``decompress=1``, in ClickHouse's native compressed blocks (checksums are not verified).
  Responses are compressed with the client's first ``Accept-Encoding`` choice this front supports
  (ClickHouse uses its own fixed preference) when ``enable_http_compression`` is on; ``compress=1``
  responses are not supported (NOT_IMPLEMENTED).
- Errors carry ``X-ClickHouse-Exception-Code`` and a ``Code: N. DB::Exception: ... (NAME)
  (version V)`` body, with the HTTP status ClickHouse maps that code to.
- Credentials come from ``X-ClickHouse-User``/``X-ClickHouse-Key``, basic auth, or the
  ``user``/``password`` parameters, and must match the configured user (else code 516, HTTP 403).

Run it as ``python -m tests.support.clickhouse_front --path DIR --port 0``; it prints
``READY <port>`` once it serves. Tests use :func:`running_clickhouse_front`.
"""

from __future__ import annotations

import argparse
import base64
import email.parser
import email.policy
import gzip
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import lz4.block
import lz4.frame
import msgspec

try:  # Python 3.14 ships zstd; earlier versions use the backport clickhouse-connect depends on
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:
    from backports import zstd

try:
    import brotli  # type: ignore[import-not-found]
except ImportError:
    brotli = None

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORD_ENV = "CLICKHOUSE_FRONT_PASSWORD"

# URL parameters the HTTP layer consumes; they never reach the engine as settings.
_TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "user", "password", "query_id", "quota_key",
    "session_id", "session_timeout", "session_check", "compress", "decompress", "buffer_size",
    "wait_end_of_query", "client_protocol_version", "role", "send_progress_in_http_headers",
    "http_headers_progress_interval_ms", "enable_http_compression", "http_zlib_compression_level",
    "cancel_http_readonly_queries_on_client_close", "http_response_buffer_size", "readonly",
})  # fmt: skip
# Statements that produce a result set (and so an X-ClickHouse-Format header).
_RESULT_KINDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN",
                           "CHECK"})  # fmt: skip
_READ_ONLY_KINDS = _RESULT_KINDS | {"SET", "USE"}
_MAX_SESSIONS = 1000  # remembered HTTP sessions (their USE database), oldest dropped first
# exceptionCodeToHTTPStatus in ClickHouse's src/Server/HTTP, keyed by the error's name.
_STATUS_BY_NAME: dict[str, int] = {
    "REQUIRED_PASSWORD": 401,
    **dict.fromkeys(("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "ACCESS_DENIED",
                     "SET_NON_GRANTED_ROLE"), 403),
    **dict.fromkeys(("BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT",
                     "CANNOT_PARSE_ESCAPE_SEQUENCE", "CANNOT_PARSE_QUOTED_STRING",
                     "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
                     "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4",
                     "CANNOT_PARSE_IPV6", "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
                     "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN",
                     "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN",
                     "TOO_DEEP_AST", "TOO_BIG_AST", "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR",
                     "INCORRECT_DATA", "TYPE_MISMATCH", "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"), 400),
    **dict.fromkeys(("UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE",
                     "UNKNOWN_STORAGE", "UNKNOWN_DATABASE", "UNKNOWN_SETTING",
                     "UNKNOWN_DIRECTION_OF_SORTING", "UNKNOWN_AGGREGATE_FUNCTION",
                     "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE", "UNKNOWN_TYPE_OF_QUERY",
                     "UNKNOWN_ROLE"), 404),
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    "SOCKET_TIMEOUT": 503,
    "CANNOT_OPEN_FILE": 503,
    "TIMEOUT_EXCEEDED": 408,
}  # fmt: skip
# Quoted strings and comments are skipped; group 1 is a bare word outside them.
_TOKEN_RE = re.compile(
    rb"""'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.)*"|`(?:[^`\\]|\\.)*`|--[^\n]*|/\*.*?\*/"""
    rb"|([A-Za-z_][A-Za-z0-9_]*)",
    re.DOTALL,
)
_CODE_RE = re.compile(r"Code: (\d+)\. DB::Exception: ")
_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]+)\)")


class FrontError(Exception):
    """A ClickHouse exception to send to the client: code, name and message."""

    def __init__(self, code: int, name: str, message: str) -> None:
        super().__init__(message)
        self.code, self.name, self.message = code, name, message

    @classmethod
    def from_engine(cls, raw: str) -> FrontError:
        """Parse chdb's message, dropping the duplicated ``Code: N. DB::Exception:`` prefixes."""
        matches = list(_CODE_RE.finditer(raw))
        if not matches:
            return cls(1001, "STD_EXCEPTION", raw.strip())
        text = raw[matches[-1].end() :].strip()
        names = _NAME_RE.findall(text)
        name = names[-1] if names else "UNKNOWN_EXCEPTION"
        suffix = re.compile(rf"(?:\.? \({name}\)|\s*\(version [^()]*\))$")
        while (shorter := suffix.sub("", text)) != text:  # chdb repeats name and version
            text = shorter
        return cls(int(matches[-1].group(1)), name, text.rstrip("."))

    @property
    def status(self) -> int:
        """The HTTP status ClickHouse answers this error code with."""
        return _STATUS_BY_NAME.get(self.name, 500)


class InsertData(msgspec.Struct, frozen=True, kw_only=True):
    """An ``INSERT ... FORMAT f`` split into its SQL parts and the data that follows."""

    head: str  # "INSERT INTO t (cols)"
    settings: str  # "SETTINGS ..." before FORMAT, or ""
    format: str
    data: bytes


class Statement(msgspec.Struct, frozen=True, kw_only=True):
    """One HTTP request's statement, as the engine will run it."""

    sql: bytes
    kind: str  # first keyword, upper case
    output_format: str | None  # the FORMAT named in the SQL, if any
    format_span: tuple[int, int] | None  # where that name sits in ``sql``
    insert: InsertData | None = None  # set for INSERT ... FORMAT with data


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """What the engine produced for one statement."""

    body: bytes
    output_format: str | None  # None for statements without a result set
    summary: dict[str, str]


def parse_statement(sql: bytes) -> Statement:
    """Find the statement's kind, the output format it names, and any INSERT data.

    Scanning stops at an INSERT's ``FORMAT <name>``: what follows is data, not SQL.
    """
    words = _words(sql)
    first = next(words, None)
    kind = first[0].upper() if first else ""
    if kind == "INSERT":
        insert = _split_insert(sql, words)
        return Statement(sql=sql, kind=kind, output_format=None, format_span=None, insert=insert)
    output_format, span, previous = None, None, first
    for word in words:
        if previous and previous[0].upper() == "FORMAT" and not sql[previous[2] : word[1]].strip():
            tail = sql[word[2] :].strip().rstrip(b";").strip()
            if not tail or tail[:8].upper() == b"SETTINGS":
                output_format, span = word[0], (word[1], word[2])
        previous = word
    return Statement(sql=sql, kind=kind, output_format=output_format, format_span=span)


def _words(sql: bytes) -> Iterator[tuple[str, int, int]]:
    """Bare words outside quotes and comments, with their byte offsets, scanned lazily."""
    for match in _TOKEN_RE.finditer(sql):
        if match.group(1):
            yield match.group(1).decode(), match.start(1), match.end(1)


def _split_insert(sql: bytes, words: Iterator[tuple[str, int, int]]) -> InsertData | None:
    """Split ``INSERT INTO t [(cols)] [SETTINGS ...] FORMAT f <data>``; None for other INSERTs."""
    settings_at: int | None = None
    previous: tuple[str, int, int] | None = None
    for word, start, end in words:
        upper = word.upper()
        if upper in ("VALUES", "SELECT", "WITH", "INFILE"):
            return None  # the engine parses these whole
        if upper == "SETTINGS" and settings_at is None:
            settings_at = start
        if previous and previous[0].upper() == "FORMAT" and not sql[previous[2] : start].strip():
            # As ClickHouse does: data starts after the first newline, else after the blanks.
            data_at = end
            while data_at < len(sql) and sql[data_at] in b" \t\f":
                data_at += 1
            data_at += sql.startswith(b"\r", data_at)
            data_at += sql.startswith(b"\n", data_at)
            cut = previous[1] if settings_at is None else settings_at
            return InsertData(
                head=sql[:cut].decode(),
                settings=sql[cut : previous[1]].decode(),
                format=word,
                data=sql[data_at:],
            )
        previous = (word, start, end)
    return None


def native_header_block(columns: list[dict[str, str]]) -> bytes:
    """A Native block of zero rows that carries the column names and types."""

    def leb128(value: int) -> bytes:
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    block = bytearray(leb128(len(columns)) + leb128(0))
    for column in columns:
        for text in (column["name"], column["type"]):
            raw = text.encode()
            block += leb128(len(raw)) + raw
    return bytes(block)


def decode_content(body: bytes, encoding: str) -> bytes:
    """Undo a request's ``Content-Encoding``."""
    match encoding.strip().lower():
        case "" | "identity":
            return body
        case "lz4":  # clickhouse-connect sends one frame per block; decode them all
            out, rest = bytearray(), body
            while rest:
                decompressor = lz4.frame.LZ4FrameDecompressor()
                out += decompressor.decompress(rest)
                rest = decompressor.unused_data
            return bytes(out)
        case "zstd":
            return bytes(zstd.decompress(body))
        case "gzip":
            return gzip.decompress(body)
        case "deflate":
            return zlib.decompress(body)
        case "br" if brotli is not None:
            return bytes(brotli.decompress(body))
        case other:
            raise FrontError(
                638, "UNKNOWN_COMPRESSION_METHOD", f"Unknown compression method: {other}"
            )


def decode_native_blocks(body: bytes) -> bytes:
    """Undo ClickHouse's compressed block framing (``decompress=1``) without checking checksums.

    Each block: a 16-byte CityHash128 checksum, a method byte, the block's compressed size
    (header included) and its decompressed size as little-endian u32, then the payload.
    """
    out, pos = bytearray(), 0
    while pos < len(body):
        method = body[pos + 16]
        size = int.from_bytes(body[pos + 17 : pos + 21], "little")
        raw_size = int.from_bytes(body[pos + 21 : pos + 25], "little")
        payload = body[pos + 25 : pos + 16 + size]
        if method == 0x82:
            out += lz4.block.decompress(payload, uncompressed_size=raw_size)
        elif method == 0x90:
            out += zstd.decompress(payload)
        elif method == 0x02:
            out += payload
        else:
            raise FrontError(
                271, "CANNOT_DECOMPRESS", f"Unknown compression method byte 0x{method:02x}"
            )
        pos += 16 + size
    return bytes(out)


def encode_content(body: bytes, accept_encoding: str) -> tuple[bytes, str | None]:
    """Compress with the client's first acceptable encoding this front supports."""
    encoders: dict[str, Callable[[bytes], bytes]] = {
        "lz4": lambda b: bytes(lz4.frame.compress(b)),
        "zstd": lambda b: bytes(zstd.compress(b)),
        "gzip": lambda b: gzip.compress(b, compresslevel=3),
        "deflate": lambda b: zlib.compress(b, 3),
    }
    if brotli is not None:
        encoders["br"] = lambda b: bytes(brotli.compress(b))
    for item in accept_encoding.split(","):
        name = item.split(";")[0].strip().lower()
        if name in encoders:
            return encoders[name](body), name
    return body, None


class ChdbEngine:
    """One chdb session behind a lock, with per-request database and settings."""

    def __init__(self, path: Path) -> None:
        from chdb import session as chdb_session

        session_type: Any = chdb_session.Session  # chdb ships no annotations
        self._session: Any = session_type(str(path))
        self._lock = threading.Lock()
        self._database = "default"
        self._applied: dict[str, str] = {}  # settings currently SET on the engine
        self._session_databases: dict[str, str] = {}  # HTTP session_id -> database after USE
        self._scratch = Path(tempfile.mkdtemp(prefix="chdb-front-"))  # staged INSERT data
        about = self._session.query("SELECT version(), timezone()", "TabSeparated")
        self.version, self.timezone = bytes(about.bytes()).decode().strip().split("\t")
        names = self._session.query("SELECT name FROM system.settings", "TabSeparated")
        self.known_settings = frozenset(names.bytes().decode().split())

    def close(self) -> None:
        """Close the chdb session once running statements finish."""
        with self._lock:
            self._session.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def execute(
        self,
        statement: Statement,
        *,
        database: str | None,
        session_id: str | None,
        settings: dict[str, str],
        params: dict[str, str],
        default_format: str,
    ) -> Answer:
        """Run one statement with its database, settings and bound parameters."""
        target = database or self._session_databases.get(session_id or "", "default")
        fmt = statement.output_format or default_format
        sql, staged = statement.sql, None
        if statement.insert is not None:
            # chdb cuts inline data short past ~256 KiB; the engine reads a file whole.
            sql, staged = self._stage_insert(statement.insert)
        try:
            return self._execute_locked(
                statement, sql, target=target, session_id=session_id, settings=settings,
                params=params, fmt=fmt,
            )  # fmt: skip
        finally:
            if staged is not None:
                staged.unlink(missing_ok=True)

    def _execute_locked(
        self,
        statement: Statement,
        sql: bytes,
        *,
        target: str,
        session_id: str | None,
        settings: dict[str, str],
        params: dict[str, str],
        fmt: str,
    ) -> Answer:
        with self._lock:
            if target != self._database:
                self._run(f"USE `{_escape(target, '`')}`".encode(), "TabSeparated", {})
                self._database = target
            self._apply_settings(settings)
            started = time.perf_counter_ns()
            result = self._run(sql, fmt, params)
            elapsed = time.perf_counter_ns() - started
            body = bytes(result.bytes() or b"")
            if statement.kind == "USE":
                current = self._run(b"SELECT currentDatabase()", "TabSeparated", {})
                self._database = bytes(current.bytes()).decode().strip()
                if session_id:
                    self._session_databases[session_id] = self._database
                    while len(self._session_databases) > _MAX_SESSIONS:
                        del self._session_databases[next(iter(self._session_databases))]
            if not body and fmt == "Native" and statement.kind in _RESULT_KINDS:
                body = self._empty_native(statement, params)
        summary = {
            "read_rows": str(result.storage_rows_read()),
            "read_bytes": str(result.storage_bytes_read()),
            "written_rows": str(result.rows_written()),
            "written_bytes": str(result.bytes_written()),
            "total_rows_to_read": str(result.storage_rows_read()),
            "result_rows": str(result.rows_read()),
            "result_bytes": str(result.bytes_read()),
            "elapsed_ns": str(elapsed),
        }
        has_result = statement.kind in _RESULT_KINDS
        return Answer(body=body, output_format=fmt if has_result else None, summary=summary)

    def _stage_insert(self, insert: InsertData) -> tuple[bytes, Path]:
        """Write the data to a scratch file; return ``INSERT ... FROM INFILE`` and the file."""
        staged = self._scratch / f"{uuid.uuid4().hex}.{insert.format.lower()}"
        staged.write_bytes(insert.data)
        infile = _escape(str(staged), "'")
        sql = f"{insert.head} FROM INFILE '{infile}' {insert.settings} FORMAT {insert.format}"
        return sql.encode(), staged

    def _empty_native(self, statement: Statement, params: dict[str, str]) -> bytes:
        """chdb writes no bytes for an empty Native result; a server sends the header block."""
        sql = statement.sql
        if statement.format_span is not None:
            start, end = statement.format_span
            sql = sql[:start] + b"JSON" + sql[end:]
        meta = json.loads(bytes(self._run(sql, "JSON", params).bytes()) or b"{}").get("meta", [])
        return native_header_block(meta) if meta else b""

    def _apply_settings(self, wanted: dict[str, str]) -> None:
        for name in [n for n in self._applied if n not in wanted]:
            self._run(f"SET {name} = DEFAULT".encode(), "TabSeparated", {})
            del self._applied[name]
        for name, value in wanted.items():
            if self._applied.get(name) != value:
                literal = _escape(value, "'")
                self._run(f"SET {name} = '{literal}'".encode(), "TabSeparated", {})
                self._applied[name] = value

    def _run(self, sql: bytes, fmt: str, params: dict[str, str]) -> Any:
        try:
            return self._session.query(sql, fmt, params=params)
        except Exception as error:  # chdb raises RuntimeError/ChdbError with ClickHouse's text
            raise FrontError.from_engine(str(error)) from error


def _escape(value: str, quote_char: str) -> str:
    return value.replace("\\", "\\\\").replace(quote_char, "\\" + quote_char)


class FrontServer(ThreadingHTTPServer):
    """The HTTP server: one thread per connection, one engine, one configured user."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], engine: ChdbEngine, user: str, password: str):
        super().__init__(address, FrontHandler)
        self.engine, self.user, self.password = engine, user, password


class FrontHandler(BaseHTTPRequestHandler):
    """Answers ClickHouse HTTP requests; every reply carries Content-Length (keep-alive)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # without it each reply waits ~40 ms for a delayed ACK
    server_version = "chdb-front"
    server: FrontServer

    def do_GET(self) -> None:
        """Serve ``/ping``, ``/`` and read-only queries."""
        self._serve("GET")

    def do_POST(self) -> None:
        """Serve ``/ping`` and any statement, with data in the body."""
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:
        """Keep request lines out of the test output."""

    def _serve(self, method: str) -> None:
        query_id = str(uuid.uuid4())
        try:
            body = self._read_body()
            url = urlsplit(self.path)
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            query_id = params.get("query_id") or query_id
            if url.path in ("/ping", "/") and not params.get("query") and not body:
                self._reply(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
                return
            if url.path != "/":
                text = f"There is no handle {url.path}\n\nUse / or /ping for health checks.\n"
                self._reply(404, text.encode(), {"Content-Type": "text/plain; charset=UTF-8"})
                return
            self._authenticate(params)
            self._run_query(method, params, body, query_id)
        except FrontError as error:
            self._send_error(error, query_id)
        except Exception as error:  # a front bug must still answer, not drop the connection
            traceback.print_exc()
            self._send_error(FrontError(1001, "STD_EXCEPTION", repr(error)), query_id)

    def _run_query(self, method: str, params: dict[str, str], body: bytes, query_id: str) -> None:
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            params = {**params, **_form_fields(content_type, body)}
            body = b""
        body = decode_content(body, self.headers.get("Content-Encoding", ""))
        if params.get("decompress") == "1":
            body = decode_native_blocks(body)
        if params.get("compress") == "1":
            raise FrontError(48, "NOT_IMPLEMENTED", "compress=1 responses are not supported")
        query = params.get("query", "")
        sql = (query + "\n").encode() + body if query else body
        if not sql.strip():
            raise FrontError(62, "SYNTAX_ERROR", "Empty query")
        statement = parse_statement(sql)
        read_only = method == "GET" or params.get("readonly", "0") not in ("", "0")
        if read_only and statement.kind not in _READ_ONLY_KINDS:
            message = "Cannot execute query in readonly mode. For queries over HTTP, method GET "
            raise FrontError(164, "READONLY", message + "implies readonly. Use method POST")
        engine = self.server.engine
        settings = {
            name: value
            for name, value in params.items()
            if name not in _TRANSPORT_PARAMS and name in engine.known_settings
        }
        answer = engine.execute(
            statement,
            database=self.headers.get("X-ClickHouse-Database") or params.get("database"),
            session_id=params.get("session_id"),
            settings=settings,
            params={k[6:]: v for k, v in params.items() if k.startswith("param_")},
            default_format=self.headers.get("X-ClickHouse-Format")
            or params.get("default_format", "TabSeparated"),
        )
        headers = self._common_headers(query_id, settings.get("session_timezone"))
        headers["X-ClickHouse-Summary"] = json.dumps(answer.summary, separators=(",", ":"))
        headers["Content-Type"] = _content_type(answer.output_format)
        if answer.output_format:
            headers["X-ClickHouse-Format"] = answer.output_format
        payload = answer.body
        if params.get("enable_http_compression", "1") == "1":  # chdb's default is 1
            payload, encoding = encode_content(payload, self.headers.get("Accept-Encoding", ""))
            if encoding:
                headers["Content-Encoding"] = encoding
        self._reply(200, payload, headers)

    def _authenticate(self, params: dict[str, str]) -> None:
        user = self.headers.get("X-ClickHouse-User", "")
        password = self.headers.get("X-ClickHouse-Key", "")
        authorization = self.headers.get("Authorization", "")
        if not user and not password and authorization.startswith("Basic "):
            decoded = base64.b64decode(authorization[6:]).decode()
            user, _, password = decoded.partition(":")
        if not user and not password:
            user, password = params.get("user", "default"), params.get("password", "")
        if (user, password) != (self.server.user, self.server.password):
            message = (
                f"{user}: Authentication failed: password is incorrect, "
                "or there is no user with such name."
            )
            raise FrontError(516, "AUTHENTICATION_FAILED", message.rstrip("."))

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers end with an empty line
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _common_headers(self, query_id: str, timezone: str | None = None) -> dict[str, str]:
        return {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": timezone or self.server.engine.timezone,
            "X-ClickHouse-Server-Display-Name": "chdb-front",
            "Keep-Alive": "timeout=30",
        }

    def _send_error(self, error: FrontError, query_id: str) -> None:
        headers = self._common_headers(query_id)
        headers["X-ClickHouse-Exception-Code"] = str(error.code)
        headers["Content-Type"] = "text/plain; charset=UTF-8"
        version = self.server.engine.version
        text = f"Code: {error.code}. DB::Exception: {error.message}. ({error.name}) "
        text += f"(version {version})\n"
        self._reply(error.status, text.encode(), headers)

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _content_type(output_format: str | None) -> str:
    name = (output_format or "").lower()
    if name.startswith("json"):
        return "application/json; charset=UTF-8"
    if name.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if name.startswith("csv"):
        return "text/csv; charset=UTF-8; header=absent"
    if name in ("native", "rowbinary", "parquet", "arrow", "arrowstream"):
        return "application/octet-stream"
    return "text/plain; charset=UTF-8"


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """Plain fields of a multipart/form-data body; uploaded files (external data) are refused."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        if part.get_filename():
            raise FrontError(48, "NOT_IMPLEMENTED", "external data is not supported by the front")
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload.decode()
    return fields


def serve(path: Path, host: str, port: int, user: str, password: str) -> None:
    """Open the engine at ``path``, print ``READY <port>``, and serve until SIGTERM or SIGINT."""
    engine = ChdbEngine(path)
    server = FrontServer((host, port), engine, user, password)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        engine.close()


@contextmanager
def running_clickhouse_front(
    path: Path, user: str = "default", password: str = "", *, timeout: float = 30.0
) -> Iterator[str]:
    """Run the front on a free port in a subprocess; yield its DSN, stop it on exit.

    The DSN looks like ``http://user:pass@127.0.0.1:PORT/default`` and works with
    ``clickhouse_connect.get_client(dsn=...)``. The subprocess's stderr goes to
    ``path.parent / (path.name + ".log")``; start-up failures raise RuntimeError with its tail.
    """
    path.mkdir(parents=True, exist_ok=True)
    log_path = path.parent / f"{path.name}.log"
    command = [sys.executable, "-m", "tests.support.clickhouse_front", "--path", str(path),
               "--host", "127.0.0.1", "--port", "0", "--user", user]  # fmt: skip
    env = {**os.environ, PASSWORD_ENV: password}
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=log
        )
    try:
        port = _await_ready(process, timeout, log_path)
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        yield f"http://{credentials}@127.0.0.1:{port}/default"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _await_ready(process: subprocess.Popen[bytes], timeout: float, log_path: Path) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([process.stdout], [], [], 0.1)
        if readable:
            line = process.stdout.readline().decode().strip()
            if line.startswith("READY "):
                return int(line.split()[1])
            if not line and process.poll() is not None:
                break
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"clickhouse front did not start (exit {process.poll()}):\n{tail}")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``python -m tests.support.clickhouse_front --path DIR --port 0``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--path", type=Path, required=True, help="chdb data directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--user", default="default")
    parser.add_argument("--password", default=None, help=f"default: ${PASSWORD_ENV} or empty")
    args = parser.parse_args(argv)
    password = args.password if args.password is not None else os.environ.get(PASSWORD_ENV, "")
    serve(args.path, args.host, args.port, args.user, password)


if __name__ == "__main__":
    main()
