"""What the SDK says when something fails: plain messages, and one warning per outage."""

from __future__ import annotations

import logging
import random
from typing import Any

import httpx
import msgspec
import pytest

from decision_api.redis_server import free_port
from sdk import ClientOptions, InvalidRequest, TailorClient, TransportError
from sdk.errors import error_from_response
from sdk.fallback_log import FallbackLog
from sdk.messages import PATTERNS, invalid_argument
from tailor_contract import wire as contract_wire


def client_for(base_url: str, handler: Any = None, **options: Any) -> TailorClient:
    """A sync client of ``base_url`` (through ``handler``, a stub API, when given)."""
    transport = httpx.MockTransport(handler) if handler is not None else None
    return TailorClient(
        base_url,
        "k",
        options=ClientOptions(decide_timeout_s=2.0, **options),
        transport=transport,
        rng=random.Random(1),
        close_at_exit=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("x\n", ["home"]),
         "invalid unit_id 'x\\n': must be text without control characters or braces"),
        (("u1", ["home page"]),
         "invalid placements[0] 'home page': must be a key: a letter or digit, then up to 63 "
         "letters, digits, '_', '.', ':' or '-'"),
        (("u1", []), "invalid placements: must have at least 1 item(s)"),
        (("u1", ["home"], {"nested": {"a": 1}}), "invalid value in context: must be "),
        (("", ["home"]), "invalid unit_id '': must be at least 1 characters"),
    ],
)  # fmt: skip
def test_refused_arguments_are_explained_in_words(args: tuple[Any, ...], message: str) -> None:
    """An argument refused before sending names the field, the value and the rule in words,
    with no status 0 and no raw regex."""
    with client_for("http://stub", lambda _: httpx.Response(500)) as client:
        error = client.decide(*args).error
    assert isinstance(error, InvalidRequest)
    assert str(error).startswith(message), str(error)
    assert not str(error).startswith("0") and "regex" not in str(error)


def test_every_wire_pattern_has_words() -> None:
    """Every string pattern of the wire schemas is described in sdk.messages.PATTERNS."""
    found: set[str] = set()
    seen: set[type[Any]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, msgspec.inspect.StrType) and node.pattern:
            found.add(node.pattern)
        elif isinstance(node, msgspec.inspect.StructType) and node.cls not in seen:
            seen.add(node.cls)
            for f in node.fields:
                walk(f.type)
        elif isinstance(node, msgspec.inspect.UnionType):
            for t in node.types:
                walk(t)
        elif isinstance(node, msgspec.inspect.ListType | msgspec.inspect.SetType):
            walk(node.item_type)
        elif isinstance(node, msgspec.inspect.DictType):
            walk(node.key_type)
            walk(node.value_type)

    structs = [v for v in vars(contract_wire).values()
               if isinstance(v, type) and issubclass(v, msgspec.Struct)]  # fmt: skip
    for info in msgspec.inspect.multi_type_info(structs):
        walk(info)
    assert found, "no pattern found: the walk is broken"
    assert found - set(PATTERNS) == set()


def test_connection_refused_names_the_url() -> None:
    """With nothing listening, decide's error says which URL could not be reached and why."""
    url = f"http://127.0.0.1:{free_port()}"
    with client_for(url) as client:
        error = client.decide("u1", ["home"]).error
    assert isinstance(error, TransportError)
    assert str(error) == f"could not connect to {url}/v1/decide: connection refused (is the API " \
        "running there?)"  # fmt: skip


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (401, "unauthorized", "the API refused the key (401 unauthorized): unknown API key; "
              "check the api_key given to the client"),
        (403, "forbidden", "the API key lacks the scope this call needs (403 forbidden): "
              "unknown API key"),
        (422, "invalid_input", "the API refused the request (422 invalid_input): unknown API "
              "key (at $.unit_id)"),
        (503, "redis_unavailable", "the API failed (503 redis_unavailable): unknown API key"),
        (429, "rate_limited", "rate limited (429 rate_limited): unknown API key; retry after 2 s"),
    ],
)  # fmt: skip
def test_api_errors_say_what_failed(status: int, code: str, message: str) -> None:
    """Errors from answers start with what failed, then the status and the server's detail."""
    body: dict[str, Any] = {"detail": "unknown API key", "code": code}
    if status == 422:
        body["errors"] = [{"field": "$.unit_id", "message": "x"}]
    error = error_from_response(status, msgspec.json.encode(body), "2")
    assert str(error).startswith(message), str(error)


def test_invalid_argument_without_a_field() -> None:
    """A reason with no field path still reads as a sentence."""
    assert invalid_argument("Expected `object`, got `int`", None, 3) == (
        "invalid request: must be a mapping, got an integer"
    )


def test_fallbacks_warn_once_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    """A wrong key: the first fallback logs a warning at once, the next ones within the
    interval are counted, and the next warning says how many were suppressed."""
    now = [0.0]
    throttle = FallbackLog(60.0, clock=lambda: now[0])
    error = error_from_response(401, b'{"detail": "unknown API key", "code": "unauthorized"}')
    with caplog.at_level(logging.WARNING, logger="tailor.sdk"):
        logged = [throttle.note(error) for _ in range(5)]
        now[0] = 61.0
        logged.append(throttle.note(error))
    assert logged == [True, False, False, False, False, True]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("tailor: decisions fall back to defaults (the API refused the key)")
    assert lines[1].endswith("; 4 more since the last warning")


@pytest.mark.parametrize(
    ("answer", "cause"),
    [
        (httpx.Response(401, json={"detail": "unknown API key", "code": "unauthorized"}),
         "the API refused the key"),
        (httpx.ConnectError("[Errno 111] Connection refused"), "the API could not be reached"),
    ],
    ids=["auth", "network"],
)  # fmt: skip
def test_client_warns_when_decisions_fall_back(
    answer: httpx.Response | Exception, cause: str, caplog: pytest.LogCaptureFixture
) -> None:
    """STUB server: ten decisions on defaults because of the key or the network log one
    warning naming the cause, not ten (and none before the first fallback)."""

    def handler(_: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        return answer

    with (
        caplog.at_level(logging.WARNING, logger="tailor.sdk"),
        client_for("http://stub", handler) as client,
    ):
        assert not caplog.records
        results = [client.decide("u1", ["home"], defaults={"home": "a"}) for _ in range(10)]
    assert all(r.fallback and r["home"].variant == "a" for r in results)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"fall back to defaults ({cause})" in warnings[0]
