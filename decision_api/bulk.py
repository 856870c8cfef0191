"""Bulk decisions for email campaigns and triggered flows: many recipients, variants and send times.

:func:`decide_bulk` is the Python API (the HTTP endpoint and the SDK wrap it): it takes an
iterable of recipients and yields their answers chunk by chunk, so a 100,000-recipient campaign
streams out while it is being decided. Per chunk it reads every consenting recipient's profile in
one pipelined round trip, decides content placements exactly as ``/v1/decide`` does, and chooses
send times for all recipients of a send-time experiment in one vectorised call:

- the recipient's zone (``timezone`` field, then context, then profile feature, then UTC) turns
  the campaign's send window into the local hours that can still be sent, and each hour into the
  UTC instant it starts (DST-aware, :mod:`experiments.send_window`);
- their open/click histogram (168 UTC hour-of-week bins in the profile) is rolled into local
  hours and becomes the per-recipient prior of the per-hour Thompson policy; ``vw_cb`` instead
  sees it as features (peak hour, open count) and chooses among the feasible hours;
- holdout recipients, and recipients the experiment does not serve, get the campaign's default
  send time (reason ``holdout`` / ...), so reports measure the uplift of optimised send times.

Every recipient's decisions are logged as exposures (with ``campaign`` and ``send_at``) and
learning choices enter the reward join with a window that runs from the send time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import msgspec
import numpy as np
import structlog
from redis.exceptions import RedisError

from bandits.base import Candidate, Choice
from bandits.send_time_policy import SendTimePolicy, hour_key
from bandits.spec import candidate_features
from bandits.vw import VWPolicy
from decision_api.decider import DecisionEngine, Placed, UnitCall
from decision_api.feature_store import EMPTY_PROFILE, FeatureStore, UnitProfile
from decision_api.learning import LearningPolicies
from decision_api.schemas import PlacementDecision, Recipient, RecipientDecision, RecipientError
from experiments.assignment import unit_hash
from experiments.cache import Compiled
from experiments.models import SendTimeSpec
from experiments.send_window import (
    NO_SEND_AT,
    DefaultSendTime,
    SendWindow,
    bulk_zone_hours,
    default_send_at_many,
    hours_in,
    resolve_zone,
)

log = structlog.get_logger("tailor.bulk")

CHUNK = 500
MAX_UNIT_ID = 256
HISTORY_TYPES = ("email_open", "email_click")


class Campaign(msgspec.Struct, frozen=True, kw_only=True):
    """What applies to every recipient of one bulk request."""

    name: str
    placements: tuple[str, ...]
    window: SendWindow | None = None
    default_send_time: DefaultSendTime | None = None
    step: str | None = None
    context: Mapping[str, Any] = msgspec.field(default_factory=dict)


class _Row:
    """One recipient being decided."""

    __slots__ = ("error", "index", "placed", "profile", "recipient", "unit", "zone")

    def __init__(self, index: int, recipient: Recipient) -> None:
        self.index = index
        self.recipient = recipient
        self.error: RecipientError | None = None
        self.profile: UnitProfile = EMPTY_PROFILE
        self.unit: UnitCall | None = None
        self.placed: list[Placed] = []
        self.zone = "UTC"


def check_unit_id(unit_id: str) -> str | None:
    """Why a unit id is unusable, or None when it is fine."""
    if not unit_id:
        return "unit_id is empty"
    if len(unit_id) > MAX_UNIT_ID:
        return f"unit_id is longer than {MAX_UNIT_ID} characters"
    if any(ord(ch) < 32 for ch in unit_id):
        return "unit_id contains control characters"
    return None


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
    offset = 0
    for chunk in _chunks(recipients, chunk_size):
        rows = [_Row(offset + i, r) for i, r in enumerate(chunk)]
        offset += len(chunk)
        degraded = await _load_profiles(features, rows, now_ms)
        for row in rows:
            if row.error is None:
                _prepare(engine, row, campaign, degraded, now_ms)
        if campaign.window is not None:
            _send_times(engine, learning, rows, campaign, campaign.window, rng)
        answers = []
        for row in rows:
            if row.error is not None or row.unit is None:
                answers.append(
                    RecipientDecision(
                        index=row.index,
                        unit_id=row.recipient.unit_id[:MAX_UNIT_ID],
                        error=row.error,
                    )
                )
                continue
            engine.log_exposures(row.unit, row.placed, campaign.name)
            answers.append(
                RecipientDecision(
                    index=row.index,
                    unit_id=row.recipient.unit_id,
                    decision_id=row.unit.decision_id,
                    degraded=degraded,
                    decisions=[p.answer for p in row.placed],
                )
            )
        yield answers
        # Let the event loop serve other requests and background tasks between chunks.
        await asyncio.sleep(0)


async def _load_profiles(features: FeatureStore, rows: list[_Row], now_ms: int) -> bool:
    wanted = []
    for row in rows:
        problem = check_unit_id(row.recipient.unit_id)
        if problem is not None:
            row.error = RecipientError(code="invalid_unit_id", field="unit_id", message=problem)
        elif row.recipient.consent:
            wanted.append(row)
    if not wanted:
        return False
    try:
        profiles = await features.get_profiles([r.recipient.unit_id for r in wanted], now_ms / 1000)
    except RedisError as exc:
        log.warning("bulk_profiles_unavailable", error=str(exc), recipients=len(wanted))
        return True
    for row, profile in zip(wanted, profiles, strict=True):
        row.profile = profile
    return False


def _prepare(
    engine: DecisionEngine, row: _Row, campaign: Campaign, degraded: bool, now_ms: int
) -> None:
    recipient = row.recipient
    profile = row.profile
    consent = recipient.consent and not profile.opted_out
    context: dict[str, Any] = {**campaign.context, **recipient.context, "campaign": campaign.name}
    if campaign.step is not None:
        context["step"] = campaign.step
    zone = recipient.timezone or context.get("timezone") or profile.attributes.get("timezone")
    zone = zone if isinstance(zone, str) and zone else "UTC"
    try:
        resolve_zone(zone)
    except ValueError as exc:
        row.error = RecipientError(code="invalid_timezone", field="timezone", message=str(exc))
        return
    row.zone = zone
    row.unit = engine.prepare(
        recipient.unit_id,
        context,
        consent,
        profile if consent else EMPTY_PROFILE,
        degraded,
        now_ms,
    )
    row.placed = [engine.place(p, row.unit, defer_send_time=True) for p in campaign.placements]


def _send_times(
    engine: DecisionEngine,
    learning: LearningPolicies,
    rows: list[_Row],
    campaign: Campaign,
    window: SendWindow,
    rng: np.random.Generator,
) -> None:
    """Fill in send times: chosen hours for pending decisions, default time for the others."""
    groups: dict[str, list[tuple[_Row, int]]] = {}
    for row in rows:
        for i, placed in enumerate(row.placed):
            if placed.compiled is not None and placed.compiled.experiment.kind == "send_time":
                groups.setdefault(placed.compiled.experiment.key, []).append((row, i))
    for members in groups.values():
        compiled = members[0][0].placed[members[0][1]].compiled
        assert compiled is not None
        _send_time_group(engine, learning, compiled, members, campaign, window, rng)


def _send_time_group(
    engine: DecisionEngine,
    learning: LearningPolicies,
    compiled: Compiled,
    members: list[tuple[_Row, int]],
    campaign: Campaign,
    window: SendWindow,
    rng: np.random.Generator,
) -> None:
    exp = compiled.experiment
    timing = exp.send_time or SendTimeSpec()
    n_hours = hours_in(timing.hours)
    zones = bulk_zone_hours(window, [row.zone for row, _ in members], timing.hours)
    feasible = zones.feasible_matrix()
    defaults = default_send_at_many(window, campaign.default_send_time or timing.default, zones)
    pending = [k for k, (row, i) in enumerate(members) if row.placed[i].pending]
    chosen, propensity, policy_name, version = _choose_hours(
        learning, compiled, members, pending, feasible, window, n_hours, rng
    )
    send_at_chosen = zones.send_at_of(np.where(chosen >= 0, chosen, 0))
    hour_keys = [v.key for v in exp.variants]
    for k, (row, i) in enumerate(members):
        placed = row.placed[i]
        answer = placed.answer
        if placed.pending and chosen[k] >= 0:
            hour = int(chosen[k])
            variant = exp.variants[hour]
            at = int(send_at_chosen[k])
            placed.answer = PlacementDecision(
                placement=answer.placement,
                experiment=exp.key,
                variant=variant.key,
                payload=variant.payload,
                propensity=float(propensity[k]),
                policy=policy_name,
                reason="policy" if policy_name != "fixed" else "split",
                model_version=version or None,
                send_at=datetime.fromtimestamp(at, UTC),
            )
            placed.model_version = version
            placed.pending = False
            if policy_name != "fixed" and row.unit is not None:
                learning.remember(
                    row.unit.decision_id,
                    compiled,
                    row.unit.unit_id,
                    _as_choice(variant.key, hour, float(propensity[k]), policy_name, version),
                    row.unit.attributes,
                    row.unit.now_ms,
                    candidates=[hour_keys[h] for h in np.flatnonzero(feasible[k]).tolist()],
                    window_end_ms=at * 1000 + exp.reward_window_s * 1000,
                )
        else:
            at = int(defaults[k]) if defaults[k] != NO_SEND_AT else window.start_s
            reason = "default_send_time" if placed.pending else answer.reason
            placed.answer = msgspec.structs.replace(
                answer,
                reason=reason,
                variant="default",
                payload={"send_at": "default"},
                send_at=datetime.fromtimestamp(at, UTC),
            )
            placed.pending = False


def _choose_hours(
    learning: LearningPolicies,
    compiled: Compiled,
    members: list[tuple[_Row, int]],
    pending: list[int],
    feasible: np.ndarray[Any, np.dtype[np.bool_]],
    window: SendWindow,
    n_hours: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray[Any, np.dtype[np.int64]], np.ndarray[Any, np.dtype[np.float64]], str, str]:
    """Hours (-1 = none) and propensities for the pending members, with the policy's name."""
    exp = compiled.experiment
    chosen = np.full(len(members), -1, dtype=np.int64)
    propensity = np.ones(len(members))
    policy_name, version = "fixed", ""
    if not pending:
        return chosen, propensity, policy_name, version
    idx = np.array(pending)
    policy = learning.policy(exp.key)
    if isinstance(policy, SendTimePolicy):
        histories = _local_histories([members[k][0] for k in pending], window, n_hours)
        hours, props = policy.choose_hours(histories, feasible[idx], rng)
        chosen[idx], propensity[idx] = hours, props
        return chosen, propensity, policy.name, policy.version
    if isinstance(policy, VWPolicy):
        by_key = {c.key: c for c in _hour_candidates(compiled)}
        for k in pending:
            row, _ = members[k]
            hours_ok = np.flatnonzero(feasible[k])
            candidates = [by_key[hour_key(int(h), n_hours)] for h in hours_ok]
            context = {**(row.unit.attributes if row.unit else {}), **_history_features(row)}
            choice = policy.choose(context, candidates, rng)
            chosen[k], propensity[k] = int(hours_ok[choice.index]), choice.propensity
        return chosen, propensity, policy.name, policy.version
    for k in pending:  # fixed: uniform over the feasible hours, sticky per unit
        row, _ = members[k]
        hours_ok = np.flatnonzero(feasible[k])
        u = unit_hash(exp.hash_salt, row.recipient.unit_id)
        chosen[k] = int(hours_ok[min(int(u * len(hours_ok)), len(hours_ok) - 1)])
        propensity[k] = 1.0 / len(hours_ok)
    return chosen, propensity, policy_name, version


