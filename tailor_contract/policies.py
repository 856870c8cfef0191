"""Policy configurations: a tagged union on ``kind``, validated at construction.

Constraints live twice on purpose: ``msgspec.Meta`` gives decode-time errors with the field
path (``Expected `float` <= 1.0 - at `$.epsilon```), and ``__post_init__`` gives the same rule
when a config is built in Python (``epsilon == 1.2, must be <= 1.0``), which msgspec reports as
a ValidationError at the struct's path during decode.

Vowpal Wabbit arguments are checked against an allow-list (nothing that reads or writes files,
opens ports or changes the driver), then by building a throwaway ``Workspace`` so an option VW
rejects fails when the server accepts the definition (``bandits.vw.check_vw_config``), with VW's
message, rather than when the first decision is made. This module imports msgspec only.
"""

from __future__ import annotations

import math
import re
from enum import Enum
from typing import Annotated, Final, Literal

import msgspec

__all__ = [
    "DEFAULT_MIN_PROPENSITY_SHARE",
    "Apprentice",
    "EpsilonGreedyConfig",
    "FixedConfig",
    "PolicyConfig",
    "SendTimeThompsonConfig",
    "ThompsonConfig",
    "VWCBConfig",
    "VWSlatesConfig",
    "decode_policy_config",
]

Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0.0)]


