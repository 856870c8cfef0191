"""Experiment definitions: what marketers write and what the decision path reads.

An :class:`ExperimentSpec` is the user-editable definition (the admin API's request body); an
:class:`Experiment` adds what the service owns: status, version, timestamps and the layer slice
allocated at start. All validation that needs more than one field lives in ``__post_init__`` so
that a bad definition fails at decode time with a message naming the field.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tailor_contract.policies import (
    EpsilonGreedyConfig,
    FixedConfig,
    PolicyConfig,
    SendTimeThompsonConfig,
    ThompsonConfig,
    VWCBConfig,
    VWSlatesConfig,
)
from tailor_contract.send_window import DefaultSendTime, HourKind, LocalHour, hour_key, hours_in

KEY_PATTERN = r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z"
Key = Annotated[str, Meta(pattern=KEY_PATTERN, max_length=64)]
AttributeName = Annotated[str, Meta(min_length=1, max_length=64)]
MetricName = Annotated[str, Meta(pattern=r"\A[a-z][a-z0-9_]{0,39}\Z")]
AwareTime = Annotated[datetime, Meta(tz=True)]
"""A timestamp with its offset (``2026-12-24T00:00:00Z``); a naive one is refused."""
RuleScalar = str | int | float | bool
RuleValue = RuleScalar | list[RuleScalar] | None

MAX_RULE_DEPTH = 4
MAX_RULES = 50

Operator = Literal["eq", "ne", "in", "lt", "lte", "gt", "gte", "exists", "contains"]
ORDERED_OPERATORS = frozenset({"lt", "lte", "gt", "gte"})

DEFAULT_REWARD_WINDOW_S = 3600
"""Default ``reward_window_s``: how long outcomes count, and so how late a decision is learned."""


class Status(StrEnum):
    """Lifecycle of an experiment."""

    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class Condition(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A targeting rule or a group of rules.

    Either a leaf ``{"attribute", "op", "value"}`` or a group ``{"all": [...]}`` /
    ``{"any": [...]}`` whose members are conditions again (at most ``MAX_RULE_DEPTH`` deep).
    Attributes are looked up in the unit's features merged with the request context.
    """

    attribute: AttributeName | None = None
    op: Operator | None = None
    value: RuleValue = None
    all: Annotated[list[Condition], Meta(max_length=MAX_RULES)] | None = None
    any: Annotated[list[Condition], Meta(max_length=MAX_RULES)] | None = None

    def __post_init__(self) -> None:
        is_group = self.all is not None or self.any is not None
        if is_group:
            if self.attribute is not None or self.op is not None:
                raise ValueError(
                    "a condition is either a rule (attribute, op) or a group (all/any)"
                )
            if self.all is not None and self.any is not None:
                raise ValueError("a group has either `all` or `any`, not both")
            if depth(self) > MAX_RULE_DEPTH:
                raise ValueError(f"targeting is nested deeper than {MAX_RULE_DEPTH} levels")
            return
        if self.attribute is None or self.op is None:
            raise ValueError("a rule needs `attribute` and `op`")
        _check_rule_value(self.op, self.value)

    def attributes(self) -> set[str]:
        """Every attribute this condition reads, at any depth."""
        if self.attribute is not None:
            return {self.attribute}
        found: set[str] = set()
        for child in self.all or self.any or []:
            found |= child.attributes()
        return found


def depth(condition: Condition) -> int:
    """Nesting depth of a condition: a rule is 1, a group of rules is 2."""
    children = condition.all or condition.any or []
    return 1 + max((depth(c) for c in children), default=0)


def _check_rule_value(op: str, value: RuleValue) -> None:
    # "value: ..." names the field: the API reports the error at the rule's `value`.
    if op == "in":
        if not isinstance(value, list) or not value:
            raise ValueError("value: `in` needs a non-empty list `value`")
    elif op in ORDERED_OPERATORS:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"value: `{op}` needs a number or string `value`")
    elif op == "exists":
        if value is not None and not isinstance(value, bool):
            raise ValueError("value: `exists` takes no value or a boolean `value`")
    elif op in {"eq", "ne", "contains"} and (value is None or isinstance(value, list)):
        raise ValueError(f"value: `{op}` needs a scalar `value`")