def _as_choice(key: str, hour: int, propensity: float, policy: str, version: str) -> Choice:
    return Choice(index=hour, key=key, propensity=propensity, policy=policy, model_version=version)


def _hour_candidates(compiled: Compiled) -> list[Candidate]:
    return [
        Candidate(key=v.key, features=candidate_features(v.payload, v.features))
        for v in compiled.experiment.variants
    ]


def _utc_week(row: _Row) -> np.ndarray[Any, np.dtype[np.float64]]:
    week = np.zeros(168)
    for typ in HISTORY_TYPES:
        counts = row.profile.hours.get(typ)
        if counts:
            week += np.asarray(counts, dtype=np.float64)
    return week


def _local_histories(
    rows: Sequence[_Row], window: SendWindow, n_hours: int
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Each recipient's opens and clicks per local hour (of day or week), shape (n, n_hours)."""
    out = np.zeros((len(rows), n_hours))
    at = datetime.fromtimestamp(window.start_s, UTC)
    offsets: dict[str, int] = {}
    for r, row in enumerate(rows):
        week = _utc_week(row)
        if not week.any():
            continue
        if row.zone not in offsets:
            delta = resolve_zone(row.zone).utcoffset(at)
            offsets[row.zone] = round(delta.total_seconds() / 3600) if delta else 0
        local = np.roll(week, offsets[row.zone])
        out[r] = local if n_hours == 168 else local.reshape(7, 24).sum(axis=0)
    return out


def _history_features(row: _Row) -> dict[str, Any]:
    week = _utc_week(row)
    total = float(week.sum())
    if total == 0:
        return {"email_history": "none"}
    day = week.reshape(7, 24).sum(axis=0)
    return {"email_peak_hour_utc": str(int(day.argmax())), "email_opens_clicks": total}
