"""Client logic without a server: errors, options, backoff, the buffer, flush decisions, retries.

Transports here are ``httpx.MockTransport`` stubs standing in for the API (marked as such); the
same behaviours against the real app are in ``test_in_process.py`` and ``test_socket.py``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest

from sdk import (
    APIError,
    AuthError,
    ClientOptions,
    DefaultVariant,
    InvalidRequest,
    NotFoundError,
    PermissionDenied,
    RateLimitedError,
    RetryPolicy,
    ServerError,
    TailorClient,
    TailorError,
    TransportError,
)
from sdk.errors import RequestTimeout, error_from_response
from sdk.event_buffer import EventBuffer
from sdk.flushing import outcome_channel
from tailor_contract.wire import OutcomeRequest

Handler = Callable[[httpx.Request], httpx.Response]


def problem(status: int, code: str, field: str | None = None) -> bytes:
    """A problem-details body as the API writes it."""
    body: dict[str, Any] = {
        "type": "t",
        "title": "x",
        "status": status,
        "detail": f"d{status}",
        "code": code,
        "request_id": "r-1",
    }
    if field is not None:
        body["errors"] = [{"field": field, "message": "bad"}]
    return msgspec.json.encode(body)


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (400, InvalidRequest, False),
        (401, AuthError, False),
        (403, PermissionDenied, False),
        (404, NotFoundError, False),
        (409, APIError, False),
        (413, InvalidRequest, False),
        (422, InvalidRequest, False),
        (429, RateLimitedError, True),
        (500, ServerError, True),
        (501, ServerError, False),
        (503, ServerError, True),
    ],
)
def test_error_from_response(status: int, cls: type[APIError], retryable: bool) -> None:
    """Each status maps to its class with the problem's code, field and request id kept."""
    error = error_from_response(status, problem(status, "c", "$.unit_id"), "2.5")
    assert type(error) is cls
    assert (error.status, error.code, error.field, error.request_id) == (
        status,
        "c",
        "$.unit_id",
        "r-1",
    )
    assert error.retryable is retryable
    if isinstance(error, RateLimitedError):
        assert error.retry_after_s == 2.5


def test_error_hierarchy() -> None:
    """403 is an auth error, a timeout a transport error, and everything a TailorError."""
    assert issubclass(PermissionDenied, AuthError)
    assert issubclass(RequestTimeout, TransportError)
    for cls in (TransportError, APIError, InvalidRequest, ServerError):
        assert issubclass(cls, TailorError)


def test_error_from_non_json_body() -> None:
    """A proxy's HTML error page still becomes a ServerError with a readable detail."""
    error = error_from_response(502, b"<html>Bad Gateway</html>")
    assert isinstance(error, ServerError)
    assert "Bad Gateway" in error.detail


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"decide_timeout_s": 0}, "decide_timeout_s == 0, must be a positive"),
        ({"timeout_s": float("inf")}, "timeout_s == inf"),
        ({"decide_attempts": 0}, "decide_attempts == 0, must be >= 1"),
        ({"buffer_capacity": 0}, "buffer_capacity == 0"),
        ({"flush_size": 10_001}, r"flush_size == 10001, must be in \[1, 10000\]"),
        ({"max_connections": 0}, "max_connections must be >= 1"),
    ],
)
def test_bad_options(changes: dict[str, Any], match: str) -> None:
    """Options are checked at construction with a message naming the field and the limit."""
    with pytest.raises(ValueError, match=match):
        ClientOptions(**changes)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"attempts": 0}, "attempts == 0, must be >= 1"),
        ({"base_s": 0.0}, "base_s == 0.0, must be > 0"),
        ({"base_s": 1.0, "cap_s": 0.5}, r"cap_s == 0.5, must be >= base_s \(1.0\)"),
    ],
)
def test_bad_retry_policy(changes: dict[str, Any], match: str) -> None:
    """Retry policies are checked at construction."""
    with pytest.raises(ValueError, match=match):
        RetryPolicy(**changes)