class Variant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One arm: what is shown (``payload``), its split weight, and features describing it.

    ``eligible`` (a targeting condition over the unit's profile merged with the request context,
    e.g. ``{"attribute": "stock_b", "op": "gt", "value": 0}``) leaves the variant out of a
    decision when it does not match: the split or the policy chooses among the eligible variants.
    """

    key: Key
    weight: Annotated[float, Meta(ge=0, le=1e6)] = 1.0
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    features: dict[str, str | float | bool | list[str]] = msgspec.field(default_factory=dict)
    eligible: Condition | None = None

    def __post_init__(self) -> None:
        # -0.0 passes ``ge=0`` (it equals 0) but is no weight anyone means: refuse it by name.
        if math.copysign(1.0, self.weight) < 0:
            raise ValueError(f"weight: {self.weight} must be >= 0 (not negative zero)")


class RewardRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How one outcome type turns into reward: ``reward`` per event, or ``reward * value``."""

    type: MetricName
    reward: Annotated[float, Meta(ge=-1e6, le=1e6)] = 1.0
    per_value: bool = False


class RewardSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The reward join's rules for a learning policy.

    Outcomes within the reward window are mapped through ``rules``; ``first`` keeps the first
    matching outcome's reward, ``sum`` adds them (clipped to ``[min_reward, max_reward]``). A
    decision with no outcome by the window's end gets ``default``.
    """

    rules: list[RewardRule] | None = None
    aggregation: Literal["first", "sum"] = "first"
    default: float = 0.0
    min_reward: float = 0.0
    max_reward: float = 1.0

    def __post_init__(self) -> None:
        if self.min_reward > self.max_reward:
            raise ValueError("min_reward must be <= max_reward")


class FrequencyCap(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """At most ``max_exposures`` non-default exposures per unit over ``window_s``.

    ``scope`` counts per experiment (every variant) or per variant (e.g. one discount offer).
    When the cap is reached the unit gets the default variant with reason ``frequency_capped``.
    """

    max_exposures: Annotated[int, Meta(ge=1, le=10_000)]
    window_s: Annotated[int, Meta(ge=1, le=366 * 86400)]
    scope: Literal["experiment", "variant"] = "experiment"


class ContactCap(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A contact-pressure cap shared by experiments: at most ``max_exposures`` non-default
    exposures per unit over ``window_s``, counted across every experiment that names the cap
    (``contact_cap``), whatever their placements or campaigns. Past it the unit gets each
    experiment's default with reason ``contact_capped``; experiments with a higher ``priority``
    are decided first when one request or one batch fills several of them."""

    max_exposures: Annotated[int, Meta(ge=1, le=10_000)]
    window_s: Annotated[int, Meta(ge=1, le=366 * 86400)]


class SendTimeSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A ``send_time`` experiment's actions (local hours) and its default send time.

    The default applies to the holdout and to recipients the experiment does not serve; a batch
    request may override it for one campaign.
    """

    hours: HourKind = "hour_of_day"
    default: DefaultSendTime = LocalHour(hour=10)

    def __post_init__(self) -> None:
        if isinstance(self.default, LocalHour) and not 0 <= self.default.hour < hours_in(
            self.hours
        ):
            raise ValueError(
                f"default.hour: {self.default.hour} is not an hour of {self.hours} "
                f"(0..{hours_in(self.hours) - 1})"
            )


DAYPARTS = ("night", "morning", "afternoon", "evening")


def hour_variants(hours: HourKind) -> list[Variant]:
    """The actions of a send-time experiment: one variant per local hour, with features."""
    n = hours_in(hours)
    variants = []
    for h in range(n):
        hour = h % 24
        features: dict[str, str | float | bool | list[str]] = {
            "hour": str(hour),
            "daypart": DAYPARTS[hour // 6],
        }
        if n == 168:
            features["weekday"] = str(h // 24)
        variants.append(Variant(key=hour_key(h, n), payload={"hour": h}, features=features))
    return variants


class ExperimentSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a marketer defines (create / update body).

    ``kind: content`` (default) chooses among ``variants``; ``kind: send_time`` chooses a local
    hour for each email recipient (its variants are generated: ``h00``..``h23`` or
    ``h000``..``h167``, so leave ``variants`` and ``default_variant`` out).
    """

    key: Key
    placement: Key
    variants: Annotated[list[Variant], Meta(max_length=200)] = msgspec.field(default_factory=list)
    default_variant: Annotated[str, Meta(max_length=64)] = ""
    kind: Literal["content", "send_time"] = "content"
    send_time: SendTimeSpec | None = None
    policy: PolicyConfig = FixedConfig()
    targeting: Condition | None = None
    holdout: Annotated[float, Meta(ge=0, le=0.9)] = 0.0
    layer: Key | None = None
    traffic: Annotated[float, Meta(gt=0, le=1)] = 1.0
    priority: Annotated[int, Meta(ge=-1000, le=1000)] = 0
    salt: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    primary_metric: MetricName = "conversion"
    guardrail_metrics: Annotated[list[MetricName], Meta(max_length=20)] = msgspec.field(
        default_factory=list
    )
    hypothesis: Annotated[str, Meta(max_length=4000)] = ""
    name: Annotated[str, Meta(max_length=200)] = ""
    # One hour by default: a learning policy learns each decision when its window closes, so
    # the window is also the learning delay; an hour holds the clicks and in-session
    # conversions of a page view. Email and send-time experiments set a longer one (a day or
    # two) so that later opens count. Stored definitions keep the window they were made with.
    reward_window_s: Annotated[int, Meta(ge=1, le=30 * 86400)] = DEFAULT_REWARD_WINDOW_S
    reward: RewardSpec = RewardSpec()
    frequency_cap: FrequencyCap | None = None
    # The schedule: a draft starts by itself at ``start_at``, a live experiment stops by itself
    # at ``end_at`` (checked by every worker's config poll; audited with actor ``schedule``).
    start_at: AwareTime | None = None
    end_at: AwareTime | None = None
    # A contact-pressure cap shared with other experiments (``PUT /v1/contact-caps/{name}``).
    contact_cap: Key | None = None
    # Pause the running experiment by itself when the report finds significant harm on a
    # guard-rail metric (always-valid test, after the multiple-testing correction); checked in
    # the background every ``TAILOR_DECISIONS_GUARDRAIL_CHECK_INTERVAL_S``, audited with actor
    # ``guardrail``, and said in the report.
    auto_pause_on_harm: bool = False

    def __post_init__(self) -> None:
        if self.start_at is not None and self.end_at is not None and self.end_at <= self.start_at:
            raise ValueError(
                f"end_at: {self.end_at.isoformat()} must be after start_at "
                f"{self.start_at.isoformat()}"
            )
        if self.auto_pause_on_harm and not self.guardrail_metrics:
            raise ValueError(
                "auto_pause_on_harm: needs at least one guard-rail metric (guardrail_metrics)"
            )
        if self.kind == "send_time":
            self._check_send_time()
            return
        if self.send_time is not None:
            raise ValueError("send_time: only experiments of kind send_time take send_time")
        if isinstance(self.policy, SendTimeThompsonConfig):
            raise ValueError("policy: send_time_thompson needs an experiment of kind send_time")
        if not self.variants:
            raise ValueError("variants: a content experiment needs at least one variant")
        seen: set[str] = set()
        for i, variant in enumerate(self.variants):
            if variant.key in seen:
                raise ValueError(f"variants[{i}].key: duplicate variant key {variant.key!r}")
            seen.add(variant.key)
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError("variants: weights must sum to a positive total")
        if self.default_variant not in seen:
            raise ValueError(
                f"default_variant: {self.default_variant!r} is not one of the variants"
            )
        if isinstance(
            self.policy, ThompsonConfig | EpsilonGreedyConfig | VWCBConfig | VWSlatesConfig
        ):
            # The floors must fit the arms here: a policy that cannot be built would otherwise
            # fail in every worker's config refresh once the experiment starts.
            try:
                self.policy.check_arms(len(self.variants))
            except ValueError as exc:
                field = str(exc).partition(" ")[0]  # "min_share == ..." / "min_propensity == ..."
                raise ValueError(f"policy.{field}: {exc}") from exc

    def _check_send_time(self) -> None:
        hours = self.send_time.hours if self.send_time is not None else "hour_of_day"
        if self.variants and [v.key for v in self.variants] != [
            v.key for v in hour_variants(hours)
        ]:
            raise ValueError("variants: a send_time experiment's variants are generated; omit them")
        if not isinstance(self.policy, FixedConfig | SendTimeThompsonConfig | VWCBConfig):
            raise ValueError(
                "policy: send_time experiments take fixed, send_time_thompson or vw_cb"
            )
        if isinstance(self.policy, SendTimeThompsonConfig) and self.policy.n_hours != hours_in(
            hours
        ):
            raise ValueError(f"policy.n_hours: must be {hours_in(hours)} for {hours}")

    def normalised(self) -> ExperimentSpec:
        """The spec as stored: send-time experiments get their generated hour variants."""
        if self.kind != "send_time" or self.variants:
            return self
        timing = self.send_time or SendTimeSpec()
        variants = hour_variants(timing.hours)
        default = variants[0].key
        if isinstance(timing.default, LocalHour):
            default = variants[timing.default.hour].key
        return msgspec.structs.replace(
            self, variants=variants, default_variant=default, send_time=timing
        )

    @property
    def hash_salt(self) -> str:
        """The salt assignment hashes with (the key unless set explicitly)."""
        return self.salt if self.salt is not None else self.key

    def variant(self, key: str) -> Variant:
        """The variant called ``key``; raises KeyError when there is none."""
        for v in self.variants:
            if v.key == key:
                return v
        raise KeyError(key)

    @property
    def reward_rules(self) -> list[RewardRule]:
        """Reward rules, defaulting to one reward per primary-metric outcome."""
        if self.reward.rules is not None:
            return self.reward.rules
        return [RewardRule(type=self.primary_metric)]


