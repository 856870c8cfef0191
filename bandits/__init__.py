"""Bandit policies and the machinery that makes them learn online.

Policies (pure): fixed split, Thompson sampling, epsilon-greedy, Vowpal Wabbit contextual bandits
and ranked slates (VW's conditional contextual bandit);
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
from bandits.slates import Slate, SlateExample, SlatePolicy, SlotChoice
from bandits.thompson import ThompsonPolicy
from bandits.vw import VWPolicy
from bandits.vw_slates import VWSlatesPolicy
from tailor_contract.policies import (
    EpsilonGreedyConfig,
    FixedConfig,
    PolicyConfig,
    ThompsonConfig,
    VWCBConfig,
    VWSlatesConfig,
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
    "Slate",
    "SlateExample",
    "SlatePolicy",
    "SlotChoice",
    "SnapshotError",
    "ThompsonConfig",
    "ThompsonPolicy",
    "VWCBConfig",
    "VWPolicy",
    "VWSlatesConfig",
    "VWSlatesPolicy",
    "build_policy",
    "decode_policy_config",
]
