"""clickhouse-connect's HTTP client against chdb behind the test front (tests/support).

One front process serves the whole module; each test uses its own tables.
"""

from __future__ import annotations

import gzip
import http.client
import json
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit

import lz4.block
import lz4.frame
import numpy as np
import pytest
from backports import zstd
from clickhouse_connect import get_client
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from tests.support.clickhouse_front import running_clickhouse_front

USER = "tailor"
PASSWORD = "s3cr'et:\\pw"  # quote, colon and backslash survive the DSN and basic auth
DATABASE = "front_test"

EVENT_COLUMNS = ["event_id", "ts", "kind", "attrs", "value", "unit", "note"]
EVENT_DDL = """
    event_id UUID,
    ts DateTime64(3, 'UTC'),
    kind LowCardinality(String),
    attrs Map(String, String),
    value Float64,
    unit UInt32,
    note Nullable(String)
"""


@pytest.fixture(scope="module")
def front_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The DSN of a front over a fresh chdb directory, with the test database created."""
    path: Path = tmp_path_factory.mktemp("clickhouse_front") / "chdb"
    with running_clickhouse_front(path, user=USER, password=PASSWORD) as dsn:
        client = get_client(dsn=dsn)
        client.command(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
        client.close()
        yield dsn


@pytest.fixture(scope="module")
def client(front_dsn: str) -> Iterator[Client]:
    """A default clickhouse-connect HTTP client (compression on) bound to the test database."""
    client = get_client(dsn=front_dsn, database=DATABASE)
    yield client
    client.close()


@pytest.fixture(scope="module")
def address(front_dsn: str) -> tuple[str, int]:
    """Host and port of the front, for raw HTTP requests."""
    url = urlsplit(front_dsn)
    assert url.hostname is not None and url.port is not None
    return url.hostname, url.port


def raw_request(
    address: tuple[str, int],
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    authenticate: bool = True,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request on a fresh connection; returns status, headers and the body."""
    connection = http.client.HTTPConnection(*address, timeout=10)
    all_headers = dict(headers or {})
    if authenticate:
        all_headers |= {"X-ClickHouse-User": USER, "X-ClickHouse-Key": PASSWORD}
    connection.request(method, path, body=body, headers=all_headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), data


def event_rows(count: int, seed: int) -> list[list[Any]]:
    """Rows of every column type the event log uses, generated from a fixed seed."""
    rng = np.random.default_rng(seed)
    id_bytes = rng.bytes(16 * count)
    start = datetime(2026, 1, 1)
    millis = rng.integers(0, 86_400_000 * 30, size=count)
    kinds = ["exposure", "outcome", "decision", "audit"]
    values = rng.normal(10.0, 3.0, size=count)
    rows: list[list[Any]] = []
    for i in range(count):
        rows.append([
            uuid.UUID(bytes=id_bytes[16 * i : 16 * i + 16]),
            start + timedelta(milliseconds=int(millis[i])),  # naive UTC, as the client returns it
            kinds[i % 4],
            {"placement": f"p{i % 7}", "variant": "B" if i % 2 else "A"} if i % 5 else {},
            float(values[i]),
            i,
            None if i % 3 == 0 else f"note {i} with 'quotes' and \\ backslash",
        ])  # fmt: skip
    return rows


def create_events_table(client: Client, name: str, engine: str = "MergeTree") -> None:
    """A fresh events table with the test's column types."""
    client.command(f"DROP TABLE IF EXISTS {name}")
    client.command(f"CREATE TABLE {name} ({EVENT_DDL}) ENGINE = {engine} ORDER BY (kind, unit)")


def test_ping_and_root_answer_ok(client: Client, address: tuple[str, int]) -> None:
    """``/ping`` and ``/`` answer ``Ok.`` without credentials; unknown paths are 404."""
    assert client.ping()
    for method, path in [("GET", "/ping"), ("POST", "/ping"), ("GET", "/")]:
        status, _, body = raw_request(address, method, path, authenticate=False)
        assert (status, body) == (200, b"Ok.\n")
    status, _, _ = raw_request(address, "GET", "/no/such/handler")
    assert status == 404