class LayerSlice(msgspec.Struct, frozen=True, kw_only=True):
    """The ``[start, end)`` share of a layer's hash space an experiment owns."""

    start: float
    end: float


class Experiment(ExperimentSpec, frozen=True, kw_only=True):
    """A stored definition: the spec plus what the service manages."""

    status: Status = Status.DRAFT
    version: int = 1
    created_at: float = 0.0
    updated_at: float = 0.0
    layer_slice: LayerSlice | None = None
    # Why the guard-rail check paused the experiment (None when it did not); kept through an
    # update and a stop so the report can say so, cleared when the experiment starts again.
    paused_reason: str | None = None

    def spec(self) -> ExperimentSpec:
        """The user-editable part of this definition."""
        fields = {f: getattr(self, f) for f in ExperimentSpec.__struct_fields__}
        return ExperimentSpec(**fields)


def check_sensitive(spec: ExperimentSpec, denylist: frozenset[str]) -> None:
    """Raise ValueError when targeting reads a feature on the sensitive-feature denylist."""
    if spec.targeting is not None:
        used = spec.targeting.attributes() & denylist
        if used:
            raise ValueError(f"targeting: sensitive features may not be used: {sorted(used)}")
    for i, variant in enumerate(spec.variants):
        named = variant.eligible.attributes() & denylist if variant.eligible is not None else set()
        if named:
            raise ValueError(
                f"variants[{i}].eligible: sensitive features may not be used: {sorted(named)}"
            )
