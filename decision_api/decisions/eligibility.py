"""Per-variant eligibility: which variants one decision may choose among, and the split over them.

A variant is eligible for a decision when its ``eligible`` condition (if any) matches the unit's
attributes (profile merged with the request context) and the request does not ``exclude`` it.
When every variant is eligible nothing changes (the hot path pays one flag test). Otherwise the
decision is made over the eligible set only, and the logged propensity is the probability over
that set:

- a ``fixed`` split renormalises the weights of the eligible variants (a unit keeps its hash);
- a learning policy is handed only the eligible candidates (its pmf covers just them);
- with no eligible variant (or only zero-weight ones under a split) the placement gets its
  default variant, reason ``no_eligible_variant``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from experiments.cache import Compiled
from tailor_contract.assignment import cumulative_shares, pick_bucket, unit_hash
from tailor_contract.targeting import matches

NO_ELIGIBLE_VARIANT = "no_eligible_variant"
"""The reason of a placement whose variants are all ineligible or excluded."""


def eligible_indexes(
    compiled: Compiled, attributes: Mapping[str, Any], excluded: frozenset[str]
) -> list[int] | None:
    """Indexes of the variants this decision may choose, or None when all of them are eligible.

    Args:
        compiled: The experiment deciding the placement.
        attributes: What the ``eligible`` conditions see (profile merged with the context).
        excluded: Variant keys the request excludes on this placement.
    """
    if not compiled.conditional and not excluded:
        return None
    variants = compiled.experiment.variants
    keep = [
        i
        for i, v in enumerate(variants)
        if v.key not in excluded and (v.eligible is None or matches(v.eligible, attributes))
    ]
    return None if len(keep) == len(variants) else keep


def split_among(
    compiled: Compiled, unit_id: str, eligible: Sequence[int]
) -> tuple[int, float] | None:
    """The hash split over the eligible variants' weights: ``(variant index, propensity)``.

    None when the eligible variants carry no weight (a zero weight is never drawn by a split).
    """
    variants = compiled.experiment.variants
    weights = [variants[i].weight for i in eligible]
    if sum(weights) <= 0:
        return None
    cumulative = cumulative_shares(weights)
    k = pick_bucket(unit_hash(compiled.experiment.hash_salt, unit_id), cumulative)
    lower = cumulative[k - 1] if k else 0.0
    return eligible[k], cumulative[k] - lower
