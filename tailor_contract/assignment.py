"""Deterministic assignment: a versioned hash of (salt, unit id) mapped to ``[0, 1)``.

The same unit gets the same answer on every worker, machine and restart, with no state. The
algorithm is pinned by ``tests/golden/assignment_cases.json``, which the SDK's local evaluator
passes too; changing anything here means a new ``HASH_VERSION``, never a silent change.

Version 1: ``sha256(f"v1|{salt}|{unit_id}")``, first 8 bytes big-endian, divided by 2**64.
Independent streams (variant, holdout, layer, global holdout) use distinct salts, so changing one
experiment's salt moves no unit in another experiment.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

from tailor_contract.definitions import LayerSlice

HASH_VERSION = 1
_SCALE = float(1 << 64)
GLOBAL_HOLDOUT_SALT = "tailor:global-holdout"


def unit_hash(salt: str, unit_id: str) -> float:
    """Map (salt, unit id) to a uniform number in ``[0, 1)``, identically everywhere."""
    digest = hashlib.sha256(f"v{HASH_VERSION}|{salt}|{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def cumulative_shares(weights: Sequence[float]) -> list[float]:
    """Normalised cumulative weights; the last entry is exactly 1.0."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive total")
    shares = [w / total for w in accumulate(weights)]
    shares[-1] = 1.0
    return shares


def pick_bucket(u: float, cumulative: Sequence[float]) -> int:
    """Index of the bucket whose ``[lower, upper)`` holds ``u``; zero-weight buckets never win."""
    return min(bisect_right(cumulative, u), len(cumulative) - 1)


def variant_index(salt: str, unit_id: str, weights: Sequence[float]) -> int:
    """The variant a unit gets in a fixed split with these weights."""
    return pick_bucket(unit_hash(salt, unit_id), cumulative_shares(weights))


def in_holdout(salt: str, unit_id: str, holdout: float) -> bool:
    """Whether the unit falls in the experiment's holdout slice (default experience)."""
    return holdout > 0 and unit_hash(salt + ":holdout", unit_id) < holdout


def in_global_holdout(unit_id: str, share: float) -> bool:
    """Whether the unit is in the service-wide holdout that measures personalisation itself."""
    return share > 0 and unit_hash(GLOBAL_HOLDOUT_SALT, unit_id) < share


def in_layer(layer: str, unit_id: str, layer_slice: LayerSlice) -> bool:
    """Whether the unit's position in the layer falls in the experiment's slice of it."""
    u = unit_hash("layer:" + layer, unit_id)
    return layer_slice.start <= u < layer_slice.end


def allocate_slice(taken: Sequence[LayerSlice], traffic: float) -> LayerSlice | None:
    """First free ``[start, start + traffic)`` interval of a layer, or None when it is full.

    Slices of experiments already in the layer never move, so starting a new experiment does not
    reassign anyone in the others.
    """
    cursor = 0.0
    eps = 1e-12
    for s in sorted(taken, key=lambda s: s.start):
        if s.start - cursor >= traffic - eps:
            break
        cursor = max(cursor, s.end)
    if 1.0 - cursor < traffic - eps:
        return None
    return LayerSlice(start=cursor, end=min(1.0, cursor + traffic))
