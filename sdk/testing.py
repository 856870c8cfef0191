"""Test your own code without a Tailor server: fake clients with scripted decisions, and a
recorder of what your code asked and reported (as structlog's ``testing`` module does for logs).

::

    from sdk.testing import FakeTailorClient, Scripted

    def test_the_spring_banner_is_rendered() -> None:
        client = FakeTailorClient({"home_hero": Scripted("spring", payload={"img": "b.png"})})
        page = render_home(client, user="u-1")              # your code calls client.decide(...)
        assert 'src="b.png"' in page
        assert client.recorder.decisions[0].placements == ["home_hero"]
        checkout(client, user="u-1", amount=42.0)          # ... and client.track_outcome(...)
        assert [(o.type, o.value) for o in client.recorder.outcomes] == [("purchase", 42.0)]

:class:`FakeTailorClient` and :class:`FakeAsyncTailorClient` have the public API of
:class:`~sdk.TailorClient` and :class:`~sdk.AsyncTailorClient` that an application calls —
``decide``, ``decide_batch``, ``track_outcome``, ``flush``, ``close``/``aclose`` and the context
manager — with the same argument checks (a value the API would refuse raises or falls back
exactly as with the real client) and the same result types. No network, no threads.

A script maps a placement to a variant key, a :class:`Scripted` answer, or a function of
``(unit_id, context)`` returning either (or None: no experiment). Unscripted placements answer
as the API does with no experiment there: the caller's default, reason ``no_experiment``. Pass
``error=`` (e.g. ``TransportError("down")``) to see how your code behaves when Tailor is down:
every decision then falls back to the defaults with that error.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeAlias

import msgspec

from sdk import deciding, wire
from sdk.client import batch_request
from sdk.errors import TailorError
from sdk.results import (
    DecideResult,
    Decision,
    Defaults,
    RecipientResult,
    fallback_decisions,
)
from tailor_contract.placement import NO_EXPERIMENT
from tailor_contract.send_window import DefaultSendTime, SendWindow
from tailor_contract.wire import OutcomeRequest, Recipient

__all__ = [
    "BatchCall",
    "DecideCall",
    "FakeAsyncTailorClient",
    "FakeTailorClient",
    "Recorder",
    "Script",
    "Scripted",
]


class Scripted(msgspec.Struct, frozen=True):
    """What the fake answers for a placement (the fields of :class:`~sdk.Decision`)."""

    variant: str
    payload: dict[str, Any] | None = None
    experiment: str | None = None
    propensity: float = 1.0
    policy: str = "fixed"
    reason: str = "split"
    send_at: datetime | None = None


Answer: TypeAlias = "str | Scripted | None"
Script: TypeAlias = "str | Scripted | Callable[[str, Mapping[str, Any]], Answer]"
"""A variant key, a :class:`Scripted` answer, or ``f(unit_id, context) -> either or None``."""


class DecideCall(msgspec.Struct, frozen=True, kw_only=True):
    """One ``decide`` call as the fake saw it, with what it answered."""

    unit_id: str
    placements: list[str]
    context: dict[str, Any]
    consent: bool
    result: DecideResult


class BatchCall(msgspec.Struct, frozen=True, kw_only=True):
    """One ``decide_batch`` call: the campaign, its placements and window, every answer."""

    campaign: str
    placements: list[str]
    unit_ids: list[str]
    send_window: SendWindow | None
    step: str | None
    results: list[RecipientResult]


class Recorder:
    """Everything a fake client was asked and told, in order."""

    def __init__(self) -> None:
        self.decisions: list[DecideCall] = []
        self.batches: list[BatchCall] = []
        self.outcomes: list[OutcomeRequest] = []
        self.flushes = 0
        self.closed = False

    def variants(self, placement: str) -> list[str | None]:
        """The variant each recorded ``decide`` call got for ``placement`` (calls without it
        are skipped)."""
        return [
            call.result[placement].variant for call in self.decisions if placement in call.result
        ]

    def outcomes_of(self, type: str) -> list[OutcomeRequest]:
        """The recorded outcomes of one type."""
        return [o for o in self.outcomes if o.type == type]


class _FakeCore:
    """What both fakes share: scripts, argument checks, decision ids, the recorder."""

    def __init__(
        self,
        decisions: Mapping[str, Script] | None = None,
        *,
        error: TailorError | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.scripts: dict[str, Script] = dict(decisions or {})
        self.error = error
        self.recorder = recorder if recorder is not None else Recorder()
        self._ids = itertools.count(1)

    def script(self, placement: str, answer: Script) -> None:
        """Script (or re-script) one placement."""
        self.scripts[placement] = answer

    def _answer(
        self, placement: str, unit_id: str, context: Mapping[str, Any], defaults: Defaults | None
    ) -> Decision:
        script = self.scripts.get(placement)
        answer = script(unit_id, context) if callable(script) else script
        if isinstance(answer, str):
            answer = Scripted(answer)
        if answer is None:
            default = fallback_decisions([placement], defaults)[placement]
            return msgspec.structs.replace(default, reason=NO_EXPERIMENT, fallback=False)
        return Decision(placement=placement, **msgspec.structs.asdict(answer))

    def _decide(
        self,
        unit_id: str,
        placements: Sequence[str],
        context: Mapping[str, Any] | None,
        consent: bool,
        defaults: Defaults | None,
        exclude: Mapping[str, Sequence[str]] | None = None,
        slates: Mapping[str, int | Mapping[str, Any]] | None = None,
    ) -> DecideResult:
        listed, ctx = list(placements), dict(context or {})
        try:  # the real client's checks
            deciding.plan(unit_id, listed, ctx, consent, None, exclude, slates=slates)
        except TailorError as exc:
            result = deciding.fallback_result(listed, defaults, exc)
        else:
            if self.error is not None:
                result = deciding.fallback_result(listed, defaults, self.error)
            else:
                decisions = {p: self._answer(p, unit_id, ctx, defaults) for p in listed}
                result = DecideResult(decision_id=self._new_id(), decisions=decisions)
        self.recorder.decisions.append(
            DecideCall(
                unit_id=unit_id, placements=listed, context=ctx, consent=consent, result=result
            )
        )
        return result

    def _batch(
        self,
        campaign: str,
        recipients: Iterable[Recipient | Mapping[str, Any]],
        placements: Sequence[str],
        send_window: SendWindow | None,
        default_send_time: DefaultSendTime | None,
        step: str | None,
        context: Mapping[str, Any] | None,
        defaults: Defaults | None,
        slates: Mapping[str, int | Mapping[str, Any]] | None = None,
    ) -> list[RecipientResult]:
        listed = [r if isinstance(r, Recipient) else dict(r) for r in recipients]
        _, units = batch_request(  # raises InvalidRequest as the real client does
            campaign,
            listed,
            placements,
            send_window,
            default_send_time,
            step,
            context,
            slates=slates,
        )
        results = []
        for index, (unit, recipient) in enumerate(zip(units, listed, strict=True)):
            if self.error is not None:
                results.append(
                    RecipientResult(
                        index=index,
                        unit_id=unit,
                        decision_id=None,
                        decisions=fallback_decisions(placements, defaults),
                        fallback=True,
                        error=self.error,
                    )
                )
                continue
            ctx = dict(context or {})
            if isinstance(recipient, Mapping):
                ctx.update(recipient.get("context") or {})
            elif recipient.context:
                ctx.update(recipient.context)
            decisions = {p: self._answer(p, unit, ctx, defaults) for p in placements}
            results.append(
                RecipientResult(
                    index=index, unit_id=unit, decision_id=self._new_id(), decisions=decisions
                )
            )
        self.recorder.batches.append(
            BatchCall(
                campaign=campaign,
                placements=list(placements),
                unit_ids=units,
                send_window=send_window,
                step=step,
                results=results,
            )
        )
        return results

    def _outcome(
        self,
        type: str,
        decision_id: str | None,
        unit_id: str | None,
        experiment: str | None,
        value: float,
        ts: datetime | None,
        properties: Mapping[str, str] | None,
        item: str | None = None,
        slot: int | None = None,
    ) -> str:
        outcome = wire.outcome(  # raises InvalidRequest as the real client does
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
        self.recorder.outcomes.append(outcome)
        assert outcome.event_id is not None
        return outcome.event_id

    def _new_id(self) -> str:
        return f"fake-decision-{next(self._ids)}"


class FakeTailorClient(_FakeCore):
    """A stand-in for :class:`~sdk.TailorClient`: scripted decisions, recorded calls."""

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
        """The scripted decision for every placement (a scripted ``explanation`` included;
        ``explain`` changes nothing here); never raises (see ``TailorClient``)."""
        return self._decide(unit_id, placements, context, consent, defaults, exclude, slates)

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
        """One scripted result per recipient, in order. ``explain`` changes nothing here."""
        results = self._batch(
            campaign, recipients, placements, send_window, default_send_time, step, context,
            defaults, slates,
        )  # fmt: skip
        return iter(results)

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
        """Record an outcome (checked as the real client checks it); returns its event id."""
        return self._outcome(
            type, decision_id, unit_id, experiment, value, ts, properties, item, slot
        )

    def flush(self, timeout_s: float | None = None) -> bool:
        """Nothing to send: counts the call and returns True."""
        self.recorder.flushes += 1
        return True

    def close(self) -> None:
        """Marks the recorder closed."""
        self.recorder.closed = True

    def __enter__(self) -> FakeTailorClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class FakeAsyncTailorClient(_FakeCore):
    """A stand-in for :class:`~sdk.AsyncTailorClient`: scripted decisions, recorded calls."""

    async def start(self) -> None:
        """Nothing to start (the real client starts its background task)."""

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
        """The scripted decision for every placement (a scripted ``explanation`` included;
        ``explain`` changes nothing here); never raises."""
        return self._decide(unit_id, placements, context, consent, defaults, exclude, slates)

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
        """One scripted result per recipient, in order (an async iterator); ``explain``
        changes nothing here."""
        results = self._batch(
            campaign, recipients, placements, send_window, default_send_time, step, context,
            defaults, slates,
        )  # fmt: skip

        async def stream() -> AsyncIterator[RecipientResult]:
            for result in results:
                yield result

        return stream()

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
        """Record an outcome (no await, as in the real client); returns its event id."""
        return self._outcome(
            type, decision_id, unit_id, experiment, value, ts, properties, item, slot
        )

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Nothing to send: counts the call and returns True."""
        self.recorder.flushes += 1
        return True

    async def aclose(self) -> None:
        """Marks the recorder closed."""
        self.recorder.closed = True

    async def __aenter__(self) -> FakeAsyncTailorClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
