"""Bulk decisions for email campaigns and triggered flows: many recipients, variants and send times.

:func:`decide_bulk` is the Python API (the HTTP endpoint and the SDK wrap it): it takes an
iterable of recipients and yields their answers chunk by chunk, so a 100,000-recipient campaign
streams out while it is being decided. Per chunk it reads every consenting recipient's profile in
one round trip, decides each placement for the whole chunk at once
(:meth:`~decision_api.decider.DecisionEngine.place_many`: the same answers as ``/v1/decide``,
with each learning policy choosing for all its recipients in one vectorised call), and chooses
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
learning choices enter the reward join with a window that runs from the send time; the
remembered candidates are the hours the window allowed, and the choice indexes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import structlog
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bandits.base import Candidate, Choice
from bandits.send_time_policy import SendTimePolicy
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
    BulkZoneHours,
    DefaultSendTime,
    SendWindow,
    bulk_zone_hours,
    check_default,
    default_send_at_many,
    hours_in,
    resolve_zone,
)

log = structlog.get_logger("tailor.bulk")

CHUNK = 1000
MAX_UNIT_ID = 256
HISTORY_TYPES = ("email_open", "email_click")
_BAD_UNIT_CHARS = re.compile(r"[\x00-\x1f{}]")

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class Campaign(msgspec.Struct, frozen=True, kw_only=True):
    """What applies to every recipient of one bulk request."""

    name: str
    placements: tuple[str, ...]
    window: SendWindow | None = None
    default_send_time: DefaultSendTime | None = None
    step: str | None = None
    context: Mapping[str, Any] = msgspec.field(default_factory=dict)


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
            placed_by_placement = [
                engine.place_many(p, chunk.units, defer_send_time=True)
                for p in campaign.placements
            ]
            chunk.placed = [list(items) for items in zip(*placed_by_placement, strict=True)]
            if campaign.window is not None:
                _send_times(learning, chunk, campaign, campaign.window, rng)
            engine.log_exposures_many(chunk.units, chunk.placed, campaign.name)
            answers = _answers(chunk)
        yield answers
        # Let the event loop serve other requests and background tasks between chunks.
        await asyncio.sleep(0)


async def _load_profiles(features: FeatureStore, chunk: _Chunk, now_ms: int) -> None:
    """Check unit ids; read the profiles of consenting recipients in one round trip."""
    wanted: list[int] = []
    errors = chunk.errors
    for i, recipient in enumerate(chunk.recipients):
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
        chunk.units.append(
            engine.prepare(recipient.unit_id, context, consent, profile, chunk.degraded, now_ms)
        )
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


def _send_times(
    learning: LearningPolicies,
    chunk: _Chunk,
    campaign: Campaign,
    window: SendWindow,
    rng: np.random.Generator,
) -> None:
    """Fill in send times: chosen hours for pending decisions, default time for the others."""
    groups: dict[str, tuple[Compiled, list[tuple[int, int]]]] = {}
    for k, items in enumerate(chunk.placed):
        for j, placed in enumerate(items):
            compiled = placed.compiled
            if compiled is not None and compiled.experiment.kind == "send_time":
                group = groups.get(compiled.experiment.key)
                if group is None:
                    groups[compiled.experiment.key] = (compiled, [(k, j)])
                else:
                    group[1].append((k, j))
    for compiled, members in groups.values():
        _SendTimeGroup(learning, compiled, chunk, members, campaign, window).decide(rng)


class _SendTimeGroup:
    """The members of one send-time experiment in a chunk: (unit, placement) pairs."""

    def __init__(
        self,
        learning: LearningPolicies,
        compiled: Compiled,
        chunk: _Chunk,
        members: list[tuple[int, int]],
        campaign: Campaign,
        window: SendWindow,
    ) -> None:
        self.learning = learning
        self.compiled = compiled
        self.chunk = chunk
        self.members = members
        self.window = window
        timing = compiled.experiment.send_time or SendTimeSpec()
        self.n_hours = hours_in(timing.hours)
        self.table: BulkZoneHours = bulk_zone_hours(
            window, [chunk.zones[k] for k, _ in members], timing.hours
        )
        self.feasible: BoolArray = self.table.feasible_matrix()
        self.defaults: IntArray = default_send_at_many(
            window, campaign.default_send_time or timing.default, self.table
        )
        self._instants: dict[int, datetime] = {}

    def when(self, instant: int) -> datetime:
        """The aware UTC datetime of a Unix second (few distinct ones per chunk)."""
        found = self._instants.get(instant)
        if found is None:
            found = self._instants[instant] = datetime.fromtimestamp(instant, UTC)
        return found

    def decide(self, rng: np.random.Generator) -> None:
        """Choose hours for the pending members, give the others the default send time."""
        chunk, exp = self.chunk, self.compiled.experiment
        pending = [m for m, (k, j) in enumerate(self.members) if chunk.placed[k][j].pending]
        chosen, propensity, policy_name, version = self._choose_hours(pending, rng)
        send_at = self.table.send_at_of(chosen).tolist()
        chosen_list, propensity_list = chosen.tolist(), propensity.tolist()
        defaults = self.defaults.tolist()
        codes = self.table.codes.tolist()
        reason = "policy" if policy_name != "fixed" else "split"
        learns = policy_name != "fixed"
        window_ms = exp.reward_window_s * 1000
        candidates: dict[int, tuple[list[str], list[int]]] = {}
        for m, (k, j) in enumerate(self.members):
            placed = chunk.placed[k][j]
            answer = placed.answer
            hour = chosen_list[m]
            if placed.pending and hour >= 0:
                variant = exp.variants[hour]
                at = send_at[m]
                placed.answer = PlacementDecision(
                    placement=answer.placement,
                    experiment=exp.key,
                    variant=variant.key,
                    payload=variant.payload,
                    propensity=propensity_list[m],
                    policy=policy_name,
                    reason=reason,
                    model_version=version or None,
                    send_at=self.when(at),
                )
                placed.model_version = version
                placed.pending = False
                if learns:
                    code = codes[m]
                    keys, index_of = candidates.get(code) or self._candidates(code, candidates)
                    unit = chunk.units[k]
                    self.learning.remember(
                        unit.decision_id,
                        self.compiled,
                        unit.unit_id,
                        Choice(
                            index=index_of[hour],
                            key=variant.key,
                            propensity=propensity_list[m],
                            policy=policy_name,
                            model_version=version,
                        ),
                        unit.attributes,
                        unit.now_ms,
                        candidates=keys,
                        window_end_ms=at * 1000 + window_ms,
                    )
            else:
                at = defaults[m] if defaults[m] != NO_SEND_AT else self.window.start_s
                placed.answer = msgspec.structs.replace(
                    answer,
                    reason="default_send_time" if placed.pending else answer.reason,
                    variant="default",
                    payload={"send_at": "default"},
                    send_at=self.when(at),
                )
                placed.pending = False

    def _candidates(
        self, code: int, cache: dict[int, tuple[list[str], list[int]]]
    ) -> tuple[list[str], list[int]]:
        """The feasible hour keys of a zone's row and each hour's index among them."""
        row = self.table.feasible[code]
        hours = np.flatnonzero(row).tolist()
        keys = [self.compiled.experiment.variants[h].key for h in hours]
        index_of = (np.cumsum(row) - 1).tolist()
        cache[code] = (keys, index_of)
        return keys, index_of

    def _choose_hours(
        self, pending: list[int], rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, str, str]:
        """Hours (-1 = none) and propensities for the pending members, with the policy's name."""
        exp = self.compiled.experiment
        chosen = np.full(len(self.members), -1, dtype=np.int64)
        propensity = np.ones(len(self.members))
        if not pending:
            return chosen, propensity, "fixed", ""
        idx = np.array(pending)
        policy = self.learning.policy(exp.key)
        if isinstance(policy, SendTimePolicy):
            histories = self._local_histories(pending)
            hours, props = policy.choose_hours(histories, self.feasible[idx], rng)
            chosen[idx], propensity[idx] = hours, props
            return chosen, propensity, policy.name, policy.version
        if isinstance(policy, VWPolicy):
            # Members of one zone share their feasible hours: one choose_many per zone.
            candidates = _hour_candidates(self.compiled)
            by_code: dict[int, list[int]] = {}
            codes = self.table.codes
            for m in pending:
                by_code.setdefault(int(codes[m]), []).append(m)
            for code, members in by_code.items():
                hours_ok = np.flatnonzero(self.table.feasible[code])
                options = [candidates[h] for h in hours_ok.tolist()]
                contexts = [
                    {
                        **self.chunk.units[self.members[m][0]].attributes,
                        **_history_features(self._week(self.members[m][0])),
                    }
                    for m in members
                ]
                for m, choice in zip(
                    members, policy.choose_many(contexts, options, rng), strict=True
                ):
                    chosen[m], propensity[m] = int(hours_ok[choice.index]), choice.propensity
            return chosen, propensity, policy.name, policy.version
        for m in pending:  # fixed: uniform over the feasible hours, sticky per unit
            k, _ = self.members[m]
            hours_ok = np.flatnonzero(self.feasible[m])
            u = unit_hash(exp.hash_salt, self.chunk.units[k].unit_id)
            chosen[m] = int(hours_ok[min(int(u * len(hours_ok)), len(hours_ok) - 1)])
            propensity[m] = 1.0 / len(hours_ok)
        return chosen, propensity, "fixed", ""

    def _week(self, k: int) -> FloatArray:
        """A unit's opens and clicks per UTC hour of week, shape (168,)."""
        week = np.zeros(168)
        for typ in HISTORY_TYPES:
            counts = self.chunk.profiles[k].hours.get(typ)
            if counts:
                week += np.asarray(counts, dtype=np.float64)
        return week

    def _local_histories(self, pending: Sequence[int]) -> FloatArray:
        """Opens and clicks per local hour (of day or week) of the pending members, (n, H).

        UTC histograms are rolled by each zone's offset at the window start; members sharing
        a zone (and so an offset) are rolled together.
        """
        out = np.zeros((len(pending), self.n_hours))
        with_history = [
            (r, m) for r, m in enumerate(pending) if self.chunk.profiles[self.members[m][0]].hours
        ]
        if not with_history:
            return out
        weeks = np.stack([self._week(self.members[m][0]) for _, m in with_history])
        rows = np.array([r for r, _ in with_history])
        by_offset: dict[int, list[int]] = {}
        for i, (_, m) in enumerate(with_history):
            offset = _utc_offset_hours(self.chunk.zones[self.members[m][0]], self.window)
            by_offset.setdefault(offset, []).append(i)
        for offset, members in by_offset.items():
            local = np.roll(weeks[members], offset, axis=1)
            out[rows[members]] = (
                local if self.n_hours == 168 else local.reshape(-1, 7, 24).sum(axis=1)
            )
        return out


