"""The reward join: each learning decision becomes exactly one training example.

A decision made by a learning policy is remembered in Redis for its experiment's reward window.
Outcomes that arrive within the window (by decision id, or by unit id + experiment) are mapped to
reward through the experiment's rules; when the window closes — or at the first rewarding outcome
under ``first`` aggregation — the record is *finalised*: one Lua script removes it from the due
set (only one caller can win that), appends the training example to the stream and deletes it.
A duplicate outcome (same event id) counts once; an outcome after finalisation is *late*: logged
in the event log, never learned.

Key layout (``{p}`` = key prefix; ``{d}`` a decision id, ``{u}`` a unit id, both as hash
tags). Record and index keys live for the reward window plus one hour:

- ``{p}:dec:{d}:<experiment>`` HASH — ``rec`` (record JSON), ``wend`` (window end, ms),
  ``dflt``/``lo``/``hi`` (default reward and clip range), ``agg``, ``r`` (reward so far),
  ``o:<event id>`` (outcomes seen);
- ``{p}:dec:{d}:exps`` SET — the experiments the decision took part in;
- ``{p}:u:{u}:join`` HASH — experiment -> the unit's latest open decision id;
- ``{p}:join:due`` ZSET — ``<decision id>|<experiment>`` scored by window end (no TTL*);
- ``{p}:train`` STREAM — finalised examples (``rec``, ``r``, ``joined``), trimmed to MAXLEN.

(*) members leave the due set when finalised; the sweeper finalises every member whose window
has closed, so its size is bounded by decisions in flight. The stream is trimmed to
``STREAM_MAXLEN`` entries (approximately), a bound on memory should the learner stay down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bandits.base import FeatureValue

log = structlog.get_logger("tailor.join")

STREAM_MAXLEN = 1_000_000
RECORD_GRACE_MS = 3_600_000
JOIN_GROUP = "learners"

Applied = Literal["joined", "duplicate", "late", "ignored"]


class DecisionRecord(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """What the learner needs of a decision: context, candidates, choice, propensity."""

    decision_id: str
    experiment: str
    experiment_version: int
    unit_id: str
    candidates: list[str]
    chosen: int
    propensity: float
    model_version: str
    context: dict[str, FeatureValue]
    decided_ms: int


class JoinRules(msgspec.Struct, frozen=True, kw_only=True):
    """An experiment's reward rules as the join applies them."""

    window_ms: int
    aggregation: Literal["first", "sum"]
    default: float
    lo: float
    hi: float
    rewards: dict[str, tuple[float, bool]]  # outcome type -> (reward, per_value)

    def reward_of(self, outcome_type: str, value: float) -> float | None:
        """The reward an outcome contributes, or None when its type does not count."""
        rule = self.rewards.get(outcome_type)
        if rule is None:
            return None
        reward, per_value = rule
        return reward * value if per_value else reward


class TrainingExample(msgspec.Struct, frozen=True, kw_only=True):
    """A finalised record read back from the stream."""

    stream_id: str
    record: DecisionRecord
    reward: float
    joined: bool


_FINALIZE = """
local function finalize(due, rec, stream, member, maxlen)
  if redis.call('ZREM', due, member) == 0 then return 0 end
  local body = redis.call('HGET', rec, 'rec')
  if not body then return 0 end
  local r = redis.call('HGET', rec, 'r')
  local joined = '1'
  local reward
  if r then
    reward = tonumber(r)
  else
    reward = tonumber(redis.call('HGET', rec, 'dflt'))
    joined = '0'
  end
  local lo = tonumber(redis.call('HGET', rec, 'lo'))
  local hi = tonumber(redis.call('HGET', rec, 'hi'))
  if reward < lo then reward = lo end
  if reward > hi then reward = hi end
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'rec', body, 'r', tostring(reward),
             'joined', joined)
  redis.call('DEL', rec)
  return 1
end
"""