def _check(
    name: str,
    value: float,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> None:
    """Raise ValueError ``"<name> == <value>, must be <op> <bound>"`` when a bound is broken."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} == {value}, must be finite")
    for op, bound, ok in (
        (">=", ge, ge is None or value >= ge),
        (">", gt, gt is None or value > gt),
        ("<=", le, le is None or value <= le),
        ("<", lt, lt is None or value < lt),
    ):
        if not ok:
            raise ValueError(f"{name} == {value}, must be {op} {bound}")


class _Base(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind"
):
    """Common options of every policy config."""


DEFAULT_MIN_PROPENSITY_SHARE: Final = 0.1
"""Default floor of a learning policy as a share of uniform: every candidate gets at least
``0.1 / n``. Measured in ``tests/experiments/test_off_policy_floor.py``: with it, the 95% IPS and
SNIPS intervals of "uniform" and "always X" from vw_cb's own logs cover the truth in a simulated
contextual world; without a floor, SquareCB starves the arms it has ruled out and they do not."""


FLOOR_DECAY_AFTER: Final = 5_000
"""Examples after which the default floor of a policy that passes its evidence starts to fall."""
MIN_DECAYED_SHARE: Final = 0.03
"""The lowest share of uniform the default floor falls to (``_Learning.floor``)."""


class Apprentice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Apprentice mode of a learning policy (``bandits.apprentice``).

    Until it takes over, the policy serves the experiment's fixed split (its variant weights;
    put all weight on the default variant to serve it alone), mixed with ``explore`` spread
    evenly over the variants so its logs stay evaluable, while it learns from every decision
    and keeps an off-policy estimate of its own value against that split's.

    Attributes:
        takeover: ``auto``: it serves its own choices once the lower 95% bound of its
            estimated gain over the split is above zero, after ``min_decisions``; ``manual``:
            only after ``POST /v1/experiments/{key}/takeover``.
        explore: The share of decisions spread evenly over the variants while apprenticing.
        min_decisions: Decisions learned before an automatic takeover is considered.
    """

    takeover: Literal["auto", "manual"] = "auto"
    explore: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.1
    min_decisions: Annotated[int, msgspec.Meta(ge=1)] = 1_000

    def __post_init__(self) -> None:
        _check("explore", self.explore, ge=0.0, le=1.0)
        _check("min_decisions", self.min_decisions, ge=1)


class _Learning(_Base, frozen=True):
    """Options every learning policy shares: the exploration floor.

    Attributes:
        min_propensity: Every candidate's minimum probability, in ``[0, 1/n_variants]``. The
            policy's pmf is mixed with uniform just enough to reach it (``bandits.base.
            floor_pmf``) and the logged propensity is the mixed pmf's. ``None`` (the default)
            means ``DEFAULT_MIN_PROPENSITY_SHARE / n``; ``0`` turns the floor off. With more
            candidates than ``1 / min_propensity`` the floor is a uniform ``1/n``.
        apprentice: Apprentice mode (see ``Apprentice``); None (the default) serves the
            policy's own choices from the start.
    """

    min_propensity: Probability | None = None
    apprentice: Apprentice | None = None

    def __post_init__(self) -> None:
        if self.min_propensity is not None:
            _check("min_propensity", self.min_propensity, ge=0.0, le=1.0)

    def floor(self, n: int, examples: int | None = None) -> float:
        """The minimum probability of each of ``n`` candidates.

        With the default (``min_propensity`` None) and ``examples`` given (the evidence the
        policy has learned from), the share falls like ``1 / sqrt(examples)`` from
        ``DEFAULT_MIN_PROPENSITY_SHARE`` after ``FLOOR_DECAY_AFTER`` examples, down to
        ``MIN_DECAYED_SHARE``: exploration that a learned model no longer needs stops costing
        reward, and every candidate keeps a probability that off-policy estimates can use.
        """
        if self.min_propensity is not None:
            return min(self.min_propensity, 1.0 / n)
        share = DEFAULT_MIN_PROPENSITY_SHARE
        if examples is not None and examples > FLOOR_DECAY_AFTER:
            share = max(share * math.sqrt(FLOOR_DECAY_AFTER / examples), MIN_DECAYED_SHARE)
        return min(share / n, 1.0 / n)

    def check_arms(self, n_arms: int) -> None:
        """Raise ValueError unless ``min_propensity`` fits ``n_arms`` arms."""
        if self.min_propensity is not None and self.min_propensity * n_arms > 1.0 + 1e-12:
            raise ValueError(
                f"min_propensity == {self.min_propensity} with {n_arms} arms, "
                f"must be <= {1.0 / n_arms:.6g} (min_propensity * n_arms <= 1)"
            )


class FixedConfig(_Base, frozen=True, tag="fixed"):
    """A/B/n split over the experiment's variant weights; propensity = weight share."""


class EpsilonGreedyConfig(_Learning, frozen=True, tag="epsilon_greedy"):
    """Non-contextual epsilon-greedy over the mean reward of each arm (floored, see _Learning)."""

    epsilon: Probability = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("epsilon", self.epsilon, ge=0.0, le=1.0)


class ThompsonConfig(_Learning, frozen=True, tag="thompson"):
    """Beta-Bernoulli Thompson sampling by probability matching, optionally per segment.

    Attributes:
        prior_alpha: Beta prior successes added to every arm.
        prior_beta: Beta prior failures added to every arm.
        segment_by: Context attribute whose value selects a per-segment posterior.
        min_segment_trials: Trials a segment needs before its own posterior is used; below
            that, the global posterior decides.
        max_segments: Segments tracked at most; further segments use the global posterior.
        min_share: Exploration floor mixed in always: ``m + (1 - n m) P(k wins)``.
        min_propensity: The floor every learning policy has (see ``_Learning``), applied after
            ``min_share``; it changes the pmf only where ``min_share`` left an arm below it.
        mc_samples: Posterior draws used to estimate each arm's win probability.
    """

    prior_alpha: PositiveFloat = 1.0
    prior_beta: PositiveFloat = 1.0
    segment_by: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    min_segment_trials: Annotated[int, msgspec.Meta(ge=1)] = 1
    max_segments: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1_000
    min_share: Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)] = 0.0
    mc_samples: Annotated[int, msgspec.Meta(ge=1_000, le=1_000_000)] = 20_000

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("prior_alpha", self.prior_alpha, gt=0.0)
        _check("prior_beta", self.prior_beta, gt=0.0)
        _check("min_segment_trials", self.min_segment_trials, ge=1)
        _check("max_segments", self.max_segments, ge=1, le=100_000)
        _check("min_share", self.min_share, ge=0.0, lt=1.0)
        _check("mc_samples", self.mc_samples, ge=1_000, le=1_000_000)

    def check_arms(self, n_arms: int) -> None:
        """Raise ValueError unless the floors ``min_share`` and ``min_propensity`` fit."""
        super().check_arms(n_arms)
        if self.min_share * n_arms > 1.0 + 1e-12:
            raise ValueError(
                f"min_share == {self.min_share} with {n_arms} arms, "
                f"must be <= {1.0 / n_arms:.6g} (min_share * n_arms <= 1)"
            )


class _Arg(Enum):
    """What an allowed VW option takes after it."""

    FLAG = "flag"
    FLOAT = "float"
    INT = "int"
    BITS = "bits"
    CB_TYPE = "cb_type"
    NAMESPACES = "namespaces"


