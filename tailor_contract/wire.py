"""Wire schemas of the HTTP API: msgspec Structs only, no Litestar, so ``sdk/`` reuses them.

Inputs are ``frozen, kw_only, forbid_unknown_fields`` with limits as ``Meta`` constraints, so a
bad request fails at decode time with the offending field's path. Outputs omit defaults where an
absent field reads naturally.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tailor_contract.definitions import (
    KEY_PATTERN,
    Condition,
    Experiment,
    ExperimentSpec,
    LayerSlice,
)
from tailor_contract.send_window import DefaultSendTime, SendWindow

__all__ = [
    "ConsentRequest",
    "ConsentState",
    "ContactCapInfo",
    "ContactCapList",
    "DecideRequest",
    "DecideResponse",
    "Definition",
    "DefinitionVariant",
    "Definitions",
    "ErasureReport",
    "EventAccepted",
    "EventRequest",
    "Experiment",
    "ExperimentList",
    "ExperimentSpec",
    "ExposureBatch",
    "ExposureRecord",
    "ExposureRejection",
    "ExposureReport",
    "ExposuresAccepted",
    "FeaturesRequest",
    "FeaturesStored",
    "Health",
    "KeyCreate",
    "KeyCreated",
    "KeyInfo",
    "KeyList",
    "KillSwitchRequest",
    "KillSwitchState",
    "OutcomeAccepted",
    "OutcomeBatch",
    "OutcomeRecord",
    "OutcomeRequest",
    "PlacementDecision",
    "RedisEntry",
    "SlateCandidate",
    "SlateRequest",
    "SlotDecision",
    "TimestampValue",
    "UnitExport",
]

# Braces are refused: Redis keys wrap the unit id in a Cluster hash tag (``{<unit>}``), and a
# brace inside it would move the tag (and let erasure confuse one unit's keys with another's).
UNIT_ID_PATTERN = r"\A[^\x00-\x1f{}]+\Z"
UnitId = Annotated[str, Meta(min_length=1, max_length=256, pattern=UNIT_ID_PATTERN)]
Placement = Annotated[str, Meta(pattern=KEY_PATTERN, max_length=64)]
AttributeName = Annotated[str, Meta(pattern=r"\A[A-Za-z_][A-Za-z0-9_.:-]{0,63}\Z")]
ShortText = Annotated[str, Meta(max_length=1024)]
MetricName = Annotated[str, Meta(pattern=r"\A[a-z][a-z0-9_]{0,39}\Z")]
DecisionId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"\A[A-Za-z0-9_-]+\Z")]
# A client-generated event id (UUID as 32 lowercase hex digits): a retried submission carries
# the same id, so the event log's ``event_id`` deduplication cannot count it twice.
EventId = Annotated[str, Meta(pattern=r"\A[0-9a-f]{32}\Z")]
AwareTime = Annotated[datetime, Meta(tz=True)]
ContextValue = (
    Annotated[str, Meta(max_length=1024)]
    | int
    | float
    | bool
    | Annotated[list[Annotated[str, Meta(max_length=256)]], Meta(max_length=100)]
)


class TimestampValue(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A timestamp feature: ``{"ts": "2026-11-01T10:00:00Z"}``."""

    ts: AwareTime


FeatureInput = ContextValue | TimestampValue


VariantKey = Annotated[str, Meta(pattern=KEY_PATTERN, max_length=64)]
Exclusions = Annotated[
    dict[Placement, Annotated[list[VariantKey], Meta(max_length=200)]], Meta(max_length=100)
]
"""Per requested placement, variant keys this request must not get (``{"offer": ["b"]}``)."""


ITEM_ID_PATTERN = r"\A[^\x00-\x1f]+\Z"
ItemId = Annotated[str, Meta(min_length=1, max_length=200, pattern=ITEM_ID_PATTERN)]
"""An item of a slate (a product id from a recommender, a content block): any printable text."""
MAX_SLOTS = 50
MAX_SLATE_CANDIDATES = 500


