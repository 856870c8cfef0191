"""Ranked slates on the decision path: what a slate may show, and the answer's slots.

A placement asks for a slate with ``slates: {"<placement>": {"slots": k, "candidates": [...]}}``
(:class:`~tailor_contract.wire.SlateRequest`). Only a ``vw_slates`` experiment ranks: its policy
fills the slots in order (:mod:`bandits.vw_slates`) and each slot's conditional propensity is
answered, logged as one exposure per slot, and kept for the reward join. Any other experiment
answers one variant, as without ``slates``.

What may be shown (the *offer*): the request's candidates, else the experiment's variants
(with their payloads); items the request excludes for the placement, and variants whose
``eligible`` condition does not match, are left out. A default answer of a ``vw_slates``
experiment (holdout, targeting, no model yet, caps...) shows the offer in a fixed order — the
request's order, or the default variant first and the others as defined — with propensity 1
per slot, so that the holdout measures the value of the learned ranking against that order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from bandits.base import Candidate
from bandits.slates import Slate
from bandits.spec import candidate_features
from decision_api.decisions.eligibility import eligible_indexes
from experiments.cache import Compiled
from tailor_contract.wire import SlateRequest, SlotDecision

__all__ = ["Offer", "default_slate", "offer_of", "ranked_slate"]


class Offer(msgspec.Struct, frozen=True, kw_only=True):
    """The items one slate decision may show, in their given order.

    ``candidates`` are what the policy ranks (its indexes point here); ``payloads`` each item's
    variant payload (None for a request's item); ``features`` the request's item features (what
    the learner needs with the decision record; None for the experiment's variants);
    ``eligible`` the variant indexes offered when only some are (None: all, or request items).
    """

    candidates: list[Candidate]
    payloads: list[dict[str, Any] | None]
    features: list[dict[str, Any]] | None
    eligible: list[int] | None

    @property
    def keys(self) -> list[str]:
        """The items' keys."""
        return [c.key for c in self.candidates]

    @property
    def from_request(self) -> bool:
        """Whether the items came in the request (not the experiment's variants)."""
        return self.features is not None


def offer_of(
    compiled: Compiled,
    ask: SlateRequest,
    attributes: Mapping[str, Any],
    excluded: frozenset[str],
) -> Offer:
    """What the slate may show: the request's candidates or the eligible variants, minus the
    excluded items."""
    if ask.candidates is not None:
        kept = [c for c in ask.candidates if c.id not in excluded]
        return Offer(
            candidates=[Candidate(key=c.id, features=c.features) for c in kept],
            payloads=[None] * len(kept),
            features=[dict(c.features) for c in kept],
            eligible=None,
        )
    variants = compiled.experiment.variants
    eligible = eligible_indexes(compiled, attributes, excluded)
    order = range(len(variants)) if eligible is None else eligible
    return Offer(
        candidates=[
            Candidate(
                key=variants[i].key,
                features=candidate_features(variants[i].payload, variants[i].features),
            )
            for i in order
        ],
        payloads=[variants[i].payload for i in order],
        features=None,
        eligible=eligible,
    )


def default_slate(offer: Offer, slots: int, default_key: str) -> list[SlotDecision]:
    """The fixed order a default answer shows: the offer as given, the experiment's default
    variant first when it is offered; the first ``slots`` items, each with propensity 1."""
    order = list(range(len(offer.candidates)))
    keys = offer.keys
    if not offer.from_request and default_key in keys:
        first = keys.index(default_key)
        order = [first, *(i for i in order if i != first)]
    return [
        SlotDecision(slot=j, item=keys[i], propensity=1.0, payload=offer.payloads[i])
        for j, i in enumerate(order[:slots])
    ]


def ranked_slate(offer: Offer, slate: Slate) -> list[SlotDecision]:
    """The answer's slots for a slate the policy drew over ``offer.candidates``."""
    return [
        SlotDecision(slot=j, item=s.key, propensity=s.propensity, payload=offer.payloads[s.index])
        for j, s in enumerate(slate.slots)
    ]


def slate_size(ask: SlateRequest, policy_slots: int, offered: int) -> int:
    """How many slots to fill: the request's ``slots`` (else the policy's), at most the items
    offered."""
    return min(ask.slots if ask.slots is not None else policy_slots, offered)


def first_slot(slots: Sequence[SlotDecision]) -> SlotDecision | None:
    """The first position of a slate, if it has any."""
    return slots[0] if slots else None