_ALIASES: Final = {"-l": "--learning_rate", "-b": "--bit_precision", "-q": "--quadratic"}
_ALLOWED: Final = {
    "--learning_rate": _Arg.FLOAT,
    "--power_t": _Arg.FLOAT,
    "--initial_t": _Arg.FLOAT,
    "--decay_learning_rate": _Arg.FLOAT,
    "--l1": _Arg.FLOAT,
    "--l2": _Arg.FLOAT,
    "--lambda": _Arg.FLOAT,
    "--psi": _Arg.FLOAT,
    "--mellowness": _Arg.FLOAT,
    "--mineps": _Arg.FLOAT,
    "--cb_min_cost": _Arg.FLOAT,
    "--cb_max_cost": _Arg.FLOAT,
    "--bit_precision": _Arg.BITS,
    "--first": _Arg.INT,
    "--bag": _Arg.INT,
    "--cover": _Arg.INT,
    "--random_seed": _Arg.INT,
    "--cb_type": _Arg.CB_TYPE,
    "--quadratic": _Arg.NAMESPACES,
    "--cubic": _Arg.NAMESPACES,
    "--interactions": _Arg.NAMESPACES,
    "--noconstant": _Arg.FLAG,
    "--adaptive": _Arg.FLAG,
    "--normalized": _Arg.FLAG,
    "--invariant": _Arg.FLAG,
    "--sgd": _Arg.FLAG,
    "--softmax": _Arg.FLAG,
    "--nounif": _Arg.FLAG,
    "--regcb": _Arg.FLAG,
    "--regcbopt": _Arg.FLAG,
    "--elim": _Arg.FLAG,
}
# Options the config fields own; repeating them in extra_args would silently fight the field.
_RESERVED: Final = {
    "--cb_explore_adf": "kind",
    "--ccb_explore_adf": "kind",
    "--epsilon": "epsilon",
    "--squarecb": "exploration",
    "--gamma_scale": "gamma_scale",
    "--gamma_exponent": "gamma_exponent",
}
_CB_TYPES: Final = frozenset({"ips", "dm", "dr", "mtr", "sm"})
_NAMESPACES_RE: Final = re.compile(r"[UA]{2,3}")
_SLATE_NAMESPACES_RE: Final = re.compile(r"[UAS]{2,3}")
_NUMBER_RE: Final = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
MAX_BITS: Final = 24


def _check_value(option: str, kind: _Arg, value: str, *, slots: bool = False) -> None:
    """Raise ValueError if ``value`` is not acceptable for ``option`` (``slots``: the
    namespaces of a slate policy, which has slot features ``S`` too)."""
    if kind is _Arg.NAMESPACES and slots:
        if not _SLATE_NAMESPACES_RE.fullmatch(value):
            raise ValueError(
                f"VW option {option} takes 2-3 namespace letters from U (shared), "
                f"A (action) and S (slot), got {value!r}"
            )
        return
    match kind:
        case _Arg.FLOAT if not _NUMBER_RE.fullmatch(value):
            raise ValueError(f"VW option {option} needs a number, got {value!r}")
        case _Arg.INT | _Arg.BITS if not value.isdigit():
            raise ValueError(f"VW option {option} needs a non-negative integer, got {value!r}")
        case _Arg.BITS if not 1 <= int(value) <= MAX_BITS:
            raise ValueError(f"{option} == {value}, must be between 1 and {MAX_BITS}")
        case _Arg.CB_TYPE if value not in _CB_TYPES:
            raise ValueError(
                f"VW option {option} must be one of {sorted(_CB_TYPES)}, got {value!r}"
            )
        case _Arg.NAMESPACES if not _NAMESPACES_RE.fullmatch(value):
            raise ValueError(
                f"VW option {option} takes 2-3 namespace letters from U (shared) "
                f"and A (action), got {value!r}"
            )


def check_vw_args(args: tuple[str, ...], *, slots: bool = False) -> list[str]:
    """Return ``args`` normalised to ``[--option, value, ...]`` or raise ValueError.

    Every option must be on the allow-list and take exactly the values it declares, so no
    stray token can reach VW as a data file name. ``slots``: the arguments of a slate policy
    (interactions may name the slot namespace ``S``).
    """
    out: list[str] = []
    tokens = list(args)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        option, eq, inline = token.partition("=")
        option = _ALIASES.get(option, option)
        if not option.startswith("-") or _NUMBER_RE.fullmatch(option):
            raise ValueError(f"VW argument {token!r} is not an option (values follow their option)")
        if option in _RESERVED:
            raise ValueError(
                f"VW argument {option} is set by the config field "
                f"{_RESERVED[option]!r}, not by extra_args"
            )
        kind = _ALLOWED.get(option)
        if kind is None:
            raise ValueError(
                f"VW argument {token!r} is not allowed; allowed: {', '.join(sorted(_ALLOWED))}"
            )
        out.append(option)
        if kind is _Arg.FLAG:
            if eq:
                raise ValueError(f"VW option {option} takes no value")
            continue
        if eq:
            value = inline
        elif i < len(tokens):
            value = tokens[i]
            i += 1
        else:
            raise ValueError(f"VW option {option} needs a value")
        _check_value(option, kind, value, slots=slots)
        out.append(value)
    return out


