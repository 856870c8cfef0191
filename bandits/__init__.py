"""Bandit policies and the machinery that makes them learn online.

Policies (pure): fixed split, Thompson sampling, epsilon-greedy, Vowpal Wabbit contextual bandits;
the reward join, learner and snapshot hot-swap on Redis.
"""

from bandits.base import (
    Arm,
    Candidate,
    CandidateError,
    Choice,
    Context,
    Example,
    FeatureValue,
    Policy,
    PolicyError,
    SnapshotError,
)
from bandits.epsilon_greedy import EpsilonGreedyPolicy
from bandits.fixed import FixedPolicy
from bandits.registry import build_policy
from bandits.thompson import ThompsonPolicy
from bandits.vw import VWPolicy
from tailor_contract.policies import (
    EpsilonGreedyConfig,
    FixedConfig,
    PolicyConfig,
    ThompsonConfig,
    VWCBConfig,
    decode_policy_config,
)

__all__ = [
    "Arm",
    "Candidate",
    "CandidateError",
    "Choice",
    "Context",
    "EpsilonGreedyConfig",
    "EpsilonGreedyPolicy",
    "Example",
    "FeatureValue",
    "FixedConfig",
    "FixedPolicy",
    "Policy",
    "PolicyConfig",
    "PolicyError",
    "SnapshotError",
    "ThompsonConfig",
    "ThompsonPolicy",
    "VWCBConfig",
    "VWPolicy",
    "build_policy",
    "decode_policy_config",
]
