"""The placement walk: which experiment of a placement decides a unit, or why none does.

One function, called by the server's decision engine and by the SDK's local evaluator, so the
order of the rules cannot drift between them. For the experiments serving a placement, highest
priority first:

1. kill switch engaged → the first experiment's default (``kill_switch``);
2. paused → remembered as the fallback (``experiment_paused``), next experiment;
3. targeting does not match → fallback (``not_targeted``), next;
4. outside the experiment's layer slice → fallback (``outside_layer``), next;
5. in the global holdout → this experiment's default (``global_holdout``);
6. in the experiment's holdout → default (``holdout``);
7. no consent → default (``no_consent``);
8. a send-time experiment → ``send_time`` (decided by the bulk path with a send window);
9. otherwise → ``assign``: the experiment's policy chooses the variant.

With no experiment left, the first fallback applies, else ``no_experiment``. The walk is pure
(stdlib and msgspec only): the caller turns the verdict into an answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar

import msgspec

from tailor_contract.assignment import in_holdout, in_layer, unit_hash
from tailor_contract.definitions import Condition, LayerSlice
from tailor_contract.targeting import matches

__all__ = [
    "ASSIGN",
    "DEFAULT_REASONS",
    "HOLDOUT_REASONS",
    "NO_EXPERIMENT",
    "SEND_TIME",
    "Gate",
    "Gated",
    "walk",
    "walk_many",
]

ASSIGN: Final = "assign"
"""The verdict that the experiment's policy assigns the unit."""
SEND_TIME: Final = "send_time"
"""The verdict for a send-time experiment that would assign (needs a send window)."""
NO_EXPERIMENT: Final = "no_experiment"
HOLDOUT_REASONS: Final = frozenset({"global_holdout", "holdout"})
"""Default reasons that put the unit in a holdout group (logged with ``holdout = 1``)."""
DEFAULT_REASONS: Final = frozenset(
    {
        "kill_switch",
        "experiment_paused",
        "not_targeted",
        "outside_layer",
        "global_holdout",
        "holdout",
        "no_consent",
    }
)
"""Verdicts answered with the experiment's default variant."""


class Gate(msgspec.Struct, frozen=True, kw_only=True):
    """What the walk reads of one experiment, built once when definitions are compiled."""

    paused: bool
    salt: str
    holdout: float = 0.0
    layer: str | None = None
    layer_slice: LayerSlice | None = None
    targeting: Condition | None = None
    send_time: bool = False


class Gated(Protocol):
    """A compiled experiment the walk can read (the server's and the SDK's both are)."""

    @property
    def gate(self) -> Gate:
        """The experiment's gate."""
        ...


G = TypeVar("G", bound=Gated)


def walk(
    candidates: Iterable[G],
    *,
    unit_id: str,
    attributes: Mapping[str, Any],
    consent: bool,
    kill_switch: bool,
    global_holdout: bool,
) -> tuple[G | None, str]:
    """The experiment that decides ``unit_id`` on this placement and the verdict.

    Args:
        candidates: The placement's live experiments, highest priority first.
        unit_id: The unit's id (hashed for layers and holdouts).
        attributes: What targeting sees (profile merged with the request context).
        consent: Whether the unit may be personalised.
        kill_switch: Whether the global kill switch is engaged.
        global_holdout: Whether the unit is in the global holdout.

    Returns:
        ``(experiment, verdict)``: the verdict is :data:`ASSIGN`, :data:`SEND_TIME` or a reason
        answered with that experiment's default variant; ``(None, "no_experiment")`` when no
        experiment serves the placement.
    """
    fallback: tuple[G, str] | None = None
    for candidate in candidates:
        gate = candidate.gate
        if kill_switch:
            return candidate, "kill_switch"
        if gate.paused:
            fallback = fallback or (candidate, "experiment_paused")
            continue
        if gate.targeting is not None and not matches(gate.targeting, attributes):
            fallback = fallback or (candidate, "not_targeted")
            continue
        if gate.layer is not None and (
            gate.layer_slice is None or not in_layer(gate.layer, unit_id, gate.layer_slice)
        ):
            fallback = fallback or (candidate, "outside_layer")
            continue
        if global_holdout:
            return candidate, "global_holdout"
        if in_holdout(gate.salt, unit_id, gate.holdout):
            return candidate, "holdout"
        if not consent:
            return candidate, "no_consent"
        if gate.send_time:
            return candidate, SEND_TIME
        return candidate, ASSIGN
    if fallback is not None:
        return fallback
    return None, NO_EXPERIMENT


