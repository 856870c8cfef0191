"""Per-hour Thompson sampling behind the :class:`~bandits.base.Policy` protocol.

The send-time policy's actions are hours; as candidates they are the variants ``h00``..``h23``
(hour of day) or ``h000``..``h167`` (hour of week) of a ``send_time`` experiment, so the reward
join, learner and snapshot hot-swap handle it like any other policy. Bulk email decisions call
:meth:`SendTimePolicy.choose_hours` (vectorised, with each recipient's open-hour history and the
hours their send window allows); the generic ``choose`` uses no history.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from bandits.base import Candidate, Choice, Context, Example, FloatArray, SnapshotError
from bandits.send_time.thompson import SendTimeThompson
from tailor_contract.policies import SEND_TIME_POLICY_NAME as POLICY_NAME
from tailor_contract.policies import SendTimeThompsonConfig
from tailor_contract.send_window import hour_of


class SendTimePolicy:
    """Adapter: :class:`~bandits.send_time.thompson.SendTimeThompson` as a :class:`Policy`."""

    def __init__(
        self,
        config: SendTimeThompsonConfig,
        *,
        version: str = "0",
        model: SendTimeThompson | None = None,
    ) -> None:
        self.model = model if model is not None else SendTimeThompson(config)
        self._version = version

    @property
    def name(self) -> str:
        """``send_time_thompson``."""
        return POLICY_NAME

    @property
    def version(self) -> str:
        """The snapshot version this policy was built from."""
        return self._version

    def _mask(self, candidates: Sequence[Candidate]) -> npt.NDArray[np.bool_]:
        mask = np.zeros(self.model.n_hours, dtype=bool)
        for c in candidates:
            mask[hour_of(c.key)] = True
        return mask

    def pmf(self, context: Context, candidates: Sequence[Candidate]) -> FloatArray:
        """Probabilities over the candidate hours (population posterior, no history)."""
        mask = self._mask(candidates)
        history = np.zeros((1, self.model.n_hours))
        full = self.model.action_probabilities(history, mask[None, :], np.random.default_rng(0))
        return np.array([full[0, hour_of(c.key)] for c in candidates])

    def choose(
        self, context: Context, candidates: Sequence[Candidate], rng: np.random.Generator
    ) -> Choice:
        """Choose one of the candidate hours (no per-recipient history on this path)."""
        return self.choose_many([context], candidates, rng)[0]

    def choose_many(
        self, contexts: Sequence[Context], candidates: Sequence[Candidate], rng: np.random.Generator
    ) -> list[Choice]:
        """Choose an hour for each context over the same candidate hours."""
        n = len(contexts)
        mask = np.broadcast_to(self._mask(candidates), (n, self.model.n_hours))
        hours, props = self.model.choose_many(np.zeros((n, self.model.n_hours)), mask, rng)
        index_of = {hour_of(c.key): i for i, c in enumerate(candidates)}
        return [
            Choice(
                index=index_of[int(h)],
                key=candidates[index_of[int(h)]].key,
                propensity=float(p),
                policy=self.name,
                model_version=self._version,
            )
            for h, p in zip(hours.tolist(), props.tolist(), strict=True)
        ]

    def choose_hours(
        self,
        histories: npt.ArrayLike,
        feasible: npt.ArrayLike,
        rng: np.random.Generator,
    ) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """Bulk path: hour (-1 if none feasible) and exact propensity per recipient.

        Args:
            histories: shape (n, H), each recipient's opens/clicks per local hour.
            feasible: shape (n, H) bool, hours the window allows for each recipient.
            rng: randomness source.
        """
        return self.model.choose_many(histories, feasible, rng)

    def learn(self, examples: Sequence[Example]) -> None:
        """Update the per-hour posteriors from joined examples (rewards in [0, 1])."""
        if not examples:
            return
        hours = np.array([hour_of(e.chosen_key) for e in examples], dtype=np.int64)
        rewards = np.array([e.reward for e in examples], dtype=np.float64)
        self.model.learn(hours, rewards)

    def snapshot(self) -> bytes:
        """The model's msgpack snapshot."""
        return self.model.snapshot()

    @classmethod
    def restore(
        cls, config: SendTimeThompsonConfig, snapshot: bytes, *, version: str
    ) -> SendTimePolicy:
        """Rebuild from a snapshot; the stored config must match ``n_hours``."""
        try:
            model = SendTimeThompson.restore(snapshot)
        except ValueError as exc:
            raise SnapshotError(str(exc)) from exc
        if model.n_hours != config.n_hours:
            raise SnapshotError(
                f"snapshot has {model.n_hours} hours, config wants {config.n_hours}"
            )
        # Hyper-parameters may change between snapshots; the posterior carries over.
        alpha, beta = model.posterior()
        restored = SendTimeThompson(config, alpha=alpha, beta=beta, updates=model.updates)
        return cls(config, version=version, model=restored)
