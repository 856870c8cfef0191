"""Build a policy from its config, the experiment's arms and, optionally, a snapshot.

This is the one constructor the decision workers and the learner need: a worker hot-swaps by
calling :func:`build_policy` with the snapshot and version it just read, then replacing its
reference to the old policy; nothing is mutated in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from bandits.apprentice import ApprenticePolicy, inner_snapshot
from bandits.base import Arm, Policy
from bandits.ensemble import EnsemblePolicy
from bandits.epsilon_greedy import EpsilonGreedyPolicy
from bandits.fixed import FixedPolicy
from bandits.send_time.policy import SendTimePolicy
from bandits.thompson import ThompsonPolicy
from bandits.vw import VWPolicy
from bandits.vw_slates import VWSlatesPolicy
from tailor_contract.policies import (
    EpsilonGreedyConfig,
    FixedConfig,
    PolicyConfig,
    SendTimeThompsonConfig,
    ThompsonConfig,
    VWCBConfig,
    VWSlatesConfig,
)

__all__ = ["build_policy"]


def build_policy(
    config: PolicyConfig,
    arms: Sequence[Arm],
    *,
    snapshot: bytes | None = None,
    version: str = "0",
) -> Policy:
    """Return a ready policy; with ``snapshot``, its model state is restored exactly.

    Args:
        config: The experiment's policy config.
        arms: The experiment's variants (keys and weights). ``fixed`` splits by weight,
            ``thompson`` checks its floor against their count, ``vw_cb`` and ``vw_slates`` ignore
            them (they act on the candidates passed to ``choose``).
        snapshot: Bytes from ``Policy.snapshot()`` of a policy of the same kind, or None
            for a fresh model.
        version: The model version to stamp on every Choice.

    Raises:
        ValueError: if the config does not fit the arms (e.g. ``min_share`` too large).
        SnapshotError: if the snapshot is of another kind, corrupt, or incompatible.
    """
    mode = getattr(config, "apprentice", None)
    if mode is not None:
        # Apprentice mode wraps the policy the config names without it (bandits.apprentice).
        plain = msgspec.structs.replace(config, apprentice=None)
        if snapshot is None:
            inner = build_policy(plain, arms, version=version)
            return ApprenticePolicy(inner, arms, mode, version=version)
        state, inner_data = inner_snapshot(snapshot)
        inner = build_policy(plain, arms, snapshot=inner_data, version=version)
        return ApprenticePolicy(inner, arms, mode, state=state, version=version)
    match config:
        case FixedConfig():
            if snapshot is None:
                return FixedPolicy(arms, version=version)
            return FixedPolicy.restore(arms, snapshot, version=version)
        case ThompsonConfig():
            if snapshot is None:
                return ThompsonPolicy(config, arms, version=version)
            return ThompsonPolicy.restore(config, arms, snapshot, version=version)
        case EpsilonGreedyConfig():
            if snapshot is None:
                return EpsilonGreedyPolicy(config, arms, version=version)
            return EpsilonGreedyPolicy.restore(config, arms, snapshot, version=version)
        case VWCBConfig() if config.members == "ensemble":
            if snapshot is None:
                return EnsemblePolicy(config, version=version)
            return EnsemblePolicy.restore(config, snapshot, version=version)
        case VWCBConfig():
            if snapshot is None:
                return VWPolicy(config, version=version)
            return VWPolicy.restore(config, snapshot, version=version)
        case VWSlatesConfig():
            if snapshot is None:
                return VWSlatesPolicy(config, version=version)
            return VWSlatesPolicy.restore(config, snapshot, version=version)
        case SendTimeThompsonConfig():
            if snapshot is None:
                return SendTimePolicy(config, version=version)
            return SendTimePolicy.restore(config, snapshot, version=version)