def test_client_start_up_reads_server_identity(client: Client) -> None:
    """The client's start-up queries see chdb's version and a UTC server time zone."""
    assert client.server_version is not None
    assert client.server_version.split(".")[0].isdigit()
    assert client.server_tz.utcoffset(None) == timedelta(0)
    assert client.command("SELECT currentDatabase()") == DATABASE


def test_create_tables_and_replacing_merge_tree_deduplicates(client: Client) -> None:
    """DDL runs through the front, and ReplacingMergeTree keeps one row per key under FINAL."""
    create_events_table(client, "events_ddl")
    client.command(
        "CREATE OR REPLACE TABLE units (unit UInt32, version UInt64, segment String) "
        "ENGINE = ReplacingMergeTree(version) ORDER BY unit"
    )
    client.insert(
        "units", [[1, 1, "old"], [2, 1, "b"]], column_names=["unit", "version", "segment"]
    )
    client.insert("units", [[1, 2, "new"]], column_names=["unit", "version", "segment"])
    tables = client.query(f"SHOW TABLES FROM {DATABASE}").result_columns[0]
    assert {"events_ddl", "units"} <= set(tables)
    rows = client.query("SELECT unit, segment FROM units FINAL ORDER BY unit").result_rows
    assert rows == [(1, "new"), (2, "b")]


@pytest.mark.parametrize("compress", [True, False, "zstd", "gzip"])
def test_insert_and_read_back_every_column_type(front_dsn: str, compress: bool | str) -> None:
    """10,000 rows of UUID, DateTime64, LowCardinality, Map, Float64, UInt32 and Nullable
    columns come back exactly as inserted, with request/response compression on or off."""
    client = get_client(dsn=front_dsn, database=DATABASE, compress=compress)
    table = f"events_{str(compress).lower()}"
    create_events_table(client, table)
    rows = event_rows(10_000, seed=7)
    summary = client.insert(table, rows, column_names=EVENT_COLUMNS)
    assert summary.written_rows == 10_000
    result = client.query(f"SELECT {', '.join(EVENT_COLUMNS)} FROM {table} ORDER BY unit")
    assert [list(row) for row in result.result_rows] == rows
    assert result.column_names == tuple(EVENT_COLUMNS)
    client.close()


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "it's",
        "back\\slash and \\' escaped quote",
        "'; DROP TABLE params_probe; --",
        "tab\tnew\nline\r\x00nul",
        "{x:String} ünïcødé ✓",
    ],
)
def test_server_side_parameters_are_bound_not_spliced(client: Client, value: str) -> None:
    """A ``{x:String}`` parameter comes back byte for byte and cannot inject SQL."""
    client.command("CREATE TABLE IF NOT EXISTS params_probe (s String) ENGINE = Memory")
    assert client.query("SELECT {x:String}", parameters={"x": value}).result_rows == [(value,)]
    count = client.command("SELECT count() FROM params_probe WHERE s = {x:String}", {"x": value})
    assert count == 0
    assert client.command("EXISTS TABLE params_probe") == 1


def test_large_parameter_travels_as_form_data(client: Client) -> None:
    """A parameter too long for the URL is sent as multipart form data and still binds."""
    value = "x'\\y" * 5_000
    result = client.query("SELECT length({v:String}), {v:String} = {w:String}",
                          parameters={"v": value, "w": value})  # fmt: skip
    assert result.result_rows == [(len(value), 1)]