def test_backoff_is_full_jitter_under_a_growing_cap() -> None:
    """Delays are uniform on [0, min(cap, base * 2**k)]: in range, with the uniform's mean.

    20,000 draws per attempt: the sample mean's sd is ceiling / sqrt(12 * 20000) ~ 0.2 %, so a
    2 % tolerance is ten sd.
    """
    policy = RetryPolicy(attempts=10, base_s=0.1, cap_s=1.0)
    rng = random.Random(7)
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (40, 1.0)]:
        draws = np.array([policy.delay(attempt, rng) for _ in range(20_000)])
        assert draws.min() >= 0.0
        assert draws.max() <= ceiling
        assert draws.mean() == pytest.approx(ceiling / 2, rel=0.02)


def outcome(i: int) -> OutcomeRequest:
    """A small valid outcome."""
    return OutcomeRequest(type="click", unit_id=f"u{i}", event_id=f"{i:032x}")


def test_buffer_drops_oldest_when_full_and_counts() -> None:
    """A full buffer drops its oldest waiting events, counting them, and keeps the newest."""
    buffer: EventBuffer[int] = EventBuffer(3)
    for i in range(5):
        buffer.add(i)
    assert buffer.take(10) == [2, 3, 4]
    assert buffer.stats().dropped == 2


def test_buffer_requeue_keeps_order_and_in_flight_counts_against_capacity() -> None:
    """A failed batch goes back in front in order; in-flight events count toward capacity."""
    buffer: EventBuffer[int] = EventBuffer(4)
    for i in range(4):
        buffer.add(i)
    batch = buffer.take(2)
    assert buffer.stats().in_flight == 2
    buffer.add(4)  # 3 waiting + 2 in flight > 4: the oldest waiting (2) goes
    buffer.requeue(batch)
    assert buffer.take(10) == [0, 1, 3, 4]
    stats = buffer.stats()
    assert (stats.dropped, stats.failed_flushes, stats.pending) == (1, 1, 4)


def channel(capacity: int = 100) -> Any:
    """An outcome channel over a fresh buffer of 10 outcomes."""
    buffer: EventBuffer[OutcomeRequest] = EventBuffer(capacity)
    for i in range(10):
        buffer.add(outcome(i))
    return outcome_channel(
        buffer, 10, RetryPolicy(attempts=1, base_s=0.1, cap_s=0.4), random.Random(1)
    )


def test_flush_rejects_the_one_item_a_422_names() -> None:
    """A 422 naming ``$.outcomes[3]`` drops that outcome and requeues the other nine at once."""
    ch = channel()
    batch = ch.next_batch()
    delay = ch.failed(batch, error_from_response(422, problem(422, "c", "$.outcomes[3].type")))
    assert delay == 0.0
    rest = ch.next_batch()
    assert [o.unit_id for o in rest] == [f"u{i}" for i in range(10) if i != 3]
    assert ch.buffer.stats().rejected == 1


def test_flush_rejects_a_batch_a_422_does_not_locate() -> None:
    """A 422 naming no item drops the whole batch (resending cannot fix it)."""
    ch = channel()
    ch.failed(ch.next_batch(), error_from_response(422, problem(422, "c")))
    assert ch.buffer.stats().rejected == 10
    assert ch.buffer.pending == 0


def test_flush_splits_on_413() -> None:
    """A batch too large for the API is requeued and the next batches are half as big."""
    ch = channel()
    assert ch.failed(ch.next_batch(), error_from_response(413, b"")) == 0.0
    assert len(ch.next_batch()) == 5


@pytest.mark.parametrize(
    "error",
    [TransportError("refused"), error_from_response(503, b""), error_from_response(401, b"")],
    ids=["transport", "503", "401"],
)
def test_flush_failure_requeues_with_growing_backoff(error: TailorError) -> None:
    """Transient and auth failures keep every event and back off: U(0, 0.1), U(0, 0.2), ..."""
    ch = channel()
    ceilings = [0.1, 0.2, 0.4, 0.4]
    for ceiling in ceilings:
        delay = ch.failed(ch.next_batch(), error)
        assert 0.0 <= delay <= ceiling
        assert ch.buffer.pending == 10
    assert ch.failures == len(ceilings)
    ch.delivered(ch.next_batch(), b"{}")
    assert (ch.failures, ch.buffer.stats().sent) == (0, 10)


def test_flush_waits_at_least_retry_after() -> None:
    """A 429 waits at least its Retry-After."""
    ch = channel()
    assert ch.failed(ch.next_batch(), error_from_response(429, b"", "3")) >= 3.0


