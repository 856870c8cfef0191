"""The reward join on a real Redis: windows, rules, aggregation, duplicates, late outcomes."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Literal, TypeVar

import msgspec
import numpy as np
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bandits.join import (
    DecisionRecord,
    JoinRules,
    OutcomeRef,
    RewardJoin,
    TrainingExample,
    decode_entry,
    rules_for,
)
from decision_api.redis_client import is_cluster

pytestmark = pytest.mark.redis_cluster

T0 = 1_700_000_000_000  # decision time (ms) of every record here
WINDOW_S = 60


def _rules(
    aggregation: Literal["first", "sum"] = "first",
    *,
    default: float = 0.0,
    lo: float = 0.0,
    hi: float = 1.0,
) -> JoinRules:
    return rules_for(
        WINDOW_S,
        aggregation,
        default,
        lo,
        hi,
        [("click", 1.0, False), ("purchase", 0.01, True), ("bounce", -0.5, False)],
    )


def _record(decision_id: str, experiment: str = "hero", unit_id: str = "u1") -> DecisionRecord:
    return DecisionRecord(
        decision_id=decision_id,
        experiment=experiment,
        experiment_version=3,
        unit_id=unit_id,
        candidates=["a", "b", "c"],
        chosen=1,
        propensity=0.4,
        model_version="7",
        context={"segment": "s1", "score": 2.5, "tags": ["x", "y"], "member": True},
        decided_ms=T0,
    )


@pytest.fixture
def join(redis: Redis, namespace: str) -> RewardJoin:
    """A reward join under this test's key prefix."""
    return RewardJoin(redis, namespace)


async def _stream(redis: Redis, join: RewardJoin) -> list[TrainingExample]:
    return [decode_entry(i, f) for i, f in await redis.xrange(join.stream_key)]


async def _outcome(
    join: RewardJoin,
    rules: dict[str, JoinRules],
    *,
    event_id: str,
    type: str = "click",
    value: float = 0.0,
    at_s: float = 1.0,
    ts_s: float | None = None,
    decision_id: str | None = None,
    unit_id: str | None = None,
    experiment: str | None = None,
) -> list[tuple[str, str]]:
    """Apply an outcome received ``at_s`` after T0 and dated ``ts_s`` after T0 (default at_s)."""
    dated = {} if ts_s is None else {"ts_ms": T0 + int(ts_s * 1000)}
    return [
        (e, str(r))
        for e, r in await join.apply_outcome(
            event_id=event_id,
            outcome_type=type,
            value=value,
            now_ms=T0 + int(at_s * 1000),
            **dated,
            rules_of=rules,
            decision_id=decision_id,
            unit_id=unit_id,
            experiment=experiment,
        )
    ]


async def test_outcome_by_decision_id_joins_and_finalises_at_the_window_end(
    join: RewardJoin, redis: Redis
) -> None:
    """A click by decision id within the window is one joined example with the record intact,
    written when the window closes (not at the click, even under ``first``)."""
    rules = {"hero": _rules()}
    join.remember(_record("d1"), rules["hero"])
    assert await join.flush() == 1
    assert await _outcome(join, rules, event_id="e1", decision_id="d1") == [("hero", "joined")]
    assert await _stream(redis, join) == []
    assert await join.finalize_due(T0 + WINDOW_S * 1000 - 1) == 0
    assert await join.finalize_due(T0 + WINDOW_S * 1000) == 1
    [example] = await _stream(redis, join)
    assert (example.reward, example.joined) == (1.0, True)
    assert example.record == _record("d1")
    # tests/support/training.py writes learner test streams in exactly this shape.
    [(_, fields)] = await redis.xrange(join.stream_key)
    assert sorted(fields) == ["joined", "r", "rec"]
    # Finalised: the record and its due entry are gone, so the sweeper cannot add a second one.
    assert not await redis.exists(join.record_key("d1", "hero"))
    assert await redis.zcard(join.due_key) == 0
    assert await join.finalize_due(T0 + 10 * WINDOW_S * 1000) == 0
    assert len(await _stream(redis, join)) == 1


async def test_outcome_by_unit_and_experiment_rewards_only_that_experiment(
    join: RewardJoin, redis: Redis
) -> None:
    """unit id + experiment picks the unit's open decision in that experiment, no other."""
    rules = {"hero": _rules(), "banner": _rules()}
    join.remember(_record("d1", "hero"), rules["hero"])
    join.remember(_record("d2", "banner"), rules["banner"])
    await join.flush()
    got = await _outcome(join, rules, event_id="e1", unit_id="u1", experiment="banner")
    assert got == [("banner", "joined")]
    await join.finalize_due(T0 + WINDOW_S * 1000 + 1)
    by_exp = {e.record.experiment: (e.reward, e.joined) for e in await _stream(redis, join)}
    assert by_exp == {"banner": (1.0, True), "hero": (0.0, False)}


