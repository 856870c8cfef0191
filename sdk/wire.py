"""The I/O-free half of the clients: requests built and checked against the server's own wire
schemas (:mod:`tailor_contract.wire`), answers decoded, transport failures mapped to errors.

Arguments are validated with ``msgspec.convert`` into the same Structs the API decodes, so a
request the server would refuse is refused here, before sending, with the same ``$.field``
path. Encoders and decoders are built once, at import.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import httpx
import msgspec

from sdk.errors import InvalidRequest, RequestTimeout, TransportError, error_from_response
from sdk.messages import invalid_argument, unreachable
from tailor_contract.wire import (
    BatchDecideRequest,
    DecideRequest,
    DecideResponse,
    Definitions,
    EventAccepted,
    EventRequest,
    ExposuresAccepted,
    FeaturesRequest,
    FeaturesStored,
    OutcomeRequest,
    RecipientDecision,
    TimestampValue,
)

__all__ = [
    "JSON",
    "NDJSON",
    "check",
    "decide_body",
    "decode",
    "encode",
    "features_body",
    "new_event_id",
    "outcome",
    "transport_error",
    "validated",
]

S = TypeVar("S")
JSON = "application/json"
NDJSON = "application/x-ndjson"

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t)
    for t in (
        DecideResponse,
        Definitions,
        EventAccepted,
        ExposuresAccepted,
        FeaturesStored,
        RecipientDecision,
    )
}
_BARE_PATH = re.compile(r" at (\$\S*)$")  # "got `object` at $.context[...]"
_PATH = re.compile(r" - at `(?:key` in `)?(\$[^`]*)`")  # "at `key` in `$.context`"


def encode(value: Any) -> bytes:
    """JSON bytes of a Struct (or plain data)."""
    return _encoder.encode(value)


def decode(body: bytes | str, type_: type[S]) -> S:
    """Decode an answer of the API into its wire Struct."""
    decoder = _decoders.get(type_)
    try:
        if decoder is not None:
            result: S = decoder.decode(body)
            return result
        return msgspec.json.decode(body, type=type_)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise TransportError(f"unreadable answer from the API: {exc}") from exc


def validated(value: Mapping[str, Any], type_: type[S]) -> S:
    """``value`` converted to a wire Struct, or :class:`InvalidRequest` naming the field."""
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message) or _BARE_PATH.search(message)
        field = match.group(1) if match else None
        if match is not None:
            message = message[: match.start()] + message[match.end() :]
        detail = invalid_argument(message, field, value)
        raise InvalidRequest(0, detail, code="invalid_input", field=field) from exc


def new_event_id() -> str:
    """A client-generated event id (UUID4, 32 hex digits)."""
    return uuid.uuid4().hex


def decide_body(
    unit_id: str,
    placements: Sequence[str],
    context: Mapping[str, Any],
    consent: bool,
    exclude: Mapping[str, Sequence[str]] | None = None,
    explain: bool = False,
    slates: Mapping[str, Any] | None = None,
) -> bytes:
    """A checked ``POST /v1/decide`` body (``exclude`` and ``slates`` kept for the requested
    placements; a slate given as a number is its slot count)."""
    body: dict[str, Any] = {
        "unit_id": unit_id,
        "placements": placements,
        "context": context,
        "consent": consent,
    }
    if exclude:
        body["exclude"] = {p: list(keys) for p, keys in exclude.items() if p in placements}
    if explain:
        body["explain"] = True
    if slates:
        body["slates"] = {
            p: {"slots": ask} if isinstance(ask, int) and not isinstance(ask, bool) else ask
            for p, ask in slates.items()
            if p in placements
        }
    return encode(validated(body, DecideRequest))


def batch_body(request: Mapping[str, Any]) -> bytes:
    """A checked ``POST /v1/decide/batch`` body."""
    return encode(validated(request, BatchDecideRequest))


def outcome(
    type: str,
    *,
    decision_id: str | None,
    unit_id: str | None,
    experiment: str | None,
    value: float,
    ts: datetime | None,
    properties: Mapping[str, str] | None,
    event_id: str | None = None,
    item: str | None = None,
    slot: int | None = None,
) -> OutcomeRequest:
    """A checked outcome carrying its own event id (what makes retries idempotent); ``item`` or
    ``slot`` name the slot of a slate that earned it."""
    fields: dict[str, Any] = {
        "type": type,
        "event_id": event_id or new_event_id(),
        "value": value,
        "properties": dict(properties or {}),
    }
    for name, given in (
        ("decision_id", decision_id),
        ("unit_id", unit_id),
        ("experiment", experiment),
        ("ts", ts),
        ("item", item),
        ("slot", slot),
    ):
        if given is not None:
            fields[name] = given
    return validated(fields, OutcomeRequest)


def features_body(features: Mapping[str, Any]) -> bytes:
    """A checked ``PUT /v1/units/{id}/features`` body; datetimes become ``{"ts": ...}``."""
    converted = {
        name: TimestampValue(ts=value) if isinstance(value, datetime) else value
        for name, value in features.items()
    }
    return encode(validated({"features": converted}, FeaturesRequest))


def event_body(
    unit_id: str,
    type: str,
    value: float,
    ts: datetime | None,
    properties: Mapping[str, str] | None,
) -> bytes:
    """A checked ``POST /v1/events`` body."""
    fields: dict[str, Any] = {
        "unit_id": unit_id,
        "type": type,
        "value": value,
        "properties": dict(properties or {}),
    }
    if ts is not None:
        fields["ts"] = ts
    return encode(validated(fields, EventRequest))


def check(response: httpx.Response) -> None:
    """Raise the matching :class:`~sdk.errors.APIError` for an error status (body read)."""
    if response.status_code < 400:
        return
    raise error_from_response(
        response.status_code, response.content, response.headers.get("retry-after")
    )


def transport_error(exc: httpx.HTTPError) -> TransportError:
    """An httpx failure as the SDK's transport error (timeouts as :class:`RequestTimeout`),
    saying which URL failed and why in words ("could not connect to ...: connection refused")."""
    try:
        request = exc.request
        url = f"{request.url.scheme}://{request.url.netloc.decode()}{request.url.path}"
    except RuntimeError:  # an error raised outside a request
        url = "the API"
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeout(f"no answer from {url} in time ({type(exc).__name__})")
    return TransportError(unreachable(url, str(exc), type(exc).__name__))
