"""The reward join: each learning decision becomes exactly one training example.

A decision made by a learning policy is remembered in Redis for its experiment's reward window.
Outcomes dated within the window (by decision id, or by unit id + experiment) are mapped to
reward through the experiment's rules and accumulated on the record; when the window closes the
sweeper *finalises* it: one Lua script removes it from the due set (only one caller can win that),
appends the training example to the stream and deletes it.

Every decision is finalised at its window's end and never earlier, whether it earned a reward or
not. Finalising a rewarded decision at its first outcome would teach the learner every success
one window ahead of the matching failures (with a 60 s window, 30 s in, a model had seen only
clicks: both visitor types went to the same variant); here *when* a decision is learned never
depends on *whether* it succeeded, and the stream carries decisions in window-end order (for
content experiments, decision order).

Outcomes are judged by their own timestamp (``ts_ms``, the receive time when the client sent
none): one dated before the window opens — before the decision, or before ``send_at`` for a
send-time decision — cannot be its consequence and is rejected as ``early`` (counted by the
caller, never learned). An outcome received after the window closed is ``late``: logged in the
event log, never learned. A duplicate outcome (same event id) counts once. Under ``first``
aggregation the earliest-dated counting outcome gives the reward, whatever order they arrive in.

Key layout (``{p}`` = key prefix, ``<d>`` a decision id, ``<u>`` a unit id). Every key carries
the deployment's hash tag ``{<p>}``: a decision's record, the unit index, the due set and the
stream change together in one script, so on a Redis Cluster they share one slot (the cluster's
hot slot, see :mod:`decision_api.redis_client`). Record and index keys live for the reward
window plus one hour:

- ``{{p}}:dec:<d>:<experiment>`` HASH — ``rec`` (record JSON), ``wst``/``wend`` (window start and
  end, ms), ``ru`` (the rules in one field: default reward, clip range, aggregation, see
  :func:`packed_rules`; records written before it carry ``dflt``/``lo``/``hi``/``agg``, which
  the scripts still read), ``r`` (reward so far), ``rts`` (under ``first``: the timestamp of
  the outcome that gave ``r``), ``o:<event id>`` (outcomes seen); for a ranked slate also
  ``ns`` (its number of slots), ``i:<item>`` (the item's slot) and per slot
  ``r:<slot>``/``rts:<slot>`` in place of ``r``/``rts``;
- ``{{p}}:dec:<d>:exps`` SET — the experiments the decision took part in;
- ``{{p}}:u:<u>:join`` HASH — experiment -> the unit's latest open decision id;
- ``{{p}}:join:due`` ZSET — ``<decision id>|<experiment>`` scored by window end (no TTL*);
- ``{{p}}:train`` STREAM — finalised examples (``rec``, ``r``, ``joined``), trimmed to MAXLEN.

Decisions of a unit erased a moment ago are dropped at :meth:`RewardJoin.flush` when a
``screen`` is set (the server's erasure tombstones), so a decision racing an erasure does not
write the unit's records back.

(*) members leave the due set when finalised; the sweeper finalises every member whose window
has closed, so its size is bounded by decisions in flight. The stream is trimmed to
``STREAM_MAXLEN`` entries (approximately), a bound on memory should the learner stay down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar

import msgspec
import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterPipeline
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from bandits.base import FeatureValue
from bandits.scripts import run_script

log = structlog.get_logger("tailor.join")

STREAM_MAXLEN = 1_000_000
RECORD_GRACE_MS = 3_600_000
JOIN_GROUP = "learners"

Applied = Literal["joined", "duplicate", "late", "early", "ignored"]
T = TypeVar("T")


class UnitScreen(Protocol):
    """Filters out items about units that must not be written (e.g. just erased)."""

    async def screen(self, items: list[T], unit_of: Callable[[T], str]) -> list[T]:
        """``items`` without those whose unit is screened out; raises ``RedisError``."""
        ...


class DecisionRecord(msgspec.Struct, frozen=True, kw_only=True, array_like=True, gc=False):
    """What the learner needs of a decision: context, candidates, choice, propensity.

    A ranked slate also carries ``slate`` (the candidates' indexes in slot order; ``chosen`` is
    its first) and ``slate_propensities`` (each slot's conditional probability), and, when the
    candidates came in the request, their ``features`` (one mapping per candidate): the
    learner knows only the experiment's variants.
    """

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
    # Tuples: a one-variant decision shares the empty one (a bulk campaign remembers hundreds of
    # thousands of records; two fresh lists each were most of the collector's work).
    slate: tuple[int, ...] = ()
    slate_propensities: tuple[float, ...] = ()
    features: list[dict[str, FeatureValue]] | None = None

    @property
    def slate_items(self) -> list[str]:
        """The slate's items in slot order (empty for a one-variant decision)."""
        return [self.candidates[i] for i in self.slate]


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


class OutcomeRef(msgspec.Struct, frozen=True, kw_only=True):
    """An outcome as the join applies it: which decision(s) it names, what it is, when."""

    event_id: str
    type: str
    value: float
    ts_ms: int
    decision_id: str | None = None
    unit_id: str | None = None
    experiment: str | None = None
    slot: int | None = None
    """For a slate decision: the slot the outcome rewards (or the slot showing ``item``)."""
    item: str | None = None

    @property
    def where(self) -> tuple[str, str]:
        """(slot, item) as the apply scripts take them ('' when not given)."""
        return ("" if self.slot is None else str(self.slot), self.item or "")


class TrainingExample(msgspec.Struct, frozen=True, kw_only=True):
    """A finalised record read back from the stream; a slate's ``rewards`` has one entry per
    slot (``reward`` is then their sum)."""

    stream_id: str
    record: DecisionRecord
    reward: float
    joined: bool
    rewards: list[float] | None = None


_FINALIZE = """
local function finalize_slate(rec, stream, maxlen, body, ns, dflt, lo, hi)
  local joined, total, parts = '0', 0, {}
  for j = 0, ns - 1 do
    local r = redis.call('HGET', rec, 'r:' .. j)
    local reward = dflt
    if r then
      reward = tonumber(r)
      joined = '1'
    end
    if reward < lo then reward = lo end
    if reward > hi then reward = hi end
    total = total + reward
    parts[#parts + 1] = tostring(reward)
  end
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'rec', body, 'r', tostring(total),
             'joined', joined, 'rs', table.concat(parts, ','))
  redis.call('DEL', rec)
  return 1
end

local function finalize(due, rec, stream, member, maxlen)
  if redis.call('ZREM', due, member) == 0 then return 0 end
  -- One HMGET, not one HGET per field: four commands fewer per learning decision.
  local f = redis.call('HMGET', rec, 'rec', 'r', 'ru', 'ns', 'dflt', 'lo', 'hi')
  local body = f[1]
  if not body then return 0 end
  local dflt, lo, hi = f[5], f[6], f[7]  -- a record written before 'ru' packed them
  if f[3] then dflt, lo, hi = string.match(f[3], '^(%S+) (%S+) (%S+)') end
  dflt, lo, hi = tonumber(dflt), tonumber(lo), tonumber(hi)
  if f[4] then
    return finalize_slate(rec, stream, maxlen, body, tonumber(f[4]), dflt, lo, hi)
  end
  local r = f[2]
  local joined = '1'
  local reward
  if r then
    reward = tonumber(r)
  else
    reward = dflt
    joined = '0'
  end
  if reward < lo then reward = lo end
  if reward > hi then reward = hi end
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'rec', body, 'r', tostring(reward),
             'joined', joined)
  redis.call('DEL', rec)
  return 1
end
"""

# -1 late (window closed or record gone), -2 early (dated before the window opened),
# -3 a slate's outcome naming no slot of it (no slot or item, an unknown item, a slot out of
# range), 0 duplicate event, 1 applied. Never finalises: only the sweeper does, at the window's
# end. A slate's rewards accumulate per slot (``r:<slot>``, ``rts:<slot>``); ``slot`` and
# ``item`` are the outcome's ('' when not given), ignored for a one-variant decision.
_APPLY = """
local function apply(rec, eid, reward_text, now, ts_text, slot, item)
  local ts = tonumber(ts_text)
  local f = redis.call('HMGET', rec, 'wend', 'wst', 'agg', 'rts', 'ns', 'ru')
  if not f[1] then return -1 end
  if f[6] then f[3] = string.match(f[6], '(%S+)$') end
  if now > tonumber(f[1]) then return -1 end
  if f[2] and ts < tonumber(f[2]) then return -2 end
  local suffix, first = '', f[4]
  if f[5] then
    if item ~= '' then
      local at = redis.call('HGET', rec, 'i:' .. item)
      if not at or (slot ~= '' and tonumber(slot) ~= tonumber(at)) then return -3 end
      slot = at
    end
    if slot == '' or tonumber(slot) < 0 or tonumber(slot) >= tonumber(f[5]) then return -3 end
    suffix = ':' .. tonumber(slot)
    first = redis.call('HGET', rec, 'rts' .. suffix)
  end
  if redis.call('HSETNX', rec, 'o:' .. eid, '1') == 0 then return 0 end
  if f[3] == 'first' then
    if not first or ts < tonumber(first) then
      redis.call('HSET', rec, 'r' .. suffix, reward_text, 'rts' .. suffix, ts_text)
    end
  else
    redis.call('HINCRBYFLOAT', rec, 'r' .. suffix, tonumber(reward_text))
  end
  return 1
end
"""

_APPLY_OUTCOME = (
    _APPLY
    + """
return apply(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6])
"""
)

# An outcome naming only its decision: the decision's experiments (its SET) and the outcome
# applied to each, in one call. ARGV: record key prefix, event id, now, ts, slot, item, then
# (experiment, reward) pairs for every experiment with rules ('' = its rules ignore this
# outcome type). Returns a flat [experiment, code, ...] list in experiment order; code 2 =
# ignored.
_APPLY_BY_DECISION = (
    _APPLY
    + """
local prefix, eid, now, ts = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local slot, item = ARGV[5], ARGV[6]
local rewards = {}
for i = 7, #ARGV, 2 do rewards[ARGV[i]] = ARGV[i + 1] end
local members = redis.call('SMEMBERS', KEYS[1])
table.sort(members)
local out = {}
for _, exp in ipairs(members) do
  local reward = rewards[exp]
  if reward ~= nil then
    out[#out + 1] = exp
    if reward == '' then
      out[#out + 1] = 2
    else
      out[#out + 1] = apply(prefix .. exp, eid, reward, now, ts, slot, item)
    end
  end
end
return out
"""
)
BY_DECISION_MAX_RULES = 64
"""Up to this many experiments with rules, an outcome naming only its decision is applied in one
script call (their rewards travel as arguments); beyond, the experiments are read first."""

# KEYS: due set, stream; ARGV: record key prefix, stream MAXLEN, due members. Every record key
# is built here from its member: all live in the due set's slot (the ``{<p>}`` tag).
_FINALIZE_DUE = (
    _FINALIZE
    + """
local done = 0
for i = 3, #ARGV do
  local member = ARGV[i]
  local bar = string.find(member, '|', 1, true)
  local rec = ARGV[1] .. string.sub(member, 1, bar - 1) .. ':' .. string.sub(member, bar + 1)
  done = done + finalize(KEYS[1], rec, KEYS[2], member, ARGV[2])
end
return done
"""
)

_REMEMBER = """
local prefix, due = ARGV[1], ARGV[2]
local call = cmsgpack.unpack(ARGV[3])
local rules, scored = call[1], call[2]
local n = 0
for c = 3, #call do
  local g = call[c]
  local did, unit = g[1], g[2]
  local tag = prefix .. ':dec:' .. did .. ':'
  local exps, index = {}, {}
  local ttl, ttl_text = -1, '1'
  for i = 3, #g do
    local r = g[i]
    local exp = r[1]
    local rec = tag .. exp
    redis.call('HSET', rec, 'rec', r[2], 'wend', r[3], 'wst', r[7], 'ru', rules[r[5]])
    local items = r[8]
    if items and #items > 0 then
      redis.call('HSET', rec, 'ns', #items)
      for j = 1, #items do redis.call('HSET', rec, 'i:' .. items[j], j - 1) end
    end
    redis.call('PEXPIRE', rec, r[4])
    exps[#exps + 1] = exp
    index[#index + 1] = exp
    index[#index + 1] = did
    if tonumber(r[4]) > ttl then ttl, ttl_text = tonumber(r[4]), r[4] end
    n = n + 1
  end
  redis.call('SADD', tag .. 'exps', unpack(exps))
  redis.call('PEXPIRE', tag .. 'exps', ttl_text)
  local key = prefix .. ':u:' .. unit .. ':join'
  redis.call('HSET', key, unpack(index))
  redis.call('PEXPIRE', key, ttl_text)
end
for s = 1, #scored, 2000 do
  redis.call('ZADD', due, unpack(scored, s, math.min(s + 1999, #scored)))
end
return n
"""
REMEMBER_BATCH = 500

_encoder = msgspec.json.Encoder()
_packer = msgspec.msgpack.Encoder()
_record_decoder = msgspec.json.Decoder(DecisionRecord)


class RewardJoin:
    """Remember learning decisions, apply outcomes, finalise windows into training examples."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._shared = shared = "{" + prefix + "}"  # every join key: one cluster slot
        self.due_key = f"{shared}:join:due"
        self.stream_key = f"{shared}:train"
        self._apply = redis.register_script(_APPLY_OUTCOME)
        self._apply_by_decision = redis.register_script(_APPLY_BY_DECISION)
        self._finalize = redis.register_script(_FINALIZE_DUE)
        self._remember = redis.register_script(_REMEMBER)
        self._pending: list[_Queued] = []
        # Decision and unit ids of the queued decisions and of those a flush is writing now
        # (see holds()): an outcome waits for a flush only when it may refer to one of them.
        self._queued_ids: set[str] = set()
        self._queued_units: set[str] = set()
        self._writing_ids: set[str] = set()
        self._writing_units: set[str] = set()
        self._flush_lock = asyncio.Lock()
        self.screen: UnitScreen | None = None
        """Drops queued decisions of units that must not be written (erasure tombstones)."""

    def record_key(self, decision_id: str, experiment: str) -> str:
        """The Redis key of one remembered decision."""
        return f"{self._shared}:dec:{decision_id}:{experiment}"

    def experiments_key(self, decision_id: str) -> str:
        """The Redis key listing the experiments of one decision."""
        return f"{self._shared}:dec:{decision_id}:exps"

    def unit_index_key(self, unit_id: str) -> str:
        """The Redis key mapping a unit's experiments to their open decision ids."""
        return f"{self._shared}:u:{unit_id}:join"

    def remember(
        self,
        record: DecisionRecord,
        rules: JoinRules,
        window_end_ms: int | None = None,
        *,
        window_start_ms: int | None = None,
    ) -> None:
        """Queue a decision to be written by the next :meth:`flush` (no I/O on the hot path).

        The reward window opens at the decision and ends ``rules.window_ms`` later unless
        ``window_start_ms``/``window_end_ms`` say otherwise (a send-time decision's window runs
        from its send time). Outcomes dated before the window opens are rejected as ``early``.
        """
        start = window_start_ms if window_start_ms is not None else record.decided_ms
        end = window_end_ms if window_end_ms is not None else start + rules.window_ms
        self._pending.append(_Queued(record, rules, end, start))
        self._queued_ids.add(record.decision_id)
        self._queued_units.add(record.unit_id)

    @property
    def pending(self) -> int:
        """Decisions queued but not yet written."""
        return len(self._pending)

    def holds(self, decision_id: str | None, unit_id: str | None) -> bool:
        """Whether a decision with this id, or of this unit, is queued here or being written.

        An outcome needs :meth:`flush` first only then: every other decision this join was
        given is in Redis already, so the outcome path skips the flush (and its script call)
        in the common case of a click arriving long after its decision.
        """
        if decision_id is not None and (
            decision_id in self._queued_ids or decision_id in self._writing_ids
        ):
            return True
        return unit_id is not None and (
            unit_id in self._queued_units or unit_id in self._writing_units
        )

    async def flush(self) -> int:
        """Write queued decisions; returns how many. Waits for a flush in flight first, so on
        return every decision queued before the call is in Redis (outcomes rely on that)."""
        async with self._flush_lock:
            return await self._flush()

    async def _flush(self) -> int:
        """Write queued decisions, about ``REMEMBER_BATCH`` per script call; returns how many.

        One script call carries many records: per-command client overhead (not Redis) is what
        limits bulk decisions, so records travel as one msgpack argument of a few large calls
        (the record JSON inside it as a plain string, never re-escaped). A decision's records (one
        per experiment) travel together and share their index writes. The calls are awaited
        one by one, so reads from other clients interleave with a long flush.
        """
        if not self._pending:
            return 0
        batch, self._pending = self._pending, []
        # Until this flush returns, its decisions are "being written" (holds() says so).
        self._writing_ids, self._queued_ids = self._queued_ids, set()
        self._writing_units, self._queued_units = self._queued_units, set()
        sent: set[str] = set()
        try:
            if self.screen is not None:
                batch = await self.screen.screen(batch, _unit_of)
            for payload, decisions in _remember_calls(batch):
                args = [self._shared, self.due_key, payload]
                await run_script(self._remember, [self.due_key], args)
                sent.update(decisions)
        except RedisError:
            # Put the unwritten ones back (bounded) so a short Redis outage does not lose the
            # join; rewriting a record that did reach Redis is harmless (same keys, same values).
            unsent = [item for item in batch if item.record.decision_id not in sent]
            self._pending = (unsent + self._pending)[-100_000:]
            self._queued_ids = {item.record.decision_id for item in self._pending}
            self._queued_units = {item.record.unit_id for item in self._pending}
            raise
        finally:
            self._writing_ids, self._writing_units = set(), set()
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
        ts_ms: int | None = None,
        slot: int | None = None,
        item: str | None = None,
    ) -> list[tuple[str, Applied]]:
        """Apply an outcome to the open decisions it refers to; returns (experiment, result).

        ``now_ms`` is when the outcome arrived (after the window's end it is ``late``);
        ``ts_ms`` when it happened (``now_ms`` if not given): before the window opens it is
        ``early`` and not applied. Nothing is finalised here, whatever the aggregation. For a
        slate decision the outcome rewards the slot ``slot`` or the slot showing ``item``; one
        naming no slot of the slate is ``ignored``.
        """
        outcome = OutcomeRef(
            event_id=event_id,
            type=outcome_type,
            value=value,
            ts_ms=now_ms if ts_ms is None else ts_ms,
            decision_id=decision_id or None,
            unit_id=unit_id or None,
            experiment=experiment or None,
            slot=slot,
            item=item or None,
        )
        return (await self.apply_outcomes([outcome], now_ms=now_ms, rules_of=rules_of))[0]

    async def apply_outcomes(
        self, outcomes: Sequence[OutcomeRef], *, now_ms: int, rules_of: Mapping[str, JoinRules]
    ) -> list[list[tuple[str, Applied]]]:
        """Apply many outcomes (see :meth:`apply_outcome`) in at most two pipelined round trips.

        Outcomes naming a unit but no decision first read the unit's index (one pipeline for
        all of them); then every script call of every outcome goes in one pipeline. Returns
        each outcome's (experiment, result) list, in order: a batch of 10,000 outcomes costs
        two round trips, not 10,000.
        """
        results: list[list[tuple[str, Applied]]] = [[] for _ in outcomes]
        targets = await self._unit_targets(outcomes)
        # Per outcome: its result slots, each a fixed result or the index of a script call.
        slots: list[list[tuple[str, Applied | int]]] = [[] for _ in outcomes]
        calls: list[tuple[AsyncScript, list[str], list[str | int]]] = []
        slow: list[int] = []
        for i, o in enumerate(outcomes):
            if o.decision_id and not o.experiment:
                if len(rules_of) > BY_DECISION_MAX_RULES:
                    slow.append(i)
                    continue
                args: list[str | int] = [
                    self.record_key(o.decision_id, ""),
                    o.event_id,
                    now_ms,
                    o.ts_ms,
                    *o.where,
                ]
                for name, its_rules in rules_of.items():
                    reward = its_rules.reward_of(o.type, o.value)
                    args += [name, "" if reward is None else repr(reward)]
                slots[i].append(("", len(calls)))
                calls.append((self._apply_by_decision, [self.experiments_key(o.decision_id)], args))
                continue
            if o.decision_id and o.experiment:
                pairs = [(o.decision_id, o.experiment)]
            else:
                pairs = targets.get(i, [])
            for did, name in pairs:
                rules = rules_of.get(name)
                if rules is None:
                    continue
                reward = rules.reward_of(o.type, o.value)
                if reward is None:
                    slots[i].append((name, "ignored"))
                    continue
                slots[i].append((name, len(calls)))
                calls.append(
                    (
                        self._apply,
                        [self.record_key(did, name)],
                        [o.event_id, repr(reward), now_ms, o.ts_ms, *o.where],
                    )
                )
        replies: list[Any] = []
        if len(calls) == 1:  # one outcome, one call: no pipeline object to build
            script, keys, args = calls[0]
            replies = [await run_script(script, keys, args)]
        elif calls:
            async with self._redis.pipeline(transaction=False) as pipe:
                for script, keys, args in calls:
                    if isinstance(pipe, ClusterPipeline):
                        # By text: a cluster pipeline does not load a script a node lacks (a
                        # replica promoted a moment ago), and NOSCRIPT failed the whole batch.
                        pipe.eval(_script_text(script), len(keys), *keys, *args)
                    else:
                        await script(keys=keys, args=args, client=pipe)
                replies = await pipe.execute()
        for i, outcome_slots in enumerate(slots):
            for name, slot in outcome_slots:
                if isinstance(slot, str):
                    results[i].append((name, slot))
                elif name:
                    results[i].append((name, _APPLIED[int(replies[slot])]))
                else:  # a by-decision call: [experiment, code, ...]
                    flat = replies[slot]
                    results[i].extend(
                        (_text(flat[k]), _BY_DECISION[int(flat[k + 1])])
                        for k in range(0, len(flat), 2)
                    )
        for i in slow:  # many experiments with rules: read the decision's experiments first
            results[i] = await self._apply_listed(outcomes[i], now_ms, rules_of)
        return results

    async def _unit_targets(
        self, outcomes: Sequence[OutcomeRef]
    ) -> dict[int, list[tuple[str, str]]]:
        """(decision id, experiment) targets of the outcomes naming a unit but no decision,
        from the units' indexes in one pipelined read."""
        wanted = [i for i, o in enumerate(outcomes) if not o.decision_id and o.unit_id]
        if not wanted:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for i in wanted:
                o = outcomes[i]
                index = self.unit_index_key(str(o.unit_id))
                if o.experiment:
                    pipe.hget(index, o.experiment)
                else:
                    pipe.hgetall(index)
            replies = await pipe.execute()
        out: dict[int, list[tuple[str, str]]] = {}
        for i, reply in zip(wanted, replies, strict=True):
            experiment = outcomes[i].experiment
            if experiment:
                out[i] = [(_text(reply), experiment)] if reply else []
            else:
                out[i] = [(_text(d), _text(e)) for e, d in reply.items()]
        return out

    async def _apply_listed(
        self, o: OutcomeRef, now_ms: int, rules_of: Mapping[str, JoinRules]
    ) -> list[tuple[str, Applied]]:
        """By decision id alone, reading the decision's experiments first (many rules)."""
        assert o.decision_id is not None
        members = await self._redis.smembers(self.experiments_key(o.decision_id))
        results: list[tuple[str, Applied]] = []
        for name in sorted(_text(m) for m in members):
            rules = rules_of.get(name)
            if rules is None:
                continue
            reward = rules.reward_of(o.type, o.value)
            if reward is None:
                results.append((name, "ignored"))
                continue
            code = await self._apply(
                keys=[self.record_key(o.decision_id, name)],
                args=[o.event_id, repr(reward), now_ms, o.ts_ms, *o.where],
            )
            results.append((name, _APPLIED[int(code)]))
        return results

    async def finalize_due(self, now_ms: int, limit: int = 1000) -> int:
        """Finalise every decision whose window has closed (default reward if no outcome).

        Due members are read ``limit`` at a time and finalised by one script call per batch, so
        the sweeper keeps up with thousands of decisions per second.
        """
        done = 0
        while True:
            members = await self._redis.zrangebyscore(
                self.due_key, "-inf", now_ms, start=0, num=limit
            )
            if not members:
                return done
            done += int(
                await self._finalize(
                    keys=[self.due_key, self.stream_key],
                    args=[self._shared + ":dec:", STREAM_MAXLEN, *(str(m) for m in members)],
                )
            )
            # Every member read leaves the due set (finalised, or already gone): no re-reads.
            if len(members) < limit:
                return done