async def test_outcome_by_unit_alone_rewards_every_open_experiment(
    join: RewardJoin, redis: Redis
) -> None:
    """A unit-only outcome reaches the unit's latest open decision in every experiment."""
    rules = {"hero": _rules(), "banner": _rules()}
    join.remember(_record("d1", "hero"), rules["hero"])
    join.remember(_record("d2", "banner"), rules["banner"])
    join.remember(_record("d3", "banner", unit_id="someone-else"), rules["banner"])
    await join.flush()
    got = await _outcome(join, rules, event_id="e1", unit_id="u1")
    assert sorted(got) == [("banner", "joined"), ("hero", "joined")]
    await join.finalize_due(T0 + WINDOW_S * 1000 + 1)
    rewards = {e.record.decision_id: e.reward for e in await _stream(redis, join)}
    assert rewards == {"d1": 1.0, "d2": 1.0, "d3": 0.0}


async def test_decision_id_without_experiment_reaches_all_its_placements(
    join: RewardJoin, redis: Redis
) -> None:
    """One decision serving two experiments: an outcome by decision id alone rewards both."""
    rules = {"hero": _rules(), "banner": _rules()}
    join.remember(_record("d1", "hero"), rules["hero"])
    join.remember(_record("d1", "banner"), rules["banner"])
    await join.flush()
    got = await _outcome(join, rules, event_id="e1", decision_id="d1")
    assert got == [("banner", "joined"), ("hero", "joined")]
    await join.finalize_due(T0 + WINDOW_S * 1000)
    assert sorted((e.record.experiment, e.reward) for e in await _stream(redis, join)) == [
        ("banner", 1.0),
        ("hero", 1.0),
    ]


@pytest.mark.parametrize("purchase_first", [True, False], ids=["in-order", "out-of-order"])
async def test_first_keeps_the_earliest_dated_reward(
    join: RewardJoin, redis: Redis, purchase_first: bool
) -> None:
    """Under ``first`` the earliest-dated rewarding outcome decides, in whatever order the
    outcomes arrive; the record stays open until its window closes."""
    rules = {"hero": _rules("first")}
    join.remember(_record("d1"), rules["hero"])
    await join.flush()
    purchase = _outcome(
        join, rules, event_id="e1", type="purchase", value=30.0, ts_s=1.0, at_s=3.0,
        decision_id="d1",
    )  # fmt: skip
    click = _outcome(join, rules, event_id="e2", ts_s=2.0, at_s=3.0, decision_id="d1")
    first, second = (purchase, click) if purchase_first else (click, purchase)
    assert (await first, await second) == ([("hero", "joined")], [("hero", "joined")])
    assert await _stream(redis, join) == []
    await join.finalize_due(T0 + WINDOW_S * 1000)
    [example] = await _stream(redis, join)
    assert example.reward == pytest.approx(0.3)


async def test_sum_adds_rewards_until_the_window_closes(join: RewardJoin, redis: Redis) -> None:
    """Under ``sum`` rewards accumulate and the sweeper writes their total at the window's end."""
    rules = {"hero": _rules("sum", hi=100.0)}
    join.remember(_record("d1"), rules["hero"])
    await join.flush()
    for i, (typ, value) in enumerate([("click", 0.0), ("purchase", 25.0), ("click", 0.0)]):
        got = await _outcome(join, rules, event_id=f"e{i}", type=typ, value=value, at_s=i + 1)
        assert got == []  # no decision id or unit id: nothing to join
        got = await _outcome(
            join, rules, event_id=f"e{i}", type=typ, value=value, at_s=i + 1, decision_id="d1"
        )
        assert got == [("hero", "joined")]
    assert await _stream(redis, join) == []  # still open
    assert await join.finalize_due(T0 + WINDOW_S * 1000 - 1) == 0
    assert await join.finalize_due(T0 + WINDOW_S * 1000) == 1
    [example] = await _stream(redis, join)
    assert (example.reward, example.joined) == (pytest.approx(2.25), True)


@pytest.mark.parametrize(
    ("aggregation", "outcomes", "lo", "hi", "expected"),
    [
        ("first", [("purchase", 250.0)], 0.0, 1.0, 1.0),  # 0.01 * 250 = 2.5 clipped to hi
        ("first", [("bounce", 0.0)], -0.2, 1.0, -0.2),  # -0.5 clipped to lo
        ("first", [("purchase", 42.0)], 0.0, 1.0, 0.42),  # per_value: reward * value
        ("sum", [("click", 0.0)] * 3, 0.0, 2.0, 2.0),  # 3.0 clipped to hi at finalisation
        ("sum", [("click", 0.0), ("bounce", 0.0)], 0.0, 1.0, 0.5),
        ("sum", [("bounce", 0.0)] * 3, -1.0, 1.0, -1.0),
    ],
)
async def test_reward_rules_per_value_and_clipping(
    join: RewardJoin,
    redis: Redis,
    aggregation: Literal["first", "sum"],
    outcomes: list[tuple[str, float]],
    lo: float,
    hi: float,
    expected: float,
) -> None:
    """Each outcome type maps to its reward (times value if per_value), clipped to [lo, hi]."""
    rules = {"hero": _rules(aggregation, lo=lo, hi=hi)}
    join.remember(_record("d1"), rules["hero"])
    await join.flush()
    for i, (typ, value) in enumerate(outcomes):
        await _outcome(join, rules, event_id=f"e{i}", type=typ, value=value, decision_id="d1")
    await join.finalize_due(T0 + WINDOW_S * 1000)
    [example] = await _stream(redis, join)
    assert example.reward == pytest.approx(expected)


