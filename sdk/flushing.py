"""What a background flush does with each answer, for one kind of buffered event (I/O-free).

A :class:`Channel` pairs an :class:`~sdk.event_buffer.EventBuffer` with its batch endpoint. The
sync and async clients run the same loop around it — ``batch = channel.next_batch()``, send
``channel.body(batch)``, then ``channel.delivered(batch, body)`` or ``channel.failed(batch,
error)`` — and only the sending differs. Decisions taken here:

- 2xx: the batch is settled (items the server refused individually count as ``rejected``);
- 400/422 naming one item (``$.outcomes[3]...``): that item is rejected, the rest go again at
  once; naming none: the whole batch is rejected (resending cannot fix it);
- 413: the batch is split (the next batches are half as big);
- anything else (transport failure, timeout, 401/403, 429, 5xx): the batch goes back to the
  front of the buffer and the next flush waits an exponentially growing, jittered delay (429
  waits at least ``Retry-After``).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from sdk import wire
from sdk.errors import APIError, InvalidRequest, RateLimitedError, TailorError
from sdk.event_buffer import EventBuffer
from sdk.options import RetryPolicy
from tailor_contract.wire import (
    ExposureBatch,
    ExposureReport,
    ExposuresAccepted,
    OutcomeBatch,
    OutcomeRequest,
)

__all__ = ["Channel", "exposure_channel", "outcome_channel"]

T = TypeVar("T")
log = logging.getLogger("tailor.sdk")
_INDEX = re.compile(r"^\$\.\w+\[(\d+)\]")


class Channel(Generic[T]):
    """One buffered event kind and the endpoint its batches go to."""

    def __init__(
        self,
        name: str,
        path: str,
        buffer: EventBuffer[T],
        encode_batch: Callable[[Sequence[T]], bytes],
        count_rejected: Callable[[bytes], int],
        *,
        batch_size: int,
        backoff: RetryPolicy,
        rng: random.Random,
    ) -> None:
        self.name = name
        self.path = path
        self.buffer = buffer
        self._encode = encode_batch
        self._count_rejected = count_rejected
        self.batch_size = batch_size
        self._limit = batch_size
        self._backoff = backoff
        self._rng = rng
        self.failures = 0

    def due_at(
        self, last: float, not_before: float, interval_s: float, urgent: bool
    ) -> float | None:
        """When this channel should send next (monotonic seconds), or None when nothing waits.

        A full batch, or an urgent flush (``flush()``/``close()``), is due right after the last
        send; otherwise ``interval_s`` after it; never before the backoff's ``not_before``.
        """
        waiting = len(self.buffer)
        if not waiting:
            return None
        now_due = urgent or waiting >= self.batch_size
        return max(last if now_due else last + interval_s, not_before)

    def next_batch(self) -> list[T]:
        """The oldest waiting events, now in flight (empty when nothing waits)."""
        return self.buffer.take(self._limit)

    def body(self, batch: Sequence[T]) -> bytes:
        """The request body for ``batch``."""
        return self._encode(batch)

    def delivered(self, batch: Sequence[T], answer: bytes) -> None:
        """The API took the batch (2xx)."""
        rejected = self._count_rejected(answer)
        if rejected:
            log.warning("tailor %s: the API rejected %d of %d", self.name, rejected, len(batch))
        self.buffer.settle(batch, rejected=rejected)
        self.failures = 0
        self._limit = self.batch_size

    def failed(self, batch: list[T], error: TailorError) -> float:
        """Settle or requeue a batch that failed; returns seconds to wait before the next try."""
        if isinstance(error, InvalidRequest) and error.status == 413 and len(batch) > 1:
            self._limit = max(1, len(batch) // 2)
            self.buffer.requeue(batch)
            return 0.0
        if isinstance(error, InvalidRequest) and error.status in (400, 413, 422):
            index = _bad_index(error.field, len(batch))
            if index is None:
                log.error(
                    "tailor %s: dropping a batch of %d the API refuses: %s",
                    self.name,
                    len(batch),
                    error,
                )
                self.buffer.settle(batch, rejected=len(batch))
                return 0.0
            log.error("tailor %s: dropping one event the API refuses: %s", self.name, error)
            self.buffer.settle([batch[index]], rejected=1)
            self.buffer.requeue(batch[:index] + batch[index + 1 :])
            return 0.0
        self.buffer.requeue(batch)
        delay = self._backoff.delay(self.failures, self._rng)
        self.failures += 1
        if isinstance(error, RateLimitedError):
            delay = max(delay, error.retry_after_s)
        level = logging.ERROR if isinstance(error, APIError) else logging.WARNING
        if self.failures in (1, 10, 100) or self.failures % 1000 == 0:
            log.log(
                level,
                "tailor %s: flush failed (%d in a row, %d pending): %s",
                self.name,
                self.failures,
                self.buffer.pending,
                error,
            )
        return delay


def _bad_index(field: str | None, size: int) -> int | None:
    match = _INDEX.match(field or "")
    if match is None:
        return None
    index = int(match.group(1))
    return index if index < size else None


def _encode_outcomes(batch: Sequence[OutcomeRequest]) -> bytes:
    return wire.encode(OutcomeBatch(outcomes=list(batch)))


def _encode_exposures(batch: Sequence[ExposureReport]) -> bytes:
    return wire.encode(ExposureBatch(exposures=list(batch)))


def _exposures_rejected(answer: bytes) -> int:
    return len(wire.decode(answer, ExposuresAccepted).rejected)


def outcome_channel(
    buffer: EventBuffer[OutcomeRequest],
    batch_size: int,
    backoff: RetryPolicy,
    rng: random.Random,
) -> Channel[OutcomeRequest]:
    """Outcomes to ``POST /v1/outcomes/batch``."""
    return Channel(
        "outcomes",
        "/v1/outcomes/batch",
        buffer,
        _encode_outcomes,
        lambda _: 0,
        batch_size=batch_size,
        backoff=backoff,
        rng=rng,
    )


def exposure_channel(
    buffer: EventBuffer[ExposureReport],
    batch_size: int,
    backoff: RetryPolicy,
    rng: random.Random,
) -> Channel[ExposureReport]:
    """Locally decided exposures to ``POST /v1/exposures/batch``."""
    return Channel(
        "exposures",
        "/v1/exposures/batch",
        buffer,
        _encode_exposures,
        _exposures_rejected,
        batch_size=batch_size,
        backoff=backoff,
        rng=rng,
    )