_APPLY_OUTCOME = (
    _FINALIZE
    + """
local rec, due, stream = KEYS[1], KEYS[2], KEYS[3]
local eid, reward, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local member, maxlen = ARGV[4], ARGV[5]
local wend = redis.call('HGET', rec, 'wend')
if not wend then return -1 end
if now > tonumber(wend) then return -1 end
if redis.call('HSETNX', rec, 'o:' .. eid, '1') == 0 then return 0 end
if redis.call('HGET', rec, 'agg') == 'first' then
  redis.call('HSET', rec, 'r', tostring(reward))
  finalize(due, rec, stream, member, maxlen)
else
  redis.call('HINCRBYFLOAT', rec, 'r', reward)
end
return 1
"""
)

_FINALIZE_DUE = (
    _FINALIZE
    + """
return finalize(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
"""
)

_REMEMBER = """
local prefix, due = ARGV[1], ARGV[2]
local n = 0
for _, r in ipairs(cjson.decode(ARGV[3])) do
  local did, exp, unit = r[1], r[2], r[3]
  local wend, ttl = r[5], r[6]
  local rec = prefix .. ':dec:{' .. did .. '}:' .. exp
  redis.call('HSET', rec, 'rec', r[4], 'wend', string.format('%d', wend), 'dflt', r[7],
             'lo', r[8], 'hi', r[9], 'agg', r[10])
  redis.call('PEXPIRE', rec, ttl)
  redis.call('ZADD', due, wend, did .. '|' .. exp)
  local exps = prefix .. ':dec:{' .. did .. '}:exps'
  redis.call('SADD', exps, exp)
  redis.call('PEXPIRE', exps, ttl)
  local index = prefix .. ':u:{' .. unit .. '}:join'
  redis.call('HSET', index, exp, did)
  redis.call('PEXPIRE', index, ttl)
  n = n + 1
end
return n
"""
REMEMBER_BATCH = 500

_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(DecisionRecord)