async def test_outcome_type_without_a_rule_is_ignored(join: RewardJoin, redis: Redis) -> None:
    """An outcome type with no reward rule leaves the decision open for the default reward."""
    rules = {"hero": _rules(default=0.25)}
    join.remember(_record("d1"), rules["hero"])
    await join.flush()
    got = await _outcome(join, rules, event_id="e1", type="pageview", decision_id="d1")
    assert got == [("hero", "ignored")]
    await join.finalize_due(T0 + WINDOW_S * 1000)
    [example] = await _stream(redis, join)
    assert (example.reward, example.joined) == (0.25, False)


async def test_default_reward_applies_when_the_window_closes_without_outcome(
    join: RewardJoin, redis: Redis
) -> None:
    """The sweeper finalises exactly the records whose window has closed, with the default."""
    rules = _rules(default=0.1)
    join.remember(_record("early"), rules)
    later = msgspec.structs.replace(_record("later"), unit_id="u2", decided_ms=T0 + 5_000)
    join.remember(later, rules)
    await join.flush()
    assert await join.finalize_due(T0 + WINDOW_S * 1000 - 1) == 0
    assert await join.finalize_due(T0 + WINDOW_S * 1000) == 1
    assert [(e.record.decision_id, e.reward, e.joined) for e in await _stream(redis, join)] == [
        ("early", 0.1, False)
    ]
    assert await join.finalize_due(T0 + WINDOW_S * 1000 + 5_000) == 1
    assert await join.finalize_due(T0 + 10 * WINDOW_S * 1000) == 0
    assert await redis.zcard(join.due_key) == 0
    assert len(await _stream(redis, join)) == 2


async def test_sweeper_drains_every_due_decision_in_batches(join: RewardJoin, redis: Redis) -> None:
    """One sweep finalises all closed windows, however many batches of ``limit`` that takes."""
    rules = _rules(default=0.0)
    for i in range(25):
        join.remember(_record(f"d{i}", unit_id=f"u{i}"), rules)
    await join.flush()
    assert await join.finalize_due(T0 + WINDOW_S * 1000, limit=10) == 25
    assert await redis.zcard(join.due_key) == 0
    assert len(await _stream(redis, join)) == 25


async def test_default_reward_is_clipped_too(join: RewardJoin, redis: Redis) -> None:
    """A default outside [lo, hi] reaches the learner clipped, like any reward."""
    rules = _rules(default=-3.0, lo=-1.0)
    join.remember(_record("d1"), rules)
    await join.flush()
    await join.finalize_due(T0 + WINDOW_S * 1000)
    [example] = await _stream(redis, join)
    assert example.reward == -1.0


async def test_duplicate_event_counts_once(join: RewardJoin, redis: Redis) -> None:
    """The same event id applied twice (a retried request) adds its reward once."""
    rules = {"hero": _rules("sum", hi=10.0)}
    join.remember(_record("d1"), rules["hero"])
    await join.flush()
    first = await _outcome(join, rules, event_id="e1", decision_id="d1")
    again = await _outcome(join, rules, event_id="e1", decision_id="d1")
    by_unit = await _outcome(join, rules, event_id="e1", unit_id="u1", experiment="hero")
    assert (first, again, by_unit) == (
        [("hero", "joined")],
        [("hero", "duplicate")],
        [("hero", "duplicate")],
    )
    await join.finalize_due(T0 + WINDOW_S * 1000)
    [example] = await _stream(redis, join)
    assert example.reward == 1.0


@pytest.mark.parametrize("finalised", [False, True], ids=["window-closed", "swept"])
async def test_late_outcome_is_not_learned(join: RewardJoin, redis: Redis, finalised: bool) -> None:
    """An outcome after the window is 'late' whether or not the sweeper ran; reward unchanged."""
    rules = {"hero": _rules("sum", default=0.0)}
    join.remember(_record("d1"), rules["hero"])
    await join.flush()
    if finalised:
        await join.finalize_due(T0 + WINDOW_S * 1000)
    got = await _outcome(join, rules, event_id="e1", decision_id="d1", at_s=WINDOW_S + 0.001)
    assert got == [("hero", "late")]
    await join.finalize_due(T0 + 10 * WINDOW_S * 1000)
    [example] = await _stream(redis, join)
    assert (example.reward, example.joined) == (0.0, False)


