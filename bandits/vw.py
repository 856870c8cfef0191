"""Vowpal Wabbit ``--cb_explore_adf``: contextual bandit with shared and per-action features.

One decision is one VW multi-line example: a ``shared`` line with the context (namespace
``U``) followed by one line per candidate (namespace ``A``, see :mod:`bandits.features`).
VW returns a pmf over the candidates (epsilon-greedy or SquareCB); we mix it with uniform just
enough that every candidate has at least the config's ``min_propensity`` (``floor_pmf``) and draw
the action from that pmf with the caller's generator (not ``--cb_sample``'s internal seed), so the
logged propensity is the final pmf's value and runs are reproducible from the caller's seed.

Learning uses the chosen action's label ``0:cost:propensity`` with ``cost = -reward``, set on
the parsed example directly (``CBLabel``), which is also more precise than VW's text float
parser.

Parsed action examples are cached by the candidate's content (its msgpack encoding): VW leaves
an action example as it found it after predict and learn (the tests pin that cached and fresh
examples give identical pmfs), and reusing them halves the cost of a decision.

A snapshot restores the weights and learning state exactly (pmfs and further learning are
identical); VW's reporting counters (average loss, example counts) restart from zero.

Not thread-safe: a ``VWPolicy`` (its workspace and example cache) must be used by one thread
at a time, e.g. one event loop per worker process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, Literal, cast

import msgspec
import numpy as np
from vowpal_wabbit_next import CBLabel, TextFormatParser, Workspace
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
from bandits.features import action_line, shared_line
from bandits.vw_examples import ExampleCache
from bandits.vw_weights import WeightPatcher, weight_rows
from tailor_contract.policies import VWCBConfig, VWSlatesConfig
from tailor_contract.wire import Factor

__all__ = ["VWPolicy"]

_Predict = Callable[[VWExample], list[tuple[int, float]]]

NAME: Final = "vw_cb"
# A parsed VW example holds VW's per-namespace feature arrays whatever its content: about
# 32 KB of native memory each (measured 2026-12-08). 4,096 cached shared examples cost 130 MB
# per policy and process: a worker with two vw_cb experiments grew 150 -> 390 MB once models
# were published in the realistic mix (a serving tree of 2 workers went over 1 GB). A visitor's
# repeated context is still found within a burst; beyond that a hit saves ~15 us, not 32 KB.
_ACTION_CACHE_SIZE: Final = 1_024  # a placement's candidates: a few dozen distinct in practice
_SHARED_CACHE_SIZE: Final = 256  # 8 MB per policy
_NO_LABEL: Final = CBLabel()


def check_vw_config(config: VWCBConfig | VWSlatesConfig) -> None:
    """Raise ValueError with VW's message if VW itself rejects the config's arguments.

    The contract checks every option against its allow-list; this builds a throwaway
    ``Workspace`` (2 bits) so that combinations VW refuses fail when a definition is accepted.
    """
    args = config.vw_args()
    try:
        Workspace([*args, "-b", "2"] if "--bit_precision" not in args else args)
    except RuntimeError as exc:  # VW reports unknown or conflicting options this way
        raise ValueError(f"VW rejected arguments {' '.join(args)!r}: {exc}") from exc


class _VWState(msgspec.Struct, frozen=True, tag_field="kind", tag=NAME):
    """A VW model and the arguments that shape it (all but epsilon).

    ``rows``/``values``: for configs whose decisions depend on the weights alone
    (:func:`weights_decide`), the weight table's non-zero rows (uint32 indices) and their
    values (float32, ``stride`` per row), so a serving worker can overwrite its weights in
    place (:meth:`VWPolicy.patch`) instead of loading the model.
    """

    args: list[str]
    model: bytes
    format: Literal[1] = 1
    rows: bytes = b""
    values: bytes = b""
    stride: int = 0


_COUNTED: Final = frozenset({"--squarecb", "--first", "--cover", "--bag", "--regcb", "--regcbopt",
                             "--rnd", "--softmax", "--synthcover"})  # fmt: skip


def weights_decide(config: VWCBConfig | VWSlatesConfig) -> bool:
    """Whether decisions depend on the weight table alone (epsilon-greedy exploration).

    SquareCB's gamma grows with the number of examples learned, explore-first and cover count
    examples too: that state lives outside the weights, so those models are loaded whole.
    """
    return not _COUNTED.intersection(config.vw_args())


def _plain(value: object) -> str | None:
    """A context value as an explanation shows it (lists and other shapes are left out)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return repr(value)
    return None


EXPLAIN_MAX_ATTRIBUTES: Final = 32
"""At most this many context attributes are tried when explaining a choice."""
EXPLAIN_TOP: Final = 5
"""An explanation names at most this many attributes."""