class RewardJoin:
    """Remember learning decisions, apply outcomes, finalise windows into training examples."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self.due_key = f"{prefix}:join:due"
        self.stream_key = f"{prefix}:train"
        self._apply = redis.register_script(_APPLY_OUTCOME)
        self._finalize = redis.register_script(_FINALIZE_DUE)
        self._remember = redis.register_script(_REMEMBER)
        self._pending: list[tuple[DecisionRecord, JoinRules, int]] = []
        self._flush_lock = asyncio.Lock()

    def record_key(self, decision_id: str, experiment: str) -> str:
        """The Redis key of one remembered decision."""
        return f"{self._prefix}:dec:{{{decision_id}}}:{experiment}"

    def experiments_key(self, decision_id: str) -> str:
        """The Redis key listing the experiments of one decision."""
        return f"{self._prefix}:dec:{{{decision_id}}}:exps"

    def unit_index_key(self, unit_id: str) -> str:
        """The Redis key mapping a unit's experiments to their open decision ids."""
        return f"{self._prefix}:u:{{{unit_id}}}:join"

    def remember(
        self, record: DecisionRecord, rules: JoinRules, window_end_ms: int | None = None
    ) -> None:
        """Queue a decision to be written by the next :meth:`flush` (no I/O on the hot path).

        The reward window ends ``rules.window_ms`` after the decision unless ``window_end_ms``
        says otherwise (a send-time decision's window runs from its send time).
        """
        end = window_end_ms if window_end_ms is not None else record.decided_ms + rules.window_ms
        self._pending.append((record, rules, end))

    @property
    def pending(self) -> int:
        """Decisions queued but not yet written."""
        return len(self._pending)

    async def flush(self) -> int:
        """Write queued decisions; returns how many. Waits for a flush in flight first, so on
        return every decision queued before the call is in Redis (outcomes rely on that)."""
        async with self._flush_lock:
            return await self._flush()

    async def _flush(self) -> int:
        """Write queued decisions, ``REMEMBER_BATCH`` per script call; returns how many.

        One script call carries many records: per-command client overhead (not Redis) is what
        limits bulk decisions, so records travel as arguments of a few large calls.
        """
        if not self._pending:
            return 0
        batch, self._pending = self._pending, []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(batch), REMEMBER_BATCH):
                    rows = [
                        (
                            record.decision_id,
                            record.experiment,
                            record.unit_id,
                            _encoder.encode(record).decode(),
                            window_end,
                            max(1, window_end - record.decided_ms) + RECORD_GRACE_MS,
                            repr(rules.default),
                            repr(rules.lo),
                            repr(rules.hi),
                            rules.aggregation,
                        )
                        for record, rules, window_end in batch[start : start + REMEMBER_BATCH]
                    ]
                    await self._remember(
                        keys=[self.due_key],
                        args=[self._prefix, self.due_key, _encoder.encode(rows)],
                        client=pipe,
                    )
                await pipe.execute()
        except RedisError:
            # Put them back (bounded) so a short Redis outage does not lose the join.
            self._pending = (batch + self._pending)[-100_000:]
            raise
        return len(batch)

    async def apply_outcome(
        self,
        *,
        event_id: str,
        outcome_type: str,
        value: float,
        now_ms: int,
        rules_of: Mapping[str, JoinRules],
        decision_id: str | None,
        unit_id: str | None,
        experiment: str | None,
    ) -> list[tuple[str, Applied]]:
        """Apply an outcome to the open decisions it refers to; returns (experiment, result)."""
        targets: list[tuple[str, str]] = []
        if decision_id:
            if experiment:
                names = [experiment]
            else:
                members = await self._redis.smembers(self.experiments_key(decision_id))
                names = sorted(str(m) for m in members)
            targets = [(decision_id, name) for name in names]
        elif unit_id:
            index = self.unit_index_key(unit_id)
            if experiment:
                found = await self._redis.hget(index, experiment)
                targets = [(str(found), experiment)] if found else []
            else:
                mapping: dict[str, str] = await self._redis.hgetall(index)  # type: ignore[assignment]
                targets = [(d, e) for e, d in mapping.items()]
        results: list[tuple[str, Applied]] = []
        for did, name in targets:
            rules = rules_of.get(name)
            if rules is None:
                continue
            reward = rules.reward_of(outcome_type, value)
            if reward is None:
                results.append((name, "ignored"))
                continue
            code = await self._apply(
                keys=[self.record_key(did, name), self.due_key, self.stream_key],
                args=[event_id, repr(reward), now_ms, f"{did}|{name}", STREAM_MAXLEN],
            )
            if code == 1:
                results.append((name, "joined"))
            elif code == 0:
                results.append((name, "duplicate"))
            else:
                results.append((name, "late"))
        return results

    async def finalize_due(self, now_ms: int, limit: int = 1000) -> int:
        """Finalise every decision whose window has closed (default reward if no outcome).

        Due members are read ``limit`` at a time and finalised in one pipelined round trip per
        batch, so the sweeper keeps up with thousands of decisions per second.
        """
        done = 0
        while True:
            members = await self._redis.zrangebyscore(
                self.due_key, "-inf", now_ms, start=0, num=limit
            )
            if not members:
                return done
            async with self._redis.pipeline(transaction=False) as pipe:
                for member in members:
                    decision_id, _, experiment = str(member).partition("|")
                    await self._finalize(
                        keys=[
                            self.due_key,
                            self.record_key(decision_id, experiment),
                            self.stream_key,
                        ],
                        args=[str(member), STREAM_MAXLEN],
                        client=pipe,
                    )
                done += sum(int(r) for r in await pipe.execute())
            # Every member read leaves the due set (finalised, or already gone): no re-reads.
            if len(members) < limit:
                return done


def decode_entry(stream_id: str, fields: Mapping[Any, Any]) -> TrainingExample:
    """Decode one stream entry (fields may be bytes or str)."""

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    def get(name: str) -> Any:
        return fields.get(name, fields.get(name.encode()))

    return TrainingExample(
        stream_id=text(stream_id),
        record=_record_decoder.decode(get("rec")),
        reward=float(text(get("r"))),
        joined=text(get("joined")) == "1",
    )


def rules_for(
    window_s: int,
    aggregation: Literal["first", "sum"],
    default: float,
    lo: float,
    hi: float,
    rules: Sequence[tuple[str, float, bool]],
) -> JoinRules:
    """Build join rules from an experiment's reward spec."""
    return JoinRules(
        window_ms=window_s * 1000,
        aggregation=aggregation,
        default=default,
        lo=lo,
        hi=hi,
        rewards={t: (r, per_value) for t, r, per_value in rules},
    )