async def test_unknown_experiment_rules_are_skipped(join: RewardJoin, redis: Redis) -> None:
    """Outcomes for experiments whose rules the worker does not know are not applied."""
    join.remember(_record("d1"), _rules())
    await join.flush()
    assert await _outcome(join, {}, event_id="e1", decision_id="d1") == []
    assert await redis.hget(join.record_key("d1", "hero"), "r") is None


async def test_records_and_indexes_expire_after_window_plus_grace(
    join: RewardJoin, redis: Redis
) -> None:
    """Every key a decision creates has a TTL of the window plus the grace hour."""
    join.remember(_record("d1"), _rules())
    await join.flush()
    for key in (
        join.record_key("d1", "hero"),
        join.experiments_key("d1"),
        join.unit_index_key("u1"),
    ):
        ttl = await redis.pttl(key)
        assert WINDOW_S * 1000 + 3_600_000 - 5_000 < ttl <= WINDOW_S * 1000 + 3_600_000


@pytest.mark.parametrize("seed", range(4))
async def test_each_decision_yields_exactly_one_example_whatever_the_outcomes(
    join: RewardJoin, redis: Redis, seed: int
) -> None:
    """Random outcome sequences (duplicates, late, by unit, concurrent sweeps) give one example
    per decision, with the reward a reference model of the rules predicts."""
    rng = np.random.default_rng(seed)
    n = 60
    aggregation: Literal["first", "sum"] = "first" if seed % 2 else "sum"
    rules = {"hero": _rules(aggregation, default=0.05, hi=5.0)}
    window_ms = WINDOW_S * 1000
    expected: dict[str, float] = {}
    for i in range(n):
        join.remember(_record(f"d{i}", unit_id=f"u{i}"), rules["hero"])
    await join.flush()
    calls = []
    for i in range(n):
        did = f"d{i}"
        sent: list[tuple[str, str, float]] = []
        for k in range(int(rng.integers(0, 6))):
            if sent and rng.random() < 0.33:
                # A replay (client retry): the same event id and content, at another time.
                event = sent[int(rng.integers(len(sent)))]
            else:
                typ = str(rng.choice(["click", "purchase", "pageview"]))
                event = (f"{did}-e{k}", typ, float(rng.integers(1, 50)))
                sent.append(event)
            at_ms = int(rng.integers(0, int(window_ms * 1.5)))
            by_unit = bool(rng.random() < 0.5)
            calls.append((at_ms, did, *event, by_unit))
    calls.sort()
    # Reference: in time order, outcomes inside the window, first occurrence of an event id.
    seen: set[str] = set()
    totals: dict[str, list[float]] = {f"d{i}": [] for i in range(n)}
    for at_ms, did, event_id, typ, value, _ in calls:
        reward = rules["hero"].reward_of(typ, value)
        if reward is None or at_ms > window_ms or event_id in seen:
            continue
        if aggregation == "first" and totals[did]:
            continue
        seen.add(event_id)
        totals[did].append(reward)
    for did, rewards in totals.items():
        raw = sum(rewards) if rewards else 0.05
        expected[did] = min(5.0, max(0.0, raw))
    # Apply in time order, sweeping concurrently now and then (the sweeper races outcomes).
    for j, (at_ms, did, event_id, typ, value, by_unit) in enumerate(calls):
        apply = _outcome(
            join,
            rules,
            event_id=event_id,
            type=typ,
            value=value,
            at_s=at_ms / 1000,
            decision_id=None if by_unit else did,
            unit_id=f"u{did[1:]}" if by_unit else None,
            experiment="hero" if by_unit else None,
        )
        if j % 7 == 0:
            await asyncio.gather(apply, join.finalize_due(T0 + at_ms))
        else:
            await apply
    await asyncio.gather(*(join.finalize_due(T0 + 2 * window_ms) for _ in range(3)))
    examples = await _stream(redis, join)
    assert sorted(e.record.decision_id for e in examples) == sorted(expected)
    got = {e.record.decision_id: e.reward for e in examples}
    assert got == pytest.approx(expected)
    assert await redis.zcard(join.due_key) == 0