class Stub:
    """A stub API (``httpx.MockTransport``) answering from a script; records what it got."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(time.monotonic())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def stub_client(stub: Stub, **options: Any) -> TailorClient:
    """A sync client whose transport is the stub."""
    opts = ClientOptions(retry=RetryPolicy(attempts=3, base_s=0.02, cap_s=0.05), **options)
    return TailorClient(
        "http://stub",
        "k",
        options=opts,
        transport=httpx.MockTransport(stub),
        rng=random.Random(3),
        close_at_exit=False,
    )


STORED = httpx.Response(200, json={"unit_id": "u1", "stored": ["segment"]})


@pytest.mark.parametrize(
    "failure",
    [httpx.Response(503, content=problem(503, "unavailable")), httpx.ConnectError("refused")],
    ids=["503", "connect"],
)
def test_upsert_features_is_retried_with_backoff(failure: httpx.Response | Exception) -> None:
    """A PUT that fails twice transiently is retried, waiting between tries, and succeeds."""
    stub = Stub(failure, failure, STORED)
    with stub_client(stub) as client:
        stored = client.upsert_features("u 1/é", {"segment": "vip"})
    assert stored.stored == ["segment"]
    assert len(stub.requests) == 3
    assert stub.requests[0].url.raw_path == b"/v1/units/u%201%2F%C3%A9/features"
    assert stub.requests[0].headers["authorization"] == "Bearer k"
    gaps = np.diff(stub.times)
    assert all(0.0 <= g < 0.5 for g in gaps)


def test_retries_stop_after_the_attempts() -> None:
    """After ``attempts`` transient failures the last error is raised."""
    stub = Stub(httpx.Response(503, content=problem(503, "redis_unavailable")))
    with stub_client(stub) as client, pytest.raises(ServerError, match="redis_unavailable"):
        client.upsert_features("u1", {"segment": "vip"})
    assert len(stub.requests) == 3


def test_rate_limited_put_waits_retry_after() -> None:
    """A 429 is retried no sooner than its Retry-After."""
    stub = Stub(httpx.Response(429, headers={"retry-after": "0.3"}), STORED)
    with stub_client(stub) as client:
        client.upsert_features("u1", {"segment": "vip"})
    assert stub.times[1] - stub.times[0] >= 0.3


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, InvalidRequest), (401, AuthError), (403, PermissionDenied), (422, InvalidRequest)],
)
def test_client_errors_are_not_retried(status: int, cls: type[APIError]) -> None:
    """4xx answers raise their class after one try."""
    stub = Stub(httpx.Response(status, content=problem(status, "x")))
    with stub_client(stub) as client, pytest.raises(cls):
        client.upsert_features("u1", {"segment": "vip"})
    assert len(stub.requests) == 1


def test_track_event_is_not_retried() -> None:
    """A behavioural event (it increments counters) is sent once, even on a 503."""
    stub = Stub(httpx.Response(503))
    with stub_client(stub) as client, pytest.raises(ServerError):
        client.track_event("u1", "page_view")
    assert len(stub.requests) == 1


def test_decide_is_not_retried_and_falls_back() -> None:
    """decide tries once by default; a 503 gives the caller's defaults, marked fallback."""
    stub = Stub(httpx.Response(503))
    defaults = {"hero": DefaultVariant(variant="control", payload={"h": "Hi"}), "footer": "plain"}
    with stub_client(stub) as client:
        result = client.decide("u1", ["hero", "footer"], defaults=defaults)
    assert len([r for r in stub.requests if r.url.path == "/v1/decide"]) == 1
    assert result.fallback and result.decision_id is None
    assert isinstance(result.error, ServerError)
    assert (result["hero"].variant, result["hero"].payload) == ("control", {"h": "Hi"})
    assert (result["footer"].variant, result["footer"].fallback) == ("plain", True)


