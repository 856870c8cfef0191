"""Policy configs: tagged-union decoding and validation at construction."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from bandits.base import Arm
from bandits.registry import build_policy
from tailor_contract.policies import (
    DEFAULT_MIN_PROPENSITY_SHARE,
    EpsilonGreedyConfig,
    FixedConfig,
    PolicyConfig,
    ThompsonConfig,
    VWCBConfig,
    VWSlatesConfig,
    check_vw_args,
    decode_policy_config,
)
from tests.support.training import epsilon_vw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"kind":"fixed"}', FixedConfig()),
        (b'{"kind":"epsilon_greedy","epsilon":0.2}', EpsilonGreedyConfig(epsilon=0.2)),
        (
            b'{"kind":"thompson","segment_by":"country","min_share":0.05}',
            ThompsonConfig(segment_by="country", min_share=0.05),
        ),
        (
            b'{"kind":"vw_cb","exploration":"squarecb","gamma_scale":50,"extra_args":["-l","0.5"]}',
            VWCBConfig(exploration="squarecb", gamma_scale=50.0, extra_args=("-l", "0.5")),
        ),
    ],
)
def test_decode_dispatches_on_kind(raw: bytes, expected: PolicyConfig) -> None:
    """Each kind decodes to its own Struct with the given fields and defaults for the rest."""
    assert decode_policy_config(raw) == expected
    assert msgspec.json.decode(msgspec.json.encode(expected), type=PolicyConfig) == expected


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b'{"kind":"vw_cb","epsilon":2}', r"<= 1.0 - at `\$.epsilon`"),
        (b'{"kind":"epsilon_greedy","epsilon":-0.1}', r">= 0.0 - at `\$.epsilon`"),
        (b'{"kind":"thompson","min_share":1.0}', r"< 1.0 - at `\$.min_share`"),
        (b'{"kind":"thompson","prior_alpha":0}', r"> 0.0 - at `\$.prior_alpha`"),
        (b'{"kind":"thompson","mc_samples":10}', r">= 1000 - at `\$.mc_samples`"),
        (b'{"kind":"vw_cb","min_propensity":1.5}', r"<= 1.0 - at `\$.min_propensity`"),
        (b'{"kind":"thompson","min_propensity":-0.1}', r">= 0.0 - at `\$.min_propensity`"),
        (b'{"kind":"epsilon_greedy","min_propensity":"x"}', r"at `\$.min_propensity`"),
        (b'{"kind":"bandit"}', r"Invalid value 'bandit' - at `\$.kind`"),
        (b'{"epsilon":0.1}', "missing required field `kind`"),
        (b'{"kind":"fixed","weights":[1,2]}', "unknown field `weights`"),
        (b'{"kind":"vw_cb","exploration":"ucb"}', r"at `\$.exploration`"),
        (b'{"kind":"vw_cb","interactions":["UX"]}', "namespace letters"),
        (b'{"kind":"vw_cb","extra_args":["-f","/tmp/x"]}', "'-f' is not allowed"),
        (b'{"kind":"vw_cb","extra_args":["-d","data.txt"]}', "'-d' is not allowed"),
        (b'{"kind":"vw_cb","extra_args":["--daemon"]}', "'--daemon' is not allowed"),
        (b'{"kind":"vw_cb","extra_args":["--cache"]}', "'--cache' is not allowed"),
        (b'{"kind":"vw_cb","extra_args":["--bogus_option"]}', "'--bogus_option' is not allowed"),
        (b'{"kind":"vw_cb","extra_args":["--rnd","3"]}', "'--rnd' is not allowed"),
        (b'{"kind":"vw_cb","extra_args":["--epsilon","0.3"]}', "config field 'epsilon'"),
        (b'{"kind":"vw_cb","extra_args":["--noconstant","/tmp/x"]}', "is not an option"),
        (b'{"kind":"vw_cb","extra_args":["-l"]}', "--learning_rate needs a value"),
        (b'{"kind":"vw_cb","extra_args":["-l","fast"]}', "needs a number"),
        (b'{"kind":"vw_cb","extra_args":["-b","30"]}', "must be between 1 and 24"),
        (b'{"kind":"vw_cb","extra_args":["--cb_type","foo"]}', "must be one of"),
        (b'{"kind":"vw_cb","extra_args":["--noconstant=1"]}', "takes no value"),
    ],
)
def test_decode_rejects_bad_configs(raw: bytes, match: str) -> None:
    """Invalid configs fail at decode with a ValidationError naming the field or the rule."""
    with pytest.raises(msgspec.ValidationError, match=match):
        decode_policy_config(raw)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: EpsilonGreedyConfig(epsilon=1.2), r"epsilon == 1.2, must be <= 1.0"),
        (lambda: epsilon_vw(-0.5), r"epsilon == -0.5, must be >= 0.0"),
        (lambda: epsilon_vw(float("nan")), r"epsilon == nan, must be finite"),
        (lambda: ThompsonConfig(min_share=1.5), r"min_share == 1.5, must be < 1.0"),
        (lambda: ThompsonConfig(prior_beta=0.0), r"prior_beta == 0.0, must be > 0.0"),
        (lambda: VWCBConfig(gamma_scale=0.0), r"gamma_scale == 0.0, must be > 0.0"),
        (lambda: VWCBConfig(min_propensity=1.5), r"min_propensity == 1.5, must be <= 1.0"),
        (lambda: EpsilonGreedyConfig(min_propensity=-0.1), r"min_propensity == -0.1, must be >= 0"),
        (lambda: ThompsonConfig(min_propensity=float("nan")), "min_propensity == nan, must be"),
        (lambda: VWCBConfig(extra_args=("--daemon",)), "'--daemon' is not allowed"),
    ],
)
def test_construction_validates_like_decoding(build: Callable[[], object], match: str) -> None:
    """Configs built in Python enforce the same bounds, with 'x == v, must be ...' messages."""
    with pytest.raises(ValueError, match=match):
        build()


def test_post_init_error_carries_the_struct_path() -> None:
    """A rule checked in __post_init__ surfaces as a ValidationError at the config's path."""

    class Experiment(msgspec.Struct):
        policy: PolicyConfig

    match = r"'--daemon' is not allowed.* - at `\$.policy`"
    with pytest.raises(msgspec.ValidationError, match=match):
        msgspec.json.decode(
            b'{"policy":{"kind":"vw_cb","extra_args":["--daemon"]}}', type=Experiment
        )


