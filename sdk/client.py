"""``TailorClient``: the synchronous Python SDK (one long-lived object per process).

::

    client = TailorClient("https://tailor.example.com", api_key)
    result = client.decide("u-123", ["home_hero"], {"device": "mobile"},
                           defaults={"home_hero": DefaultVariant(variant="control")})
    render(result["home_hero"].payload)           # never raises; fallback=True when Tailor is down
    client.track_outcome("purchase", decision_id=result.decision_id, value=42.0)  # buffered
    client.close()                                # also registered with atexit

Connections are pooled (httpx); ``decide`` has a tight timeout and no retry; ``upsert_features``
and the definitions fetch are retried with jittered exponential backoff; outcomes and local
exposures are buffered and sent by one background thread in batches, by size and by time, and
retried with their own event ids until sent (see :mod:`sdk.flushing`).
"""

from __future__ import annotations

import atexit
import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx
import msgspec

from sdk import deciding, wire
from sdk.errors import APIError, RateLimitedError, TailorError, TransportError
from sdk.event_buffer import BufferStats, EventBuffer
from sdk.fallback_log import FallbackLog
from sdk.flushing import Channel, exposure_channel, outcome_channel
from sdk.local_eval import LocalEvaluator
from sdk.options import ClientOptions
from sdk.results import (
    DecideResult,
    Defaults,
    RecipientResult,
    recipient_fallback,
    recipient_result,
)
from tailor_contract.send_window import DefaultSendTime, SendWindow
from tailor_contract.wire import (
    DecideResponse,
    Definitions,
    EventAccepted,
    ExposureReport,
    FeaturesStored,
    OutcomeRequest,
    Recipient,
    RecipientDecision,
)

__all__ = ["ClientStats", "TailorClient", "batch_request"]

log = logging.getLogger("tailor.sdk")
USER_AGENT = "tailor-python/0.1.0"


class ClientStats(msgspec.Struct, frozen=True, kw_only=True):
    """Buffered outcomes and local exposures: pending, sent, dropped (buffer full), rejected."""

    outcomes: BufferStats
    exposures: BufferStats

    @property
    def dropped(self) -> int:
        """Events lost because the buffer was full."""
        return self.outcomes.dropped + self.exposures.dropped


def http_headers(api_key: str | None) -> dict[str, str]:
    """Headers every request carries."""
    headers = {"user-agent": USER_AGENT, "accept": wire.JSON, "content-type": wire.JSON}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


def batch_request(
    campaign: str,
    recipients: Iterable[Recipient | Mapping[str, Any]],
    placements: Sequence[str],
    send_window: SendWindow | None,
    default_send_time: DefaultSendTime | None,
    step: str | None,
    context: Mapping[str, Any] | None,
    explain: bool = False,
    slates: Mapping[str, int | Mapping[str, Any]] | None = None,
) -> tuple[bytes, list[str]]:
    """A checked ``/v1/decide/batch`` body and the recipients' unit ids, in order (a slate given
    as a number is its slot count)."""
    listed = [r if isinstance(r, Recipient) else dict(r) for r in recipients]
    request: dict[str, Any] = {
        "campaign": campaign,
        "placements": list(placements),
        "recipients": listed,
        "context": dict(context or {}),
    }
    for name, value in (
        ("send_window", send_window),
        ("default_send_time", default_send_time),
        ("step", step),
    ):
        if value is not None:
            request[name] = value
    if explain:
        request["explain"] = True
    if slates:
        request["slates"] = {
            p: {"slots": ask} if isinstance(ask, int) and not isinstance(ask, bool) else ask
            for p, ask in slates.items()
        }
    body = wire.batch_body(request)
    units = [r.unit_id if isinstance(r, Recipient) else str(r.get("unit_id", "")) for r in listed]
    return body, units