class VWPolicy:
    """Contextual bandit on Vowpal Wabbit with exact, caller-sampled propensities."""

    def __init__(
        self, config: VWCBConfig, *, version: str = "0", model: bytes | None = None
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
        # The candidates tuple last decided over (held, so its id cannot be reused), its parsed
        # action examples and their predictor: serving passes the same tuple every time.
        self._last: tuple[Sequence[Candidate], list[VWExample], _Predict] | None = None

    # -- examples --------------------------------------------------------------------------

    def _action_examples(self, candidates: Sequence[Candidate]) -> list[VWExample]:
        """Return one parsed action example per candidate, reusing cached ones."""
        check_candidates(candidates)
        actions = self._actions
        return [actions.get(c, action_line, c.key, c.features) for c in candidates]

    def _shared_example(self, context: Context) -> VWExample:
        """The parsed ``shared`` example of ``context``, reused for a context seen recently.

        Contexts repeat (a visitor's profile and page across a session, a campaign's
        segments), and formatting plus parsing the line is about half of a decision's CPU. VW
        leaves a shared example as it found it after predict (pinned by the tests, as for action
        examples). Keyed by the context's msgpack encoding; bounded like the action cache.
        """
        return self._shared.get(context, shared_line, context)

    def _prepared(self, candidates: Sequence[Candidate]) -> tuple[list[VWExample], _Predict]:
        """Action examples and predictor for ``candidates`` (cached for the same sequence)."""
        last = self._last
        if last is not None and last[0] is candidates:
            return last[1], last[2]
        actions = self._action_examples(candidates)
        predict = self._predictor(actions)
        if isinstance(candidates, tuple):  # immutable: safe to recognise by identity
            self._last = (candidates, actions, predict)
        return actions, predict

    def _weights(self, context: Context, candidates: Sequence[Candidate]) -> list[float]:
        """The floored pmf, indexed like ``candidates`` (VW returns it sorted by probability)."""
        actions, predict = self._prepared(candidates)
        # --cb_explore_adf predicts ActionProbs: a list of (action index, probability).
        weights = [0.0] * len(actions)
        for action, prob in predict(self._shared_example(context)):
            weights[action] = prob
        return floor_pmf(weights, self._config.floor(len(actions)))

    def _predictor(self, actions: list[VWExample]) -> _Predict:
        """Predict ActionProbs for a shared example followed by ``actions``, many times.

        ``Workspace.predict_one`` checks the label type of every example on every call, in
        Python, which costs more than VW's prediction itself for 24 hour actions. Here the
        action examples are checked once; shared examples come from this workspace's parser.
        Falls back to ``predict_one`` if vowpal_wabbit_next's internals are not as expected.
        """
        core = getattr(self._ws, "_workspace", None)
        raw = [getattr(a, "_example", None) for a in actions]
        if core is None or None in raw or not hasattr(core, "predict_multi_ex_one"):

            def checked(shared: VWExample) -> list[tuple[int, float]]:
                return cast(list[tuple[int, float]], self._ws.predict_one([shared, *actions]))

            return checked
        expected = self._ws.label_type
        for i, action in enumerate(actions):
            if action.label_type != expected:
                raise CandidateError(f"action {i} has label type {action.label_type}")

        def direct(shared: VWExample) -> list[tuple[int, float]]:
            return cast(list[tuple[int, float]], core.predict_multi_ex_one([shared._example, *raw]))

        return direct

    # -- decisions -------------------------------------------------------------------------

    def pmf(self, context: Context, candidates: Sequence[Candidate]) -> FloatArray:
        """Return VW's exploration pmf over ``candidates`` mixed up to the floor, shape ``(n,)``,
        summing to one: the probabilities ``choose`` draws from and logs."""
        pmf: FloatArray = np.asarray(self._weights(context, candidates))
        return pmf

    def choose(
        self, context: Context, candidates: Sequence[Candidate], rng: np.random.Generator
    ) -> Choice:
        """Draw a candidate from VW's pmf for this context."""
        index, propensity = draw_weighted(self._weights(context, candidates), rng.random())
        return Choice(
            index=index,
            key=candidates[index].key,
            propensity=propensity,
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
        actions, predict = self._prepared(candidates)
        shared = self._shared_example
        n_actions = len(actions)
        floor = self._config.floor(n_actions)
        out: list[Choice] = []
        for context, u in zip(contexts, rng.random(len(contexts)).tolist(), strict=True):
            weights = [0.0] * n_actions
            for action, prob in predict(shared(context)):
                weights[action] = prob
            index, propensity = draw_weighted(floor_pmf(weights, floor), u)
            out.append(
                Choice(
                    index=index,
                    key=candidates[index].key,
                    propensity=propensity,
                    policy=self.name,
                    model_version=self.version,
                )
            )
        return out

    # -- learning --------------------------------------------------------------------------

    def explain(
        self, context: Context, candidates: Sequence[Candidate], chosen: str
    ) -> list[Factor]:
        """The context attributes that weigh most for ``chosen``, best-effort and bounded.

        Each attribute's weight is how much ``chosen``'s probability drops when the model
        predicts without it (one extra prediction per attribute, at most
        ``EXPLAIN_MAX_ATTRIBUTES`` of them, only when an explanation is asked); the top
        ``EXPLAIN_TOP`` attributes with a positive weight, largest first, 4 decimals.
        """
        keys = [c.key for c in candidates]
        if chosen not in keys:
            return []
        index = keys.index(chosen)
        base = self._weights(context, candidates)[index]
        scored = []
        for name in sorted(context)[:EXPLAIN_MAX_ATTRIBUTES]:
            without = {k: v for k, v in context.items() if k != name}
            drop = base - self._weights(without, candidates)[index]
            if drop > 0:
                scored.append((drop, name))
        scored.sort(key=lambda t: (-t[0], t[1]))
        return [
            Factor(feature=name, value=_plain(context[name]), weight=round(d, 4))
            for d, name in scored[:EXPLAIN_TOP]
        ]

    def learn(self, examples: Sequence[Example]) -> None:
        """Learn from each example in order with label ``0:-reward:propensity``.

        Shared examples come from the same cache as decisions' (a context learned is usually
        one just predicted for), and the label types are checked here against the workspace's,
        read once: ``Workspace.learn_one`` reads it from VW twice per example of every call,
        which cost the learner more than VW's learning itself.
        """
        learn_raw = getattr(getattr(self._ws, "_workspace", None), "learn_multi_ex_one", None)
        expected = self._ws.label_type
        for ex in examples:
            actions = self._prepared(ex.candidates)[0]  # by identity: the same tuple
            shared = self._shared_example(ex.context)
            chosen = actions[ex.chosen]
            chosen.set_label(CBLabel(label=(0, -ex.reward, ex.propensity)))
            try:
                batch = [shared, *actions]
                raw = [getattr(e, "_example", None) for e in batch]
                if learn_raw is None or None in raw:
                    self._ws.learn_one(batch)  # vowpal_wabbit_next's internals moved
                    continue
                for i, e in enumerate(batch):
                    if e.label_type != expected:
                        raise ValueError(f"example {i} has label type {e.label_type}")
                learn_raw(raw)
            finally:
                # The example stays cached for later decisions: it must not keep the label.
                chosen.set_label(_NO_LABEL)

    # -- snapshots -------------------------------------------------------------------------

    def model_bytes(self) -> bytes:
        """The VW model alone (weights and learning state), as ``model=`` takes it back."""
        return bytes(self._ws.serialize())

    def snapshot(self) -> bytes:
        """Serialize the VW model (with its online learning state) and its shaping args, and
        for weights-only configs the non-zero weight rows (see :class:`_VWState`)."""
        model = self._ws.serialize()
        args = self._config.structural_args()
        if not self._patchable:
            return msgspec.msgpack.encode(_VWState(args=args, model=model))
        rows, values, stride = weight_rows(self._ws)
        state = _VWState(args=args, model=model, rows=rows, values=values, stride=stride)
        return msgspec.msgpack.encode(state)

    def patch(self, snapshot: bytes, *, version: str) -> bool:
        """Overwrite the weights with a newer snapshot's, in place: a memory copy of its
        non-zero rows (about 1 ms for 10,000 rows) instead of loading a workspace (10-20 ms
        holding the GIL). Decisions afterwards equal those of the restored snapshot.

        Returns False, changing nothing, when the config is not weights-only, the snapshot
        carries no rows, or it was trained with other arguments or another table shape.
        """
        if not self._patchable:
            return False
        try:
            state = decode_snapshot(snapshot, _VWState, NAME)
        except SnapshotError:
            return False
        if state.args != self._config.structural_args():
            return False
        return self.patch_rows(state.rows, state.values, state.stride, version=version)

    def patch_rows(self, rows: bytes, values: bytes, stride: int, *, version: str) -> bool:
        """Overwrite the weights with these non-zero rows (a weights-only config's, from
        :func:`~bandits.vw_weights.weight_rows` of a model trained with this config's
        arguments), in place; False, changing nothing, when that cannot be done."""
        if not self._patchable or not self._patcher.apply(self._ws, rows, values, stride):
            return False
        self.version = version
        return True

    @property
    def patchable(self) -> bool:
        """Whether decisions depend on the weights alone (see :func:`weights_decide`)."""
        return self._patchable

    def weight_rows(self) -> tuple[bytes, bytes, int]:
        """The non-zero weight rows, their values and the stride (what :meth:`patch_rows`
        takes)."""
        rows, values, stride = weight_rows(self._ws)
        return rows, values, stride

    @classmethod
    def restore(cls, config: VWCBConfig, snapshot: bytes, *, version: str) -> VWPolicy:
        """Rebuild from a snapshot; the config may change ``epsilon`` but nothing else.

        Raises:
            SnapshotError: if the snapshot is not a VW one, was trained with other arguments,
                or VW cannot load it.
        """
        state = decode_snapshot(snapshot, _VWState, NAME)
        expected = config.structural_args()
        if state.args != expected:
            raise SnapshotError(
                f"snapshot was trained with VW arguments {' '.join(state.args)!r} but the "
                f"config gives {' '.join(expected)!r}; only epsilon may change"
            )
        return cls(config, version=version, model=state.model)