async def test_large_flush_writes_every_record_with_its_rules_and_window(
    join: RewardJoin, redis: Redis
) -> None:
    """A flush of several script calls (sorted due-set entries, rules sent once per call) writes
    each record with its own rules, window end and TTL, and every due member with its score."""
    first, summed = _rules("first", default=0.25), _rules("sum", lo=-1.0, hi=2.0)
    n = 700  # two experiments each: three script calls
    for i in range(n):
        join.remember(_record(f"d{i}", "hero", f"u{i}"), first)
        join.remember(_record(f"d{i}", "send", f"u{i}"), summed, T0 + (n - i) * 3_600_000)
    assert await join.flush() == 2 * n
    assert await redis.zcard(join.due_key) == 2 * n
    for i in (0, 1, 499, 500, n - 1):
        hero = await redis.hgetall(join.record_key(f"d{i}", "hero"))
        send = await redis.hgetall(join.record_key(f"d{i}", "send"))
        assert (hero["wend"], hero["ru"]) == (str(T0 + WINDOW_S * 1000), "0.25 0.0 1.0 first")
        end = T0 + (n - i) * 3_600_000
        assert (send["wend"], send["ru"]) == (str(end), "0.0 -1.0 2.0 sum")
        assert msgspec.json.decode(send["rec"], type=DecisionRecord) == _record(
            f"d{i}", "send", f"u{i}"
        )
        assert await redis.zscore(join.due_key, f"d{i}|hero") == T0 + WINDOW_S * 1000
        assert await redis.zscore(join.due_key, f"d{i}|send") == end
        assert await redis.smembers(join.experiments_key(f"d{i}")) == {"hero", "send"}
        assert await redis.hgetall(join.unit_index_key(f"u{i}")) == {
            "hero": f"d{i}",
            "send": f"d{i}",
        }
        ttl = await redis.pttl(join.experiments_key(f"d{i}"))
        assert end - T0 + 3_600_000 - 5_000 < ttl <= end - T0 + 3_600_000


async def test_clicked_and_unclicked_decisions_reach_the_stream_together_in_decision_order(
    join: RewardJoin, redis: Redis
) -> None:
    """With a 2 s window, a decision clicked 1 s after it is served and an earlier one never
    clicked both reach the training stream only when their windows close, in decision order:
    the learner never sees a success before the failures of its time."""
    rules = {"hero": rules_for(2, "first", 0.0, 0.0, 1.0, [("click", 1.0, False)])}
    join.remember(_record("quiet", unit_id="u1"), rules["hero"])
    clicked = msgspec.structs.replace(_record("clicked", unit_id="u2"), decided_ms=T0 + 100)
    join.remember(clicked, rules["hero"])
    await join.flush()
    got = await _outcome(join, rules, event_id="e1", at_s=1.1, decision_id="clicked")
    assert got == [("hero", "joined")]
    assert await join.finalize_due(T0 + 1_500) == 0
    assert await _stream(redis, join) == []  # 1.5 s in: nothing learned yet, click or not
    assert await join.finalize_due(T0 + 2_100) == 2
    assert [(e.record.decision_id, e.reward, e.joined) for e in await _stream(redis, join)] == [
        ("quiet", 0.0, False),
        ("clicked", 1.0, True),
    ]


@pytest.mark.parametrize("aggregation", ["first", "sum"])
async def test_outcome_dated_before_its_decision_is_rejected_as_early(
    join: RewardJoin, redis: Redis, aggregation: Literal["first", "sum"]
) -> None:
    """An outcome whose timestamp precedes the decision cannot be its effect: it is 'early',
    not applied (its event id stays unused) and the decision keeps its default reward."""
    rules = {"hero": _rules(aggregation, default=0.0)}
    join.remember(_record("d1"), rules["hero"])
    await join.flush()
    got = await _outcome(join, rules, event_id="e1", ts_s=-0.001, at_s=1.0, decision_id="d1")
    assert got == [("hero", "early")]
    by_unit = await _outcome(
        join, rules, event_id="e2", ts_s=-30.0, at_s=1.0, unit_id="u1", experiment="hero"
    )
    assert by_unit == [("hero", "early")]
    fields = await redis.hgetall(join.record_key("d1", "hero"))
    assert "r" not in fields and not any(k.startswith("o:") for k in fields)
    # At the decision's own millisecond the outcome counts.
    assert await _outcome(join, rules, event_id="e3", ts_s=0.0, at_s=1.0, decision_id="d1") == [
        ("hero", "joined")
    ]
    await join.finalize_due(T0 + WINDOW_S * 1000)
    [example] = await _stream(redis, join)
    assert (example.reward, example.joined) == (1.0, True)


async def test_send_time_open_before_send_at_is_not_a_success(
    join: RewardJoin, redis: Redis
) -> None:
    """A send-time decision's window opens at send_at: an open dated between the decision and
    send_at is 'early' and the decision is learned as a failure; one after send_at counts."""
    rules = {"send": _rules("first", default=0.0)}
    send_at = T0 + 3_600_000
    join.remember(_record("d1", "send"), rules["send"], send_at + WINDOW_S * 1000,
                  window_start_ms=send_at)  # fmt: skip
    join.remember(_record("d2", "send", "u2"), rules["send"], send_at + WINDOW_S * 1000,
                  window_start_ms=send_at)  # fmt: skip
    await join.flush()
    assert await redis.hget(join.record_key("d1", "send"), "wst") == str(send_at)
    before = await _outcome(join, rules, event_id="e1", at_s=10.0, decision_id="d1")
    assert before == [("send", "early")]
    after = await _outcome(join, rules, event_id="e2", at_s=3_660.0, decision_id="d2")
    assert after == [("send", "joined")]
    await join.finalize_due(send_at + WINDOW_S * 1000)
    got = {e.record.decision_id: (e.reward, e.joined) for e in await _stream(redis, join)}
    assert got == {"d1": (0.0, False), "d2": (1.0, True)}


