"""Ranked slates on Vowpal Wabbit's conditional contextual bandit (``--ccb_explore_adf``).

One decision is one VW multi-line example: a ``ccb shared`` line with the context (namespace
``U``), one ``ccb action`` line per candidate (namespace ``A``) and one ``ccb slot`` line per
slot (namespace ``S``, see :mod:`bandits.features`). VW predicts, slot after slot, a pmf over
the candidates the earlier slots left, and adds the slot's identity to every interaction
itself, so position effects are learned.

Exact propensities, drawn with the caller's generator. VW samples each slot internally (its
``cb_sample``, from its own seed) and leaves the item it sampled out of the later slots; the
item it sampled is the first of the slot's pmf. We draw slot ``j`` from VW's pmf for that slot
mixed with uniform up to the floor (``floor_pmf``) and log that probability. When our draw is
the item VW sampled, VW's pmf for slot ``j + 1`` is conditioned on exactly our earlier items
and we read on; when it is not, we predict again with the slots filled so far pinned to our
items (a slot label's ``explicit_included_actions``: VW then scores that one item only, which
is cheap). So every slot's pmf is conditioned on the items really shown above it, the logged
propensity is the probability really used, and a slate is a function of the model, the context
and the caller's uniforms alone (VW's own seed never decides; the tests pin that).

Learning: every slot of a joined slate gets the label ``(cost, [(item, propensity)])`` with
``cost = -reward``; VW leaves the labelled items of earlier slots out of a slot's candidates,
as at decision time.

Parsed action examples are cached by the candidate's content (as :mod:`bandits.vw` does): VW
leaves them as it found them after predict and learn (pinned by the tests). A snapshot restores
the weights and learning state exactly; with epsilon exploration decisions depend on the
weights alone, so a serving worker takes a newer snapshot by copying its weight rows in place
(:meth:`VWSlatesPolicy.patch`, the :class:`~bandits.base.Incremental` protocol). Not
thread-safe: one thread at a time per policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, Literal, cast

import msgspec
import numpy as np
from vowpal_wabbit_next import CCBExampleType, CCBLabel, TextFormatParser, Workspace
from vowpal_wabbit_next import Example as VWExample

from bandits.base import (
    Candidate,
    CandidateError,
    Choice,
    Context,
    Example,
    FloatArray,
    SnapshotError,
    check_candidates,
    decode_snapshot,
    draw_weighted,
    floor_pmf,
)
from bandits.features import ccb_action_line, ccb_shared_line, slot_line
from bandits.slates import Slate, SlateExample, SlotChoice
from bandits.vw import weights_decide
from bandits.vw_examples import ExampleCache
from bandits.vw_weights import WeightPatcher, weight_rows
from tailor_contract.policies import VWSlatesConfig

__all__ = ["NAME", "VWSlatesPolicy"]

NAME: Final = "vw_slates"
# About 32 KB of native memory per parsed example (see bandits.vw): bounded to ~40 MB per policy.
_ACTION_CACHE_SIZE: Final = 1_024  # the items of a few candidate sets (50 items each)
_SHARED_CACHE_SIZE: Final = 256
_OPEN_SLOT: Final = CCBLabel(CCBExampleType.Slot)

_Predict = Callable[[list[VWExample]], list[list[tuple[int, float]]]]
# Picks one of the remaining items from their weights: (position in the list, probability).
_Pick = Callable[[list[float]], tuple[int, float]]


class _SlatesState(msgspec.Struct, frozen=True, tag_field="kind", tag=NAME):
    """A CCB model and the arguments that shape it (all but epsilon); for configs whose
    decisions depend on the weights alone, the weight table's non-zero rows (uint32) and their
    values (float32, ``stride`` per row), as :mod:`bandits.vw_weights` copies them."""

    args: list[str]
    model: bytes
    format: Literal[1] = 1
    rows: bytes = b""
    values: bytes = b""
    stride: int = 0


def _argmax(weights: list[float]) -> tuple[int, float]:
    """The heaviest entry (the first of ties) and probability 1: the greedy ranking."""
    best = max(range(len(weights)), key=weights.__getitem__)
    return best, 1.0


class VWSlatesPolicy:
    """Ranked slates on VW's CCB with exact, caller-sampled per-slot propensities."""

    def __init__(
        self, config: VWSlatesConfig, *, version: str = "0", model: bytes | None = None
    ) -> None:
        """Create a workspace from the config, optionally loading serialized VW model bytes.

        Raises:
            SnapshotError: if VW cannot load ``model``.
        """
        self.name: str = NAME
        self.version: str = version
        self._config = config
        try:
            self._ws = Workspace(config.vw_args(), model_data=model)
        except RuntimeError as exc:  # VW's way of saying the model bytes are unusable
            raise SnapshotError(f"VW could not load the model: {exc}") from exc
        self._parser = TextFormatParser(self._ws)
        self._patchable = weights_decide(config)
        self._patcher = WeightPatcher()
        self._actions = ExampleCache(self._parser, _ACTION_CACHE_SIZE)
        self._shared = ExampleCache(self._parser, _SHARED_CACHE_SIZE)
        self._slots: list[VWExample] = []
        self._predict = self._predictor()

    # -- examples --------------------------------------------------------------------------

    def _action_examples(self, candidates: Sequence[Candidate]) -> list[VWExample]:
        """One parsed action example per candidate, reusing cached ones."""
        check_candidates(candidates)
        actions = self._actions
        return [actions.get(c, ccb_action_line, c.key, c.features) for c in candidates]

    def _shared_example(self, context: Context) -> VWExample:
        """The parsed ``ccb shared`` example of ``context``, reused for a context seen
        recently (keyed by its msgpack encoding; a value msgpack cannot encode is parsed)."""
        return self._shared.get(context, ccb_shared_line, context)

    def _slot_examples(self, k: int) -> list[VWExample]:
        """The first ``k`` slot examples (cached; their labels are set per prediction)."""
        while len(self._slots) < k:
            self._slots.append(self._parser.parse_line(slot_line(len(self._slots))))
        return self._slots[:k]

    def _predictor(self) -> _Predict:
        """Predict decision probabilities for a multi-line example, with the examples' label
        types checked once here instead of on every call (``Workspace.predict_one`` checks
        them in Python); falls back to ``predict_one`` if the internals are not as expected."""
        core = getattr(self._ws, "_workspace", None)
        if core is None or not hasattr(core, "predict_multi_ex_one"):

            def checked(examples: list[VWExample]) -> list[list[tuple[int, float]]]:
                return cast(list[list[tuple[int, float]]], self._ws.predict_one(examples))

            return checked

        def direct(examples: list[VWExample]) -> list[list[tuple[int, float]]]:
            raw = [e._example for e in examples]
            return cast(list[list[tuple[int, float]]], core.predict_multi_ex_one(raw))

        return direct

    # -- decisions -------------------------------------------------------------------------

    def _walk(
        self,
        context: Context,
        candidates: Sequence[Candidate],
        k: int,
        pick: _Pick,
    ) -> tuple[list[int], list[float]]:
        """Fill ``k`` slots in order with ``pick``; returns the items and their probabilities.

        ``pick`` sees the floored pmf over the remaining candidates (in candidate order).
        """
        actions = self._action_examples(candidates)
        n = len(actions)
        k = min(k, n)
        shared = self._shared_example(context)
        slots = self._slot_examples(k)
        chosen: list[int] = []
        probs: list[float] = []
        taken = [False] * n
        predicted: list[list[tuple[int, float]]] | None = None
        try:
            for j in range(k):
                if predicted is None:
                    for i, slot in enumerate(slots):
                        slot.set_label(
                            CCBLabel(CCBExampleType.Slot, explicit_included_actions=[chosen[i]])
                            if i < j
                            else _OPEN_SLOT
                        )
                    predicted = self._predict([shared, *actions, *slots])
                scores = predicted[j]
                weights = [0.0] * n
                for action, prob in scores:
                    weights[action] = prob
                remaining = [i for i in range(n) if not taken[i]]
                pmf = floor_pmf([weights[i] for i in remaining], self._config.floor(len(remaining)))
                at, prob = pick(pmf)
                item = remaining[at]
                if item != scores[0][0]:
                    predicted = None  # VW left another item out of the later slots: re-predict
                chosen.append(item)
                probs.append(prob)
                taken[item] = True
        finally:
            for slot in slots:
                slot.set_label(_OPEN_SLOT)
        return chosen, probs

    def choose_slate(
        self,
        context: Context,
        candidates: Sequence[Candidate],
        slots: int,
        rng: np.random.Generator,
    ) -> Slate:
        """Fill ``min(slots, len(candidates))`` slots, each drawn with one ``rng.random()``."""
        if slots < 1:
            raise CandidateError(f"slots == {slots}, must be >= 1")
        uniforms = iter(rng.random(min(slots, len(candidates))).tolist())
        chosen, probs = self._walk(
            context, candidates, slots, lambda pmf: draw_weighted(pmf, next(uniforms))
        )
        return Slate(
            slots=tuple(
                SlotChoice(index=i, key=candidates[i].key, propensity=p)
                for i, p in zip(chosen, probs, strict=True)
            ),
            policy=self.name,
            model_version=self.version,
        )

    def ranking(self, context: Context, candidates: Sequence[Candidate], slots: int) -> list[int]:
        """The greedy slate (the most probable item of every slot, no exploration), as
        indexes into ``candidates``: what the model has learned to show."""
        chosen, _ = self._walk(context, candidates, slots, _argmax)
        return chosen

    def slot_pmfs(
        self, context: Context, candidates: Sequence[Candidate], chosen: Sequence[int]
    ) -> list[list[float]]:
        """Slot ``j``'s pmf over ``candidates`` after the logged items ``chosen[:j]`` (each
        of those 0), as ``choose_slate`` draws it; one prediction per slot."""
        actions = self._action_examples(candidates)
        n = len(actions)
        shared = self._shared_example(context)
        slots = self._slot_examples(len(chosen))
        out: list[list[float]] = []
        try:
            for j in range(len(chosen)):
                for i in range(j):
                    slots[i].set_label(
                        CCBLabel(CCBExampleType.Slot, explicit_included_actions=[chosen[i]])
                    )
                slots[j].set_label(_OPEN_SLOT)
                scores = self._predict([shared, *actions, *slots[: j + 1]])[j]
                weights = [0.0] * n
                for action, prob in scores:
                    weights[action] = prob
                earlier = set(chosen[:j])
                remaining = [i for i in range(n) if i not in earlier]
                pmf = floor_pmf([weights[i] for i in remaining], self._config.floor(len(remaining)))
                full = [0.0] * n
                for i, p in zip(remaining, pmf, strict=True):
                    full[i] = p
                out.append(full)
        finally:
            for slot in slots:
                slot.set_label(_OPEN_SLOT)
        return out

    # -- the one-choice Policy protocol (a slate of one slot) -------------------------------

    def pmf(self, context: Context, candidates: Sequence[Candidate]) -> FloatArray:
        """The first slot's pmf over ``candidates``, shape ``(n,)``."""
        check_candidates(candidates)
        return np.asarray(self.slot_pmfs(context, candidates, [0])[0])

    def choose(
        self, context: Context, candidates: Sequence[Candidate], rng: np.random.Generator
    ) -> Choice:
        """The first slot of a slate: a placement that asks for one item gets this."""
        slot = self.choose_slate(context, candidates, 1, rng).slots[0]
        return Choice(
            index=slot.index,
            key=slot.key,
            propensity=slot.propensity,
            policy=self.name,
            model_version=self.version,
        )

    def choose_many(
        self,
        contexts: Sequence[Context],
        candidates: Sequence[Candidate],
        rng: np.random.Generator,
    ) -> list[Choice]:
        """Decide for each context over the same candidates; equals repeated ``choose``."""
        return [self.choose(context, candidates, rng) for context in contexts]

    # -- learning --------------------------------------------------------------------------

    def learn_slates(self, examples: Sequence[SlateExample]) -> None:
        """Learn each slate in order, every slot labelled ``(-reward, [(item, propensity)])``."""
        for ex in examples:
            actions = self._action_examples(ex.candidates)
            shared = self._parser.parse_line(ccb_shared_line(ex.context))
            slots = []
            for j, (item, prob, reward) in enumerate(
                zip(ex.chosen, ex.propensities, ex.rewards, strict=True)
            ):
                slot = self._parser.parse_line(slot_line(j))
                slot.set_label(CCBLabel(CCBExampleType.Slot, outcome=(-reward, [(item, prob)])))
                slots.append(slot)
            self._ws.learn_one([shared, *actions, *slots])

    def learn(self, examples: Sequence[Example]) -> None:
        """Learn one-slot slates (decisions of placements that asked for one item)."""
        self.learn_slates(
            [
                SlateExample(
                    context=ex.context,
                    candidates=ex.candidates,
                    chosen=(ex.chosen,),
                    propensities=(ex.propensity,),
                    rewards=(ex.reward,),
                )
                for ex in examples
            ]
        )

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Serialize the VW model (with its online learning state) and its shaping args, and for
        weights-only configs the non-zero weight rows (what :meth:`patch` copies)."""
        model = self._ws.serialize()
        args = self._config.structural_args()
        if not self._patchable:
            return msgspec.msgpack.encode(_SlatesState(args=args, model=model))
        rows, values, stride = weight_rows(self._ws)
        state = _SlatesState(args=args, model=model, rows=rows, values=values, stride=stride)
        return msgspec.msgpack.encode(state)

    def patch(self, snapshot: bytes, *, version: str) -> bool:
        """Overwrite the weights with a newer snapshot's, in place (a memory copy of its
        non-zero rows instead of loading a workspace, which holds the GIL for milliseconds);
        decisions afterwards equal those of the restored snapshot (pinned by the tests).

        Returns False, changing nothing, when the config is not weights-only (SquareCB counts
        examples), the snapshot carries no rows, or it was trained with other arguments or
        another table shape.
        """
        if not self._patchable:
            return False
        try:
            state = decode_snapshot(snapshot, _SlatesState, NAME)
        except SnapshotError:
            return False
        if state.args != self._config.structural_args() or not self._patcher.apply(
            self._ws, state.rows, state.values, state.stride
        ):
            return False
        self.version = version
        return True

    @classmethod
    def restore(cls, config: VWSlatesConfig, snapshot: bytes, *, version: str) -> VWSlatesPolicy:
        """Rebuild from a snapshot; the config may change ``epsilon``, ``slots`` and the floor.

        Raises:
            SnapshotError: if the snapshot is not a slates one, was trained with other
                arguments, or VW cannot load it.
        """
        state = decode_snapshot(snapshot, _SlatesState, NAME)
        expected = config.structural_args()
        if state.args != expected:
            raise SnapshotError(
                f"snapshot was trained with VW arguments {' '.join(state.args)!r} but the "
                f"config gives {' '.join(expected)!r}; only epsilon may change"
            )
        return cls(config, version=version, model=state.model)
