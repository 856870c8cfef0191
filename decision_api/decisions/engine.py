"""The decision path: one unit, several placements, a variant for each — in well under a ms.

For every placement the engine walks the live experiments serving it (highest priority first),
with the contract's one walk (:func:`tailor_contract.placement.walk`, which the SDK's local
evaluator calls too):

1. targeting rules over the unit's profile merged with the request context;
2. the layer slice (mutually exclusive experiments share a layer);
3. the global holdout and the experiment's holdout (default variant, reason ``holdout``);
4. consent (no consent: default variant, no profile read, pseudonymised unit id);
5. the policy: ``fixed`` is the deterministic hash split; learning policies come from the
   :class:`PolicyProvider` (bandits), which returns the choice and its exact propensity.

A placement that asks for a ranked slate, served by a ``vw_slates`` experiment, gets an ordered
list of items with a propensity per slot, and one exposure per slot
(:mod:`decision_api.decisions.slates`).

Every placement decision is logged as an exposure with its reason code. A caller holding a public
key (one embedded in web pages, see :attr:`decision_api.access.keys.ApiKey.public`) is told reason
``default`` for every default-variant answer: the true reason can be stored data about the unit
(a withdrawn consent, a frequency cap, a profile feature behind targeting), which anyone who can
read the page would otherwise probe for any unit id. The exposure keeps the true reason.

A Redis failure while
reading the profile does not fail the decision: the unit is decided on the request context alone
and the answer says ``degraded: true``.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import msgspec
import numpy as np
import structlog
from redis.exceptions import RedisError

from bandits.base import Candidate, Choice
from bandits.slates import Slate
from decision_api.decisions.eligibility import NO_ELIGIBLE_VARIANT, eligible_indexes, split_among
from decision_api.decisions.hashing import unit_hash_list
from decision_api.decisions.slates import (
    Offer,
    default_slate,
    offer_of,
    ranked_slate,
    slate_size,
)
from decision_api.logging import WARN_INTERVAL_S
from decision_api.metrics import Metrics
from decision_api.profiles.store import EMPTY_PROFILE, CapHit, FeatureStore, UnitProfile
from event_log.rows import Exposure, new_decision_id, new_event_id, stringify
from event_log.throttle import Throttle
from event_log.writer import EventSink
from experiments.cache import Compiled, ExperimentCache
from tailor_contract.assignment import (
    GLOBAL_HOLDOUT_SALT,
    in_global_holdout,
    pick_bucket,
    unit_hash,
)
from tailor_contract.placement import (
    ASSIGN,
    HOLDOUT_REASONS,
    NO_EXPERIMENT,
    SEND_TIME,
    walk,
    walk_many,
)
from tailor_contract.policies import FixedConfig, VWSlatesConfig
from tailor_contract.wire import DecideResponse, Factor, PlacementDecision, SlateRequest

log = structlog.get_logger("tailor.decider")


_NOTHING: frozenset[str] = frozenset()
_NO_EVENT_ID = uuid.UUID(int=0)
_with_row = msgspec.structs.replace

MAX_KNOWN_NAMES = 10_000
"""Attribute names remembered as not sensitive (the set starts over beyond this)."""

PUBLIC_DEFAULT_REASON = "default"
"""The reason a public key sees for every default-variant answer."""


class PolicyProvider(Protocol):
    """Learning policies, per experiment (hot-swapped by the learner's snapshots)."""

    def choose(
        self, compiled: Compiled, context: Mapping[str, Any], rng: np.random.Generator
    ) -> Choice | None:
        """The policy's choice for this context, or None when no model is loaded."""
        ...

    def choose_among(
        self,
        compiled: Compiled,
        context: Mapping[str, Any],
        eligible: Sequence[int],
        rng: np.random.Generator,
    ) -> Choice | None:
        """The policy's choice among some variants (its index is into ``eligible``)."""
        ...

    def choose_many(
        self,
        compiled: Compiled,
        contexts: Sequence[Mapping[str, Any]],
        rng: np.random.Generator,
    ) -> Sequence[Choice] | None:
        """The policy's choices for many contexts in one call, or None when no model is loaded."""
        ...

    def remember(
        self,
        decision_id: str,
        compiled: Compiled,
        unit_id: str,
        choice: Choice,
        context: Mapping[str, Any],
        now_ms: int,
        *,
        candidates: list[str] | None = None,
    ) -> None:
        """Keep the decision for the reward join (learning policies only)."""
        ...

    def explain(self, compiled: Compiled, context: Mapping[str, Any], chosen: str) -> list[Factor]:
        """The features that weighed most in the model's choice of ``chosen`` (may be empty)."""
        ...

    def choose_slate(
        self,
        compiled: Compiled,
        context: Mapping[str, Any],
        slots: int,
        rng: np.random.Generator,
        *,
        candidates: Sequence[Candidate] | None = None,
        eligible: Sequence[int] | None = None,
    ) -> Slate | None:
        """The policy's ranked slate over ``candidates`` (the request's) or the experiment's
        variants (``eligible`` ones only, when given); None when no ranking model is loaded."""
        ...

    def remember_slate(
        self,
        decision_id: str,
        compiled: Compiled,
        unit_id: str,
        slate: Slate,
        candidates: list[str],
        features: list[dict[str, Any]] | None,
        context: Mapping[str, Any],
        now_ms: int,
    ) -> None:
        """Keep a slate decision for the reward join (one reward per slot)."""
        ...


CONTACT_CAP_FIELD = "@"
"""Prefix of a contact cap's counter in the unit's caps (``c:@<name>`` in the profile hash;
experiment keys cannot start with ``@``, so it never meets a frequency cap's field)."""


def _recent(unit: UnitCall, field: str, window_s: int) -> int:
    """How many of the unit's counted exposures under ``field`` lie within the window."""
    cutoff = unit.now_ms - window_s * 1000
    return sum(1 for t in unit.caps.get(field, ()) if t > cutoff)


class Pseudonymiser:
    """Keyed, one-way unit ids for units that did not consent (and for logs)."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def __call__(self, unit_id: str) -> str:
        """A stable pseudonym: ``anon:`` + 32 hex chars of HMAC-SHA256."""
        digest = hmac.new(self._key, unit_id.encode(), hashlib.sha256).hexdigest()
        return "anon:" + digest[:32]


class UnitCall(msgspec.Struct, kw_only=True, gc=False):
    """One unit's side of a decision: what targeting and policies see, and what is logged.

    Not tracked by the cyclic collector (``gc=False``: it holds plain data and cannot be part
    of a cycle), like :class:`Placed`: a bulk chunk makes thousands of each.
    """

    unit_id: str
    attributes: dict[str, Any]
    consent: bool
    global_holdout: bool
    decision_id: str
    now_ms: int
    caps: dict[str, list[int]]
    degraded: bool
    exclude: Mapping[str, frozenset[str]] = msgspec.field(default_factory=dict)
    slates: Mapping[str, SlateRequest] = msgspec.field(default_factory=dict)


class Placed(msgspec.Struct, kw_only=True, gc=False):
    """One placement's decision with what the exposure row needs."""

    answer: PlacementDecision
    compiled: Compiled | None
    holdout: bool
    model_version: str
    pending: bool = False
    offered: int = 0
    """For a slate: how many items its slots were drawn from."""


def public_answer(answer: PlacementDecision) -> PlacementDecision:
    """The answer as a public key sees it: reason ``default`` for any default-variant answer.

    Every reason behind a default variant collapses into one, so a stored opt-out
    (``no_consent``) reads the same as a holdout, a cap or a targeting miss; which variant and
    payload the page shows is unchanged.
    """
    if answer.policy != "default" or answer.reason == PUBLIC_DEFAULT_REASON:
        return answer
    return msgspec.structs.replace(answer, reason=PUBLIC_DEFAULT_REASON)


class DecisionEngine:
    """Decide placements for units and log every exposure."""

    def __init__(
        self,
        *,
        features: FeatureStore,
        cache: ExperimentCache,
        policies: PolicyProvider | None,
        sink: EventSink,
        metrics: Metrics,
        pseudonymise: Pseudonymiser,
        rng: np.random.Generator,
        global_holdout: float = 0.0,
        sensitive_features: frozenset[str] = frozenset(),
    ) -> None:
        self._features = features
        self._cache = cache
        self._policies = policies
        self._sink = sink
        self._metrics = metrics
        self._pseudonymise = pseudonymise
        self._rng = rng
        self.global_holdout = global_holdout
        self.kill_switch = False
        self._sensitive = frozenset(name.lower() for name in sensitive_features)
        # Attribute names seen and found not sensitive: a unit whose names are all known passes
        # with one C-level subset test (bulk decisions prepare ~100,000 units a second).
        self._not_sensitive: set[str] = set()
        self.profile_reader: Callable[[str, float], Awaitable[UnitProfile]] | None = None
        self._counters: dict[tuple[str, str], Any] = {}
        # Met by every request while Redis is down: logged once per interval, with a count.
        self._warn = Throttle(log, every_s=WARN_INTERVAL_S)

    def _count(self, policy: str, reason: str, n: int = 1) -> None:
        counter = self._counters.get((policy, reason))
        if counter is None:
            counter = self._metrics.decisions.labels(policy, reason)
            self._counters[policy, reason] = counter
        counter.inc(n)

    async def decide(
        self,
        unit_id: str,
        placements: Sequence[str],
        context: Mapping[str, Any],
        consent: bool,
        now_ms: int,
        *,
        public: bool = False,
        exclude: Mapping[str, Sequence[str]] | None = None,
        explain: bool = False,
        slates: Mapping[str, SlateRequest] | None = None,
    ) -> DecideResponse:
        """Decide every placement for one unit; reads the profile in one Redis round trip.

        With ``public`` (a public key asks) default-variant answers say reason ``default``
        (see :func:`public_answer`); the exposures logged keep the true reason. ``exclude``
        names, per placement, variants this decision must not choose (see
        :mod:`decision_api.decisions.eligibility`). ``slates`` asks, per placement, for a
        ranked slate (see :mod:`decision_api.decisions.slates`).
        """
        degraded = False
        profile = EMPTY_PROFILE
        if consent and not self.kill_switch:
            try:
                if self.profile_reader is not None:
                    profile = await self.profile_reader(unit_id, now_ms / 1000)
                else:
                    profile = (await self._features.get_profiles([unit_id], now_ms / 1000))[0]
            except RedisError as exc:
                degraded = True
                self._metrics.degraded.labels("redis").inc()
                self._warn.warning("profile_read_failed", error=str(exc))
            if profile.opted_out:
                consent = False
                profile = EMPTY_PROFILE
        unit = self.prepare(unit_id, context, consent, profile, degraded, now_ms)
        if exclude:
            unit.exclude = {p: frozenset(keys) for p, keys in exclude.items()}
        if slates:
            unit.slates = slates
        answers = self.decide_unit(unit, placements)
        if explain:
            self.explain(unit, answers)
        if public:
            answers = [public_answer(answer) for answer in answers]
        return DecideResponse(decision_id=unit.decision_id, degraded=degraded, decisions=answers)

    def explain(self, unit: UnitCall, answers: Sequence[PlacementDecision]) -> None:
        """Add an ``explanation`` to every answer a learning policy chose (reason ``policy``):
        the features that weighed most, never a sensitive one. Off the normal path: only for a
        request with ``explain: true``."""
        if self._policies is None:
            return
        for answer in answers:
            if answer.reason != "policy" or answer.experiment is None or answer.variant is None:
                continue
            compiled = self._cache.get(answer.experiment)
            if compiled is None:
                continue
            factors = self._policies.explain(compiled, unit.attributes, answer.variant)
            answer.explanation = [f for f in factors if f.feature.lower() not in self._sensitive]

    def prepare(
        self,
        unit_id: str,
        context: Mapping[str, Any],
        consent: bool,
        profile: UnitProfile,
        degraded: bool,
        now_ms: int,
        global_holdout: bool | None = None,
    ) -> UnitCall:
        """Per-unit state of one decision: attributes, consent, caps, a new decision id
        (``global_holdout``: whether the unit is in the global holdout, when the caller hashed
        it already)."""
        if consent:
            attributes: dict[str, Any] = {**profile.attributes, **context}
        else:
            attributes = dict(context)
        if self._sensitive and not attributes.keys() <= self._not_sensitive:
            # Case-insensitive, as definitions and feature writes are checked.
            for name in [n for n in attributes if n.lower() in self._sensitive]:
                del attributes[name]
            known = self._not_sensitive
            if len(known) > MAX_KNOWN_NAMES:  # names come from requests: keep the set bounded
                known.clear()
            known.update(attributes)
        return UnitCall(
            unit_id=unit_id,
            attributes=attributes,
            consent=consent,
            global_holdout=in_global_holdout(unit_id, self.global_holdout)
            if global_holdout is None
            else global_holdout,
            decision_id=new_decision_id(),
            now_ms=now_ms,
            caps=profile.caps,
            degraded=degraded,
        )

    def decide_unit(self, unit: UnitCall, placements: Sequence[str]) -> list[PlacementDecision]:
        """Decide every placement for a prepared unit and log the exposures.

        Placements served by contact-capped experiments are decided first, highest priority
        first (see :meth:`decision_order`), so a cap nearly used up goes to the most important
        experiment; answers keep the request's order.
        """
        if len(placements) < 2 or not self._cache.contact_caps:
            done = [self._place(placement, unit) for placement in placements]
        else:
            placed: list[Placed | None] = [None] * len(placements)
            for i in self.decision_order(placements):
                placed[i] = self._place(placements[i], unit)
            done = [p for p in placed if p is not None]
        self.log_exposures(unit, done)
        return [p.answer for p in done]

    def decision_order(self, placements: Sequence[str]) -> list[int]:
        """Indexes of ``placements`` in the order to decide them: placements whose experiments
        share a contact cap by descending priority, then the others; ties keep request order."""
        order = list(range(len(placements)))
        if len(placements) < 2 or not self._cache.contact_caps:
            return order
        priority = self._cache.capped_priority
        keys = [priority(p) for p in placements]
        return sorted(order, key=lambda i: (keys[i] is None, -(keys[i] or 0)))

    def log_exposures(self, unit: UnitCall, placed: Sequence[Placed], campaign: str = "") -> None:
        """Count and log the exposures of a unit's placement decisions."""
        self.log_exposures_many([unit], [placed], campaign)

    def log_exposures_many(
        self, units: Sequence[UnitCall], placed: Sequence[Sequence[Placed]], campaign: str = ""
    ) -> None:
        """Count and log the exposures of many units' decisions (``placed[i]`` for ``units[i]``);
        metrics are counted once per (policy, reason) and the events handed over in one call."""
        counts: dict[tuple[str, str], int] = {}
        events: list[Exposure] = []
        append = events.append
        # Bulk send times share a few datetime objects per chunk: convert each once (keyed by
        # identity; the dict holds each object, so no id is reused while it lives).
        send_ms: dict[int, tuple[object, int]] = {}
        templates: dict[tuple[object, ...], Exposure] = {}
        for unit, items in zip(units, placed, strict=True):
            if unit.consent:
                logged_unit, logged_context = unit.unit_id, stringify(unit.attributes)
            else:
                logged_unit, logged_context = self._pseudonymise(unit.unit_id), {}
            decision_id, now_ms = unit.decision_id, unit.now_ms
            for item in items:
                answer = item.answer
                label = (answer.policy, answer.reason)
                counts[label] = counts.get(label, 0) + 1
                compiled = item.compiled
                if compiled is None:
                    continue
                experiment = compiled.experiment
                send_at = answer.send_at
                send_at_ms: int | None = None
                if send_at is not None:
                    known = send_ms.get(id(send_at))
                    if known is None:
                        known = send_ms[id(send_at)] = (send_at, int(send_at.timestamp() * 1000))
                    send_at_ms = known[1]
                if answer.slate is not None:
                    for slot in answer.slate:
                        append(
                            Exposure(
                                event_id=new_event_id(),
                                decision_id=decision_id,
                                ts_ms=now_ms,
                                unit_id=logged_unit,
                                experiment=experiment.key,
                                experiment_version=experiment.version,
                                placement=answer.placement,
                                variant=slot.item,
                                propensity=slot.propensity,
                                policy=answer.policy,
                                policy_version=item.model_version,
                                reason=answer.reason,
                                holdout=item.holdout,
                                context=logged_context,
                                campaign=campaign,
                                slot=slot.slot,
                                item=slot.item,
                                candidates=item.offered,
                            )
                        )
                    continue
                # What many exposures of a call share comes from a template (a C copy with the
                # per-row fields set costs a fifth of building the row from 16 keywords).
                shape = (
                    id(experiment), answer.placement, answer.policy, item.model_version,
                    answer.reason, item.holdout, now_ms,
                )  # fmt: skip
                template = templates.get(shape)
                if template is None:
                    template = templates[shape] = Exposure(
                        event_id=_NO_EVENT_ID,
                        decision_id="",
                        ts_ms=now_ms,
                        unit_id="",
                        experiment=experiment.key,
                        experiment_version=experiment.version,
                        placement=answer.placement,
                        variant="",
                        propensity=1.0,
                        policy=answer.policy,
                        policy_version=item.model_version,
                        reason=answer.reason,
                        holdout=item.holdout,
                        context={},
                        campaign=campaign,
                    )
                append(
                    _with_row(
                        template,
                        event_id=new_event_id(),
                        decision_id=decision_id,
                        unit_id=logged_unit,
                        variant=answer.variant or "",
                        propensity=answer.propensity,
                        context=logged_context,
                        send_at_ms=send_at_ms,
                    )
                )
        for (policy, reason), n in counts.items():
            self._count(policy, reason, n)
        if events:
            self._sink.submit_many(events)

    def place(self, placement: str, unit: UnitCall, *, defer_send_time: bool = False) -> Placed:
        """Decide one placement. With ``defer_send_time``, a running send-time experiment that
        would assign comes back ``pending`` (the bulk path chooses hours vectorised)."""
        return self._place(placement, unit, defer_send_time)

    def place_many(
        self, placement: str, units: Sequence[UnitCall], *, defer_send_time: bool = False
    ) -> list[Placed]:
        """Decide one placement for many units: for each unit what :meth:`place` answers, with
        the placement walk run for all units at once (each holdout, layer and split hash
        computed for the whole group in one vectorised call: :mod:`~decision_api.decisions.hashing`)
        and each experiment's policy choosing for all of its units in one vectorised call (a
        placement asking for slates is decided unit by unit)."""
        if any(placement in u.slates for u in units if u.slates):
            return [self._place(placement, u, defer_send_time) for u in units]
        out: list[Placed | None] = []
        assigned: dict[str, tuple[Compiled, list[int]]] = {}
        walked = walk_many(
            self._cache.for_placement(placement),
            unit_ids=[u.unit_id for u in units],
            attributes=[u.attributes for u in units],
            consent=[u.consent for u in units],
            kill_switch=self.kill_switch,
            global_holdout=[u.global_holdout for u in units],
            hashes=unit_hash_list,
        )
        for i, (unit, (compiled, verdict)) in enumerate(zip(units, walked, strict=True)):
            routed = self._routed(placement, compiled, verdict, defer_send_time)
            if isinstance(routed, Placed):
                out.append(routed)
                continue
            if routed.conditional or unit.exclude:
                eligible = self._eligible(placement, routed, unit)
                if eligible is not None:
                    out.append(self._assign_among(placement, routed, unit, eligible))
                    continue
            out.append(None)
            group = assigned.get(routed.experiment.key)
            if group is None:
                assigned[routed.experiment.key] = (routed, [i])
            else:
                group[1].append(i)
        for compiled, members in assigned.values():
            group_units = [units[i] for i in members]
            chosen = self._choose_many(compiled, group_units)
            positions: list[float] | None = None
            if any(choice is None for choice in chosen):
                positions = unit_hash_list(
                    compiled.experiment.hash_salt, [u.unit_id for u in group_units]
                )
            for k, (i, choice) in enumerate(zip(members, chosen, strict=True)):
                at = positions[k] if positions is not None else None
                out[i] = self._assign(placement, compiled, units[i], choice, at)
        return [p for p in out if p is not None]

    def _place(self, placement: str, unit: UnitCall, defer_send_time: bool = False) -> Placed:
        routed = self._route(placement, unit, defer_send_time)
        if unit.slates:
            ask = unit.slates.get(placement)
            if ask is not None:
                ranked = self._place_slate(placement, routed, unit, ask)
                if ranked is not None:
                    return ranked
        if isinstance(routed, Placed):
            return routed
        if routed.conditional or unit.exclude:  # the common case pays one test
            eligible = self._eligible(placement, routed, unit)
            if eligible is not None:
                return self._assign_among(placement, routed, unit, eligible)
        return self._assign(placement, routed, unit, self._choose(routed, unit))

    def _place_slate(
        self, placement: str, routed: Placed | Compiled, unit: UnitCall, ask: SlateRequest
    ) -> Placed | None:
        """A slate for a placement served by a ``vw_slates`` experiment (None for any other:
        it answers one variant). Default answers show the offer in its fixed order."""
        compiled = routed.compiled if isinstance(routed, Placed) else routed
        if compiled is None:
            return None
        exp = compiled.experiment
        config = exp.policy
        if not isinstance(config, VWSlatesConfig):
            return None
        excluded = unit.exclude.get(placement, _NOTHING) if unit.exclude else _NOTHING
        offer = offer_of(compiled, ask, unit.attributes, excluded)
        size = slate_size(ask, config.slots, len(offer.candidates))
        if isinstance(routed, Placed):
            return self._with_default_slate(routed, offer, size)
        if not offer.candidates:
            return self._default(placement, compiled, NO_ELIGIBLE_VARIANT)
        slate = None
        if self._policies is not None:
            slate = self._policies.choose_slate(
                compiled,
                unit.attributes,
                size,
                self._rng,
                candidates=offer.candidates if offer.from_request else None,
                eligible=offer.eligible,
            )
        if slate is None:
            placed = self._default(placement, compiled, "model_unavailable")
            return self._with_default_slate(placed, offer, size)
        first = slate.slots[0]
        if exp.frequency_cap is not None or exp.contact_cap is not None:
            refused = self._caps_refuse(compiled, first.key, unit)
            if refused is not None:
                placed = self._default(placement, compiled, refused)
                return self._with_default_slate(placed, offer, size)
        if self._policies is not None:
            self._policies.remember_slate(
                unit.decision_id,
                compiled,
                unit.unit_id,
                slate,
                offer.keys,
                offer.features,
                unit.attributes,
                unit.now_ms,
            )
        return Placed(
            answer=PlacementDecision(
                placement=placement,
                experiment=exp.key,
                variant=first.key,
                payload=offer.payloads[first.index],
                propensity=first.propensity,
                policy=slate.policy,
                reason="policy",
                model_version=slate.model_version or None,
                slate=ranked_slate(offer, slate),
            ),
            compiled=compiled,
            holdout=False,
            model_version=slate.model_version,
            offered=len(offer.candidates),
        )

    @staticmethod
    def _with_default_slate(placed: Placed, offer: Offer, size: int) -> Placed:
        """A default answer showing the offer's fixed order (its first slot as the variant)."""
        compiled = placed.compiled
        if compiled is None or not offer.candidates:
            return placed
        slots = default_slate(offer, size, compiled.experiment.default_variant)
        placed.offered = len(offer.candidates)
        answer = placed.answer
        answer.slate = slots
        answer.variant = slots[0].item
        answer.payload = slots[0].payload
        return placed

    @staticmethod
    def _eligible(placement: str, compiled: Compiled, unit: UnitCall) -> list[int] | None:
        excluded = unit.exclude.get(placement, _NOTHING) if unit.exclude else _NOTHING
        return eligible_indexes(compiled, unit.attributes, excluded)

    def _assign_among(
        self, placement: str, compiled: Compiled, unit: UnitCall, eligible: list[int]
    ) -> Placed:
        """Assign among the eligible variants only; propensities are over that set."""
        if not eligible:
            return self._default(placement, compiled, "no_eligible_variant")
        exp = compiled.experiment
        learning = not isinstance(exp.policy, FixedConfig)
        choice = None
        if learning and self._policies is not None:
            choice = self._policies.choose_among(compiled, unit.attributes, eligible, self._rng)
        if choice is None:
            split = split_among(compiled, unit.unit_id, eligible)
            if split is None:
                return self._default(placement, compiled, "no_eligible_variant")
            index, propensity = split
            policy, reason = "fixed", "model_unavailable" if learning else "split"
            return self._serve(placement, compiled, unit, index, propensity, policy, reason)
        keys = [exp.variants[i].key for i in eligible]
        return self._serve(
            placement,
            compiled,
            unit,
            eligible[choice.index],
            choice.propensity,
            choice.policy,
            "policy",
            choice=choice,
            candidates=keys,
        )

    def _route(self, placement: str, unit: UnitCall, defer_send_time: bool) -> Placed | Compiled:
        """The placement's answer when it is a default (or a pending send time), else the
        experiment whose policy assigns the unit (the walk: :mod:`tailor_contract.placement`)."""
        compiled, verdict = walk(
            self._cache.for_placement(placement),
            unit_id=unit.unit_id,
            attributes=unit.attributes,
            consent=unit.consent,
            kill_switch=self.kill_switch,
            global_holdout=unit.global_holdout,
        )
        return self._routed(placement, compiled, verdict, defer_send_time)

    def _routed(
        self, placement: str, compiled: Compiled | None, verdict: str, defer_send_time: bool
    ) -> Placed | Compiled:
        """What :meth:`_route` answers for the walk's ``(compiled, verdict)``."""
        if compiled is None:
            return Placed(
                answer=PlacementDecision(placement=placement, reason=NO_EXPERIMENT),
                compiled=None,
                holdout=False,
                model_version="",
            )
        if verdict == ASSIGN:
            return compiled
        if verdict == SEND_TIME:
            if not defer_send_time:
                return self._default(placement, compiled, "needs_send_window")
            placed = self._default(placement, compiled, "pending")
            placed.pending = True
            return placed
        return self._default(placement, compiled, verdict, holdout=verdict in HOLDOUT_REASONS)

    def _choose(self, compiled: Compiled, unit: UnitCall) -> Choice | None:
        if isinstance(compiled.experiment.policy, FixedConfig) or self._policies is None:
            return None
        return self._policies.choose(compiled, unit.attributes, self._rng)

    def _choose_many(
        self, compiled: Compiled, units: Sequence[UnitCall]
    ) -> Sequence[Choice | None]:
        if isinstance(compiled.experiment.policy, FixedConfig) or self._policies is None:
            return [None] * len(units)
        chosen = self._policies.choose_many(compiled, [u.attributes for u in units], self._rng)
        return [None] * len(units) if chosen is None else chosen

    def _assign(
        self,
        placement: str,
        compiled: Compiled,
        unit: UnitCall,
        choice: Choice | None,
        position: float | None = None,
    ) -> Placed:
        """Serve the policy's ``choice``, or without one the fixed split (``position``: the
        unit's split hash when the caller computed it already)."""
        exp = compiled.experiment
        learning = not isinstance(exp.policy, FixedConfig)
        if choice is None:
            if position is None:
                position = unit_hash(exp.hash_salt, unit.unit_id)
            index = pick_bucket(position, compiled.cumulative)
            lower = compiled.cumulative[index - 1] if index else 0.0
            propensity = compiled.cumulative[index] - lower
            policy, reason = "fixed", "split"
            if learning:
                reason = "model_unavailable"
        else:
            index, propensity = choice.index, choice.propensity
            policy, reason = choice.policy, "policy"
        return self._serve(placement, compiled, unit, index, propensity, policy, reason, choice)

    def _serve(
        self,
        placement: str,
        compiled: Compiled,
        unit: UnitCall,
        index: int,
        propensity: float,
        policy: str,
        reason: str,
        choice: Choice | None = None,
        candidates: list[str] | None = None,
    ) -> Placed:
        """The answer for variant ``index`` (after the frequency cap); remembers a learning
        choice (made among ``candidates``, all variants by default) for the reward join."""
        exp = compiled.experiment
        version = choice.model_version if choice is not None else ""
        variant = exp.variants[index]
        if index != compiled.default_index and (
            exp.frequency_cap is not None or exp.contact_cap is not None
        ):
            refused = self._caps_refuse(compiled, variant.key, unit)
            if refused is not None:
                return self._default(placement, compiled, refused)
        if choice is not None and self._policies is not None:
            self._policies.remember(
                unit.decision_id,
                compiled,
                unit.unit_id,
                choice,
                unit.attributes,
                unit.now_ms,
                candidates=candidates,
            )
        return Placed(
            answer=PlacementDecision(
                placement=placement,
                experiment=exp.key,
                variant=variant.key,
                payload=variant.payload,
                propensity=propensity,
                policy=policy,
                reason=reason,
                model_version=version or None,
            ),
            compiled=compiled,
            holdout=False,
            model_version=version,
        )

    def _caps_refuse(self, compiled: Compiled, variant: str, unit: UnitCall) -> str | None:
        """The reason the unit's caps refuse a non-default exposure, or None after counting it.

        The experiment's frequency cap is checked first, then its contact cap (shared with
        other experiments: counted under ``@<name>`` in the unit's profile, and in ``unit.caps``
        at once so that later placements of the same request or batch see this exposure). Hits
        are queued only when both pass. Without the profile (degraded) caps fail safe.
        """
        exp = compiled.experiment
        hits: list[CapHit] = []
        cap = exp.frequency_cap
        if cap is not None:
            field = exp.key if cap.scope == "experiment" else f"{exp.key}|{variant}"
            if unit.degraded:
                reason = "frequency_cap_unknown"
                return reason
            if _recent(unit, field, cap.window_s) >= cap.max_exposures:
                reason = "frequency_capped"
                return reason
            hits.append(
                CapHit(unit.unit_id, field, unit.now_ms, cap.window_s * 1000, cap.max_exposures)
            )
        contact = self._cache.contact_caps.get(exp.contact_cap) if exp.contact_cap else None
        if contact is not None:
            field = CONTACT_CAP_FIELD + str(exp.contact_cap)
            if unit.degraded:
                reason = "contact_cap_unknown"
                return reason
            if _recent(unit, field, contact.window_s) >= contact.max_exposures:
                reason = "contact_capped"
                return reason
            hits.append(
                CapHit(
                    unit.unit_id,
                    field,
                    unit.now_ms,
                    contact.window_s * 1000,
                    contact.max_exposures,
                )
            )
            # A new dict: the profile's caps may be shared with other requests of this tick.
            unit.caps = {**unit.caps, field: [*unit.caps.get(field, ()), unit.now_ms]}
        for hit in hits:
            self._features.queue_cap_hit(hit)
        return None

    def _default(
        self, placement: str, compiled: Compiled, reason: str, holdout: bool = False
    ) -> Placed:
        exp = compiled.experiment
        variant = exp.variants[compiled.default_index]
        return Placed(
            answer=PlacementDecision(
                placement=placement,
                experiment=exp.key,
                variant=variant.key,
                payload=variant.payload,
                propensity=1.0,
                policy="default",
                reason=reason,
            ),
            compiled=compiled,
            holdout=holdout,
            model_version="",
        )


def global_holdouts(unit_ids: Sequence[str], share: float) -> list[bool]:
    """``in_global_holdout(u, share)`` for every unit, hashed in one vectorised call."""
    if share <= 0:
        return [False] * len(unit_ids)
    return [u < share for u in unit_hash_list(GLOBAL_HOLDOUT_SALT, unit_ids)]