class TailorClient:
    """A thread-safe client of one Tailor API; make one and keep it for the process."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        options: ClientOptions | None = None,
        transport: httpx.BaseTransport | None = None,
        rng: random.Random | None = None,
        close_at_exit: bool = True,
    ) -> None:
        self.options = opts = options or ClientOptions()
        self._rng = rng if rng is not None else random.Random()
        limits = httpx.Limits(
            max_connections=opts.max_connections,
            max_keepalive_connections=opts.max_keepalive_connections,
        )

        def http() -> httpx.Client:
            return httpx.Client(
                base_url=base_url,
                headers=http_headers(api_key),
                limits=limits,
                timeout=opts.timeout_s,
                transport=transport,
            )

        self._http = http()
        self._background_http = http()  # flushes never queue behind (or block) decisions
        self._outcomes: EventBuffer[OutcomeRequest] = EventBuffer(opts.buffer_capacity)
        self._exposures: EventBuffer[ExposureReport] = EventBuffer(opts.buffer_capacity)
        self._channels: list[Channel[Any]] = [
            outcome_channel(self._outcomes, opts.flush_size, opts.flush_retry, self._rng),
            exposure_channel(self._exposures, opts.flush_size, opts.flush_retry, self._rng),
        ]
        self._local = LocalEvaluator() if opts.local_evaluation else None
        self._fallbacks = FallbackLog(opts.fallback_warning_interval_s)
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._urgent = 0
        self._closing = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tailor-sdk", daemon=True)
        self._thread.start()
        self._close_at_exit = close_at_exit
        if close_at_exit:
            atexit.register(self.close)
        if self._local is not None:
            try:
                self.refresh_definitions()
            except TailorError as exc:
                log.warning("tailor: definitions not loaded, deciding remotely for now: %s", exc)

    # --- decisions ------------------------------------------------------------------------

    def decide(
        self,
        unit_id: str,
        placements: Sequence[str],
        context: Mapping[str, Any] | None = None,
        consent: bool = True,
        defaults: Defaults | None = None,
        *,
        timeout_s: float | None = None,
        exclude: Mapping[str, Sequence[str]] | None = None,
        explain: bool = False,
        slates: Mapping[str, int | Mapping[str, Any]] | None = None,
    ) -> DecideResult:
        """A decision for every placement; never raises.

        When the API is slow, down or refuses the call, each placement gets the caller's
        default with ``fallback=True`` and ``result.error`` says why, after at most about
        ``timeout_s`` (default ``options.decide_timeout_s``) per attempt. ``exclude`` names,
        per placement, variants this decision must not choose (out of stock, already on the
        page); such placements are always decided by the API. ``explain`` asks learning
        policies which features weighed most (``Decision.explanation``; decided by the API).
        ``slates`` asks, per placement, for a ranked slate: a slot count
        (``{"carousel": 10}``) or ``{"slots": 10, "candidates": [{"id": ..., "features":
        {...}}]}`` to rank items of your own; the answer is ``Decision.slate`` (API only).
        """
        try:
            p = deciding.plan(
                unit_id, placements, context, consent, self._local, exclude, explain, slates
            )
        except TailorError as exc:
            self._fallbacks.note(exc)
            return deciding.fallback_result(list(placements), defaults, exc)
        answer: DecideResponse | None = None
        error: TailorError | None = None
        if p.remote_body is not None:
            timeout = timeout_s if timeout_s is not None else self.options.decide_timeout_s
            try:
                response = self._send(
                    "POST", "/v1/decide", p.remote_body, timeout, self.options.decide_attempts
                )
                answer = wire.decode(response.content, DecideResponse)
            except TailorError as exc:
                error = exc
        result, exposures = deciding.conclude(p, answer, error, defaults, self._local)
        if error is not None:
            self._fallbacks.note(error)
        for report in exposures:
            self._exposures.add(report)
        if exposures and len(self._exposures) >= self.options.flush_size:
            self._wake.set()
        return result

    def decide_batch(
        self,
        campaign: str,
        recipients: Iterable[Recipient | Mapping[str, Any]],
        placements: Sequence[str],
        *,
        send_window: SendWindow | None = None,
        default_send_time: DefaultSendTime | None = None,
        step: str | None = None,
        context: Mapping[str, Any] | None = None,
        defaults: Defaults | None = None,
        explain: bool = False,
        slates: Mapping[str, int | Mapping[str, Any]] | None = None,
    ) -> Iterator[RecipientResult]:
        """Stream one result per recipient, in order (NDJSON from ``/v1/decide/batch``).

        Needs a key with the ``ingest`` scope (a server-side key; ``decide`` keys are for web
        pages). Raises ``InvalidRequest`` at once for arguments the API would refuse, and the
        ``APIError`` of a 4xx answer on the first ``next()``. When the API is down or the stream
        breaks, the recipients not yet answered get the defaults (``fallback=True``).
        ``explain`` asks learning policies why they chose (``Decision.explanation``).
        """
        body, units = batch_request(
            campaign, recipients, placements, send_window, default_send_time, step, context,
            explain, slates,
        )  # fmt: skip
        return self._stream_batch(body, units, list(placements), defaults)

    def _stream_batch(
        self, body: bytes, units: list[str], placements: list[str], defaults: Defaults | None
    ) -> Iterator[RecipientResult]:
        answered = 0
        error: TailorError | None = None
        timeout = httpx.Timeout(self.options.batch_timeout_s, connect=self.options.timeout_s)
        headers = {"accept": wire.NDJSON}
        try:
            with self._http.stream(
                "POST", "/v1/decide/batch", content=body, headers=headers, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    wire.check(response)
                for line in response.iter_lines():
                    if line.strip():
                        decided = wire.decode(line, RecipientDecision)
                        yield recipient_result(decided, placements, defaults)
                        answered = decided.index + 1
        except httpx.HTTPError as exc:
            error = wire.transport_error(exc)
        except TransportError as exc:  # an unreadable line: the stream is broken
            error = exc
        except APIError as exc:
            if not exc.retryable:
                raise
            error = exc
        if answered < len(units):
            error = error or TransportError("the batch stream ended before every recipient")
            log.warning("tailor: %d recipients on defaults: %s", len(units) - answered, error)
            for index in range(answered, len(units)):
                yield recipient_fallback(index, units[index], placements, defaults, error)

    # --- buffered events ----------------------------------------------------------------

    def track_outcome(
        self,
        type: str,
        *,
        decision_id: str | None = None,
        unit_id: str | None = None,
        experiment: str | None = None,
        value: float = 0.0,
        ts: datetime | None = None,
        properties: Mapping[str, str] | None = None,
        item: str | None = None,
        slot: int | None = None,
    ) -> str:
        """Buffer an outcome for the background flush; returns its event id.

        Raises ``InvalidRequest`` (nothing buffered) for values the API would refuse; never
        blocks on the network. Sent within ``options.flush_interval_s``, retried until sent.
        For a slate, ``item`` (the item's id) or ``slot`` (0 first) names the slot that
        earned the outcome.
        """
        outcome = wire.outcome(
            type,
            decision_id=decision_id,
            unit_id=unit_id,
            experiment=experiment,
            value=value,
            ts=ts,
            properties=properties,
            item=item,
            slot=slot,
        )
        self._outcomes.add(outcome)
        if len(self._outcomes) >= self.options.flush_size:
            self._wake.set()
        assert outcome.event_id is not None
        return outcome.event_id

    @property
    def stats(self) -> ClientStats:
        """Counters of the outcome and exposure buffers (``dropped`` when they overflowed)."""
        return ClientStats(outcomes=self._outcomes.stats(), exposures=self._exposures.stats())

    def flush(self, timeout_s: float | None = None) -> bool:
        """Send everything buffered now; True when nothing is pending any more.

        Waits at most ``timeout_s`` (default ``options.close_timeout_s``); failed sends keep
        being retried with backoff meanwhile.
        """
        deadline = time.monotonic() + (
            timeout_s if timeout_s is not None else self.options.close_timeout_s
        )
        with self._progress:
            self._urgent += 1
        self._wake.set()
        try:
            with self._progress:
                return (
                    self._progress.wait_for(
                        lambda: self._pending() == 0 or not self._thread.is_alive(),
                        timeout=max(0.0, deadline - time.monotonic()),
                    )
                    and self._pending() == 0
                )
        finally:
            with self._progress:
                self._urgent -= 1

    def close(self) -> None:
        """Flush (for at most ``options.close_timeout_s``), stop the thread, close connections.

        Events still unsent then are lost and logged. Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        if self._close_at_exit:
            atexit.unregister(self.close)
        if not self.flush():
            log.error("tailor: closing with %d events unsent", self._pending())
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=5.0)
        self._http.close()
        self._background_http.close()

    def __enter__(self) -> TailorClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- direct calls ---------------------------------------------------------------------

    def upsert_features(self, unit_id: str, features: Mapping[str, Any]) -> FeaturesStored:
        """Upsert typed features (numbers, strings, string lists, datetimes); retried (a PUT)."""
        body = wire.features_body(features)
        path = "/v1/units/" + urllib.parse.quote(unit_id, safe="") + "/features"
        response = self._send(
            "PUT", path, body, self.options.timeout_s, self.options.retry.attempts
        )
        return wire.decode(response.content, FeaturesStored)

    def track_event(
        self,
        unit_id: str,
        type: str,
        *,
        value: float = 0.0,
        ts: datetime | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> EventAccepted:
        """Record a behavioural event (updates derived features); sent now, not retried."""
        body = wire.event_body(unit_id, type, value, ts, properties)
        response = self._send("POST", "/v1/events", body, self.options.timeout_s, 1)
        return wire.decode(response.content, EventAccepted)

    def refresh_definitions(self) -> bool:
        """Fetch the local-evaluation definitions now; True when they changed."""
        local = self._local
        if local is None:
            raise TailorError("local evaluation is off (ClientOptions(local_evaluation=True))")
        headers = {"if-none-match": local.etag} if local.etag else None
        response = self._send(
            "GET",
            "/v1/definitions",
            None,
            self.options.timeout_s,
            self.options.retry.attempts,
            headers=headers,
            http=self._background_http,
        )
        if response.status_code == 304:
            return False
        local.install(wire.decode(response.content, Definitions), response.headers.get("etag"))
        return True

    # --- plumbing -------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        content: bytes | None,
        timeout_s: float,
        attempts: int,
        *,
        headers: Mapping[str, str] | None = None,
        http: httpx.Client | None = None,
    ) -> httpx.Response:
        client = http or self._http
        attempt = 0
        while True:
            error: TailorError
            try:
                response = client.request(
                    method, path, content=content, headers=headers, timeout=httpx.Timeout(timeout_s)
                )
                wire.check(response)
                return response
            except httpx.HTTPError as exc:
                error = wire.transport_error(exc)
            except APIError as exc:
                error = exc
            attempt += 1
            if not error.retryable or attempt >= attempts:
                raise error
            delay = self.options.retry.delay(attempt - 1, self._rng)
            if isinstance(error, RateLimitedError):
                delay = max(delay, error.retry_after_s)
            time.sleep(delay)

    def _pending(self) -> int:
        return self._outcomes.pending + self._exposures.pending

    def _run(self) -> None:
        """The background thread: flush each channel when due, refresh definitions, sleep."""
        opts = self.options
        count = len(self._channels)
        not_before = [0.0] * count  # backoff after a failed flush
        last = [time.monotonic()] * count
        next_refresh = time.monotonic() + opts.definitions_refresh_s
        while not self._closing:
            now = time.monotonic()
            wakeups = [now + opts.flush_interval_s]
            if self._local is not None:
                if now >= next_refresh:
                    next_refresh = now + opts.definitions_refresh_s
                    try:
                        self.refresh_definitions()
                    except TailorError as exc:
                        log.warning("tailor: definitions refresh failed: %s", exc)
                wakeups.append(next_refresh)
            for i, channel in enumerate(self._channels):
                due = channel.due_at(
                    last[i], not_before[i], opts.flush_interval_s, self._urgent > 0
                )
                if due is None:
                    continue
                if due <= time.monotonic():
                    delay = self._flush(channel)
                    last[i] = time.monotonic()
                    not_before[i] = last[i] + delay
                    due = channel.due_at(
                        last[i], not_before[i], opts.flush_interval_s, self._urgent > 0
                    )
                if due is not None:
                    wakeups.append(due)
            with self._progress:
                self._progress.notify_all()
            wait = min(wakeups) - time.monotonic()
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()

    def _flush(self, channel: Channel[Any]) -> float:
        """Send one batch of ``channel``; returns seconds before its next attempt."""
        batch = channel.next_batch()
        if not batch:
            return 0.0
        try:
            response = self._background_http.post(
                channel.path,
                content=channel.body(batch),
                timeout=httpx.Timeout(self.options.timeout_s),
            )
            wire.check(response)
        except httpx.HTTPError as exc:
            return channel.failed(batch, wire.transport_error(exc))
        except APIError as exc:
            return channel.failed(batch, exc)
        try:
            channel.delivered(batch, response.content)
        except TransportError as exc:  # 2xx with an unreadable body: count it as sent
            log.warning("tailor %s: unreadable answer to a delivered batch: %s", channel.name, exc)
            channel.buffer.settle(batch)
        return 0.0
