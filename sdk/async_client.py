"""``AsyncTailorClient``: the asyncio Python SDK, the same API as :class:`sdk.client.TailorClient`.

::

    async with AsyncTailorClient("https://tailor.example.com", api_key) as client:
        result = await client.decide("u-123", ["home_hero"], defaults={"home_hero": "control"})
        client.track_outcome("click", decision_id=result.decision_id)   # buffered, no await
        async for r in client.decide_batch("spring-sale", recipients, ["email_subject"]):
            ...

Each decide attempt runs under ``asyncio.timeout``, so its deadline is strict. Buffered events
are flushed by one background task (started on first use inside a running loop); ``aclose()``
flushes them, and an ``atexit`` hook sends what is left synchronously if the loop ended first.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import random
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx

from sdk import deciding, wire
from sdk.client import ClientStats, batch_request, http_headers
from sdk.errors import APIError, RateLimitedError, RequestTimeout, TailorError, TransportError
from sdk.event_buffer import EventBuffer
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

__all__ = ["AsyncTailorClient"]

log = logging.getLogger("tailor.sdk")


class AsyncTailorClient:
    """An asyncio client of one Tailor API; make one per event loop and keep it."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        options: ClientOptions | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        close_at_exit: bool = True,
    ) -> None:
        self.options = opts = options or ClientOptions()
        self._base_url = base_url
        self._api_key = api_key
        self._rng = rng if rng is not None else random.Random()
        limits = httpx.Limits(
            max_connections=opts.max_connections,
            max_keepalive_connections=opts.max_keepalive_connections,
        )

        def http() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=base_url,
                headers=http_headers(api_key),
                limits=limits,
                timeout=opts.timeout_s,
                transport=transport,
            )

        self._http = http()
        self._background_http = http()
        self._outcomes: EventBuffer[OutcomeRequest] = EventBuffer(opts.buffer_capacity)
        self._exposures: EventBuffer[ExposureReport] = EventBuffer(opts.buffer_capacity)
        self._channels: list[Channel[Any]] = [
            outcome_channel(self._outcomes, opts.flush_size, opts.flush_retry, self._rng),
            exposure_channel(self._exposures, opts.flush_size, opts.flush_retry, self._rng),
        ]
        self._local = LocalEvaluator() if opts.local_evaluation else None
        self._fallbacks = FallbackLog(opts.fallback_warning_interval_s)
        self._started = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._urgent = 0
        self._closed = False
        self._close_at_exit = close_at_exit
        if close_at_exit:
            atexit.register(self._flush_at_exit)

    async def start(self) -> None:
        """Start the background task and load definitions (called on first use anyway)."""
        if self._started:
            return
        self._started = True
        self._ensure_task()
        if self._local is not None:
            try:
                await self.refresh_definitions()
            except TailorError as exc:
                log.warning("tailor: definitions not loaded, deciding remotely for now: %s", exc)

    async def __aenter__(self) -> AsyncTailorClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- decisions ------------------------------------------------------------------------

    async def decide(
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
        """A decision for every placement; never raises (see ``TailorClient.decide``).

        Each attempt is cancelled after ``timeout_s`` (default ``options.decide_timeout_s``);
        ``exclude`` names, per placement, variants this decision must not choose;
        ``explain`` asks for ``Decision.explanation``; ``slates`` asks for ranked slates
        (``Decision.slate``; see ``TailorClient.decide``).
        """
        if not self._started:
            await self.start()
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
                response = await self._send(
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
    ) -> AsyncIterator[RecipientResult]:
        """Stream one result per recipient, in order (see ``TailorClient.decide_batch``)."""
        body, units = batch_request(
            campaign, recipients, placements, send_window, default_send_time, step, context,
            explain, slates,
        )  # fmt: skip
        return self._stream_batch(body, units, list(placements), defaults)

    async def _stream_batch(
        self, body: bytes, units: list[str], placements: list[str], defaults: Defaults | None
    ) -> AsyncIterator[RecipientResult]:
        answered = 0
        error: TailorError | None = None
        timeout = httpx.Timeout(self.options.batch_timeout_s, connect=self.options.timeout_s)
        try:
            async with self._http.stream(
                "POST",
                "/v1/decide/batch",
                content=body,
                headers={"accept": wire.NDJSON},
                timeout=timeout,
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    wire.check(response)
                async for line in response.aiter_lines():
                    if line.strip():
                        decided = wire.decode(line, RecipientDecision)
                        yield recipient_result(decided, placements, defaults)
                        answered = decided.index + 1
        except httpx.HTTPError as exc:
            error = wire.transport_error(exc)
        except TransportError as exc:
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
        """Buffer an outcome (no I/O, no await); returns its event id.

        Raises ``InvalidRequest`` for values the API would refuse. ``item`` or ``slot`` name
        the slot of a slate that earned it.
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
        self._ensure_task()
        if len(self._outcomes) >= self.options.flush_size:
            self._wake.set()
        assert outcome.event_id is not None
        return outcome.event_id

    @property
    def stats(self) -> ClientStats:
        """Counters of the outcome and exposure buffers."""
        return ClientStats(outcomes=self._outcomes.stats(), exposures=self._exposures.stats())

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Send everything buffered now; True when nothing is pending any more."""
        budget = timeout_s if timeout_s is not None else self.options.close_timeout_s
        deadline = time.monotonic() + budget
        self._ensure_task()
        self._urgent += 1
        self._wake.set()
        try:
            while self._pending() and self._task is not None and not self._task.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._progress.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._progress.wait()
            return self._pending() == 0
        finally:
            self._urgent -= 1

    async def aclose(self) -> None:
        """Flush (at most ``options.close_timeout_s``), stop the task, close connections."""
        if self._closed:
            return
        if not await self.flush():
            log.error("tailor: closing with %d events unsent", self._pending())
        self._closed = True
        if self._close_at_exit:
            atexit.unregister(self._flush_at_exit)
        if self._task is not None:
            self._task.cancel()
            # wait(), not ``await task`` under suppress(CancelledError): that would also swallow a
            # cancellation of the caller arriving meanwhile, and the caller would carry on.
            await asyncio.wait([self._task])
        await self._http.aclose()
        await self._background_http.aclose()

    # --- direct calls ---------------------------------------------------------------------

    async def upsert_features(self, unit_id: str, features: Mapping[str, Any]) -> FeaturesStored:
        """Upsert typed features; retried with backoff (a PUT is idempotent)."""
        body = wire.features_body(features)
        path = "/v1/units/" + urllib.parse.quote(unit_id, safe="") + "/features"
        response = await self._send(
            "PUT", path, body, self.options.timeout_s, self.options.retry.attempts
        )
        return wire.decode(response.content, FeaturesStored)

    async def track_event(
        self,
        unit_id: str,
        type: str,
        *,
        value: float = 0.0,
        ts: datetime | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> EventAccepted:
        """Record a behavioural event; sent now, not retried (it increments counters)."""
        body = wire.event_body(unit_id, type, value, ts, properties)
        response = await self._send("POST", "/v1/events", body, self.options.timeout_s, 1)
        return wire.decode(response.content, EventAccepted)

    async def refresh_definitions(self) -> bool:
        """Fetch the local-evaluation definitions now; True when they changed."""
        local = self._local
        if local is None:
            raise TailorError("local evaluation is off (ClientOptions(local_evaluation=True))")
        headers = {"if-none-match": local.etag} if local.etag else None
        response = await self._send(
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

    async def _send(
        self,
        method: str,
        path: str,
        content: bytes | None,
        timeout_s: float,
        attempts: int,
        *,
        headers: Mapping[str, str] | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> httpx.Response:
        client = http or self._http
        attempt = 0
        while True:
            error: TailorError
            try:
                async with asyncio.timeout(timeout_s):
                    response = await client.request(
                        method,
                        path,
                        content=content,
                        headers=headers,
                        timeout=httpx.Timeout(timeout_s),
                    )
                wire.check(response)
                return response
            except TimeoutError:
                url = str(client.base_url).rstrip("/") + path
                error = RequestTimeout(f"no answer from {url} within {timeout_s} s")
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
            await asyncio.sleep(delay)

    def _pending(self) -> int:
        return self._outcomes.pending + self._exposures.pending

    def _ensure_task(self) -> None:
        if self._task is not None and not self._task.done():
            return
        if self._closed:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: the first call made inside one starts the task
        self._task = asyncio.create_task(self._run(), name="tailor-sdk")

    async def _run(self) -> None:
        """The background task: flush each channel when due, refresh definitions, sleep."""
        opts = self.options
        count = len(self._channels)
        not_before = [0.0] * count
        last = [time.monotonic()] * count
        next_refresh = time.monotonic() + opts.definitions_refresh_s
        while True:
            now = time.monotonic()
            wakeups = [now + opts.flush_interval_s]
            if self._local is not None:
                if now >= next_refresh:
                    next_refresh = now + opts.definitions_refresh_s
                    try:
                        await self.refresh_definitions()
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
                    delay = await self._flush(channel)
                    last[i] = time.monotonic()
                    not_before[i] = last[i] + delay
                    due = channel.due_at(
                        last[i], not_before[i], opts.flush_interval_s, self._urgent > 0
                    )
                if due is not None:
                    wakeups.append(due)
            self._progress.set()
            wait = min(wakeups) - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                self._wake.clear()

    async def _flush(self, channel: Channel[Any]) -> float:
        batch = channel.next_batch()
        if not batch:
            return 0.0
        try:
            response = await self._background_http.post(
                channel.path,
                content=channel.body(batch),
                timeout=httpx.Timeout(self.options.timeout_s),
            )
            wire.check(response)
        except httpx.HTTPError as exc:
            return channel.failed(batch, wire.transport_error(exc))
        except APIError as exc:
            return channel.failed(batch, exc)
        except asyncio.CancelledError:
            channel.buffer.requeue(batch)  # may have arrived: its event ids make a resend safe
            raise
        try:
            channel.delivered(batch, response.content)
        except TransportError as exc:
            log.warning("tailor %s: unreadable answer to a delivered batch: %s", channel.name, exc)
            channel.buffer.settle(batch)
        return 0.0

    def _flush_at_exit(self) -> None:
        """At interpreter exit with the loop gone: send what is left, synchronously."""
        if self._closed or not self._pending():
            return
        deadline = time.monotonic() + self.options.close_timeout_s
        with httpx.Client(base_url=self._base_url, headers=http_headers(self._api_key)) as http:
            while self._pending() and time.monotonic() < deadline:
                for channel in self._channels:
                    batch = channel.next_batch()
                    if not batch:
                        continue
                    try:
                        response = http.post(channel.path, content=channel.body(batch))
                        wire.check(response)
                        channel.delivered(batch, response.content)
                    except httpx.HTTPError as exc:
                        delay = channel.failed(batch, wire.transport_error(exc))
                        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                    except APIError as exc:
                        delay = channel.failed(batch, exc)
                        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                if not any(len(c.buffer) for c in self._channels):
                    break
        if self._pending():
            log.error("tailor: exiting with %d events unsent", self._pending())