def test_query_np_and_query_df(client: Client) -> None:
    """numpy and pandas results arrive with the right columns, values and dtypes."""
    sql = "SELECT number AS n, toFloat64(number) / 4 AS f, toString(number) AS s FROM numbers(5)"
    array = client.query_np(sql)
    assert [tuple(row) for row in array.tolist()] == [(i, i / 4, str(i)) for i in range(5)]
    frame = client.query_df(sql)
    assert list(frame.columns) == ["n", "f", "s"]
    assert frame["n"].dtype == np.uint64 and frame["f"].tolist() == [i / 4 for i in range(5)]


def test_empty_result_keeps_its_columns(client: Client) -> None:
    """An empty result still carries column names, as a server's header block does."""
    result = client.query("SELECT number AS n, 'a' AS s FROM numbers(3) WHERE n > 10")
    assert result.result_rows == []
    assert result.column_names == ("n", "s")


class ErrorCase(NamedTuple):
    """A failing statement and what ClickHouse answers it with."""

    sql: str
    code: int
    status: int
    match: str


ERROR_CASES = [
    ErrorCase("SELEC 1", 62, 400, "SYNTAX_ERROR"),
    ErrorCase("SELECT * FROM no_such_table", 60, 404, "UNKNOWN_TABLE"),
    ErrorCase("SELECT no_such_function(1)", 46, 404, "UNKNOWN_FUNCTION"),
    ErrorCase("SELECT * FROM no_such_db.t", 81, 404, "UNKNOWN_DATABASE"),
    ErrorCase("SELECT throwIf(1, 'boom')", 395, 500, "boom"),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[case.match for case in ERROR_CASES])
def test_errors_raise_database_error_with_code(
    client: Client, address: tuple[str, int], case: ErrorCase
) -> None:
    """Engine errors reach the client as DatabaseError with ClickHouse's code, name and status."""
    with pytest.raises(DatabaseError, match=rf"(?s)code: {case.code}.*{case.match}") as caught:
        client.query(case.sql)
    assert caught.value.code == case.code
    http_status, headers, body = raw_request(address, "POST", "/", case.sql.encode())
    assert (http_status, headers["X-ClickHouse-Exception-Code"]) == (case.status, str(case.code))
    assert body.startswith(f"Code: {case.code}. DB::Exception: ".encode())
    assert b"(version " in body and body.count(b"Code: ") == 1


@pytest.mark.parametrize(
    ("user", "password"),
    [(USER, "wrong"), (USER, ""), ("intruder", PASSWORD), ("default", "")],
)
def test_wrong_credentials_are_refused(front_dsn: str, user: str, password: str) -> None:
    """Credentials other than the configured ones get AUTHENTICATION_FAILED (516)."""
    url = urlsplit(front_dsn)
    with pytest.raises(DatabaseError, match=r"(?s)code: 516.*AUTHENTICATION_FAILED"):
        get_client(host=url.hostname, port=url.port, username=user, password=password)


class ReadOnlyCase(NamedTuple):
    """A request and the exception code it earns (None: it runs and returns ``2``)."""

    method: str
    params: dict[str, str]
    sql: str
    code: str | None


READ_ONLY_CASES = [
    ReadOnlyCase("GET", {}, "SELECT 2", None),
    ReadOnlyCase("GET", {}, "CREATE TABLE get_made (a UInt8) ENGINE = Memory", "164"),
    ReadOnlyCase(
        "POST", {"readonly": "1"}, "CREATE TABLE ro_made (a UInt8) ENGINE = Memory", "164"
    ),
    ReadOnlyCase("POST", {"readonly": "1"}, "SELECT 2", None),
]


@pytest.mark.parametrize("case", READ_ONLY_CASES)
def test_get_and_readonly_refuse_writes(address: tuple[str, int], case: ReadOnlyCase) -> None:
    """GET and ``readonly=1`` run reads but refuse writes, as ClickHouse does (READONLY)."""
    query = urlencode({"query": case.sql, **case.params})
    status, headers, body = raw_request(address, case.method, "/?" + query)
    expected_status = 200 if case.code is None else 500
    assert (status, headers.get("X-ClickHouse-Exception-Code")) == (expected_status, case.code)
    if case.code is None:
        assert body == b"2\n"


