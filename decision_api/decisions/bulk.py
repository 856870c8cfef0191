"""Bulk decisions for email campaigns and triggered flows: many recipients, variants and send times.

:func:`decide_bulk` is the Python API (the HTTP endpoint and the SDK wrap it): it takes an
iterable of recipients and yields their answers chunk by chunk, so a 100,000-recipient campaign
streams out while it is being decided. Per chunk it checks unit ids and time zones (a bad one
is that recipient's error, not the batch's), reads every consenting recipient's profile in one
round trip, decides each placement for the whole chunk at once
(:meth:`~decision_api.decisions.engine.DecisionEngine.place_many`: the same answers as
``/v1/decide``,
with each learning policy choosing for all its recipients in one vectorised call), chooses send
times per send-time experiment (:mod:`decision_api.decisions.send_times`), and logs every
recipient's
decisions as exposures (with ``campaign`` and ``send_at``).

A recipient's zone is its ``timezone`` field, then its context's (or the campaign's)
``timezone``, then the profile's ``timezone`` feature, then UTC. ``step`` (a workflow step) and
``campaign`` are visible to targeting; recipients without consent are decided without a profile
read and logged under their pseudonym. With ``explain`` every answer a learning policy chose
carries the features that weighed most (:meth:`DecisionEngine.explain`, as ``/v1/decide``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import msgspec
import numpy as np
import structlog
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bandits.join import RewardJoin
from decision_api.decisions.engine import DecisionEngine, Placed, UnitCall, global_holdouts
from decision_api.decisions.send_times import fill_send_times
from decision_api.learning.runtime import LearningPolicies
from decision_api.profiles.store import EMPTY_PROFILE, FeatureStore, UnitProfile
from tailor_contract.definitions import SendTimeSpec
from tailor_contract.send_window import (
    DefaultSendTime,
    SendWindow,
    check_default,
    resolve_zone,
)
from tailor_contract.wire import Recipient, RecipientDecision, RecipientError, SlateRequest

log = structlog.get_logger("tailor.bulk")

CHUNK = 1000
JOIN_BACKLOG = 20_000
"""Decisions the reward join may hold unwritten before the next chunk waits for its flush."""
MAX_UNIT_ID = 256
_BAD_UNIT_CHARS = re.compile(r"[\x00-\x1f{}]")


class Campaign(msgspec.Struct, frozen=True, kw_only=True):
    """What applies to every recipient of one bulk request."""

    name: str
    placements: tuple[str, ...]
    window: SendWindow | None = None
    default_send_time: DefaultSendTime | None = None
    step: str | None = None
    context: Mapping[str, Any] = msgspec.field(default_factory=dict)
    explain: bool = False
    """Add an ``explanation`` to every answer a learning policy chose (as ``/v1/decide``)."""
    slates: Mapping[str, SlateRequest] = msgspec.field(default_factory=dict)
    """Placements every recipient gets a ranked slate for (as ``/v1/decide``'s ``slates``)."""


def check_unit_id(unit_id: str) -> str | None:
    """Why a unit id is unusable, or None when it is fine (the rules of ``/v1/decide``)."""
    if not unit_id:
        return "unit_id is empty"
    if len(unit_id) > MAX_UNIT_ID:
        return f"unit_id is longer than {MAX_UNIT_ID} characters"
    bad = _BAD_UNIT_CHARS.search(unit_id)
    if bad is not None:
        if bad.group() in "{}":
            return "unit_id contains braces ({ or }), which Redis keys reserve"
        return "unit_id contains control characters"
    return None


def check_campaign_default(
    window: SendWindow, default: DefaultSendTime, spec: SendTimeSpec | None
) -> None:
    """Raise ValueError unless ``default`` can be the default send time of a send-time
    experiment (``spec``) in this window (a fixed instant inside it, an hour of its kind)."""
    check_default(window, default, (spec or SendTimeSpec()).hours)


class _Zones:
    """Zone names seen in one request: valid, or why not (resolved once each)."""

    def __init__(self) -> None:
        self._problems: dict[str, str | None] = {}

    def problem(self, zone: str) -> str | None:
        try:
            return self._problems[zone]
        except KeyError:
            pass
        try:
            resolve_zone(zone)
            problem = None
        except ValueError as exc:
            problem = str(exc)
        self._problems[zone] = problem
        return problem


class _Chunk:
    """One chunk's recipients as they are decided (parallel lists, one entry per unit)."""

    def __init__(self, recipients: list[Recipient], offset: int) -> None:
        self.recipients = recipients
        self.offset = offset
        self.errors: list[RecipientError | None] = [None] * len(recipients)
        self.units: list[UnitCall] = []
        self.positions: list[int] = []  # unit -> position in the chunk
        self.profiles: list[UnitProfile] = []
        self.zones: list[str] = []
        self.placed: list[list[Placed]] = []
        self.degraded = False


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a chunk is decided (no await inside).

    A chunk allocates tens of thousands of objects that all survive (answers, exposures, join
    records); each allocation burst would otherwise trigger collections that rescan every
    survivor, which cost ~40% of the bulk path's CPU. Nothing here creates reference cycles.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _chunks(items: Iterable[Recipient], size: int) -> Iterator[list[Recipient]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


async def decide_bulk(
    engine: DecisionEngine,
    features: FeatureStore,
    learning: LearningPolicies,
    recipients: Iterable[Recipient],
    campaign: Campaign,
    *,
    now_ms: int,
    rng: np.random.Generator,
    chunk_size: int = CHUNK,
) -> AsyncIterator[list[RecipientDecision]]:
    """Decide every placement for every recipient; yields answers chunk by chunk, in order."""
    zones = _Zones()
    offset = 0
    for recipients_chunk in _chunks(recipients, chunk_size):
        chunk = _Chunk(recipients_chunk, offset)
        offset += len(recipients_chunk)
        await _load_profiles(features, chunk, now_ms)
        with _collector_paused():
            _prepare(engine, chunk, campaign, zones, now_ms)
            # Contact-capped placements first, by priority (engine.decision_order); answers keep
            # the campaign's order of placements.
            placements = campaign.placements
            placed_by_placement: list[list[Placed]] = [[] for _ in placements]
            for i in engine.decision_order(placements):
                placed_by_placement[i] = engine.place_many(
                    placements[i], chunk.units, defer_send_time=True
                )
            chunk.placed = [list(items) for items in zip(*placed_by_placement, strict=True)]
        # Two turns of the event loop inside the chunk, spread over its work: the reward join's
        # flusher sends its next script call each turn its previous one has been answered, and
        # Redis answers while the chunk is being decided; turns only at the chunk's ends came
        # while the previous call was still running (about one call per chunk).
        await asyncio.sleep(0)
        with _collector_paused():
            if campaign.window is not None:
                fill_send_times(learning, chunk, campaign.default_send_time, campaign.window, rng)
        await asyncio.sleep(0)
        with _collector_paused():
            engine.log_exposures_many(chunk.units, chunk.placed, campaign.name)
            if campaign.explain:
                for unit, placed in zip(chunk.units, chunk.placed, strict=True):
                    engine.explain(unit, [p.answer for p in placed])
            answers = _answers(chunk)
        yield answers
        # Let the event loop serve other requests and background tasks between chunks.
        await asyncio.sleep(0)
        await _keep_up_with_join(learning.join)


async def _keep_up_with_join(join: RewardJoin) -> None:
    """Write the reward join's queue before deciding on once it holds more than
    :data:`JOIN_BACKLOG` decisions.

    The background flusher moves one script call (~500 records) per turn of the event loop,
    while a turn that decides a chunk remembers about two records per recipient: during a long
    campaign the queue grew by ~190,000 records per 100,000 recipients (about 150 MB of the
    worker's RSS, and work left for later that the campaign's figures did not count). Waiting
    here paces the campaign by the join's throughput and bounds the queue. A Redis failure does
    not fail the campaign: the queue keeps what was not written, as the flusher's does.
    """
    if join.pending <= JOIN_BACKLOG:
        return
    try:
        await join.flush()
    except RedisError as exc:
        log.warning("bulk_join_flush_failed", error=str(exc), pending=join.pending)


def all_unit_ids_fine(unit_ids: list[str]) -> bool:
    """Whether :func:`check_unit_id` finds every one of the ids fine, in a few C calls for the
    whole list (a bad character is one character: it shows in the ids joined together)."""
    if not unit_ids:
        return True
    lengths = list(map(len, unit_ids))
    if min(lengths) == 0 or max(lengths) > MAX_UNIT_ID:
        return False
    return _BAD_UNIT_CHARS.search("".join(unit_ids)) is None


async def _load_profiles(features: FeatureStore, chunk: _Chunk, now_ms: int) -> None:
    """Check unit ids; read the profiles of consenting recipients in one round trip."""
    recipients = chunk.recipients
    if all_unit_ids_fine([r.unit_id for r in recipients]):  # the common case: one check
        wanted = [i for i, recipient in enumerate(recipients) if recipient.consent]
    else:
        wanted = []
        errors = chunk.errors
        for i, recipient in enumerate(recipients):
            problem = check_unit_id(recipient.unit_id)
            if problem is not None:
                errors[i] = RecipientError(code="invalid_unit_id", field="unit_id", message=problem)
            elif recipient.consent:
                wanted.append(i)
    chunk.profiles = [EMPTY_PROFILE] * len(chunk.recipients)
    if not wanted:
        return
    unit_ids = [chunk.recipients[i].unit_id for i in wanted]
    try:
        try:
            profiles = await features.get_profiles(unit_ids, now_ms / 1000)
        except RedisTimeoutError:
            # A starved event loop (a long campaign on a busy machine) can miss the socket
            # timeout once; a second try is cheaper than a chunk of answers without profiles.
            profiles = await features.get_profiles(unit_ids, now_ms / 1000)
    except RedisError as exc:
        log.warning("bulk_profiles_unavailable", error=str(exc), recipients=len(wanted))
        chunk.degraded = True
        return
    for i, profile in zip(wanted, profiles, strict=True):
        chunk.profiles[i] = profile


def _prepare(
    engine: DecisionEngine, chunk: _Chunk, campaign: Campaign, zones: _Zones, now_ms: int
) -> None:
    """Per-unit state of every valid recipient: context, consent, zone, decision id."""
    fixed: dict[str, Any] = {"campaign": campaign.name}
    if campaign.step is not None:
        fixed["step"] = campaign.step
    shared = {**campaign.context, **fixed}
    by_chunk = chunk.profiles
    profiles: list[UnitProfile] = []
    held = global_holdouts([r.unit_id for r in chunk.recipients], engine.global_holdout)
    for i, recipient in enumerate(chunk.recipients):
        if chunk.errors[i] is not None:
            continue
        context = shared
        if recipient.context:
            context = {**campaign.context, **recipient.context, **fixed}
        profile = by_chunk[i]
        consent = recipient.consent and not profile.opted_out
        if not consent:
            profile = EMPTY_PROFILE
        zone = recipient.timezone or context.get("timezone") or profile.attributes.get("timezone")
        if not (isinstance(zone, str) and zone):
            zone = "UTC"
        problem = zones.problem(zone)
        if problem is not None:
            chunk.errors[i] = RecipientError(
                code="invalid_timezone", field="timezone", message=problem
            )
            continue
        unit = engine.prepare(
            recipient.unit_id, context, consent, profile, chunk.degraded, now_ms, held[i]
        )
        if recipient.exclude:
            unit.exclude = {p: frozenset(keys) for p, keys in recipient.exclude.items()}
        if campaign.slates:
            unit.slates = campaign.slates
        chunk.units.append(unit)
        chunk.positions.append(i)
        chunk.zones.append(zone)
        profiles.append(profile)
    chunk.profiles = profiles


def _answers(chunk: _Chunk) -> list[RecipientDecision]:
    out: list[RecipientDecision] = []
    placed_of = dict(zip(chunk.positions, range(len(chunk.units)), strict=True))
    for i, recipient in enumerate(chunk.recipients):
        error = chunk.errors[i]
        if error is not None:
            out.append(
                RecipientDecision(
                    index=chunk.offset + i, unit_id=recipient.unit_id[:MAX_UNIT_ID], error=error
                )
            )
            continue
        k = placed_of[i]
        out.append(
            RecipientDecision(
                index=chunk.offset + i,
                unit_id=recipient.unit_id,
                decision_id=chunk.units[k].decision_id,
                degraded=chunk.degraded,
                decisions=[p.answer for p in chunk.placed[k]],
            )
        )
    return out
