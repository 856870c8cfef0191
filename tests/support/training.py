"""Training streams for learner tests: joined examples written the way the reward join does.

``feed`` appends entries with the fields the join's finalisation script writes (``rec``, ``r``,
``joined``; pinned against the real script in ``tests/bandits/test_join.py``), in one pipelined
round trip, so a test can put tens of thousands of examples on the stream in well under a second.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
from redis.asyncio import Redis

from bandits.base import Arm, Candidate, FeatureValue
from bandits.join import DecisionRecord
from bandits.spec import PolicySpec
from tailor_contract.policies import PolicyConfig, ThompsonConfig, VWCBConfig

_encoder = msgspec.json.Encoder()

ARMS = ("a", "b", "c")
# Click probability per arm: arm "c" is best.
CTR = {"a": 0.1, "b": 0.3, "c": 0.6}


def spec_of(
    experiment: str,
    config: PolicyConfig | None = None,
    *,
    arms: Sequence[str] = ARMS,
    version: int = 1,
) -> PolicySpec:
    """A learning spec with per-action features ``{"arm": key}``."""
    return PolicySpec(
        experiment=experiment,
        experiment_version=version,
        config=config or ThompsonConfig(),
        arms=tuple(Arm(key=k) for k in arms),
        candidates=tuple(Candidate(key=k, features={"arm": k}) for k in arms),
    )


def record(
    decision_id: str,
    experiment: str,
    chosen: int,
    *,
    arms: Sequence[str] = ARMS,
    context: dict[str, FeatureValue] | None = None,
    propensity: float = 1 / 3,
) -> DecisionRecord:
    """A decision record as the decision engine would keep it."""
    return DecisionRecord(
        decision_id=decision_id,
        experiment=experiment,
        experiment_version=1,
        unit_id=f"unit-{decision_id}",
        candidates=list(arms),
        chosen=chosen,
        propensity=propensity,
        model_version="0",
        context=context or {},
        decided_ms=1_700_000_000_000,
    )


def bernoulli_examples(
    experiment: str, n: int, rng: np.random.Generator, *, start: int = 0
) -> list[tuple[DecisionRecord, float]]:
    """``n`` uniformly logged decisions over ARMS with Bernoulli(CTR) rewards."""
    chosen = rng.integers(0, len(ARMS), size=n)
    u = rng.random(n)
    ctr = np.array([CTR[k] for k in ARMS])
    rewards = (u < ctr[chosen]).astype(float)
    return [
        (record(f"d{start + i}", experiment, int(c)), float(r))
        for i, (c, r) in enumerate(zip(chosen.tolist(), rewards.tolist(), strict=True))
    ]


async def feed(redis: Redis, prefix: str, examples: Sequence[tuple[DecisionRecord, float]]) -> None:
    """Append finalised examples to ``{{prefix}}:train`` in one pipelined round trip."""
    stream = f"{{{prefix}}}:train"
    async with redis.pipeline(transaction=False) as pipe:
        for rec, reward in examples:
            pipe.xadd(stream, {"rec": _encoder.encode(rec), "r": repr(reward), "joined": "1"})
        await pipe.execute()


def arm_totals(examples: Sequence[tuple[DecisionRecord, float]]) -> dict[str, tuple[float, float]]:
    """(successes, failures) per arm key, as a Beta-Bernoulli posterior counts them."""
    out: dict[str, tuple[float, float]] = {}
    for rec, reward in examples:
        key = rec.candidates[rec.chosen]
        s, f = out.get(key, (0.0, 0.0))
        out[key] = (s + reward, f + 1.0 - reward)
    return out


def epsilon_vw(epsilon: float) -> VWCBConfig:
    """A plain-VW vw_cb config (no ensemble) exploring epsilon-greedily with ``-q UA -l 0.01``
    (the defaults are an ensemble, SquareCB, cubic interactions and ``-l 0.03``)."""
    return VWCBConfig(
        exploration="epsilon",
        epsilon=epsilon,
        members="vw",
        interactions=("UA",),
        learning_rate=0.01,
    )
