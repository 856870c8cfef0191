"""The report of a ranked-slates experiment: click rates per slot and item, and off-policy
estimates per slot of the learned ranking against random order.

A ``vw_slates`` experiment logs one exposure per slot (``slot``, ``item``, the slot's conditional
``propensity`` and ``candidates``, the number of items the slate was drawn from) and outcomes
that name their slot or item. A slot *clicked* when an outcome of the primary metric naming it
(by decision id, with ``slot=`` or ``item=``) falls within the attribution window.

Per slot ``j``, on the policy's own slot exposures (reason ``policy``), with ``r`` the click
and, for each slot ``i <= j`` of the same decision, ``p_i`` its logged (conditional) propensity
and ``π_i`` a target policy's conditional probability of the logged item after the logged
items above it, the importance weight of slot ``j`` is ``w = Π_{i<=j} π_i / p_i``: the
probability that the target shows the logged items in slots ``0..j``, over the logger's (what a
slot's click depends on is the item there and the items above it). Targets:

- **random order**: ``π_i = 1 / (candidates − i)``;
- **the learned ranking**: the current model's greedy slate (``π_i = 1`` when the model's most
  probable item for slot ``i``, after the logged items above it, is the logged one, else 0);
  only for slates over the experiment's own variants (the features of items passed in a
  request are not logged), all of them offered, on the latest ``LEARNED_DECISIONS`` decisions.

IPS is ``mean(w · r)`` and SNIPS ``Σ w · r / Σ w``, with the intervals of
:func:`experiments.off_policy.estimators.evaluate_policy`, clipped to [0, 1]. Deep slots of a
long slate get large weights under random order (a product of ``candidates − i`` factors):
their intervals are wide, and the estimator's support warnings say so. The holdout's slots
(the default order, reason ``holdout``) give a measured comparison where there is one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec
import numpy as np

from bandits.base import Candidate
from bandits.slates import SlatePolicy
from bandits.spec import candidate_features
from event_log.rows import parse_context_value
from event_log.store import EventLog
from experiments.off_policy.estimators import evaluate_policy
from experiments.reports import queries as q
from experiments.statistics.intervals import Interval, z_critical
from tailor_contract.definitions import Experiment
from tailor_contract.policies import VWSlatesConfig

__all__ = [
    "ItemSlotRate",
    "SlateReport",
    "SlotEstimate",
    "SlotRate",
    "slate_report",
    "slate_section",
]

MAX_SLOT_ROWS: Final = 500_000
"""At most this many slot exposures (the latest) are read."""
LEARNED_DECISIONS: Final = 3_000
"""The learned ranking is evaluated on at most this many (latest) decisions: one model
prediction per slot each."""
MAX_ITEM_ROWS: Final = 100


class SlotRate(msgspec.Struct, frozen=True, kw_only=True):
    """One slot's exposures and clicks: the policy's, and the holdout's (default order)."""

    slot: int
    exposures: int
    clicks: int
    click_rate: float
    holdout_exposures: int = 0
    holdout_clicks: int = 0
    holdout_click_rate: float | None = None


class ItemSlotRate(msgspec.Struct, frozen=True, kw_only=True):
    """One item in one slot, as the policy showed it."""

    item: str
    slot: int
    exposures: int
    clicks: int
    click_rate: float


class SlotEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """Off-policy click rates of one slot: the logging policy's own (measured), random order's
    and the learned ranking's (``None`` where it cannot be evaluated)."""

    slot: int
    n: int
    logged: float
    random_ips: Interval
    random_snips: Interval
    learned_n: int = 0
    learned_ips: Interval | None = None
    learned_snips: Interval | None = None


class SlateReport(msgspec.Struct, frozen=True, kw_only=True):
    """The slates section of a report (``metric``: the primary metric counted as a click).

    ``clicks_per_slate``: the policy's decisions' mean clicks over their slots; the holdout's
    likewise (its default order), and ``gain_over_holdout`` their difference with a CLT
    interval (units are split by hash, so this comparison is randomised). ``random`` and
    ``learned`` clicks per slate add up the slots' SNIPS estimates (no interval: the slots'
    estimates are not independent).
    """

    metric: str
    decisions: int
    slots: list[SlotRate]
    items: list[ItemSlotRate]
    estimates: list[SlotEstimate]
    notes: list[str] = msgspec.field(default_factory=list)
    clicks_per_slate: float = 0.0
    holdout_clicks_per_slate: float | None = None
    gain_over_holdout: Interval | None = None
    random_clicks_per_slate: float | None = None
    learned_clicks_per_slate: float | None = None

    def clicks_per_slate_summary(self) -> str:
        """Clicks per slate in words: the policy's, the holdout's, and off-policy random order
        and learned ranking (those that exist), as the text report and the page print them."""
        parts = [f"policy {self.clicks_per_slate:.3f}"]
        if self.holdout_clicks_per_slate is not None:
            parts.append(f"holdout (default order) {self.holdout_clicks_per_slate:.3f}")
        if self.random_clicks_per_slate is not None:
            parts.append(f"random order (off-policy) {self.random_clicks_per_slate:.3f}")
        if self.learned_clicks_per_slate is not None:
            parts.append(f"learned ranking (off-policy) {self.learned_clicks_per_slate:.3f}")
        return ", ".join(parts)