class VWCBConfig(_Learning, frozen=True, tag="vw_cb"):
    """Vowpal Wabbit ``--cb_explore_adf`` with shared (U) and per-action (A) features.

    Attributes:
        exploration: ``epsilon`` (epsilon-greedy) or ``squarecb`` (inverse-gap weighting).
        epsilon: Exploration share for ``exploration == "epsilon"``; it may change between
            snapshots of the same model.
        gamma_scale: SquareCB's gamma scale (larger exploits more).
        gamma_exponent: SquareCB's gamma exponent (gamma grows as t ** exponent).
        interactions: Namespace interactions; ``UA`` crosses context with action features,
            which is what lets the model personalise.
        learning_rate: VW's ``--learning_rate``. VW's own default (0.5) makes the cost
            estimates of a contextual bandit mostly noise at click-through rates of a few percent;
            0.01 learned the segment-dependent best arm of ``loadtests/sim_learning.py`` with
            ``-q UA``; 0.03 is best with the cubic ``UUA`` of the default interactions
            (``loadtests/bench_learning.py``). An ``-l`` in ``extra_args`` takes precedence.
        extra_args: Further VW options from the allow-list, e.g. ``("--l2", "1e-6")``.
        min_propensity: The exploration floor (see ``_Learning``): SquareCB's probability of an
            arm it has ruled out falls like ``1 / sqrt(t)``, which leaves logs that no off-policy
            estimate can use; the floor keeps every arm evaluable. It may change between
            snapshots.

        members: ``"ensemble"`` (the default): VW is one member of an ensemble that also holds
            hierarchical Thompson models per cell of an automatically chosen crossing of up to
            three categorical context attributes and a non-contextual baseline; the cells serve
            unless credibly worse than the baseline, VW once credibly better than both
            (``bandits.ensemble``). ``"vw"``: VW alone, as before the ensemble.
        max_cell_attributes: Categorical attributes (at most ``max_cell_values`` distinct
            values each, first seen first) the ensemble crosses into cells, in pairs and triples.
        max_cell_values: Attributes with more distinct values are left to VW.
        forget_half_life: Examples after which the ensemble's cell statistics and value
            estimates weigh half (None: no steady forgetting; a detected change of the world
            discounts old evidence in any case).

    Measured with ``loadtests/bench_learning.py`` (8 variants, 50,000 decisions, medians of 3
    seeds; shares of the oracle's gain over uniform in the last fifth; ``docs/experiments.md``):
    VW alone (``-q UA -l 0.01``) stays far below the oracle when the best variant depends on a
    combination of attributes (2-way 0.37, 3-way 0.26, additive 0.60). The ensemble: 2-way 0.84,
    3-way 0.56, additive 0.93, rare 0.52, change half-way 0.68, 50 variants 0.47
    VW's defaults in the ensemble (``-q UA --cubic UUA -l 0.03``) were the best VW settings of
    an earlier study. Snapshots of a plain-VW model (or of an earlier ensemble format) do not
    restore into the ensemble (the learner starts a fresh model, as after any change of VW
    arguments).
    """

    exploration: Literal["epsilon", "squarecb"] = "squarecb"
    epsilon: Probability = 0.05
    gamma_scale: PositiveFloat = 10.0
    gamma_exponent: Annotated[float, msgspec.Meta(ge=0.0)] = 0.5
    interactions: Annotated[tuple[str, ...], msgspec.Meta(max_length=8)] = ("UA", "UUA")
    learning_rate: PositiveFloat = 0.03
    extra_args: Annotated[tuple[str, ...], msgspec.Meta(max_length=64)] = ()
    members: Literal["ensemble", "vw"] = "ensemble"
    max_cell_attributes: Annotated[int, msgspec.Meta(ge=0, le=8)] = 6
    max_cell_values: Annotated[int, msgspec.Meta(ge=2, le=32)] = 12
    forget_half_life: Annotated[int, msgspec.Meta(ge=1_000)] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("max_cell_attributes", self.max_cell_attributes, ge=0, le=8)
        _check("max_cell_values", self.max_cell_values, ge=2, le=32)
        if self.forget_half_life is not None:
            _check("forget_half_life", self.forget_half_life, ge=1_000)
        _check("epsilon", self.epsilon, ge=0.0, le=1.0)
        _check("gamma_scale", self.gamma_scale, gt=0.0)
        _check("gamma_exponent", self.gamma_exponent, ge=0.0)
        _check("learning_rate", self.learning_rate, gt=0.0)
        for ns in self.interactions:
            _check_value("interactions", _Arg.NAMESPACES, ns)
        self.vw_args()  # the allow-list: raises ValueError naming a bad option

    def vw_args(self) -> list[str]:
        """Return the full VW command line this config stands for (validated options only)."""
        args = ["--cb_explore_adf", "--quiet", *_exploration_args(self)]
        extra = check_vw_args(self.extra_args)
        if "--learning_rate" not in extra and "-l" not in self.extra_args:
            args += ["--learning_rate", repr(self.learning_rate)]
        return args + extra

    def structural_args(self) -> list[str]:
        """Return the arguments a snapshot must share to be restorable (all but epsilon)."""
        return _without_epsilon(self.vw_args(), self.exploration)