T = TypeVar("T")


class _Gate:
    """A unit screen that holds a flush until released (or fails it with a Redis error)."""

    def __init__(self, fail: bool = False) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.fail = fail

    async def screen(self, items: list[T], unit_of: object) -> list[T]:
        self.entered.set()
        await self.release.wait()
        if self.fail:
            raise RedisConnectionError("down")
        return items


async def test_holds_queued_and_in_flight_decisions_until_they_are_written(
    join: RewardJoin, redis: Redis
) -> None:
    """holds() names a decision (by id or by unit) from remember() until the flush writing it
    returns, including while that flush is in flight, and nothing else."""
    rules = _rules()
    assert not join.holds("d1", "u1")
    join.remember(_record("d1", unit_id="u1"), rules)
    assert join.holds("d1", None) and join.holds(None, "u1") and join.holds("d9", "u1")
    assert not join.holds("d2", "u2")
    gate = _Gate()
    join.screen = gate
    flushing = asyncio.create_task(join.flush())
    await gate.entered.wait()
    join.remember(_record("d2", unit_id="u2"), rules)  # queued during the flush
    assert join.holds("d1", None) and join.holds("d2", None) and join.holds(None, "u1")
    gate.release.set()
    assert await flushing == 1
    assert not join.holds("d1", "u1")
    assert join.holds("d2", None)
    assert await join.flush() == 1
    assert not join.holds("d2", "u2")
    assert await redis.exists(join.record_key("d1", "hero"), join.record_key("d2", "hero")) == 2


async def test_a_failed_flush_keeps_holding_what_it_did_not_write(join: RewardJoin) -> None:
    """After a Redis failure the unwritten decisions are queued again, and still held."""
    join.remember(_record("d1", unit_id="u1"), _rules())
    gate = _Gate(fail=True)
    gate.release.set()
    join.screen = gate
    with pytest.raises(RedisConnectionError):
        await join.flush()
    assert join.pending == 1
    assert join.holds("d1", None) and join.holds(None, "u1")


