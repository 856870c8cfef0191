"""Beta-Bernoulli Thompson sampling by probability matching, optionally per segment.

Each arm ``k`` has a posterior ``Beta(prior_alpha + S_k, prior_beta + F_k)``, where a reward
``r`` in [0, 1] adds ``r`` to ``S_k`` and ``1 - r`` to ``F_k`` (the fractional update for
non-binary rewards). Classic Thompson sampling draws once from each posterior and plays the
argmax; its propensity, the arm's probability of being the argmax, has no closed form. So we
compute that win probability once per model state (and segment and candidate set) from
``mc_samples`` joint posterior draws, mix it with the floor
``pmf_k = m + (1 - n * m) * P(k wins)``, mix that with uniform up to ``min_propensity`` where
an arm is still below it (``bandits.base.floor_pmf``), and draw the arm from that pmf with the
caller's generator. The logged propensity is therefore exactly the probability used, and a decision
costs a cache lookup and a binary search.

The Monte Carlo generator is seeded from a hash of the posterior parameters, so every worker
holding the same snapshot computes the same pmf, whatever its version string. A snapshot carries
the global win probabilities over all arms, computed once by the learner, under that hash: a
serving worker that restores it and finds the same hash for its own posterior and configuration
takes them instead of drawing again (the Monte Carlo took a serving worker ~4 ms of CPU per
snapshot, every 2 s); anything else (a segment, a subset of arms, another configuration, an
older snapshot) is computed as before.

With ``segment_by``, each example also updates the posterior of the segment named by that
context attribute; decisions for a segment with fewer than ``min_segment_trials`` trials (or
untracked beyond ``max_segments``, or missing) use the global posterior.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final, Literal

import msgspec
import numpy as np

from bandits.base import (
    Arm,
    Candidate,
    Choice,
    Context,
    Example,
    FloatArray,
    Sampler,
    SamplerCache,
    check_candidates,
    decode_snapshot,
    floor_pmf,
)
from tailor_contract.policies import ThompsonConfig
from tailor_contract.wire import Factor

__all__ = ["ThompsonPolicy"]

NAME: Final = "thompson"

# arm key -> [successes, failures]; lists so learn() updates in place.
_Stats = dict[str, list[float]]


class _ThompsonState(msgspec.Struct, frozen=True, tag_field="kind", tag=NAME):
    """Sufficient statistics; priors stay in the config so they may be changed later."""

    arms: dict[str, tuple[float, float]]
    segments: dict[str, dict[str, tuple[float, float]]]
    format: Literal[1] = 1
    wins: dict[str, list[float]] = {}
    """Win probabilities by the hex digest of what they were drawn from (see ``_draw_key``)."""


def segment_of(context: Context, attribute: str | None) -> str | None:
    """Return the segment named by ``context[attribute]``, or None (lists and absent values)."""
    if attribute is None:
        return None
    value = context.get(attribute)
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return repr(value)
    return None


class ThompsonPolicy:
    """Thompson sampling over Beta posteriors with exact, floored propensities."""

    def __init__(
        self,
        config: ThompsonConfig,
        arms: Sequence[Arm],
        *,
        version: str = "0",
        state: _ThompsonState | None = None,
    ) -> None:
        """Build the policy for the experiment's arms and warm the global pmf.

        Raises:
            ValueError: if arms are empty or duplicated, or ``min_share * len(arms) > 1``.
        """
        self._keys = check_candidates([Candidate(key=a.key) for a in arms])
        config.check_arms(len(self._keys))
        self.name: str = NAME
        self.version: str = version
        self._config = config
        self._global: _Stats = {}
        self._segments: dict[str, _Stats] = {}
        if state is not None:
            self._global = {k: list(v) for k, v in state.arms.items()}
            self._segments = {
                seg: {k: list(v) for k, v in stats.items()} for seg, stats in state.segments.items()
            }
        self._eligible: frozenset[str] = frozenset()
        self._refresh_eligible()
        self._cache = SamplerCache()
        self._shipped: dict[str, list[float]] = dict(state.wins) if state is not None else {}
        self._sampler(None, self._keys)
        self._shipped = {}  # only for the state it came with: learn() moves the posterior

    # -- decisions -------------------------------------------------------------------------

    def _stats_for(self, segment: str | None) -> tuple[str, _Stats]:
        """Return (segment label used, statistics) honouring the fallback rule."""
        if segment is not None and segment in self._eligible:
            return segment, self._segments[segment]
        return "", self._global

    def _refresh_eligible(self) -> None:
        """Recompute which segments have enough trials to use their own posterior."""
        need = self._config.min_segment_trials
        self._eligible = frozenset(
            seg
            for seg, stats in self._segments.items()
            if sum(s + f for s, f in stats.values()) >= need
        )

    def _sampler(self, segment: str | None, keys: tuple[str, ...]) -> Sampler:
        label, stats = self._stats_for(segment)
        cache_key = (label, keys)
        sampler = self._cache.get(cache_key)
        if sampler is None:
            sampler = self._cache.put(cache_key, Sampler(self._probabilities(label, stats, keys)))
        return sampler

    def _draw_key(
        self, label: str, stats: _Stats, keys: tuple[str, ...]
    ) -> tuple[bytes, FloatArray, FloatArray]:
        """The digest seeding the Monte Carlo of ``keys``' posterior (label, keys, alpha, beta,
        draws), and alpha and beta."""
        cfg = self._config
        counts = np.array([stats.get(k, (0.0, 0.0)) for k in keys], dtype=np.float64)
        alpha = cfg.prior_alpha + counts[:, 0]
        beta = cfg.prior_beta + counts[:, 1]
        digest = hashlib.blake2b(digest_size=8)
        for part in (label, "\x1f".join(keys)):
            digest.update(part.encode())
            digest.update(b"\x00")
        digest.update(alpha.tobytes())
        digest.update(beta.tobytes())
        digest.update(cfg.mc_samples.to_bytes(8, "little"))
        return digest.digest(), alpha, beta

    def _wins(self, label: str, stats: _Stats, keys: tuple[str, ...]) -> tuple[str, FloatArray]:
        """(the digest in hex, each key's probability of the largest posterior draw)."""
        cfg = self._config
        digest, alpha, beta = self._draw_key(label, stats, keys)
        shipped = self._shipped.get(digest.hex())
        if shipped is not None and len(shipped) == len(keys):
            return digest.hex(), np.asarray(shipped, dtype=np.float64)
        gen = np.random.default_rng(int.from_bytes(digest, "little"))
        draws = gen.beta(alpha, beta, size=(cfg.mc_samples, len(keys)))
        return digest.hex(), np.bincount(draws.argmax(axis=1), minlength=len(keys)) / (
            cfg.mc_samples
        )

    def _probabilities(self, label: str, stats: _Stats, keys: tuple[str, ...]) -> FloatArray:
        """Win probabilities under the posterior, mixed with the floor; shape ``(n,)``."""
        cfg = self._config
        n = len(keys)
        if n == 1:
            return np.ones(1)
        _, wins = self._wins(label, stats, keys)
        # The floor cannot exceed a uniform split when more candidates than arms are offered.
        floor = min(cfg.min_share, 1.0 / n)
        shared = floor + (1.0 - n * floor) * wins
        return np.asarray(floor_pmf(shared.tolist(), cfg.floor(n)))

    def pmf(self, context: Context, candidates: Sequence[Candidate]) -> FloatArray:
        """Return the floored win probabilities of ``candidates``, shape ``(n,)``."""
        keys = check_candidates(candidates)
        return self._sampler(segment_of(context, self._config.segment_by), keys).pmf

    def choose(
        self, context: Context, candidates: Sequence[Candidate], rng: np.random.Generator
    ) -> Choice:
        """Draw a candidate from the (segment's) probability-matching pmf."""
        keys = check_candidates(candidates)
        sampler = self._sampler(segment_of(context, self._config.segment_by), keys)
        return sampler.choice(keys, rng.random(), self.name, self.version)

    def explain(
        self, context: Context, candidates: Sequence[Candidate], chosen: str
    ) -> list[Factor]:
        """Why ``chosen`` came from this posterior: the ``segment_by`` attribute and the unit's
        segment when the segment's own posterior decided, else nothing (the global posterior
        decided, which no feature of the unit selects)."""
        segment_by = self._config.segment_by
        label, _ = self._stats_for(segment_of(context, segment_by))
        if not label or segment_by is None:
            return []
        return [Factor(feature=segment_by, value=label)]

    def choose_many(
        self,
        contexts: Sequence[Context],
        candidates: Sequence[Candidate],
        rng: np.random.Generator,
    ) -> list[Choice]:
        """Decide for each context, vectorised per segment; equals repeated ``choose``."""
        keys = check_candidates(candidates)
        u = rng.random(len(contexts))
        attribute = self._config.segment_by
        if attribute is None:
            return self._sampler(None, keys).choices(keys, u, self.name, self.version)
        groups: dict[str | None, list[int]] = {}
        for i, context in enumerate(contexts):
            groups.setdefault(segment_of(context, attribute), []).append(i)
        out: list[Choice | None] = [None] * len(contexts)
        for segment, rows in groups.items():
            picks = self._sampler(segment, keys).choices(keys, u[rows], self.name, self.version)
            for row, pick in zip(rows, picks, strict=True):
                out[row] = pick
        return [c for c in out if c is not None]

    # -- learning --------------------------------------------------------------------------

    def learn(self, examples: Sequence[Example]) -> None:
        """Add each reward to its arm's global and segment posterior.

        All examples are checked before any is applied.

        Raises:
            ValueError: if a reward lies outside [0, 1].
        """
        for ex in examples:
            if not 0.0 <= ex.reward <= 1.0:
                raise ValueError(f"reward == {ex.reward}, must be in [0, 1] for thompson")
        attribute = self._config.segment_by
        for ex in examples:
            key = ex.chosen_key
            _add(self._global, key, ex.reward)
            segment = segment_of(ex.context, attribute)
            if segment is None:
                continue
            stats = self._segments.get(segment)
            if stats is None:
                if len(self._segments) >= self._config.max_segments:
                    continue
                stats = self._segments[segment] = {}
            _add(stats, key, ex.reward)
        if examples:
            self._refresh_eligible()
            self._cache.clear()

    def posterior(self, key: str, segment: str | None = None) -> tuple[float, float]:
        """Return the (alpha, beta) a decision for ``segment`` would use for arm ``key``."""
        s, f = self._stats_for(segment)[1].get(key, (0.0, 0.0))
        return self._config.prior_alpha + s, self._config.prior_beta + f

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Serialize the sufficient statistics (global and per segment) and the global win
        probabilities over all arms (what every worker restoring it would draw first)."""
        wins = {}
        if len(self._keys) > 1:
            digest, probabilities = self._wins("", self._global, self._keys)
            wins[digest] = probabilities.tolist()
        state = _ThompsonState(
            arms={k: (v[0], v[1]) for k, v in self._global.items()},
            segments={
                seg: {k: (v[0], v[1]) for k, v in stats.items()}
                for seg, stats in self._segments.items()
            },
            wins=wins,
        )
        return msgspec.msgpack.encode(state)

    @classmethod
    def restore(
        cls, config: ThompsonConfig, arms: Sequence[Arm], snapshot: bytes, *, version: str
    ) -> ThompsonPolicy:
        """Rebuild from a snapshot; arms new since the snapshot start from the prior."""
        state = decode_snapshot(snapshot, _ThompsonState, NAME)
        return cls(config, arms, version=version, state=state)


def _add(stats: _Stats, key: str, reward: float) -> None:
    """Add a fractional success ``reward`` and failure ``1 - reward`` to arm ``key``."""
    row = stats.get(key)
    if row is None:
        stats[key] = [reward, 1.0 - reward]
    else:
        row[0] += reward
        row[1] += 1.0 - reward