_APPLIED: dict[int, Applied] = {1: "joined", 0: "duplicate", -1: "late", -2: "early", -3: "ignored"}
_BY_DECISION: dict[int, Applied] = {**_APPLIED, 2: "ignored"}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Queued(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A decision waiting for the flusher (not tracked by the cyclic GC: bulk decisions queue
    tens of thousands, and nothing here can form a reference cycle)."""

    record: DecisionRecord
    rules: JoinRules
    end: int
    start: int


def _unit_of(item: _Queued) -> str:
    return item.record.unit_id


def _remember_calls(batch: Sequence[_Queued]) -> Iterator[tuple[bytes, list[str]]]:
    """The script arguments writing ``batch``: (msgpack payload, its decision ids) per call.

    A payload is ``[rules, due, decision, ...]``: ``rules`` lists the distinct reward rules of
    the call (each :func:`packed_rules`, the record's ``ru`` field); ``due`` holds the call's
    due-set entries as one flat ``[window end, "<decision id>|<experiment>", ...]`` list,
    sorted, so that one ``ZADD`` inserts neighbours one after another (random inserts into the
    large due set, one ``ZADD`` per decision, took Redis more time than the record ``HSET``s:
    about half of that goes); each decision is ``[decision_id, unit_id, row, ...]`` with one
    row per experiment: experiment, record JSON, window end, key TTL (ms), the index of its
    rules (1-based, as Lua counts), the window end as a number (for sorting; the script ignores
    it) and the window start, then for a slate its items in slot order.
    ``batch`` is grouped by decision in first-seen order and the groups cut into calls of about
    ``REMEMBER_BATCH`` records; a decision never spans two calls. Each call is encoded when the
    caller asks for it (a generator): a flush that fails on a Redis timeout has encoded only the
    calls it sent, not the whole batch it puts back (under load, re-encoding what had never
    been sent was more than half of the flusher's CPU).
    """
    groups: dict[str, list[_Queued]] = {}
    for item in batch:
        decision_id = item.record.decision_id
        group = groups.get(decision_id)
        if group is None:
            groups[decision_id] = [item]
        else:
            group.append(item)
    part: list[list[_Queued]] = []
    count = 0
    for group in groups.values():
        part.append(group)
        count += len(group)
        if count >= REMEMBER_BATCH:
            yield _remember_call(part)
            part, count = [], 0
    if part:
        yield _remember_call(part)


def _remember_call(part: list[list[_Queued]]) -> tuple[bytes, list[str]]:
    """One call's payload (see :func:`_remember_calls`) and its decision ids."""
    # One C call encodes every record of the call (JSON never contains a raw newline); the
    # bodies travel as msgpack strings (Redis's cmsgpack reads no bin type).
    bodies = iter(
        _encoder.encode_lines([item.record for group in part for item in group])
        .decode()
        .split("\n")
    )
    rule_index: dict[int, int] = {}
    rule_rows: list[str] = []
    # (rules, window end, decision time, window start) -> (rules index, end text, TTL text,
    # start text): few distinct per call (a chunk's decisions share their time; send times
    # take a few dozen ends).
    shared: dict[tuple[int, int, int, int], tuple[int, str, str, str]] = {}
    # Member -> (window end, end text): a member repeated within the call keeps its last end,
    # as successive ZADDs would leave it.
    ends: dict[str, tuple[int, str]] = {}
    decisions: list[list[Any]] = []
    for group in part:
        first = group[0].record
        decision_id = first.decision_id
        out: list[Any] = [decision_id, first.unit_id]
        for item in group:
            record, end = item.record, item.end
            key = (id(item.rules), end, record.decided_ms, item.start)
            known = shared.get(key)
            if known is None:
                rules = item.rules
                index = rule_index.get(id(rules))
                if index is None:
                    rule_rows.append(packed_rules(rules))
                    index = rule_index[id(rules)] = len(rule_rows)
                ttl = max(1, end - record.decided_ms) + RECORD_GRACE_MS
                known = shared[key] = (index, str(end), str(ttl), str(item.start))
            row: tuple[Any, ...] = (
                record.experiment, next(bodies), known[1], known[2], known[0], end, known[3]
            )  # fmt: skip
            if record.slate:
                row = (*row, record.slate_items)
            out.append(row)
            ends[decision_id + "|" + record.experiment] = (end, known[1])
        decisions.append(out)
    # Sorted by (end, end text, member): C comparisons only.
    due: list[str] = []
    for (_, end_text), member in sorted(zip(ends.values(), ends, strict=True)):
        due.append(end_text)
        due.append(member)
    return _packer.encode([rule_rows, due, *decisions]), [d[0] for d in decisions]


def packed_rules(rules: JoinRules) -> str:
    """A record's ``ru`` field: its default reward, clip range and aggregation, in one field
    (``"<default> <lo> <hi> <aggregation>"``; the scripts split it)."""
    return f"{rules.default!r} {rules.lo!r} {rules.hi!r} {rules.aggregation}"


def decode_entry(stream_id: str, fields: Mapping[Any, Any]) -> TrainingExample:
    """Decode one stream entry (fields may be bytes or str)."""

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    def get(name: str) -> Any:
        return fields.get(name, fields.get(name.encode()))

    rewards = get("rs")
    return TrainingExample(
        stream_id=text(stream_id),
        record=_record_decoder.decode(get("rec")),
        reward=float(text(get("r"))),
        joined=text(get("joined")) == "1",
        rewards=[float(r) for r in text(rewards).split(",")] if rewards is not None else None,
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


def _script_text(script: AsyncScript) -> str:
    text = script.script
    return text if isinstance(text, str) else bytes(text).decode()