class SlateCandidate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An item a slate may show, passed in the request: its id and the features describing it
    (what the model learns the item's appeal from, crossed with the visitor's)."""

    id: ItemId
    features: Annotated[dict[AttributeName, ContextValue], Meta(max_length=50)] = msgspec.field(
        default_factory=dict
    )


class SlateRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A placement asks for a ranked slate of ``slots`` items instead of one variant.

    ``candidates`` are the items to rank (e.g. from a recommender); without them the
    experiment's variants are ranked. ``slots`` defaults to the policy's ``slots``. Only a
    ``vw_slates`` experiment ranks; another experiment answers one variant as usual.
    """

    slots: Annotated[int, Meta(ge=1, le=MAX_SLOTS)] | None = None
    candidates: (
        Annotated[list[SlateCandidate], Meta(min_length=1, max_length=MAX_SLATE_CANDIDATES)] | None
    ) = None

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for i, candidate in enumerate(self.candidates or ()):
            if candidate.id in seen:
                raise ValueError(f"candidates[{i}].id: duplicate item {candidate.id!r}")
            seen.add(candidate.id)


class DecideRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/decide``: one unit, one or more placements.

    ``exclude`` leaves variants out of this decision, per placement (out of stock, already
    shown on the page): the split or the policy chooses among the others, and a placement with
    no variant left gets its default with reason ``no_eligible_variant``. For a slate it leaves
    items out of the candidates. ``slates`` asks, per placement, for a ranked list of items
    (see :class:`SlateRequest`).
    """

    unit_id: UnitId
    placements: Annotated[list[Placement], Meta(min_length=1, max_length=100)]
    context: Annotated[dict[AttributeName, ContextValue], Meta(max_length=100)] = msgspec.field(
        default_factory=dict
    )
    consent: bool = True
    exclude: Exclusions = msgspec.field(default_factory=dict)
    # Ask learning policies why they chose (``PlacementDecision.explanation``); off by default.
    explain: bool = False
    slates: Annotated[dict[Placement, SlateRequest], Meta(max_length=10)] = msgspec.field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        for placement in self.exclude:
            if placement not in self.placements:
                raise ValueError(f"exclude: {placement!r} is not one of the requested placements")
        for placement in self.slates:
            if placement not in self.placements:
                raise ValueError(f"slates: {placement!r} is not one of the requested placements")


class Factor(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One feature that weighed in a learning policy's choice, in plain names.

    ``value`` is the unit's value of the feature when the policy used it to select a posterior
    (a Thompson segment, an ensemble cell); ``weight`` the model's weight for it (VW).
    """

    feature: str
    value: str | None = None
    weight: float | None = None


