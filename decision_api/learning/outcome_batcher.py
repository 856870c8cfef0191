"""Coalesce the reward-join work of concurrent single outcomes into shared Redis round trips.

Every click reported on its own (``POST /v1/outcomes``) needs one script call in the reward
join; under load many are in flight at once. :class:`OutcomeBatcher` collects them and applies
them together with :meth:`~bandits.join.RewardJoin.apply_outcomes` (one pipeline), resolving
each request's future with its own results; when batches are sent is
:class:`~decision_api.coalescing.Coalescer`'s policy, as for profile reads.

A batch is applied at the arrival time of its first outcome (``now_ms``, which decides
lateness), with the join rules of that moment: the others arrived at most one round trip later.
"""

from __future__ import annotations

from collections.abc import Mapping

from bandits.join import Applied, JoinRules, OutcomeRef, RewardJoin
from decision_api.coalescing import Coalescer

_Results = list[tuple[str, Applied]]
_State = tuple[int, Mapping[str, JoinRules]]


class OutcomeBatcher(Coalescer[OutcomeRef, _Results, _State]):
    """``apply(outcome)`` that shares the join's Redis round trips with concurrent callers."""

    def __init__(self, join: RewardJoin, max_batch: int = 256, max_inflight: int = 1) -> None:
        async def run(outcomes: list[OutcomeRef], state: _State) -> list[_Results]:
            now_ms, rules_of = state
            return await join.apply_outcomes(outcomes, now_ms=now_ms, rules_of=rules_of)

        super().__init__(run, initial=(0, {}), max_batch=max_batch, max_inflight=max_inflight)

    async def apply(
        self, outcome: OutcomeRef, now_ms: int, rules_of: Mapping[str, JoinRules]
    ) -> _Results:
        """The outcome's (experiment, result) list; raises ``RedisError`` when Redis fails."""
        return await self.submit(outcome, (now_ms, rules_of))
