"""Micro-benchmark of the bandit policies: CPU per decision and learner throughput.

Run: ``.venv/bin/python loadtests/bench_policies.py [--runs 7] [--decisions 2000]``

Decisions use 10 candidates (3 features each) and contexts of 20 shared features (half
categorical, half numeric, values varying per decision). Each figure is the median over
``--runs`` repetitions of CPU time (``time.process_time``) on one core. Targets: VW adds at
most 0.3 ms per decision over the fixed split; the VW learner sustains >= 5,000 examples/s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import msgspec
import numpy as np
from vowpal_wabbit_next import TextFormatParser

from bandits.base import Arm, Candidate, Context, Example, Policy
from bandits.features import action_line
from bandits.registry import build_policy
from bandits.vw import VWPolicy
from tailor_contract.policies import (
    EpsilonGreedyConfig,
    FixedConfig,
    PolicyConfig,
    ThompsonConfig,
    VWCBConfig,
)

N_CANDIDATES = 10
N_SHARED = 20
ARMS = [Arm(key=f"variant_{i}", weight=float(i + 1)) for i in range(N_CANDIDATES)]
CANDIDATES = tuple(
    Candidate(
        key=a.key,
        features={"colour": f"c{i % 3}", "price": 9.99 + i, "tags": ["sale", f"t{i % 4}"]},
    )
    for i, a in enumerate(ARMS)
)


def make_contexts(n: int, rng: np.random.Generator) -> list[Context]:
    """``n`` contexts of N_SHARED features: even ones categorical, odd ones numeric."""
    out: list[Context] = []
    for _ in range(n):
        cats = rng.integers(0, 50, size=N_SHARED)
        nums = rng.random(N_SHARED)
        out.append(
            {
                f"f{j}": (f"v{cats[j]}" if j % 2 == 0 else round(float(nums[j]) * 100, 3))
                for j in range(N_SHARED)
            }
        )
    return out


def make_examples(contexts: Sequence[Context], rng: np.random.Generator) -> list[Example]:
    """One uniformly logged example per context with a Bernoulli reward."""
    chosen = rng.integers(0, N_CANDIDATES, size=len(contexts))
    rewards = rng.random(len(contexts)) < 0.1 + 0.05 * chosen
    return [
        Example(
            context=c,
            candidates=CANDIDATES,
            chosen=int(i),
            propensity=1 / N_CANDIDATES,
            reward=float(r),
        )
        for c, i, r in zip(contexts, chosen, rewards, strict=True)
    ]


def median_cpu(runs: int, body: Callable[[], None]) -> float:
    """Median CPU seconds of ``body`` over ``runs`` calls (after one warm-up call)."""
    body()
    times = []
    for _ in range(runs):
        start = time.process_time()
        body()
        times.append(time.process_time() - start)
    return statistics.median(times)


def bench_decisions(runs: int, n: int) -> dict[str, float]:
    """Microseconds of CPU per ``choose`` for each policy kind (median of runs)."""
    rng = np.random.default_rng(0)
    contexts = make_contexts(n, rng)
    warm = make_examples(make_contexts(2_000, rng), rng)
    configs: dict[str, PolicyConfig] = {
        "fixed": FixedConfig(),
        "epsilon_greedy": EpsilonGreedyConfig(),
        "thompson": ThompsonConfig(),
        "thompson (segment_by f0)": ThompsonConfig(segment_by="f0"),
        "vw_cb epsilon": VWCBConfig(),
        "vw_cb squarecb": VWCBConfig(exploration="squarecb"),
    }
    out: dict[str, float] = {}
    for label, config in configs.items():
        policy = build_policy(config, ARMS)
        policy.learn(warm)

        def decide(policy: Policy = policy) -> None:
            gen = np.random.default_rng(1)
            for context in contexts:
                policy.choose(context, CANDIDATES, gen)

        out[label] = median_cpu(runs, decide) / n * 1e6
        if isinstance(policy, VWPolicy):
            # The runs above repeat the same contexts (parsed shared examples are reused):
            # here every decision's context is new to the policy.
            def decide_new(policy: VWPolicy = policy) -> None:
                policy._shared.clear()
                decide(policy)

            out[label + " (new contexts)"] = median_cpu(runs, decide_new) / n * 1e6

    # What the parsed-action cache saves: formatting and parsing 10 action lines per decision.
    vw = VWPolicy(VWCBConfig())
    parser = TextFormatParser(vw._ws)

    def parse_actions() -> None:
        for _ in range(n):
            for c in CANDIDATES:
                parser.parse_line(action_line(c.key, c.features))

    out["(uncached: format+parse 10 action lines)"] = median_cpu(runs, parse_actions) / n * 1e6
    return out


def bench_bulk(runs: int, n: int) -> dict[str, float]:
    """Microseconds of CPU per decision through ``choose_many`` (email-sized batches)."""
    rng = np.random.default_rng(2)
    contexts = make_contexts(n, rng)
    warm = make_examples(make_contexts(2_000, rng), rng)
    out: dict[str, float] = {}
    for label, config in {
        "fixed": FixedConfig(),
        "thompson (segment_by f0)": ThompsonConfig(segment_by="f0"),
        "vw_cb epsilon": VWCBConfig(),
    }.items():
        policy = build_policy(config, ARMS)
        policy.learn(warm)
        policy.choose_many(contexts, CANDIDATES, np.random.default_rng(3))  # fill caches
        out[label] = (
            median_cpu(
                runs, lambda p=policy: p.choose_many(contexts, CANDIDATES, np.random.default_rng(3))
            )
            / n
            * 1e6
        )
    return out


def bench_learning(runs: int, n: int) -> dict[str, float]:
    """Examples per CPU second through ``learn`` (batches of 500), and with msgpack decoding."""
    rng = np.random.default_rng(4)
    examples = make_examples(make_contexts(n, rng), rng)
    encoded = [msgspec.msgpack.encode(e) for e in examples]
    decoder = msgspec.msgpack.Decoder(Example)
    out: dict[str, float] = {}
    configs: dict[str, PolicyConfig] = {
        "vw_cb epsilon": VWCBConfig(),
        "vw_cb squarecb": VWCBConfig(exploration="squarecb"),
        "thompson": ThompsonConfig(),
        "thompson (segment_by f0)": ThompsonConfig(segment_by="f0"),
        "epsilon_greedy": EpsilonGreedyConfig(),
    }
    for label, config in configs.items():

        def learn(config: PolicyConfig = config) -> None:
            policy = build_policy(config, ARMS)
            for i in range(0, n, 500):
                policy.learn(examples[i : i + 500])

        out[label] = n / median_cpu(runs, learn)

    def decode_and_learn() -> None:
        policy = build_policy(VWCBConfig(), ARMS)
        for i in range(0, n, 500):
            policy.learn([decoder.decode(b) for b in encoded[i : i + 500]])

    out["vw_cb epsilon incl. msgpack decode"] = n / median_cpu(runs, decode_and_learn)

    def snapshot_cost() -> None:
        policy = build_policy(VWCBConfig(), ARMS)
        policy.learn(examples[:2_000])
        start = time.process_time()
        for _ in range(20):
            build_policy(VWCBConfig(), ARMS, snapshot=policy.snapshot())
        out["vw_cb snapshot+restore (ms)"] = (time.process_time() - start) / 20 * 1e3

    snapshot_cost()
    return out


def main() -> None:
    """Run every benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--decisions", type=int, default=2_000)
    parser.add_argument("--bulk", type=int, default=20_000)
    parser.add_argument("--examples", type=int, default=10_000)
    args = parser.parse_args()

    print(
        f"CPU per decision, choose(), {N_CANDIDATES} candidates, {N_SHARED} shared features "
        f"(median of {args.runs} runs x {args.decisions}):"
    )
    decisions = bench_decisions(args.runs, args.decisions)
    for label, us in decisions.items():
        print(f"  {label:<44} {us:8.1f} us")
    for vw_label in ("vw_cb epsilon", "vw_cb squarecb"):
        extra = decisions[vw_label] - decisions["fixed"]
        verdict = "OK" if extra <= 300 else "OVER TARGET"
        print(f"  {vw_label} - fixed = {extra:.1f} us (target <= 300 us): {verdict}")

    print(f"\nCPU per decision, choose_many() over {args.bulk} contexts:")
    for label, us in bench_bulk(args.runs, args.bulk).items():
        print(f"  {label:<44} {us:8.2f} us")

    print(f"\nLearner throughput, {args.examples} examples in batches of 500 (one core):")
    learning = bench_learning(max(3, args.runs // 2), args.examples)
    for label, value in learning.items():
        unit = "" if label.endswith("(ms)") else " examples/s"
        print(f"  {label:<44} {value:10,.1f}{unit}")
    verdict = "OK" if learning["vw_cb epsilon"] >= 5_000 else "UNDER TARGET"
    print(f"  vw_cb learner target >= 5,000 examples/s: {verdict}")


if __name__ == "__main__":
    main()
