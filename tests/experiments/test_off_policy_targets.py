"""Off-policy evaluation of any target: rule tables, uniform, always-X and the current model.

The coverage check simulates 300 logs from a known world: contexts (plan × country) with a
click rate per context and variant, logged by a context-dependent policy with a floor (every
variant at least 10%). For each log, IPS, SNIPS and DR (reward model: shrunk means per target
cell × variant, as :func:`experiments.off_policy.targets.evaluate_target` fits it) estimate the
value of "uniform", "always c" and a rule table; the truth is the exact expectation over the
world's context distribution. Every 95% interval must cover the truth in >= 93% of the logs
(binomial sd at 300 logs is 1.3 pp, so 93% is ~1.5 sd below 95%). Fixed seeds.

Measured once outside the suite: with 1,500 rows per log (clicks of 2-20% under weights up to
10) coverage over 2,000 logs was 93.2-94.0% — the CLT is slightly short when a cell has a
handful of clicks; with 5,000 rows uniform IPS covered 94.8% over 3,000 logs.
"""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from bandits.base import Arm, Candidate, Example
from bandits.registry import build_policy
from experiments.off_policy.estimators import evaluate_policy
from experiments.off_policy.reward_models import cell_mean_rewards
from experiments.off_policy.targets import (
    CurrentGreedyTarget,
    CurrentTarget,
    RulesTarget,
    TargetSpec,
    UniformTarget,
    evaluate_target,
    rule_cells,
    target_matrix,
)
from tailor_contract.policies import ThompsonConfig

KEYS = ("a", "b", "c")
CANDIDATES = tuple(Candidate(key=k) for k in KEYS)
# The world's distinct contexts, their probabilities and click rates per variant.
CONTEXTS = (
    {"plan": "free", "country": "de", "age": 25},
    {"plan": "free", "country": "fr", "age": 40},
    {"plan": "pro", "country": "de", "age": 33},
    {"plan": "pro", "country": "fr", "age": 61},
)
CONTEXT_P = np.array([0.4, 0.2, 0.25, 0.15])
RATES = np.array(
    [
        [0.10, 0.04, 0.06],
        [0.03, 0.12, 0.05],
        [0.05, 0.06, 0.20],
        [0.08, 0.02, 0.15],
    ]
)
# The logging policy: a context-dependent preference with a floor of 10% per variant.
LOGGER = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.1, 0.1, 0.8],
        [0.1, 0.8, 0.1],
        [0.45, 0.45, 0.1],
    ]
)
RULES = msgspec.convert(
    {
        "kind": "rules",
        "rules": [
            {"when": {"attribute": "plan", "op": "eq", "value": "pro"}, "variant": "c"},
            {
                "when": {"all": [{"attribute": "country", "op": "eq", "value": "fr"}]},
                "variant": {"b": 0.7, "a": 0.3},
            },
        ],
        "otherwise": "a",
    },
    TargetSpec,
)
LOGS = 300
ROWS = 5_000


def _context_matrix(target: TargetSpec) -> np.ndarray:
    """π(· | x) for each of the world's distinct contexts, shape (4, 3)."""
    examples = [
        Example(context=ctx, candidates=CANDIDATES, chosen=0, propensity=1.0, reward=0.0)
        for ctx in CONTEXTS
    ]
    pi, _, _ = target_matrix(target, KEYS, examples)
    return pi


