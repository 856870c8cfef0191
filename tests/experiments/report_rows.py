"""Raw event-log rows for report tests, and the report's numbers recomputed from them in pandas.

`random_log` draws a messy experiment log (holdouts, out-of-experiment reasons, other
experiments, decision-only outcomes, pre-period outcomes, replayed outcome batches…);
`expected_groups` and `expected_rewards` recompute, row by row in pandas, what the report SQL
must return — independently of the SQL.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd

from event_log.rows import Exposure, Outcome
from event_log.store import EventLog

T0 = 1_700_000_000_000
DAY = 86_400_000
EXPERIMENT = "exp"
VARIANTS = ("control", "b", "c")
TYPES = ("purchase", "click", "unsubscribe")
DEVICES = ("mobile", "desktop", "tablet")


@dataclass(frozen=True)
class Log:
    """The rows inserted (as data frames, with every column the report reads)."""

    exposures: pd.DataFrame
    outcomes: pd.DataFrame


def random_log(rng: np.random.Generator, units: int = 300, outcomes: int = 500) -> Log:
    """A random experiment log over about six days from ``T0``."""
    ex_rows = []
    for u in range(units):
        unit = f"u{u}"
        draw = rng.random()
        if draw < 0.1:
            reason, holdout, variant, p, policy = "holdout", 1, "control", 1.0, "default"
        elif draw < 0.15:
            reason, holdout, variant, p, policy = "global_holdout", 1, "control", 1.0, "default"
        else:
            probs = rng.dirichlet([3, 3, 3])
            k = int(rng.choice(3, p=probs))
            reason, holdout, variant = ("policy" if u % 2 else "split"), 0, VARIANTS[k]
            p, policy = float(probs[k]), "thompson"
        start = T0 + int(rng.integers(0, 5 * DAY))
        for j in range(int(rng.integers(1, 5))):
            ts = start + j * int(rng.integers(1, 6 * 3600_000))
            if j and reason in ("split", "policy") and rng.random() < 0.3:
                probs = rng.dirichlet([3, 3, 3])
                k = int(rng.choice(3, p=probs))
                variant, p = VARIANTS[k], float(probs[k])
            ex_rows.append(
                dict(
                    event_id=uuid.UUID(int=int(rng.integers(1 << 62))),
                    decision_id=uuid.UUID(int=int(rng.integers(1 << 62))).hex,
                    ts=ts,
                    unit_id=unit,
                    experiment=EXPERIMENT,
                    variant=variant,
                    propensity=p,
                    policy=policy,
                    reason=reason,
                    holdout=holdout,
                    device=str(rng.choice(DEVICES)),
                )
            )
        if rng.random() < 0.2:  # served a default outside the experiment, or in another one
            ex_rows.append(
                {
                    **ex_rows[-1],
                    "event_id": uuid.UUID(int=int(rng.integers(1 << 62))),
                    "decision_id": uuid.UUID(int=int(rng.integers(1 << 62))).hex,
                    "ts": start - DAY,
                    "reason": "not_targeted" if rng.random() < 0.5 else "split",
                    "experiment": EXPERIMENT if rng.random() < 0.5 else "other",
                    "holdout": 0,
                }
            )
    exposures = pd.DataFrame(ex_rows)
    decisions = exposures[exposures.experiment == EXPERIMENT]
    per_unit = {u: g for u, g in decisions.groupby("unit_id")}
    out_rows = []
    for _ in range(outcomes):
        unit = f"u{int(rng.integers(0, units + 20))}"  # some units never exposed
        typ = str(rng.choice([*TYPES, "other"], p=[0.45, 0.3, 0.15, 0.1]))
        own = per_unit.get(unit, decisions.iloc[:0])
        base = int(own.ts.min()) if len(own) else T0 + int(rng.integers(0, 5 * DAY))
        ts = base + int(rng.integers(-3 * DAY, 2 * DAY))
        by_decision = len(own) > 0 and rng.random() < 0.35
        decision = str(own.decision_id.iloc[int(rng.integers(0, len(own)))]) if len(own) else ""
        out_rows.append(
            dict(
                event_id=uuid.UUID(int=int(rng.integers(1 << 62))),
                ts=ts,
                decision_id=decision if by_decision else "",
                unit_id="" if by_decision and rng.random() < 0.6 else unit,
                experiment=str(rng.choice(["", EXPERIMENT, "other"], p=[0.6, 0.3, 0.1])),
                type=typ,
                value=float(round(rng.uniform(5, 80), 2)) if typ == "purchase" else 0.0,
            )
        )
    return Log(exposures=exposures, outcomes=pd.DataFrame(out_rows))


def insert_log(event_log: EventLog, log: Log) -> None:
    """Insert the rows; every outcome batch twice (a replay must not double count)."""
    exposures = [
        Exposure(
            event_id=r.event_id,
            decision_id=r.decision_id,
            ts_ms=int(r.ts),
            unit_id=r.unit_id,
            experiment=r.experiment,
            experiment_version=1,
            placement="home",
            variant=r.variant,
            propensity=float(r.propensity),
            policy=r.policy,
            policy_version="",
            reason=r.reason,
            holdout=bool(r.holdout),
            context={"device": r.device, "page": "/"},
        ).row()
        for r in log.exposures.itertuples()
    ]
    outcomes = [
        Outcome(
            event_id=r.event_id,
            ts_ms=int(r.ts),
            decision_id=r.decision_id,
            unit_id=r.unit_id,
            experiment=r.experiment,
            type=r.type,
            value=float(r.value),
            properties={},
        ).row()
        for r in log.outcomes.itertuples()
    ]
    event_log.insert("exposures", exposures, uuid.uuid4().hex)
    half = len(outcomes) // 2
    event_log.insert("outcomes", outcomes[:half], uuid.uuid4().hex)
    event_log.insert("outcomes", outcomes, uuid.uuid4().hex)  # a replay of the first half


def _in_experiment(log: Log, end: int) -> pd.DataFrame:
    ex = log.exposures
    keep = (
        (ex.experiment == EXPERIMENT)
        & ex.reason.isin(["split", "policy", "holdout", "global_holdout"])
        & (ex.ts < end)
    )
    return ex[keep].sort_values(["unit_id", "ts"], kind="stable")


def expected_groups(
    log: Log, *, start: int, end: int, window: int, pre: int, segment: bool, cap: float = 0.0
) -> pd.DataFrame:
    """Per (arm, segment, first day, cohort): units and per-type sums, the pandas way.

    With ``cap`` > 0 each type's per-unit values (window and pre-period) are clipped at the
    ``cap`` quantile (numpy's linear) of the cohort's positive per-unit values of that type."""
    ex = _in_experiment(log, end)
    first = ex.groupby("unit_id").first().reset_index()
    first["arm"] = np.where(
        first.reason == "global_holdout",
        "~global_holdout",
        np.where(first.holdout == 1, "~holdout", first.variant),
    )
    first["seg"] = first.device if segment else ""
    first["day"] = first.ts // DAY
    first["cohort"] = first.ts >= start
    o = log.outcomes.drop_duplicates("event_id")
    o = o[o.experiment.isin(["", EXPERIMENT]) & o.type.isin(TYPES)]
    o = o[(o.ts >= start - pre) & (o.ts < end)]
    mine = log.exposures[log.exposures.experiment == EXPERIMENT]
    by_decision = mine.set_index("decision_id").unit_id.to_dict()
    o = o.assign(
        unit=[u or by_decision.get(d, "") for u, d in zip(o.unit_id, o.decision_id, strict=True)]
    )
    j = o.merge(first[["unit_id", "ts"]].rename(columns={"unit_id": "unit", "ts": "t0"}), on="unit")
    j["in_w"] = (j.ts >= j.t0) & (j.ts < j.t0 + window)
    j["in_pre"] = (j.ts < j.t0) & (j.ts >= j.t0 - pre)
    rows = []
    for t in TYPES:
        jt = j[j.type == t]
        per_unit = pd.DataFrame(
            {
                "cnt": jt[jt.in_w].groupby("unit").size(),
                "val": jt[jt.in_w].groupby("unit").value.sum(),
                "pre_cnt": jt[jt.in_pre].groupby("unit").size(),
                "pre_val": jt[jt.in_pre].groupby("unit").value.sum(),
            }
        ).fillna(0.0)
        m = first.merge(per_unit, left_on="unit_id", right_index=True, how="left").fillna(0.0)
        m["type"] = t
        positive = m.val[(m.val > 0) & m.cohort]
        if cap > 0 and len(positive):
            limit = float(np.quantile(positive, cap))
            m["val"] = m.val.clip(upper=limit)
            m["pre_val"] = m.pre_val.clip(upper=limit)
        rows.append(m)
    full = pd.concat(rows)
    full["conv"] = full.cnt > 0
    full["pre_conv"] = full.pre_cnt > 0
    full["both"] = full.conv & full.pre_conv
    full["val_sq"] = full.val**2
    full["pre_val_sq"] = full.pre_val**2
    full["cross"] = full.val * full.pre_val
    keys = ["arm", "seg", "day", "cohort", "type"]
    return full.groupby(keys).agg(
        units=("unit_id", "size"),
        converters=("conv", "sum"),
        events=("cnt", "sum"),
        value=("val", "sum"),
        value_sq=("val_sq", "sum"),
        pre_converters=("pre_conv", "sum"),
        both_converters=("both", "sum"),
        pre_value=("pre_val", "sum"),
        pre_value_sq=("pre_val_sq", "sum"),
        cross_value=("cross", "sum"),
    )


def expected_rewards(
    log: Log,
    *,
    start: int,
    end: int,
    rewards: dict[str, tuple[float, bool]],
    window: int,
    aggregation: str,
    default: float,
    lo: float,
    hi: float,
) -> pd.DataFrame:
    """Each logged decision in [start, end) with the reward the rules give it, row by row.

    An outcome naming a decision rewards that decision; one naming only a unit rewards the
    unit's latest logged decision at or before it; both within ``window``.
    """
    ex = log.exposures
    logged = ex[
        (ex.experiment == EXPERIMENT)
        & ex.reason.isin(["split", "policy"])
        & (ex.holdout == 0)
        & (ex.ts >= start)
        & (ex.ts < end)
    ].copy()
    o = log.outcomes.drop_duplicates("event_id")
    o = o[o.experiment.isin(["", EXPERIMENT]) & o.type.isin(list(rewards))]
    o = o[(o.ts >= start) & (o.ts < end)]
    hits: dict[str, list[tuple[int, float]]] = {}
    for r in o.itertuples():
        reward, per_value = rewards[r.type]
        value = reward * (r.value if per_value else 1.0)
        if r.decision_id:
            target = logged[logged.decision_id == r.decision_id]
        else:
            mine = logged[(logged.unit_id == r.unit_id) & (logged.ts <= r.ts)]
            target = mine[mine.ts == mine.ts.max()].head(1)
        if len(target) and target.ts.iloc[0] <= r.ts <= target.ts.iloc[0] + window:
            hits.setdefault(str(target.decision_id.iloc[0]), []).append((int(r.ts), value))
    out = []
    for d in logged.decision_id:
        got = sorted(hits.get(d, []))
        if not got:
            raw = default
        elif aggregation == "first":
            raw = got[0][1]
        else:
            raw = sum(v for _, v in got)
        out.append(min(hi, max(lo, raw)))
    logged["reward"] = out
    logged["action"] = logged.variant.map({v: i for i, v in enumerate(VARIANTS)})
    return logged