@pytest.mark.parametrize(
    ("n_arms", "ok"),
    [(4, True), (5, False)],
)
def test_min_share_must_fit_the_arms(n_arms: int, ok: bool) -> None:
    """Building Thompson with min_share * n_arms > 1 fails; exactly 1 is allowed."""
    config = ThompsonConfig(min_share=0.25)
    arms = [Arm(key=f"v{i}") for i in range(n_arms)]
    if ok:
        assert build_policy(config, arms).name == "thompson"
    else:
        with pytest.raises(ValueError, match=r"min_share == 0.25 with 5 arms, must be <= 0.2"):
            build_policy(config, arms)


@pytest.mark.parametrize(
    "config",
    [
        ThompsonConfig(min_propensity=0.25),
        EpsilonGreedyConfig(min_propensity=0.25),
        VWCBConfig(min_propensity=0.25),
    ],
    ids=["thompson", "epsilon_greedy", "vw_cb"],
)
def test_min_propensity_must_fit_the_arms(
    config: ThompsonConfig | EpsilonGreedyConfig | VWCBConfig,
) -> None:
    """A floor above 1/n_arms is refused for n arms; exactly 1/n is allowed (uniform)."""
    config.check_arms(4)
    with pytest.raises(ValueError, match=r"min_propensity == 0.25 with 5 arms, must be <= 0.2"):
        config.check_arms(5)