class SlotDecision(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """One position of a ranked slate: the item shown there and the probability with which the
    policy put it there given the items of the earlier slots (1.0 for a default order).
    ``payload`` is the variant's when the experiment's variants are ranked."""

    slot: int
    item: str
    propensity: float
    payload: dict[str, Any] | None = None


class PlacementDecision(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """What one placement shows, and why.

    ``experiment``/``variant``/``payload`` are absent when no experiment serves the placement
    (reason ``no_experiment``): the page keeps its built-in default. A placement that asked for
    a slate gets ``slate``, the items in order (``variant``/``payload``/``propensity`` then
    describe its first slot); a default answer (holdout, no model yet...) ranks the request's
    candidates in their given order, or the experiment's default variant first and the others
    in their defined order.
    """

    placement: str
    reason: str
    policy: str = "none"
    propensity: float = 1.0
    experiment: str | None = None
    variant: str | None = None
    payload: dict[str, Any] | None = None
    model_version: str | None = None
    send_at: datetime | None = None
    # Only with ``explain: true`` and a learning policy's choice (reason ``policy``): the
    # features that weighed most, most important first (sensitive features never appear).
    explanation: list[Factor] | None = None
    slate: list[SlotDecision] | None = None


class DecideResponse(msgspec.Struct, kw_only=True):
    """The answer to a decide request; ``degraded`` is true when a backend was skipped."""

    decision_id: str
    degraded: bool
    decisions: list[PlacementDecision]


class OutcomeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/outcomes``: something the unit did after a decision.

    Identify the decision by ``decision_id`` (best) or by ``unit_id`` (optionally narrowed to one
    ``experiment``); at least one of the two is required. ``event_id`` (optional, 32 hex digits)
    makes a resubmission idempotent: the SDK sets it once per outcome and retries with it.
    For a slate, ``item`` (the item's id) or ``slot`` (its position, 0 first) names the slot that
    earned the outcome: the reward is that slot's; an outcome naming neither rewards no slot.
    """

    type: MetricName
    event_id: EventId | None = None
    decision_id: DecisionId | None = None
    unit_id: UnitId | None = None
    experiment: Annotated[str, Meta(pattern=KEY_PATTERN)] | None = None
    value: Annotated[float, Meta(ge=-1e12, le=1e12)] = 0.0
    ts: AwareTime | None = None
    properties: Annotated[dict[AttributeName, ShortText], Meta(max_length=50)] = msgspec.field(
        default_factory=dict
    )
    item: ItemId | None = None
    slot: Annotated[int, Meta(ge=0, lt=MAX_SLOTS)] | None = None

    def __post_init__(self) -> None:
        if self.decision_id is None and self.unit_id is None:
            raise ValueError("decision_id: an outcome needs `decision_id` or `unit_id`")
        if not math.isfinite(self.value):
            raise ValueError("value must be a finite number")


class OutcomeBatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/outcomes/batch``: up to 10,000 outcomes at once (what the SDK sends)."""

    outcomes: Annotated[list[OutcomeRequest], Meta(min_length=1, max_length=10_000)]


class OutcomeAccepted(msgspec.Struct, kw_only=True):
    """Outcomes accepted for the event log; ``joined`` decisions rewarded in the reward join.

    ``degraded`` is true when Redis was unavailable: the outcomes are logged all the same, but
    learning policies did not see them.
    """

    accepted: int
    event_ids: list[str]
    joined: int = 0
    degraded: bool = False


class EventRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/events``: a behavioural event that updates the unit's derived features.

    ``properties.category`` (if given) feeds ``last_categories``; ``value`` is the purchase
    amount for ``purchase`` events.
    """

    unit_id: UnitId
    type: MetricName
    ts: AwareTime | None = None
    value: Annotated[float, Meta(ge=-1e12, le=1e12)] = 0.0
    properties: Annotated[dict[AttributeName, ShortText], Meta(max_length=50)] = msgspec.field(
        default_factory=dict
    )


class EventAccepted(msgspec.Struct, kw_only=True):
    """The event was applied to the profile."""

    unit_id: str
    type: str


class FeaturesRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PUT /v1/units/{unit_id}/features``: upsert typed features."""

    features: Annotated[dict[AttributeName, FeatureInput], Meta(min_length=1, max_length=200)]


class FeaturesStored(msgspec.Struct, kw_only=True):
    """Which features were written."""

    unit_id: str
    stored: list[str]


class ContactCapInfo(msgspec.Struct, kw_only=True):
    """A named contact-pressure cap (``GET``/``PUT /v1/contact-caps/{name}``)."""

    name: str
    max_exposures: int
    window_s: int


class ContactCapList(msgspec.Struct, kw_only=True):
    """``GET /v1/contact-caps``: every cap, by name."""

    contact_caps: list[ContactCapInfo]


class ExperimentList(msgspec.Struct, kw_only=True):
    """``GET /v1/experiments``."""

    experiments: list[Experiment]


class Health(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``/healthz`` and ``/readyz``."""

    status: str
    checks: dict[str, str] = msgspec.field(default_factory=dict)


# --- Access control, consent and data rights (issue 7) ----------------------------------------

ScopeName = Literal["decide", "ingest", "report", "admin"]
KEY_ID_PATTERN = r"\Akey_[0-9a-f]{12}\Z"


class KeyCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/keys``: a new API key with scopes and, optionally, its own rate limit."""

    scopes: Annotated[list[ScopeName], Meta(min_length=1, max_length=4)]
    name: Annotated[str, Meta(max_length=100, pattern=r"\A[^\x00-\x1f]*\Z")] = ""
    rate_per_s: Annotated[float, Meta(gt=0, le=1e6)] | None = None
    burst: Annotated[int, Meta(ge=1, le=10_000_000)] | None = None


class KeyInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An API key as listed: never its secret. ``source`` is ``env`` or ``redis``."""

    key_id: str
    scopes: list[str]
    source: str
    name: str = ""
    created_at: float | None = None
    rate_per_s: float | None = None
    burst: int | None = None


class KeyCreated(KeyInfo, kw_only=True, omit_defaults=True):
    """A created key with its ``secret``, shown this once and stored only as a hash."""

    secret: str = ""


class KeyList(msgspec.Struct, kw_only=True):
    """``GET /v1/keys``."""

    keys: list[KeyInfo]


class ConsentRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PUT /v1/units/{unit_id}/consent``: whether the unit allows personalisation."""

    personalization: bool


class ConsentState(msgspec.Struct, kw_only=True):
    """The unit's stored consent."""

    unit_id: str
    personalization: bool


class KillSwitchRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PUT /v1/kill-switch``: engage (defaults everywhere) or release."""

    engaged: bool


class KillSwitchState(msgspec.Struct, kw_only=True):
    """The global kill switch; ``forced`` when the settings engage it (API cannot release)."""

    engaged: bool
    forced: bool


class ExposureRecord(msgspec.Struct, kw_only=True):
    """One exposure row as stored in the event log."""

    event_id: str
    decision_id: str
    ts: datetime
    unit_id: str
    experiment: str
    experiment_version: int
    placement: str
    variant: str
    propensity: float
    policy: str
    policy_version: str
    reason: str
    holdout: bool
    context: dict[str, str]


class OutcomeRecord(msgspec.Struct, kw_only=True):
    """One outcome row as stored in the event log."""

    event_id: str
    ts: datetime
    decision_id: str
    unit_id: str
    experiment: str
    type: str
    value: float
    properties: dict[str, str]


class RedisEntry(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A Redis key about the unit other than its profile (decision records, caps, indexes)."""

    key: str
    type: str
    ttl_s: int | None = None
    value: str | list[str] | dict[str, str] | None = None


class UnitExport(msgspec.Struct, kw_only=True):
    """``GET /v1/units/{unit_id}/export``: everything Tailor stores about one unit.

    ``features`` are the stored typed features (timestamps as epoch seconds); ``derived`` the
    behavioural features computed from event counters; ``hours`` the hour-of-week histograms;
    ``frequency_caps`` the epoch-ms times of recent capped exposures, per experiment (|variant);
    ``exposures``/``outcomes`` the event-log rows under the unit id and under its pseudonym
    (``truncated`` when more than the export limit exist).
    """

    unit_id: str
    pseudonym: str
    personalization: bool
    features: dict[str, str | int | float | bool | list[str]]
    derived: dict[str, str | int | float | bool | list[str]]
    hours: dict[str, list[int]]
    frequency_caps: dict[str, list[int]]
    redis: list[RedisEntry]
    exposures: list[ExposureRecord]
    outcomes: list[OutcomeRecord]
    truncated: bool = False


class ErasureReport(msgspec.Struct, kw_only=True):
    """What ``DELETE /v1/units/{unit_id}`` removed; the audit entry names only ``pseudonym``."""

    pseudonym: str
    redis_keys: int
    event_log_rows: dict[str, int]
    unwritten_events: int


class Recipient(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """One email recipient of a bulk decision.

    ``unit_id`` is checked per recipient (a bad one is reported in that recipient's ``error``
    without failing the batch); ``timezone`` (IANA name) falls back to the context's or the
    profile's ``timezone`` feature, then UTC. ``exclude`` leaves variants out of this
    recipient's decisions, per placement (an offer already sent), as in ``POST /v1/decide``.
    """

    unit_id: Annotated[str, Meta(max_length=4096)]
    context: Annotated[dict[AttributeName, ContextValue], Meta(max_length=100)] = msgspec.field(
        default_factory=dict
    )
    consent: bool = True
    timezone: Annotated[str, Meta(max_length=64)] | None = None
    exclude: Exclusions = msgspec.field(default_factory=dict)


class BatchDecideRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/decide/batch``: variants (and send times) for many recipients at once.

    ``placements`` may include ``send_time`` placements (served by experiments of kind
    ``send_time``), which need ``send_window``; ``default_send_time`` overrides the experiments'
    default for this campaign. ``step`` names a workflow step (abandoned_cart, welcome, ...):
    it is visible to targeting as the attribute ``step``, next to ``campaign``. ``context``
    applies to every recipient (a recipient's own context wins). ``slates`` asks, per
    placement, every recipient's ranked slate (email content blocks; the candidates are shared
    by the campaign, see :class:`SlateRequest`). ``explain`` asks learning
    policies why they chose, as on ``/v1/decide``: every answer a learning policy chose carries
    an ``explanation`` (off by default; it costs a model lookup per answer).
    """

    campaign: Annotated[str, Meta(pattern=KEY_PATTERN, max_length=64)]
    placements: Annotated[list[Placement], Meta(min_length=1, max_length=20)]
    recipients: Annotated[list[Recipient], Meta(min_length=1, max_length=1_000_000)]
    send_window: SendWindow | None = None
    default_send_time: DefaultSendTime | None = None
    step: Annotated[str, Meta(pattern=KEY_PATTERN, max_length=64)] | None = None
    context: Annotated[dict[AttributeName, ContextValue], Meta(max_length=100)] = msgspec.field(
        default_factory=dict
    )
    explain: bool = False
    slates: Annotated[dict[Placement, SlateRequest], Meta(max_length=10)] = msgspec.field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        for placement in self.slates:
            if placement not in self.placements:
                raise ValueError(f"slates: {placement!r} is not one of the requested placements")


class RecipientError(msgspec.Struct, kw_only=True):
    """Why one recipient got no decision."""

    code: str
    field: str
    message: str


class RecipientDecision(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """One recipient's answer (a line of the NDJSON stream)."""

    index: int
    unit_id: str
    decision_id: str | None = None
    degraded: bool = False
    decisions: list[PlacementDecision] = msgspec.field(default_factory=list)
    error: RecipientError | None = None


class BatchDecideResponse(msgspec.Struct, kw_only=True):
    """The whole answer when not streamed."""

    campaign: str
    count: int
    errors: int
    degraded: bool
    recipients: list[RecipientDecision]


# --- Local evaluation (SDK): definitions out, locally made exposures in ----------------------


class DefinitionVariant(msgspec.Struct, kw_only=True):
    """A variant as local evaluation needs it: key, split weight, payload."""

    key: str
    weight: float
    payload: dict[str, Any]


class Definition(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A live ``fixed`` experiment reduced to the fields assignment reads.

    ``salt`` is the salt the hash uses (the key unless set); ``status`` is ``running`` or
    ``paused``; experiments of one placement are considered by ``priority`` (high first), then key.
    """

    key: str
    placement: str
    salt: str
    variants: list[DefinitionVariant]
    default_variant: str
    status: str
    version: int
    priority: int = 0
    holdout: float = 0.0
    layer: str | None = None
    layer_slice: LayerSlice | None = None
    targeting: Condition | None = None


class Definitions(msgspec.Struct, kw_only=True):
    """``GET /v1/definitions``: what an SDK needs to assign ``fixed`` experiments locally.

    ``remote_placements`` are served by an experiment that cannot be evaluated locally (learning
    policy, send time, frequency cap): the SDK asks the API for those. ``version`` is the config
    version (also in the ``ETag``); ``hash_version`` the assignment hash the server uses.
    """

    version: int
    hash_version: int
    global_holdout: float
    kill_switch: bool
    experiments: list[Definition]
    remote_placements: list[str]


LocalReason = Literal[
    "split",
    "holdout",
    "global_holdout",
    "no_consent",
    "not_targeted",
    "outside_layer",
    "experiment_paused",
    "kill_switch",
]


class ExposureReport(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One exposure decided by an SDK's local evaluator.

    ``event_id`` (client-generated) makes resubmission idempotent. The server sets the policy
    (``fixed`` for ``split``, ``default`` otherwise), pseudonymises the unit id and drops the
    context when ``consent`` is false, as for its own decisions.
    """

    event_id: EventId
    decision_id: DecisionId
    unit_id: UnitId
    experiment: Annotated[str, Meta(pattern=KEY_PATTERN)]
    experiment_version: Annotated[int, Meta(ge=1)]
    placement: Placement
    variant: Annotated[str, Meta(pattern=KEY_PATTERN)]
    reason: LocalReason
    propensity: Annotated[float, Meta(gt=0, le=1)]
    ts: AwareTime
    consent: bool = True
    context: Annotated[dict[AttributeName, ContextValue], Meta(max_length=100)] = msgspec.field(
        default_factory=dict
    )


class ExposureBatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/exposures/batch``: up to 10,000 locally decided exposures."""

    exposures: Annotated[list[ExposureReport], Meta(min_length=1, max_length=10_000)]


class ExposureRejection(msgspec.Struct, kw_only=True):
    """An exposure the server refused (unknown experiment or variant): not logged, not retried."""

    index: int
    field: str
    message: str


class ExposuresAccepted(msgspec.Struct, kw_only=True, omit_defaults=True):
    """How many exposures were logged; the others are listed in ``rejected``."""

    accepted: int
    rejected: list[ExposureRejection] = msgspec.field(default_factory=list)