class _Row(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    decision_id: str
    slot: int
    item: str
    propensity: float
    reason: str
    holdout: bool
    candidates: int
    context: dict[str, str]
    ts_ms: int


def _rate(clicks: int, n: int) -> float:
    return clicks / n if n else 0.0


def _clicked(
    rows: Sequence[_Row],
    outcomes: Sequence[tuple[Any, ...]],
    window_ms: int,
) -> list[bool]:
    """Whether each slot exposure earned an outcome naming its slot or item in its window."""
    by_decision: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for decision_id, slot, item, ts_ms in outcomes:
        by_decision[str(decision_id)].append((int(slot), str(item), int(ts_ms)))
    out = []
    for row in rows:
        hits = by_decision.get(row.decision_id, ())
        out.append(
            any(
                (slot == row.slot or (item and item == row.item))
                and row.ts_ms <= ts <= row.ts_ms + window_ms
                for slot, item, ts in hits
            )
        )
    return out


def _estimate(
    rewards: Sequence[float], propensities: Sequence[float], target: Sequence[float], level: float
) -> tuple[Interval, Interval]:
    """IPS and SNIPS of a target giving the logged item probability ``target[i]``.

    When every weighted row clicked, or none did, the CLT interval has zero width (a plug-in
    variance of 0); it is then the exact (Clopper-Pearson) interval of 0 or all successes in
    the weights' effective sample size, so a slot nobody clicked yet does not read as certain.
    """
    pi = np.asarray(target, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    p = np.asarray(propensities, dtype=np.float64)
    est = evaluate_policy(
        r, p, np.zeros(len(pi), dtype=np.int64), np.column_stack([pi, 1.0 - pi]),
        level=level, reward_range=(0.0, 1.0),
    )  # fmt: skip
    weighted = r[pi > 0]
    if weighted.size == 0 or not (np.all(weighted == 0.0) or np.all(weighted == 1.0)):
        return est.ips, est.snips
    ess = max(est.effective_sample_size, 1.0)
    tail = (1.0 - level) / 2.0
    edge = tail ** (1.0 / ess)  # P(all n_eff the same) = edge ** n_eff = tail
    return _widened(est.ips, edge), _widened(est.snips, edge)


def _widened(iv: Interval, edge: float) -> Interval:
    """A zero-width interval at 0 (or 1) widened to [0, 1 - edge] (or [edge, 1])."""
    if iv.upper > iv.lower:
        return iv
    if iv.estimate <= 0.5:
        return Interval(estimate=iv.estimate, lower=0.0, upper=max(iv.upper, 1.0 - edge),
                        level=iv.level)  # fmt: skip
    return Interval(estimate=iv.estimate, lower=min(iv.lower, edge), upper=1.0, level=iv.level)


def _learned_targets(
    rows: Sequence[_Row],
    experiment: Experiment,
    model: SlatePolicy,
) -> dict[tuple[str, int], float]:
    """π_i of the learned (greedy) ranking for the slot rows of the latest decisions over the
    experiment's own variants, all offered: ``(decision id, slot) -> 0 or 1``."""
    variants = experiment.variants
    keys = [v.key for v in variants]
    index = {k: i for i, k in enumerate(keys)}
    candidates = [
        Candidate(key=v.key, features=candidate_features(v.payload, v.features)) for v in variants
    ]
    by_decision: dict[str, list[_Row]] = defaultdict(list)
    for row in rows:
        by_decision[row.decision_id].append(row)
    out: dict[tuple[str, int], float] = {}
    used = 0
    for decision_id, logged in by_decision.items():  # newest first (the query's order)
        if used >= LEARNED_DECISIONS:
            break
        slots = sorted(logged, key=lambda r: r.slot)
        if [r.slot for r in slots] != list(range(len(slots))):
            continue  # a slate cut by the row limit
        if slots[0].candidates != len(keys) or any(r.item not in index for r in slots):
            continue  # items from a request, or not every variant offered
        chosen = [index[r.item] for r in slots]
        context = {k: parse_context_value(v) for k, v in slots[0].context.items()}
        pmfs = model.slot_pmfs(context, candidates, chosen)
        for row, pmf, item in zip(slots, pmfs, chosen, strict=True):
            out[decision_id, row.slot] = 1.0 if int(np.argmax(pmf)) == item else 0.0
        used += 1
    return out


_Shown = list[tuple[_Row, bool]]
"""Slot exposures with whether each was clicked."""


def _slot_rates(policy: _Shown, holdout: _Shown, n_slots: int) -> list[SlotRate]:
    """Exposures, clicks and click rate per slot, the policy's and the holdout's."""
    out = []
    for j in range(n_slots):
        shown = [c for row, c in policy if row.slot == j]
        held = [c for row, c in holdout if row.slot == j]
        out.append(
            SlotRate(
                slot=j, exposures=len(shown), clicks=sum(shown),
                click_rate=_rate(sum(shown), len(shown)),
                holdout_exposures=len(held), holdout_clicks=sum(held),
                holdout_click_rate=_rate(sum(held), len(held)) if held else None,
            )
        )  # fmt: skip
    return out


def _item_rates(policy: _Shown) -> list[ItemSlotRate]:
    """Per item and slot, most shown first (at most ``MAX_ITEM_ROWS``)."""
    per_item: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for row, c in policy:
        counts = per_item[row.item, row.slot]
        counts[0] += 1
        counts[1] += int(c)
    return sorted(
        (
            ItemSlotRate(item=item, slot=slot, exposures=n, clicks=k, click_rate=_rate(k, n))
            for (item, slot), (n, k) in per_item.items()
        ),
        key=lambda r: (-r.exposures, r.slot, r.item),
    )[:MAX_ITEM_ROWS]


def _prefixed(
    policy: _Shown, learned: Mapping[tuple[str, int], float]
) -> list[tuple[int, float, float, float, float | None]]:
    """Per decision and slot ``j``: (j, click, Π p_i, Π π_i of random order, Π π_i of the
    learned ranking or None), the products over slots ``i <= j``."""
    by_decision: dict[str, _Shown] = defaultdict(list)
    for row, c in policy:
        by_decision[row.decision_id].append((row, c))
    out: list[tuple[int, float, float, float, float | None]] = []
    for decision_id, slate_rows in by_decision.items():
        slate_rows.sort(key=lambda rc: rc[0].slot)
        p_all = random_all = 1.0
        learned_all: float | None = 1.0
        for i, (row, c) in enumerate(slate_rows):
            if row.slot != i or row.propensity <= 0 or row.candidates <= i:
                break  # a slate cut by the row limit, or a row no estimate can use
            p_all *= row.propensity
            random_all *= 1.0 / (row.candidates - i)
            target = learned.get((decision_id, i))
            learned_all = None if target is None or learned_all is None else learned_all * target
            out.append((i, float(c), p_all, random_all, learned_all))
    return out


def _slot_estimates(
    prefixed: Sequence[tuple[int, float, float, float, float | None]], n_slots: int, level: float
) -> list[SlotEstimate]:
    """IPS and SNIPS per slot of random order and of the learned ranking."""
    estimates = []
    for j in range(n_slots):
        usable = [t for t in prefixed if t[0] == j]
        if not usable:
            continue
        rewards = [t[1] for t in usable]
        props = [t[2] for t in usable]
        random_ips, random_snips = _estimate(rewards, props, [t[3] for t in usable], level)
        pairs = [(t[1], t[2], t[4]) for t in usable if t[4] is not None]
        learned_ips = learned_snips = None
        if len(pairs) >= 2:
            learned_ips, learned_snips = _estimate(
                [p[0] for p in pairs],
                [p[1] for p in pairs],
                [float(p[2] or 0.0) for p in pairs],
                level,
            )
        estimates.append(
            SlotEstimate(
                slot=j, n=len(usable), logged=float(np.mean(rewards)),
                random_ips=random_ips, random_snips=random_snips,
                learned_n=len(pairs), learned_ips=learned_ips, learned_snips=learned_snips,
            )
        )  # fmt: skip
    return estimates


def _gain(policy: _Shown, holdout: _Shown, level: float) -> Interval | None:
    """Clicks per slate of the policy's decisions minus the holdout's, with a CLT interval."""
    mine, held = _clicks_per_decision(policy), _clicks_per_decision(holdout)
    if len(mine) < 2 or len(held) < 2:
        return None
    diff = float(np.mean(mine) - np.mean(held))
    se = math.sqrt(
        float(np.var(mine, ddof=1)) / len(mine) + float(np.var(held, ddof=1)) / len(held)
    )
    crit = z_critical(level)
    return Interval(estimate=diff, lower=diff - crit * se, upper=diff + crit * se, level=level)


def slate_section(
    exposures: Sequence[Sequence[Any]],
    outcomes: Sequence[Sequence[Any]],
    experiment: Experiment,
    *,
    model: SlatePolicy | None,
    level: float,
) -> SlateReport | None:
    """The slates section from fetched rows (``SLATE_EXPOSURES`` and ``SLATE_OUTCOMES``
    order), or None without slot exposures."""
    rows = [
        _Row(
            decision_id=str(r[0]), slot=int(r[1]), item=str(r[2]), propensity=float(r[3]),
            reason=str(r[4]), holdout=bool(r[5]), candidates=int(r[6]),
            context=dict(r[7]), ts_ms=int(r[8]),
        )
        for r in exposures
    ]  # fmt: skip
    if not rows:
        return None
    clicks = _clicked(rows, [tuple(o) for o in outcomes], experiment.reward_window_s * 1000)
    policy = [(row, c) for row, c in zip(rows, clicks, strict=True) if row.reason == "policy"]
    holdout = [(row, c) for row, c in zip(rows, clicks, strict=True) if row.holdout]
    n_slots = max(row.slot for row in rows) + 1
    notes: list[str] = []
    learned: dict[tuple[str, int], float] = {}
    if model is not None and isinstance(experiment.policy, VWSlatesConfig):
        learned = _learned_targets([row for row, _ in policy], experiment, model)
        if not learned:
            notes.append(
                "The learned ranking is evaluated on slates over the experiment's own variants, "
                "all offered; none were logged (items passed in requests carry features that "
                "are not logged)."
            )
    elif model is None:
        notes.append("No published model yet: the learned ranking is not evaluated.")
    estimates = _slot_estimates(_prefixed(policy, learned), n_slots, level)
    per_slate = _clicks_per_decision(policy)
    held_slate = _clicks_per_decision(holdout)
    learned_total = None
    if estimates and all(e.learned_snips is not None for e in estimates):
        learned_total = float(sum(e.learned_snips.estimate for e in estimates if e.learned_snips))
    return SlateReport(
        metric=experiment.primary_metric,
        decisions=len({row.decision_id for row in rows}),
        slots=_slot_rates(policy, holdout, n_slots),
        items=_item_rates(policy),
        estimates=estimates,
        notes=notes,
        clicks_per_slate=float(np.mean(per_slate)) if per_slate else 0.0,
        holdout_clicks_per_slate=float(np.mean(held_slate)) if held_slate else None,
        gain_over_holdout=_gain(policy, holdout, level),
        random_clicks_per_slate=(
            float(sum(e.random_snips.estimate for e in estimates)) if estimates else None
        ),
        learned_clicks_per_slate=learned_total,
    )


def _clicks_per_decision(shown: Sequence[tuple[_Row, bool]]) -> list[float]:
    """Each decision's clicks over its slots."""
    totals: dict[str, float] = defaultdict(float)
    for row, c in shown:
        totals[row.decision_id] += float(c)
    return list(totals.values())


def slate_report(
    event_log: EventLog,
    experiment: Experiment,
    *,
    start_ms: int,
    end_ms: int,
    model: SlatePolicy | None,
    level: float,
) -> SlateReport | None:
    """The slates section of an experiment's report, read from the event log (None when it
    logged no slate).

    Raises:
        EventLogUnavailable: when the event log cannot be queried.
    """
    params: Mapping[str, Any] = {
        "experiment": experiment.key,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "limit": MAX_SLOT_ROWS,
    }
    exposures = event_log.query(q.SLATE_EXPOSURES, params)
    if not exposures:
        return None
    outcomes = event_log.query(
        q.SLATE_OUTCOMES,
        {"experiment": experiment.key, "start_ms": start_ms, "end_ms": end_ms,
         "metric": experiment.primary_metric},
    )  # fmt: skip
    return slate_section(exposures, outcomes, experiment, model=model, level=level)