@pytest.mark.parametrize(
    ("min_propensity", "n", "floor"),
    [
        (None, 4, DEFAULT_MIN_PROPENSITY_SHARE / 4),
        (None, 10, DEFAULT_MIN_PROPENSITY_SHARE / 10),
        (0.02, 4, 0.02),
        (0.0, 4, 0.0),
        (0.2, 8, 0.125),
    ],
)
def test_floor_defaults_to_a_share_of_uniform_and_never_exceeds_it(
    min_propensity: float | None, n: int, floor: float
) -> None:
    """No min_propensity means DEFAULT_MIN_PROPENSITY_SHARE / n; a set one is capped at 1/n."""
    assert VWCBConfig(min_propensity=min_propensity).floor(n) == pytest.approx(floor)


def test_vw_args_are_normalised_and_complete() -> None:
    """Aliases and --opt=value forms normalise; the command line carries exploration, the
    interactions (by default UA and the cubic UUA) and the learning rate (by default 0.03)."""
    assert check_vw_args(("-l", "0.5", "--l2=1e-6", "-q", "UU", "--noconstant")) == [
        "--learning_rate",
        "0.5",
        "--l2",
        "1e-6",
        "--quadratic",
        "UU",
        "--noconstant",
    ]
    assert epsilon_vw(0.2).vw_args() == [
        "--cb_explore_adf",
        "--quiet",
        "--epsilon",
        "0.2",
        "--interactions",
        "UA",
        "--learning_rate",
        "0.01",
    ]
    squarecb = VWCBConfig(exploration="squarecb", gamma_scale=20.0, extra_args=("--lambda", "-1"))
    assert squarecb.vw_args() == [
        "--cb_explore_adf",
        "--quiet",
        "--squarecb",
        "--gamma_scale",
        "20.0",
        "--gamma_exponent",
        "0.5",
        "--interactions",
        "UA",
        "--interactions",
        "UUA",
        "--learning_rate",
        "0.03",
        "--lambda",
        "-1",
    ]
    # An explicit learning rate in the extra arguments replaces the default one.
    assert VWCBConfig(extra_args=("-l", "0.5")).vw_args().count("--learning_rate") == 1


def test_structural_args_ignore_only_epsilon() -> None:
    """Two configs differing only in epsilon share structural args; other changes do not."""
    assert epsilon_vw(0.1).structural_args() == epsilon_vw(0.3).structural_args()
    assert VWCBConfig().structural_args() != VWCBConfig(interactions=()).structural_args()


def test_slates_config_decodes_and_builds_its_vw_arguments() -> None:
    """``vw_slates`` decodes with its defaults, runs VW's CCB, and may interact the slot
    namespace S; epsilon is the one argument a snapshot may change."""
    config = decode_policy_config(b'{"kind":"vw_slates","slots":10,"interactions":["UA","SA"]}')
    assert config == VWSlatesConfig(slots=10, interactions=("UA", "SA"))
    assert config.vw_args()[:2] == ["--ccb_explore_adf", "--quiet"]
    assert "--epsilon" not in config.structural_args()
    assert config.vw_args()[4:8] == ["--interactions", "UA", "--interactions", "SA"]


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b'{"kind":"vw_slates","slots":0}', r">= 1 - at `\$.slots`"),
        (b'{"kind":"vw_slates","slots":51}', r"<= 50 - at `\$.slots`"),
        (b'{"kind":"vw_slates","interactions":["UX"]}', r"A \(action\) and S"),
        (b'{"kind":"vw_slates","extra_args":["--ccb_explore_adf"]}', "config field 'kind'"),
        (b'{"kind":"vw_slates","extra_args":["-q","SA"]}', None),
        (b'{"kind":"vw_slates","apprentice":{}}', "apprentice: vw_slates has no apprentice"),
        (b'{"kind":"vw_cb","interactions":["SA"]}', "namespace letters from U"),
    ],
)
def test_slates_config_rejects_bad_options(raw: bytes, match: str | None) -> None:
    """Bad slate options fail at decode naming the field or the rule (S only for slates)."""
    if match is None:
        decode_policy_config(raw)
        return
    with pytest.raises(msgspec.ValidationError, match=match):
        decode_policy_config(raw)