def test_decide_retries_when_asked() -> None:
    """With ``decide_attempts=2`` a transient failure is retried once."""
    ok = httpx.Response(
        200,
        json={
            "decision_id": "d1",
            "degraded": False,
            "decisions": [
                {
                    "placement": "hero",
                    "reason": "split",
                    "policy": "fixed",
                    "propensity": 0.5,
                    "experiment": "e",
                    "variant": "b",
                    "payload": {"h": "B"},
                }
            ],
        },
    )
    stub = Stub(httpx.ConnectError("refused"), ok)
    with stub_client(stub, decide_attempts=2) as client:
        result = client.decide("u1", ["hero"])
    assert (result.fallback, result["hero"].variant, len(stub.requests)) == (False, "b", 2)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("", ["hero"]), "$.unit_id"),
        (("u1", []), "$.placements"),
        (("u1", ["bad placement"]), "$.placements[0]"),
        (("u1", ["hero"], {"bad key": 1}), "$.context"),
        (("u1", ["hero"], {"nested": {"a": 1}}), "$.context"),
    ],
)
def test_decide_with_bad_arguments_falls_back_without_a_request(
    args: tuple[Any, ...], field: str
) -> None:
    """Arguments the API would refuse give defaults and an InvalidRequest naming the field."""
    stub = Stub(httpx.Response(500))
    with stub_client(stub) as client:
        result = client.decide(*args)
    assert isinstance(result.error, InvalidRequest)
    assert result.error.field is not None and result.error.field.startswith(field)
    assert result.fallback and not stub.requests


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "decision_id"),
        ({"unit_id": "u1", "value": float("nan")}, "value"),
        (
            {"unit_id": "u1", "properties": {"k": "x" * 2000}},
            "invalid value in properties: must be at most 1024 characters",
        ),
    ],
)
def test_track_outcome_refuses_bad_values_at_the_call(kwargs: dict[str, Any], match: str) -> None:
    """An outcome the API would refuse raises at once and never enters the buffer."""
    with stub_client(Stub(httpx.Response(202, json={}))) as client:
        with pytest.raises(InvalidRequest, match=match):
            client.track_outcome("click", **kwargs)
        assert client.stats.outcomes.pending == 0


class BrokenStream(httpx.SyncByteStream):
    """An NDJSON body that breaks after some lines (a stub of a dying server)."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines

    def __iter__(self) -> Iterator[bytes]:
        yield from self.lines
        raise httpx.ReadError("connection reset")


def line(index: int, unit: str) -> bytes:
    """One NDJSON line of ``/v1/decide/batch``."""
    decision = {
        "placement": "subject",
        "reason": "split",
        "policy": "fixed",
        "experiment": "e",
        "variant": "b",
        "payload": {"s": "B"},
    }
    body = {"index": index, "unit_id": unit, "decision_id": f"d{index}", "decisions": [decision]}
    return msgspec.json.encode(body) + b"\n"


def test_decide_batch_stream_breaking_falls_back_for_the_rest() -> None:
    """STUB server: recipients answered before the stream broke keep their decisions, the rest
    get the defaults with the transport error (the real endpoint: test_in_process.py)."""
    units = ["a", "b", "c", "d"]
    stub = Stub(httpx.Response(200, stream=BrokenStream([line(0, "a"), line(1, "b")])))
    with stub_client(stub) as client:
        results = list(
            client.decide_batch(
                "spring",
                [{"unit_id": u} for u in units],
                ["subject"],
                defaults={"subject": "plain"},
            )
        )
    assert [r.unit_id for r in results] == units
    assert [r["subject"].variant for r in results] == ["b", "b", "plain", "plain"]
    assert [r.fallback for r in results] == [False, False, True, True]
    assert isinstance(results[2].error, TransportError)
    assert stub.requests[0].headers["accept"] == "application/x-ndjson"


def test_decide_batch_refused_raises() -> None:
    """STUB server: a 403 on a batch raises PermissionDenied when iteration starts."""
    stub = Stub(httpx.Response(403, content=problem(403, "forbidden")))
    with stub_client(stub) as client:
        stream = client.decide_batch("spring", [{"unit_id": "a"}], ["subject"])
        with pytest.raises(PermissionDenied):
            next(stream)


def test_decide_batch_bad_request_raises_before_sending() -> None:
    """A campaign key the API would refuse raises InvalidRequest at the call."""
    stub = Stub(httpx.Response(200))
    with stub_client(stub) as client, pytest.raises(InvalidRequest) as refused:
        client.decide_batch("bad campaign!", [{"unit_id": "a"}], ["subject"])
    assert refused.value.field == "$.campaign"
    assert str(refused.value).startswith("invalid campaign 'bad campaign!': must be a key: ")
    assert not stub.requests