MAX_SLOTS: Final = 50
"""The longest slate a placement can ask for."""


class VWSlatesConfig(_Learning, frozen=True, tag="vw_slates"):
    """Ranked slates on Vowpal Wabbit's conditional contextual bandit (``--ccb_explore_adf``).

    A decision fills ``k`` slots, in order, from the candidates: slot ``j`` chooses among the
    candidates the earlier slots left, from VW's pmf for that slot mixed with uniform up to the
    floor, and logs that conditional probability (``bandits.vw_slates``). Features: the context
    in namespace ``U``, each candidate's in ``A`` (with ``_key``), the slot's position in
    ``S``; VW adds the slot's identity to every interaction itself, so position effects are
    learned without configuration.

    Attributes:
        slots: The slate length when a request does not say (at most the candidates there are).
        exploration: ``epsilon`` (epsilon-greedy per slot) or ``squarecb``.
        epsilon: Exploration share per slot for ``exploration == "epsilon"``; it may change
            between snapshots of the same model. Below the floor's share (0.1 by default) it
            changes nothing: the floor already spreads that much over the remaining items.
        gamma_scale: SquareCB's gamma scale.
        gamma_exponent: SquareCB's gamma exponent.
        interactions: Namespace interactions from ``U``, ``A`` and ``S``; ``UA`` crosses the
            context with item features, which is what lets the ranking depend on the visitor.
        learning_rate: VW's ``--learning_rate``. Small, because a slot's update is weighted by
            the inverse of its propensity (hundreds for an explored item among 50): in
            ``loadtests/bench_slates.py`` (50 items, 10 slots, 50,000 decisions) 0.1 reached 58%
            of the oracle's gain over random order, 0.01 74%, 0.002 79%, 0.001 77%.
        extra_args: Further VW options from the allow-list.
        min_propensity: Every remaining candidate's minimum probability in every slot (see
            ``_Learning``; the default is ``0.1 / n`` of the ``n`` candidates a slot has left).
    """

    slots: Annotated[int, msgspec.Meta(ge=1, le=MAX_SLOTS)] = 3
    exploration: Literal["epsilon", "squarecb"] = "epsilon"
    epsilon: Probability = 0.05
    gamma_scale: PositiveFloat = 10.0
    gamma_exponent: Annotated[float, msgspec.Meta(ge=0.0)] = 0.5
    interactions: Annotated[tuple[str, ...], msgspec.Meta(max_length=8)] = ("UA",)
    learning_rate: PositiveFloat = 0.002
    extra_args: Annotated[tuple[str, ...], msgspec.Meta(max_length=64)] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.apprentice is not None:
            raise ValueError("apprentice: vw_slates has no apprentice mode")
        _check("slots", self.slots, ge=1, le=MAX_SLOTS)
        _check("epsilon", self.epsilon, ge=0.0, le=1.0)
        _check("gamma_scale", self.gamma_scale, gt=0.0)
        _check("gamma_exponent", self.gamma_exponent, ge=0.0)
        _check("learning_rate", self.learning_rate, gt=0.0)
        for ns in self.interactions:
            _check_value("interactions", _Arg.NAMESPACES, ns, slots=True)
        self.vw_args()  # the allow-list: raises ValueError naming a bad option

    def vw_args(self) -> list[str]:
        """Return the full VW command line this config stands for (validated options only)."""
        args = ["--ccb_explore_adf", "--quiet", *_exploration_args(self)]
        extra = check_vw_args(self.extra_args, slots=True)
        if "--learning_rate" not in extra:
            args += ["--learning_rate", repr(self.learning_rate)]
        return args + extra

    def structural_args(self) -> list[str]:
        """Return the arguments a snapshot must share to be restorable (all but epsilon)."""
        return _without_epsilon(self.vw_args(), self.exploration)