_OFFSETS: dict[tuple[str, int], int] = {}


def _utc_offset_hours(zone: str, window: SendWindow) -> int:
    """The zone's UTC offset at the window start, in whole hours (rounded)."""
    key = (zone, window.start_s)
    found = _OFFSETS.get(key)
    if found is None:
        if len(_OFFSETS) > 65_536:
            _OFFSETS.clear()
        delta = resolve_zone(zone).utcoffset(datetime.fromtimestamp(window.start_s, UTC))
        found = _OFFSETS[key] = round(delta.total_seconds() / 3600) if delta else 0
    return found


_CANDIDATES: dict[int, tuple[Compiled, list[Candidate]]] = {}


def _hour_candidates(compiled: Compiled) -> list[Candidate]:
    """The experiment's hour actions with their features (built once per definition)."""
    known = _CANDIDATES.get(id(compiled))
    if known is None or known[0] is not compiled:
        if len(_CANDIDATES) > 256:
            _CANDIDATES.clear()
        candidates = [
            Candidate(key=v.key, features=candidate_features(v.payload, v.features))
            for v in compiled.experiment.variants
        ]
        known = _CANDIDATES[id(compiled)] = (compiled, candidates)
    return known[1]


def _history_features(week: FloatArray) -> dict[str, Any]:
    total = float(week.sum())
    if total == 0:
        return {"email_history": "none"}
    day = week.reshape(7, 24).sum(axis=0)
    return {"email_peak_hour_utc": str(int(day.argmax())), "email_opens_clicks": total}