@pytest.mark.parametrize(
    ("params", "headers", "fmt", "body"),
    [
        ({"query": "SELECT 1 AS a, 'x' AS b"}, {}, "TabSeparated", b"1\tx\n"),
        ({"query": "SELECT 1 AS a FORMAT JSONEachRow"}, {}, "JSONEachRow", b'{"a":1}\n'),
        ({"query": "SELECT 1 AS a", "default_format": "CSV"}, {}, "CSV", b"1\n"),
        ({"query": "SELECT 1 AS a"}, {"X-ClickHouse-Format": "JSONEachRow"}, "JSONEachRow",
         b'{"a":1}\n'),
        ({"query": "SELECT {n:UInt8} + 1 AS a", "param_n": "41"}, {}, "TabSeparated", b"42\n"),
    ],
)  # fmt: skip
def test_output_format_follows_sql_then_default_format(
    address: tuple[str, int], params: dict[str, str], headers: dict[str, str], fmt: str, body: bytes
) -> None:
    """The FORMAT clause wins, then default_format; the header names the format used."""
    status, reply_headers, reply = raw_request(
        address, "POST", "/?" + urlencode(params), headers=headers
    )
    assert (status, reply_headers["X-ClickHouse-Format"], reply) == (200, fmt, body)
    assert json.loads(reply_headers["X-ClickHouse-Summary"])["result_rows"] == "1"
    assert reply_headers["X-ClickHouse-Query-Id"]


def _native_blocks(data: bytes) -> bytes:
    """ClickHouse's compressed block framing: dummy checksum, LZ4 method byte, sizes, payload."""
    payload = lz4.block.compress(data, store_size=False)
    header = bytes([0x82]) + (len(payload) + 9).to_bytes(4, "little")
    return bytes(16) + header + len(data).to_bytes(4, "little") + payload


@pytest.mark.parametrize(
    ("encoding", "encode", "params"),
    [
        ("lz4", lz4.frame.compress, {}),
        ("zstd", zstd.compress, {}),
        ("gzip", gzip.compress, {}),
        ("deflate", zlib.compress, {}),
        ("", _native_blocks, {"decompress": "1"}),
    ],
)
def test_compressed_request_bodies_are_decoded(
    client: Client,
    address: tuple[str, int],
    encoding: str,
    encode: Callable[[bytes], bytes],
    params: dict[str, str],
) -> None:
    """Insert data compressed with each Content-Encoding (or native blocks) lands intact."""
    table = f"encoded_{encoding or 'native'}"
    client.command(f"CREATE OR REPLACE TABLE {table} (a UInt32, s String) ENGINE = Memory")
    data = "".join(f"{i}\tv{i}\n" for i in range(1000)).encode()
    query = {"query": f"INSERT INTO {DATABASE}.{table} FORMAT TabSeparated", **params}
    headers = {"Content-Encoding": encoding} if encoding else {}
    status, reply_headers, _ = raw_request(
        address, "POST", "/?" + urlencode(query), encode(data), headers
    )
    assert status == 200
    assert json.loads(reply_headers["X-ClickHouse-Summary"])["written_rows"] == "1000"
    assert client.command(f"SELECT count(), sum(a) FROM {table}") == ["1000", "499500"]


@pytest.mark.parametrize(
    ("accept", "enable", "expected", "decode"),
    [
        ("gzip", "1", "gzip", gzip.decompress),
        ("br, zstd", "1", "zstd", zstd.decompress),
        ("lz4", "1", "lz4", lz4.frame.decompress),
        ("identity", "1", None, bytes),
        ("gzip", "0", None, bytes),
    ],
)
def test_responses_compress_only_when_asked(
    address: tuple[str, int],
    accept: str,
    enable: str,
    expected: str | None,
    decode: Callable[[bytes], bytes],
) -> None:
    """Responses use the client's first supported Accept-Encoding when compression is enabled."""
    params = {"query": "SELECT number FROM numbers(100)", "enable_http_compression": enable}
    query = urlencode(params)
    status, headers, body = raw_request(
        address, "POST", "/?" + query, headers={"Accept-Encoding": accept}
    )
    assert (status, headers.get("Content-Encoding")) == (200, expected)
    assert decode(body) == "".join(f"{i}\n" for i in range(100)).encode()