async def test_a_flush_failing_midway_encodes_only_the_calls_it_sent(
    join: RewardJoin, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Script calls are encoded one at a time as they are sent: a timeout on the second of six
    calls has encoded two (not six), puts back only what the first did not write, and the
    next flush writes the rest."""
    import bandits.join as join_module

    rules = _rules()
    n = 3 * join_module.REMEMBER_BATCH  # two experiments each: six script calls
    for i in range(n):
        join.remember(_record(f"d{i}", "hero", f"u{i}"), rules)
        join.remember(_record(f"d{i}", "send", f"u{i}"), rules)
    encoded: list[int] = []
    real_call, real_run = join_module._remember_call, join_module.run_script

    def counted_call(part: list[list[Any]]) -> tuple[bytes, list[str]]:
        encoded.append(sum(len(group) for group in part))
        return real_call(part)

    async def second_times_out(script: Any, keys: Any, args: Any = ()) -> Any:
        if len(encoded) == 2:
            raise RedisTimeoutError("Timeout reading from redis")
        return await real_run(script, keys, args)

    monkeypatch.setattr(join_module, "_remember_call", counted_call)
    monkeypatch.setattr(join_module, "run_script", second_times_out)
    with pytest.raises(RedisTimeoutError):
        await join.flush()
    assert encoded == [join_module.REMEMBER_BATCH, join_module.REMEMBER_BATCH]
    assert join.pending == 2 * n - join_module.REMEMBER_BATCH
    monkeypatch.setattr(join_module, "run_script", real_run)
    assert await join.flush() == 2 * n - join_module.REMEMBER_BATCH
    assert await redis.zcard(join.due_key) == 2 * n


def _slate_record(decision_id: str, unit_id: str = "u1") -> DecisionRecord:
    """A 3-slot slate over items a..d: c, a, d in slot order."""
    return msgspec.structs.replace(
        _record(decision_id, unit_id=unit_id),
        candidates=["a", "b", "c", "d"],
        chosen=2,
        propensity=0.5,
        slate=(2, 0, 3),
        slate_propensities=(0.5, 0.4, 0.6),
    )


async def test_slate_outcomes_accumulate_per_slot_and_finalise_as_one_reward_per_slot(
    join: RewardJoin, redis: Redis
) -> None:
    """Under ``sum`` a slate's outcomes add up per slot (by item or by slot, by decision id or
    by unit); an outcome naming no slot, an item not shown or a slot out of range is ignored;
    slots without an outcome get the default; each slot is clipped to the reward range."""
    rules = {"hero": _rules("sum", default=0.0, lo=0.0, hi=1.5)}
    join.remember(_slate_record("d1"), rules["hero"])
    await join.flush()
    applied = [
        await join.apply_outcome(
            event_id=f"e{i}", outcome_type="click", value=0.0, now_ms=T0 + 1000,
            rules_of=rules, decision_id=did, unit_id=unit, experiment=None, **where,
        )
        for i, (did, unit, where) in enumerate([
            ("d1", None, {"item": "a"}),
            (None, "u1", {"item": "a"}),
            ("d1", None, {"slot": 0}),
            ("d1", None, {"item": "a", "slot": 1}),
            ("d1", None, {}),
            ("d1", None, {"item": "b"}),
            ("d1", None, {"slot": 3}),
            ("d1", None, {"item": "a", "slot": 2}),
        ])
    ]  # fmt: skip
    assert [r[0][1] for r in applied] == [
        "joined",
        "joined",
        "joined",
        "joined",
        "ignored",
        "ignored",
        "ignored",
        "ignored",
    ]
    await join.finalize_due(T0 + WINDOW_S * 1000)
    [example] = await _stream(redis, join)
    assert example.rewards == [1.0, 1.5, 0.0]
    assert (example.reward, example.joined) == (2.5, True)
    assert example.record == _slate_record("d1")
    assert example.record.slate_items == ["c", "a", "d"]


async def test_a_slate_without_outcomes_is_learned_with_the_default_per_slot(
    join: RewardJoin, redis: Redis
) -> None:
    """A slate nobody clicked is finalised once, every slot with the default reward."""
    rules = {"hero": _rules(default=0.25)}
    join.remember(_slate_record("d1"), rules["hero"])
    await join.flush()
    await join.finalize_due(T0 + WINDOW_S * 1000)
    [example] = await _stream(redis, join)
    assert (example.rewards, example.joined) == ([0.25, 0.25, 0.25], False)


async def _command_calls(redis: Redis) -> dict[str, int]:
    """Calls per command so far, summed over every primary on a cluster."""
    if not is_cluster(redis):
        stats = await redis.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    per_node = await redis.info("commandstats", target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
    calls: Counter[str] = Counter()
    for stats in per_node.values():
        for name, v in stats.items():
            calls[name.removeprefix("cmdstat_")] += int(v["calls"])
    return dict(calls)


@pytest.mark.parametrize("aggregation", ["first", "sum"])
async def test_a_record_written_with_separate_rule_fields_still_joins_and_finalises(
    join: RewardJoin, redis: Redis, aggregation: Literal["first", "sum"]
) -> None:
    """Records written before the rules were packed into ``ru`` (``dflt``/``lo``/``hi``/``agg``
    fields) keep their aggregation and clip range: a deploy mid-window loses no reward."""
    rules = {"hero": _rules(aggregation, default=0.25, lo=-1.0, hi=1.5)}
    for did in ("d1", "d2"):
        join.remember(_record(did, unit_id=f"u-{did}"), rules["hero"])
    await join.flush()
    for did in ("d1", "d2"):
        key = join.record_key(did, "hero")
        assert await redis.hget(key, "ru") == f"0.25 -1.0 1.5 {aggregation}"
        await redis.hdel(key, "ru")
        await redis.hset(key, mapping={"dflt": "0.25", "lo": "-1.0", "hi": "1.5",
                                       "agg": aggregation})  # fmt: skip
    for i, at_s in enumerate((3.0, 2.0)):  # two clicks: "sum" adds them (clipped to hi)
        await _outcome(join, rules, event_id=f"e{i}", type="click", at_s=at_s, decision_id="d1")
    await join.finalize_due(T0 + WINDOW_S * 1000)
    got = {e.record.decision_id: (e.reward, e.joined) for e in await _stream(redis, join)}
    assert got == {"d1": (1.5 if aggregation == "sum" else 1.0, True), "d2": (0.25, False)}


async def test_finalising_reads_a_record_with_one_hmget(join: RewardJoin, redis: Redis) -> None:
    """Each finalised decision costs Redis one HMGET of its record, not an HGET per field."""
    rules = _rules(default=0.25)
    for i in range(40):
        join.remember(_record(f"d{i}"), rules)
    await join.flush()
    before = await _command_calls(redis)
    assert await join.finalize_due(T0 + WINDOW_S * 1000) == 40
    after = await _command_calls(redis)
    assert after.get("hget", 0) - before.get("hget", 0) == 0
    assert after.get("hmget", 0) - before.get("hmget", 0) == 40
    assert {e.reward for e in await _stream(redis, join)} == {0.25}


@pytest.mark.parametrize("one_call", [True, False], ids=["one-script-call", "members-read-first"])
async def test_an_outcome_naming_only_its_decision_reaches_every_experiment(
    join: RewardJoin, redis: Redis, monkeypatch: pytest.MonkeyPatch, one_call: bool
) -> None:
    """By decision id alone, an outcome is applied to each of the decision's experiments with
    rules (ignored where its type earns nothing, skipped where there are no rules): in one script
    call (the client never reads the decision's experiments), or — beyond
    ``BY_DECISION_MAX_RULES`` experiments with rules — after reading them."""
    rules = {
        "hero": _rules(),
        "banner": _rules("sum"),
        "quiet": rules_for(60, "first", 0.0, 0.0, 1.0, []),
    }
    for name in ("hero", "banner", "quiet", "unknown"):
        join.remember(_record("d1", name), _rules())
    await join.flush()
    if one_call:

        async def no_round_trip(*_: object) -> None:
            raise AssertionError("the client read the decision's experiments")

        monkeypatch.setattr(join._redis, "smembers", no_round_trip)
    else:
        monkeypatch.setattr("bandits.join.BY_DECISION_MAX_RULES", 0)
    got = await _outcome(join, rules, event_id="e1", decision_id="d1", type="purchase", value=40)
    assert got == [("banner", "joined"), ("hero", "joined"), ("quiet", "ignored")]
    again = await _outcome(join, rules, event_id="e1", decision_id="d1", type="purchase", value=40)
    assert again == [("banner", "duplicate"), ("hero", "duplicate"), ("quiet", "ignored")]
    late = await _outcome(join, rules, event_id="e2", decision_id="d1", at_s=WINDOW_S + 1)
    assert [r for _, r in late] == ["late", "late", "ignored"]
    await join.finalize_due(T0 + WINDOW_S * 1000)
    rewards = {e.record.experiment: e.reward for e in await _stream(redis, join)}
    assert (rewards["hero"], rewards["banner"]) == (pytest.approx(0.4), pytest.approx(0.4))


async def test_a_batch_of_outcomes_costs_two_round_trips(
    join: RewardJoin, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outcomes by decision id (with or without experiment) and by unit (with or without) are
    applied together: one pipelined read of the units' indexes, one pipeline of script calls,
    no command sent on its own; each outcome gets its own results, in order."""
    rules = {"hero": _rules(), "banner": _rules("sum")}
    for i in range(40):
        for name in ("hero", "banner"):
            join.remember(_record(f"d{i}", name, unit_id=f"u{i}"), rules[name])
    await join.flush()
    outcomes = []
    for i in range(40):
        kind = i % 4
        named = {
            "decision_id": f"d{i}" if kind < 2 else None,
            "unit_id": f"u{i}" if kind >= 2 else None,
            "experiment": "hero" if kind in (1, 2) else None,
        }
        outcomes.append(
            OutcomeRef(event_id=f"e{i}", type="click", value=0.0, ts_ms=T0 + 1000, **named)
        )
    outcomes.append(OutcomeRef(event_id="e-none", type="click", value=0.0, ts_ms=T0 + 1000,
                               unit_id="nobody"))  # fmt: skip
    pipelines: list[int] = []
    single: list[object] = []
    real_pipeline = join._redis.pipeline

    def counted_pipeline(*args: object, **kwargs: object) -> object:
        pipelines.append(1)
        return real_pipeline(*args, **kwargs)  # type: ignore[arg-type]

    async def sent_alone(*args: object, **kwargs: object) -> object:
        single.append(args[0])
        raise AssertionError(f"{args[0]} sent on its own")

    monkeypatch.setattr(join._redis, "pipeline", counted_pipeline)
    monkeypatch.setattr(join._redis, "execute_command", sent_alone)
    got = await join.apply_outcomes(outcomes, now_ms=T0 + 2000, rules_of=rules)
    assert (len(pipelines), single) == (2, [])
    both = [("banner", "joined"), ("hero", "joined")]
    for i, results in enumerate(got[:40]):
        assert sorted(results) == (both if i % 4 in (0, 3) else [("hero", "joined")]), i
    assert got[40] == []
    monkeypatch.undo()
    await join.finalize_due(T0 + WINDOW_S * 1000)
    rewarded = {(e.record.decision_id, e.record.experiment) for e in await _stream(redis, join)
                if e.joined}  # fmt: skip
    assert len(rewarded) == 10 * 2 + 10 + 10 + 10 * 2


async def test_a_batch_of_outcomes_joins_on_a_primary_without_its_scripts(
    join: RewardJoin, redis: Redis
) -> None:
    """A replica promoted a moment ago knows none of the join's scripts (as after ``SCRIPT
    FLUSH``): a batch of outcomes still joins. On a cluster the batch's pipeline sent them by
    ``EVALSHA`` and failed whole with ``NOSCRIPT`` (``reward_join_failed`` right after the
    failover test's takeover: those rewards were never learned)."""
    rules = {"hero": _rules()}
    for i in range(3):
        join.remember(_record(f"d{i}"), rules["hero"])
    await join.flush()
    if is_cluster(redis):
        await redis.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.ALL_NODES)
    else:
        await redis.script_flush()
    outcomes = [
        OutcomeRef(event_id=f"e{i}", type="click", value=0.0, ts_ms=T0 + 1000,
                   decision_id=f"d{i}", experiment="hero")
        for i in range(3)
    ]  # fmt: skip
    got = await join.apply_outcomes(outcomes, now_ms=T0 + 2000, rules_of=rules)
    assert got == [[("hero", "joined")]] * 3