SEND_TIME_POLICY_NAME: Final = "send_time_thompson"


def _exploration_args(config: VWCBConfig | VWSlatesConfig) -> list[str]:
    """VW's exploration and interaction options for a contextual-bandit or slates config."""
    if config.exploration == "epsilon":
        args = ["--epsilon", repr(config.epsilon)]
    else:
        args = ["--squarecb", "--gamma_scale", repr(config.gamma_scale)]
        args += ["--gamma_exponent", repr(config.gamma_exponent)]
    for ns in config.interactions:
        args += ["--interactions", ns]
    return args


def _without_epsilon(args: list[str], exploration: str) -> list[str]:
    """``args`` without the epsilon-greedy share (it may change between snapshots)."""
    if exploration == "epsilon":
        i = args.index("--epsilon")
        del args[i : i + 2]
    return args


def _check_range(
    name: str, value: float, low: float, high: float, *, open_low: bool = False
) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} == {value}, must be finite")
    if open_low and value <= low:
        raise ValueError(f"{name} == {value}, must be > {low}")
    if value < low:
        raise ValueError(f"{name} == {value}, must be >= {low}")
    if value > high:
        raise ValueError(f"{name} == {value}, must be <= {high}")


class SendTimeThompsonConfig(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag=SEND_TIME_POLICY_NAME,
    tag_field="kind",
):
    """Hyper-parameters of the per-hour Thompson policy (validated on construction/decoding).

    Attributes:
        n_hours: 24 (hour of day) or 168 (hour of week).
        prior_alpha: Beta prior successes per hour, > 0.
        prior_beta: Beta prior failures per hour, > 0.
        history_weight: exponent on the recipient's hour lift, in [0, 4]; 0 ignores history.
        history_prior: τ, pseudo-opens of the even hour profile each history is shrunk to, > 0.
        smoothing: share given to each neighbouring hour (circular), in [0, 0.5).
        population_cap: bound on α_h + β_h in a recipient's prior, > 0.
        min_share: exploration share spread evenly over feasible hours, in [0, 1].
        mc_draws: Thompson draws per recipient to estimate win probabilities, in [1, 1024].
    """

    n_hours: int = 24
    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    history_weight: float = 1.0
    history_prior: float = 8.0
    smoothing: float = 0.2
    population_cap: float = 1000.0
    min_share: float = 0.1
    mc_draws: int = 16

    def __post_init__(self) -> None:
        if self.n_hours not in (24, 168):
            raise ValueError(f"n_hours == {self.n_hours}, must be 24 or 168")
        _check_range("prior_alpha", self.prior_alpha, 0.0, 1e9, open_low=True)
        _check_range("prior_beta", self.prior_beta, 0.0, 1e9, open_low=True)
        _check_range("history_weight", self.history_weight, 0.0, 4.0)
        _check_range("history_prior", self.history_prior, 0.0, 1e9, open_low=True)
        _check_range("smoothing", self.smoothing, 0.0, 0.5)
        if self.smoothing == 0.5:
            raise ValueError("smoothing == 0.5, must be < 0.5")
        _check_range("population_cap", self.population_cap, 0.0, 1e12, open_low=True)
        _check_range("min_share", self.min_share, 0.0, 1.0)
        _check_range("mc_draws", self.mc_draws, 1, 1024)


PolicyConfig = (
    FixedConfig
    | ThompsonConfig
    | EpsilonGreedyConfig
    | VWCBConfig
    | VWSlatesConfig
    | SendTimeThompsonConfig
)
"""Any policy configuration; decode with ``msgspec.json.decode(raw, type=PolicyConfig)``."""

_DECODER: Final[msgspec.json.Decoder[PolicyConfig]] = msgspec.json.Decoder(PolicyConfig)


def decode_policy_config(raw: bytes | str) -> PolicyConfig:
    """Decode and validate a JSON policy config; raises ``msgspec.ValidationError``."""
    return _DECODER.decode(raw)