Hashes = Callable[[str, Sequence[str]], Sequence[float]]
"""``(salt, unit ids) -> unit_hash(salt, id)`` for each id, in order (a vectorised one may be
passed to :func:`walk_many`; it must give the same floats as :func:`unit_hash`)."""


def _hashes(salt: str, unit_ids: Sequence[str]) -> list[float]:
    return [unit_hash(salt, unit_id) for unit_id in unit_ids]


def walk_many(
    candidates: Sequence[G],
    *,
    unit_ids: Sequence[str],
    attributes: Sequence[Mapping[str, Any]],
    consent: Sequence[bool],
    kill_switch: bool,
    global_holdout: Sequence[bool],
    hashes: Hashes = _hashes,
) -> list[tuple[G | None, str]]:
    """:func:`walk` for many units at once: ``out[i]`` is exactly what ``walk`` answers for
    unit ``i`` (its id, attributes, consent and global holdout at index ``i``).

    The rules run in the same order, experiment by experiment over the units still undecided,
    so that each layer and holdout hash is computed by one ``hashes(salt, ids)`` call for all
    the units that reach it (a bulk caller passes a vectorised one).
    """
    n = len(unit_ids)
    out: list[tuple[G | None, str] | None] = [None] * n
    fallback: list[tuple[G, str] | None] = [None] * n
    remaining = list(range(n))
    for candidate in candidates:
        if not remaining:
            break
        gate = candidate.gate
        if kill_switch:
            for i in remaining:
                out[i] = (candidate, "kill_switch")
            remaining = []
            break
        admitted = _admitted(candidate, remaining, unit_ids, attributes, fallback, hashes)
        if not admitted:
            continue
        if len(admitted) < len(remaining):  # the others go on to the next experiment
            decided = set(admitted)
            remaining = [i for i in remaining if i not in decided]
        else:
            remaining = []
        held: Sequence[bool] = [False] * len(admitted)
        if gate.holdout > 0:
            share = gate.holdout
            drawn = hashes(gate.salt + ":holdout", [unit_ids[i] for i in admitted])
            held = [u < share for u in drawn]
        assign = SEND_TIME if gate.send_time else ASSIGN
        for i, in_holdout_slice in zip(admitted, held, strict=True):
            if global_holdout[i]:
                out[i] = (candidate, "global_holdout")
            elif in_holdout_slice:
                out[i] = (candidate, "holdout")
            elif not consent[i]:
                out[i] = (candidate, "no_consent")
            else:
                out[i] = (candidate, assign)
    return [
        found if found is not None else (fallback[i] or (None, NO_EXPERIMENT))
        for i, found in enumerate(out)
    ]


def _admitted(
    candidate: G,
    remaining: list[int],
    unit_ids: Sequence[str],
    attributes: Sequence[Mapping[str, Any]],
    fallback: list[tuple[G, str] | None],
    hashes: Hashes,
) -> list[int]:
    """The units of ``remaining`` the candidate's pause, targeting and layer admit; the others
    get their fallback (the first one only, as :func:`walk` keeps it)."""
    gate = candidate.gate
    if gate.paused:
        for i in remaining:
            fallback[i] = fallback[i] or (candidate, "experiment_paused")
        return []
    if gate.targeting is not None:
        targeted: list[int] = []
        for i in remaining:
            if matches(gate.targeting, attributes[i]):
                targeted.append(i)
            else:
                fallback[i] = fallback[i] or (candidate, "not_targeted")
        remaining = targeted
    if gate.layer is None or not remaining:
        return remaining
    inside: list[int] = []
    layer_slice = gate.layer_slice
    if layer_slice is not None:
        positions = hashes("layer:" + gate.layer, [unit_ids[i] for i in remaining])
        start, end = layer_slice.start, layer_slice.end
        inside = [i for i, u in zip(remaining, positions, strict=True) if start <= u < end]
    admitted = set(inside)
    for i in remaining:
        if i not in admitted:
            fallback[i] = fallback[i] or (candidate, "outside_layer")
    return inside