def test_url_settings_apply_to_their_request_only(client: Client, address: tuple[str, int]) -> None:
    """A setting passed with one query changes that query only; unknown names are ignored."""
    probe = "SELECT getSetting('max_block_size')"
    default = client.command(probe)
    assert client.command(probe, settings={"max_block_size": 1234}) == 1234
    assert client.command(probe) == default != 1234
    query = urlencode({"query": probe, "no_such_setting": "1", "max_block_size": "77"})
    status, _, body = raw_request(address, "POST", "/?" + query)
    assert (status, body) == (200, b"77\n")


def test_keep_alive_connection_serves_many_requests(address: tuple[str, int]) -> None:
    """One connection carries queries, errors and a chunked body in sequence (Content-Length)."""
    connection = http.client.HTTPConnection(*address, timeout=10)
    auth = {"X-ClickHouse-User": USER, "X-ClickHouse-Key": PASSWORD}
    replies = []
    for body in [b"SELECT 1", b"SELEC 1", iter([b"SELECT ", b"2"]), b"SELECT 3"]:
        connection.request(
            "POST", "/", body=body, headers=auth, encode_chunked=not isinstance(body, bytes)
        )
        response = connection.getresponse()
        replies.append((response.status, response.read()))
    connection.close()
    assert [status for status, _ in replies] == [200, 400, 200, 200]
    assert [replies[0][1], replies[2][1], replies[3][1]] == [b"1\n", b"2\n", b"3\n"]


def test_use_persists_only_within_its_session(address: tuple[str, int]) -> None:
    """``USE`` in an HTTP session sets that session's database; other requests keep default."""
    session = {"session_id": "s-use-test"}
    raw_request(address, "POST", "/?" + urlencode(session), f"USE {DATABASE}".encode())
    _, _, in_session = raw_request(
        address, "POST", "/?" + urlencode(session), b"SELECT currentDatabase()"
    )
    _, _, outside = raw_request(address, "POST", "/", b"SELECT currentDatabase()")
    assert (in_session, outside) == (f"{DATABASE}\n".encode(), b"default\n")


def test_insert_100k_rows_through_the_front(client: Client) -> None:
    """100,000 rows go through the front in one insert; the rate is printed for the record."""
    create_events_table(client, "events_bulk")
    rows = event_rows(100_000, seed=11)
    started = time.perf_counter()
    summary = client.insert("events_bulk", rows, column_names=EVENT_COLUMNS)
    elapsed = time.perf_counter() - started
    print(f"\nfront insert: 100,000 rows in {elapsed:.2f} s = {100_000 / elapsed:,.0f} rows/s")
    assert summary.written_rows == 100_000
    assert client.command("SELECT count(), uniqExact(event_id) FROM events_bulk") == [
        "100000",
        "100000",
    ]


def test_datetime_is_returned_in_utc(client: Client) -> None:
    """A DateTime64(3, 'UTC') value keeps its instant through insert and select."""
    client.command("CREATE OR REPLACE TABLE instants (ts DateTime64(3, 'UTC')) ENGINE = Memory")
    moment = datetime(2026, 3, 29, 1, 30, 15, 123000, tzinfo=UTC)
    client.insert("instants", [[moment]], column_names=["ts"])
    assert client.command("SELECT toUnixTimestamp64Milli(ts) FROM instants") == int(
        moment.timestamp() * 1000
    )