def _simulate(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One log: context index, action, propensity and reward per row, shape (ROWS,) each."""
    ctx = rng.choice(len(CONTEXTS), size=ROWS, p=CONTEXT_P)
    cum = LOGGER[ctx].cumsum(axis=1)
    actions = (rng.random(ROWS)[:, None] > cum).sum(axis=1).astype(np.intp)
    propensities = LOGGER[ctx, actions]
    rewards = (rng.random(ROWS) < RATES[ctx, actions]).astype(np.float64)
    return ctx, actions, propensities, rewards


def test_rules_pick_the_first_matching_row_and_probability_tables() -> None:
    assert isinstance(RULES, RulesTarget)
    assert rule_cells(RULES, CONTEXTS).tolist() == [2, 1, 0, 0]
    np.testing.assert_allclose(
        _context_matrix(RULES), [[1, 0, 0], [0.3, 0.7, 0], [0, 0, 1], [0, 0, 1]]
    )


@pytest.mark.parametrize(
    ("target", "field"),
    [
        ({"kind": "always", "variant": "z"}, "$.target.variant"),
        ({"kind": "rules", "rules": [], "otherwise": {"a": 0.5}}, "$.target.otherwise"),
        (
            {
                "kind": "rules",
                "rules": [{"when": {"attribute": "plan", "op": "exists"}, "variant": "q"}],
                "otherwise": "a",
            },
            "$.target.rules[0].variant",
        ),
    ],
)
def test_bad_targets_name_the_field(target: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("$", r"\$").replace("[", r"\[")):
        _context_matrix(msgspec.convert(target, TargetSpec))


def test_evaluate_target_uses_the_logged_propensities_and_cell_means() -> None:
    ctx, actions, propensities, rewards = _simulate(np.random.default_rng(7))
    examples = [
        Example(context=CONTEXTS[c], candidates=CANDIDATES, chosen=int(a), propensity=p, reward=r)
        for c, a, p, r in zip(ctx, actions, propensities, rewards, strict=True)
    ]
    result = evaluate_target(RULES, KEYS, examples, reward_range=(0.0, 1.0))
    pi = _context_matrix(RULES)[ctx]
    cells = rule_cells(RULES, [CONTEXTS[c] for c in ctx])
    expected = evaluate_policy(
        rewards,
        propensities,
        actions,
        pi,
        reward_model=cell_mean_rewards(rewards, actions, 3, segments=cells),
        reward_range=(0.0, 1.0),
    )
    assert result.estimate == expected
    assert result.cells == {
        "rule 0": int((cells == 0).sum()),
        "rule 1": int((cells == 1).sum()),
        "otherwise": int((cells == 2).sum()),
    }
    weights = pi[np.arange(ROWS), actions] / propensities
    assert result.difference.estimate == pytest.approx(float(((weights - 1) * rewards).mean()))
    assert result.deployed.estimate == pytest.approx(float(rewards.mean()))
    # Weights stay below 1 / 0.1 = 10: no support warning.
    assert result.warnings == ()


def test_current_model_targets_read_the_policys_pmf() -> None:
    config = ThompsonConfig(segment_by="plan")
    policy = build_policy(config, [Arm(key=k) for k in KEYS], version="t")
    rng = np.random.default_rng(3)
    ctx, actions, propensities, rewards = _simulate(rng)
    examples = [
        Example(context=CONTEXTS[c], candidates=CANDIDATES, chosen=int(a), propensity=p, reward=r)
        for c, a, p, r in zip(ctx, actions, propensities, rewards, strict=True)
    ]
    policy.learn(examples)
    pi, best, _ = target_matrix(CurrentTarget(), KEYS, examples, policy=policy)
    expected = np.array([policy.pmf(ex.context, CANDIDATES) for ex in examples])
    np.testing.assert_allclose(pi, expected)
    greedy, _, _ = target_matrix(CurrentGreedyTarget(), KEYS, examples, policy=policy)
    assert greedy.sum(axis=1).tolist() == [1.0] * ROWS
    assert (np.argmax(greedy, axis=1) == np.argmax(expected, axis=1)).all()
    assert (best == np.argmax(expected, axis=1)).all()
    with pytest.raises(ValueError, match="no model"):
        target_matrix(CurrentTarget(), KEYS, examples)


@pytest.mark.slow
def test_intervals_cover_the_truth_for_uniform_always_and_rules() -> None:
    targets: dict[str, TargetSpec] = {
        "uniform": UniformTarget(),
        "always c": msgspec.convert({"kind": "always", "variant": "c"}, TargetSpec),
        "rules": RULES,
    }
    matrices = {name: _context_matrix(t) for name, t in targets.items()}
    cells_of = {
        name: (
            rule_cells(t, CONTEXTS) if isinstance(t, RulesTarget) else np.zeros(4, dtype=np.intp)
        )
        for name, t in targets.items()
    }
    truth = {name: float(CONTEXT_P @ (pi * RATES).sum(axis=1)) for name, pi in matrices.items()}
    hits = {(name, est): 0 for name in targets for est in ("ips", "snips", "dr")}
    rng = np.random.default_rng(20261207)
    for _ in range(LOGS):
        ctx, actions, propensities, rewards = _simulate(rng)
        for name, pi_ctx in matrices.items():
            cells = cells_of[name][ctx]
            result = evaluate_policy(
                rewards,
                propensities,
                actions,
                pi_ctx[ctx],
                reward_model=cell_mean_rewards(rewards, actions, 3, segments=cells),
                reward_range=(0.0, 1.0),
            )
            assert result.doubly_robust is not None
            for est, interval in (
                ("ips", result.ips),
                ("snips", result.snips),
                ("dr", result.doubly_robust),
            ):
                hits[(name, est)] += interval.lower <= truth[name] <= interval.upper
    coverage = {key: count / LOGS for key, count in hits.items()}
    for (name, est), share in sorted(coverage.items()):
        print(f"coverage {name:>9} {est:<5} {share:.3f} (truth {truth[name]:.4f})")
    assert min(coverage.values()) >= 0.93, coverage


def test_support_warnings_only_where_the_target_needs_large_weights() -> None:
    """Rows logged with propensity 0.005 only matter to a target that chooses them: "always b"
    (weights of 200 on them) warns; a rule table avoiding b there does not."""
    rng = np.random.default_rng(11)
    n = 4_000
    ctx = rng.choice(len(CONTEXTS), size=n, p=CONTEXT_P)
    logger = np.where(np.arange(3)[None, :] == 1, 0.005, 0.4975)[np.zeros(n, dtype=np.intp)]
    actions = (rng.random(n)[:, None] > logger.cumsum(axis=1)).sum(axis=1).astype(np.intp)
    examples = [
        Example(
            context=CONTEXTS[c],
            candidates=CANDIDATES,
            chosen=int(a),
            propensity=float(logger[i, a]),
            reward=float(rng.random() < RATES[c, a]),
        )
        for i, (c, a) in enumerate(zip(ctx, actions, strict=True))
    ]
    always_b = evaluate_target(
        msgspec.convert({"kind": "always", "variant": "b"}, TargetSpec), KEYS, examples
    )
    assert always_b.estimate.low_support and any(
        "weights up to 200" in w for w in always_b.warnings
    )
    no_b = msgspec.convert(
        {
            "kind": "rules",
            "rules": [{"when": {"attribute": "plan", "op": "eq", "value": "pro"}, "variant": "c"}],
            "otherwise": "a",
        },
        TargetSpec,
    )
    assert evaluate_target(no_b, KEYS, examples).warnings == ()
