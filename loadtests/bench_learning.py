"""Learning benchmark: how much of the oracle's gain each policy earns in simulated worlds.

Run: ``.venv/bin/python loadtests/bench_learning.py [--worlds 2way,3way] [--policies vw_cb]
[--seeds 1,2,3] [--n 50000] [--batch 1000] [--out runs.jsonl]``; ``--summarise runs.jsonl``
prints the summary of saved runs again.

In-process: a learner policy and a serving policy built from the learner's snapshot (as the
server's workers do), the serving one refreshed every ``--batch`` decisions; each decision's
example is learned when its reward window closes (``--window`` decisions later, or at once with
0), so learning is delayed and batched like the server's.

Worlds (``World``): categorical attributes ``segment`` (5 values, profile), ``device`` (3,
request), ``region`` (4) that matter, and ``n1`` (3), ``n2`` (6), ``n3`` (20) that never do, all
in the context; click rates ``base[segment] + g[v] + term``, about 2-12 %:

- ``additive``: +3 % for the segment's favourite, +2 % the device's, +1.5 % the region's;
- ``2way``: +4 % for the favourite of each (segment, device) cell (15 cells);
- ``3way``: +4 % for the favourite of each (segment, device, region) cell (60 cells);
- ``rare``: ``2way`` scaled by 0.2 (mean click rate about 1 %);
- ``change``: ``2way`` whose favourites and variant effects are redrawn half-way;
- ``wide``: ``2way`` with 50 variants (``K`` is per world: 8 unless named, e.g. ``2way@3``).

Printed per world and policy (medians over seeds): ``share`` = expected click rate of the served
pmf over the last fifth, as a share of the oracle's gain over uniform play; ``single`` = the same
share for the best single variant; ``margin`` = the worst 2,000-decision window after 10,000
decisions of (share - the share of the variant best over the window's phase: before or after the
change), the change's recovery period excepted, paired per decision, with its 95 % interval over
the window's visitors (``±``; the expected rewards carry no Bernoulli noise, so what is left is
which visitors came), ``mean`` = the mean over those windows and ``below`` = the windows below the
single variant by more than their interval; with ``--reference`` (default ``thompson``, the
non-contextual learner) among the policies, the same margins against that policy's share on the
same world and seed; for ``change``, ``post10k`` = share 10,000-15,000 decisions after the switch,
``pre`` = share in the 5,000 before it, and ``recovered`` = whether ``post10k`` is at least
``RECOVERED`` times ``pre``; a regret curve (cumulative expected regret against the oracle at a few
points) and the share curve (share per 5,000 decisions); the policy's own member/serving report
when it has one (``serving_report``); and ``cover`` = whether the SNIPS 95 % interval of uniform
play's value, estimated from the policy's logs, covers the truth (``cover_x``: the same for always
playing the best single variant; ``cover_every_x`` in the JSON: the share of the variants X whose
always-X interval covers). For a policy with members (``member_pmfs``: the ensemble), every
``MEMBER_EVERY``-th decision also values each member's own pmf: ``members`` gives each member's
share per 5,000 decisions beside the served one's, i.e. whether serving another member would
have done better (``window_margins`` in the JSON: every margin window's start, margin and
interval).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from bandits.base import Arm, Candidate, Example, Policy
from bandits.registry import build_policy
from tailor_contract.policies import PolicyConfig, decode_policy_config

ATTRS = {"segment": 5, "device": 3, "region": 4, "n1": 3, "n2": 6, "n3": 20}
PROBS = {
    "segment": [0.3, 0.25, 0.2, 0.15, 0.1],
    "device": [0.55, 0.35, 0.10],
    "region": [0.4, 0.3, 0.2, 0.1],
}
KINDS = ("additive", "2way", "3way", "rare", "change")
RECOVERED = 0.8
MARGIN_WINDOW = 2000
MEMBER_EVERY = 10
Z = 1.96
"""The change world's policy has recovered when its share 10,000-15,000 decisions after the
switch is at least this much of its share in the 5,000 decisions before it."""
Array = npt.NDArray[np.float64]

# Policies by name: a JSON policy config. ``vw_cb_main`` is the configuration main shipped
# before the ensemble (plain VW, -q UA, -l 0.01).
POLICIES: dict[str, str] = {
    "vw_cb": '{"kind":"vw_cb"}',
    "vw_cb_main": '{"kind":"vw_cb","members":"vw","interactions":["UA"],"learning_rate":0.01}',
    "vw_only": '{"kind":"vw_cb","members":"vw"}',
    "thompson": '{"kind":"thompson"}',
}


class World:
    """A simulated population and its click rates (see the module docstring)."""

    def __init__(self, kind: str, k: int, n: int, seed: int) -> None:
        self.kind, self.k, self.n = kind, k, n
        rng = np.random.default_rng(10_000 + seed * 97 + k)
        cols = [rng.choice(m, size=n, p=PROBS.get(a)) for a, m in ATTRS.items()]
        self.x = np.stack(cols, axis=1)
        self.base = np.linspace(0.02, 0.06, ATTRS["segment"])
        self.tables = [self._table(rng)]
        self.switch = n // 2 if kind == "change" else n
        if kind == "change":
            self.tables.append(self._table(rng))
        self.clicks_u = rng.random(n)
        self.names = list(ATTRS)

    def _table(self, rng: np.random.Generator) -> Array:
        """Click rates over (segment, device, region, variant)."""
        k = self.k
        s_n, d_n, r_n = ATTRS["segment"], ATTRS["device"], ATTRS["region"]
        g = rng.uniform(0, 0.006, k)
        g[rng.integers(k)] += 0.012
        t = np.zeros((s_n, d_n, r_n, k)) + self.base[:, None, None, None] + g
        if self.kind == "additive":
            for s, v in enumerate(rng.integers(k, size=s_n)):
                t[s, :, :, v] += 0.03
            for d, v in enumerate(rng.integers(k, size=d_n)):
                t[:, d, :, v] += 0.02
            for r, v in enumerate(rng.integers(k, size=r_n)):
                t[:, :, r, v] += 0.015
        elif self.kind in ("2way", "change", "rare"):
            fav = rng.integers(k, size=(s_n, d_n))
            for s in range(s_n):
                for d in range(d_n):
                    t[s, d, :, fav[s, d]] += 0.04
        elif self.kind == "3way":
            fav3 = rng.integers(k, size=(s_n, d_n, r_n))
            for s in range(s_n):
                for d in range(d_n):
                    for r in range(r_n):
                        t[s, d, r, fav3[s, d, r]] += 0.04
        if self.kind == "rare":
            t *= 0.2
        return np.clip(t, 0.002, 0.3)

    def ctr_all(self) -> Array:
        """Click rates of every variant for every decision, shape ``(n, k)``."""
        out = np.empty((self.n, self.k))
        for j, t in enumerate(self.tables):
            lo, hi = (0, self.switch) if j == 0 else (self.switch, self.n)
            x = self.x[lo:hi]
            out[lo:hi] = t[x[:, 0], x[:, 1], x[:, 2]]
        return out

    def context(self, i: int) -> dict[str, str]:
        """The context of decision ``i``: every attribute as a categorical string."""
        return {a: f"{a[0]}{v}" for a, v in zip(self.names, self.x[i].tolist(), strict=True)}


def parse_world(spec: str) -> tuple[str, int]:
    """``2way`` -> ("2way", 8); ``2way@50`` -> ("2way", 50); ``wide`` -> ("2way", 50)."""
    if spec == "wide":
        return "2way", 50
    kind, _, k = spec.partition("@")
    if kind not in KINDS:
        raise SystemExit(f"unknown world {kind!r}; choose from {KINDS} or 'wide'")
    return kind, int(k) if k else 8


def run_one(
    spec: str, policy_name: str, config: PolicyConfig, seed: int, n: int, batch: int, window: int
) -> dict[str, Any]:
    """Drive one policy through one world; returns the figures of the module docstring."""
    kind, k = parse_world(spec)
    world = World(kind, k, n, seed)
    ctr = world.ctr_all()
    cands = tuple(Candidate(key=f"v{j}") for j in range(k))
    arms = tuple(Arm(key=c.key) for c in cands)
    learner: Policy = build_policy(config, arms)
    serving: Policy = build_policy(config, arms)
    rng = np.random.default_rng(seed)
    expected = np.empty(n)
    logged_p = np.empty(n)
    rewards = np.empty(n)
    pending: list[tuple[int, Example]] = []
    chosen_arms: list[int] = []
    member_pmfs: Callable[[dict[str, str], tuple[Candidate, ...]], dict[str, Array]] | None
    member_pmfs = getattr(serving, "member_pmfs", None)
    member_rows: dict[str, list[tuple[int, float]]] = defaultdict(list)
    t0 = time.perf_counter()
    choose_s = 0.0
    version = 0
    for i in range(n):
        context = world.context(i)
        c0 = time.perf_counter()
        pmf = serving.pmf(context, cands)
        choice = serving.choose(context, cands, rng)
        choose_s += time.perf_counter() - c0
        if member_pmfs is not None and i % MEMBER_EVERY == 0:
            c1 = time.perf_counter()
            for member, member_pmf in member_pmfs(context, cands).items():
                member_rows[member].append((i, float(member_pmf @ ctr[i])))
            choose_s -= time.perf_counter() - c1
        a = choice.index
        chosen_arms.append(a)
        r = float(world.clicks_u[i] < ctr[i, a])
        expected[i] = float(pmf @ ctr[i])
        logged_p[i] = choice.propensity
        rewards[i] = r
        pending.append(
            (
                i + window,
                Example(
                    context=context,
                    candidates=cands,
                    chosen=a,
                    propensity=choice.propensity,
                    reward=r,
                ),
            )
        )
        if (i + 1) % batch == 0:
            due = [e for t, e in pending if t <= i]
            pending = [(t, e) for t, e in pending if t > i]
            learner.learn(due)
            version += 1
            serving = build_policy(config, arms, snapshot=learner.snapshot(), version=str(version))
            member_pmfs = getattr(serving, "member_pmfs", None)
    secs = time.perf_counter() - t0
    orc, uni = ctr.max(1), ctr.mean(1)

    def share(lo: int, hi: int) -> float:
        gain = orc[lo:hi].mean() - uni[lo:hi].mean()
        return float((expected[lo:hi].mean() - uni[lo:hi].mean()) / gain)

    def single(lo: int, hi: int) -> float:
        gain = orc[lo:hi].mean() - uni[lo:hi].mean()
        return float((ctr[lo:hi].mean(0).max() - uni[lo:hi].mean()) / gain)

    # The margin over the best single variant: per 2,000-decision window after 10,000
    # decisions, the policy's expected reward (served pmf . true means, no Bernoulli noise)
    # less that of the variant best over the window's phase (before / after the switch),
    # paired per decision, in shares of the window's oracle gain, with its 95 % interval over
    # the window's visitors; the change's 10,000 decisions of recovery excepted.
    phases = [(0, world.switch), (world.switch, n)] if world.switch < n else [(0, n)]
    best_of = np.empty(n, dtype=np.intp)
    for lo, hi in phases:
        best_of[lo:hi] = int(ctr[lo:hi].mean(0).argmax())
    single_r = ctr[np.arange(n), best_of]
    windows: list[tuple[float, float]] = []
    window_lows: list[int] = []
    window_shares: list[tuple[int, float, float]] = []  # for margins against another policy
    for lo in range(10_000, n, MARGIN_WINDOW):
        hi = min(lo + MARGIN_WINDOW, n)
        if lo < world.switch < hi or world.switch <= lo < world.switch + 10_000:
            continue
        gain = orc[lo:hi].mean() - uni[lo:hi].mean()
        d = (expected[lo:hi] - single_r[lo:hi]) / gain
        windows.append((float(d.mean()), float(Z * d.std(ddof=1) / np.sqrt(hi - lo))))
        window_lows.append(lo)
        p = (expected[lo:hi] - uni[lo:hi]) / gain
        window_shares.append((lo, float(p.mean()), float(Z * p.std(ddof=1) / np.sqrt(hi - lo))))
    worst = min(windows, default=None)
    regret = np.cumsum(orc - expected)
    points = [p for p in (1000, 5000, 10_000, 20_000, 35_000, 50_000, 100_000) if p <= n]

    # SNIPS estimates from the logs, with 95 % intervals (delta method): uniform play, and
    # always playing the best single variant ("always X").
    def covers(w: Array, truth: float) -> bool:
        est = float((w * rewards).sum() / w.sum())
        se = float(np.sqrt(((w * (rewards - est)) ** 2).sum()) / w.sum())
        return bool(abs(est - truth) <= 1.96 * se)

    best_x = int(ctr.mean(0).argmax())
    chosen = np.asarray(chosen_arms)
    out: dict[str, Any] = {
        "world": spec,
        "policy": policy_name,
        "seed": seed,
        "n": n,
        "secs": round(secs, 1),
        "choose_us": round(choose_s / n * 1e6, 1),
        "share": share(n - n // 5, n),
        "single": single(n - n // 5, n),
        "margin": worst[0] if worst else None,
        "margin_ci": worst[1] if worst else None,
        "margin_mean": float(np.mean([w[0] for w in windows])) if windows else None,
        "margin_fail": sum(m + h < 0.0 for m, h in windows),
        "margin_windows": len(windows),
        "window_shares": window_shares,
        "window_margins": [(lo, m, h) for lo, (m, h) in zip(window_lows, windows, strict=True)],
        "regret": {str(p): round(float(regret[p - 1]), 1) for p in points},
        "cover": covers((1.0 / k) / logged_p, float(uni.mean())),
        "cover_x": covers((chosen == best_x) / logged_p, float(ctr[:, best_x].mean())),
        "cover_every_x": sum(
            covers((chosen == x) / logged_p, float(ctr[:, x].mean())) for x in range(k)
        )
        / k,
        "min_p_x_k": float(logged_p.min() * k),
    }
    out["curve"] = {str(hi): round(share(hi - 5000, hi), 2) for hi in range(5000, n + 1, 5000)}
    if member_rows:
        out["members"] = {}
        for member, rows_ in member_rows.items():
            at = np.array([i for i, _ in rows_])
            value = np.array([v for _, v in rows_])
            curve = {}
            for hi in range(5000, n + 1, 5000):
                sel = (at >= hi - 5000) & (at < hi)
                if sel.any():
                    gain = orc[at[sel]].mean() - uni[at[sel]].mean()
                    curve[str(hi)] = round(
                        float((value[sel].mean() - uni[at[sel]].mean()) / gain), 2
                    )
            out["members"][member] = curve
    if kind == "change":
        h = world.switch
        out["post10k"] = share(h + 10_000, min(h + 15_000, n))
        out["pre"] = share(max(h - 5000, 0), h)
        out["recovered"] = bool(out["post10k"] >= RECOVERED * out["pre"])
    report: Callable[[], object] | None = getattr(serving, "serving_report", None)
    if report is not None:
        out["serving"] = msgspec.to_builtins(report())
    return out


def against(rows: list[dict[str, Any]], reference: str) -> list[str]:
    """Margins of every policy over ``reference`` run on the same world and seed: per seed the
    worst window of (share - reference's share) with its 95 % interval (the two windows'
    intervals combined as if independent: wider than the paired one), and how many windows
    lie below the reference by more than their interval."""
    refs = {(r["world"], r["seed"]): r for r in rows if r["policy"] == reference}
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    below: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        ref = refs.get((r["world"], r["seed"]))
        if r["policy"] == reference or ref is None:
            continue
        theirs = {lo: (m, h) for lo, m, h in ref["window_shares"]}
        diffs = []
        for lo, m, h in r["window_shares"]:
            if lo in theirs:
                m2, h2 = theirs[lo]
                diffs.append((m - m2, math.hypot(h, h2)))
        if not diffs:
            continue
        worst = min(diffs)
        key = (r["world"], r["policy"])
        groups[key].append(f"{worst[0]:+.2f}±{worst[1]:.2f}")
        below[key][0] += sum(d + h < 0.0 for d, h in diffs)
        below[key][1] += len(diffs)
    return [
        f"{world:9s} {policy:11s} against {reference}: worst window {' / '.join(v)}, "
        f"below by more than the interval in {below[(world, policy)][0]} of "
        f"{below[(world, policy)][1]} windows"
        for (world, policy), v in groups.items()
    ]


def summarise(rows: list[dict[str, Any]], reference: str = "thompson") -> None:
    """Print medians over seeds per (world, policy), then margins against ``reference``."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["world"], r["policy"])].append(r)
    for (world, policy), rs in groups.items():

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.median(r[key] for r in rs if r.get(key) is not None)

        extra = ""
        if "post10k" in rs[0]:
            extra = (
                f" post10k={med('post10k'):.2f} pre={med('pre'):.2f} "
                f"recovered={sum(r['recovered'] for r in rs)}/{len(rs)}"
            )
        curve = {p: statistics.median(r["regret"][p] for r in rs) for p in rs[0]["regret"]}
        cover = sum(r["cover"] for r in rs)
        cover_x = sum(r.get("cover_x", False) for r in rs)
        print(
            f"{world:9s} {policy:11s} seeds={len(rs)} share={med('share'):.2f} "
            f"single={med('single'):.2f} margin={med('margin'):+.2f}"
            f"±{med('margin_ci'):.2f} mean={med('margin_mean'):+.2f} "
            f"below={sum(r['margin_fail'] for r in rs)}/{sum(r['margin_windows'] for r in rs)}"
            f"{extra} "
            f"cover={cover}/{len(rs)} cover_x={cover_x}/{len(rs)} "
            f"choose={med('choose_us'):.0f}us secs={med('secs'):.0f} "
            f"regret={curve}"
        )
        if all("curve" in r for r in rs):
            shares = {p: statistics.median(r["curve"][p] for r in rs) for p in rs[0]["curve"]}
            print(
                f"{'':21s} share per 5,000 decisions (median): "
                + " ".join(f"{v:.2f}" for v in shares.values())
            )
        for member in sorted({m for r in rs for m in r.get("members", {})}):
            curves = [r["members"][member] for r in rs if member in r.get("members", {})]
            points = sorted({p for c in curves for p in c}, key=int)
            print(
                f"{'':21s} {member + ' alone':25s}: "
                + " ".join(
                    f"{statistics.median(c[p] for c in curves if p in c):.2f}" for p in points
                )
            )
    for line in against(rows, reference):
        print(line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", default="additive,2way,3way,rare,change,wide")
    ap.add_argument("--policies", default="vw_cb_main,vw_cb")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument(
        "--window",
        type=int,
        default=0,
        help="decisions until a reward window closes (0: learned at the next batch)",
    )
    ap.add_argument("--policy-json", default="", help="NAME=JSON to add a policy config")
    ap.add_argument("--out", default="", help="append one JSON line per run to this file")
    ap.add_argument(
        "--reference",
        default="thompson",
        help="policy (among --policies) whose per-window share the others' margins also use",
    )
    ap.add_argument("--summarise", default="", help="only summarise the JSON lines of this file")
    a = ap.parse_args()
    if a.summarise:
        with open(a.summarise) as f:
            summarise([json.loads(line) for line in f if line.strip()], a.reference)
        return 0
    policies = dict(POLICIES)
    if a.policy_json:
        name, _, raw = a.policy_json.partition("=")
        policies[name] = raw
    rows = []
    for world in a.worlds.split(","):
        for name in a.policies.split(","):
            config = decode_policy_config(policies[name])
            for seed in map(int, a.seeds.split(",")):
                row = run_one(world, name, config, seed, a.n, a.batch, a.window)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if a.out:
                    with open(a.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
    summarise(rows, a.reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
