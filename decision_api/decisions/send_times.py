"""Send times for a chunk of bulk recipients: chosen hours, default times, reward-join records.

One :class:`SendTimeGroup` per send-time experiment in a chunk decides all its members at once:

- the recipient's zone turns the campaign's send window into the local hours that can still be
  sent, and each hour into the UTC instant it starts (DST-aware, :mod:`tailor_contract.send_window`;
  tables are shared by every recipient of a zone);
- ``send_time_thompson`` gets each recipient's open/click histogram (168 UTC hour-of-week bins
  in the profile) rolled into local hours as the per-recipient prior, in one vectorised call;
  ``vw_cb`` (VW alone or the default ensemble holding it) sees the history as features (peak
  hour, open count) and chooses among the feasible hours with one ``choose_many`` per zone;
  ``fixed`` picks a feasible hour by hash;
- holdout recipients, and recipients the experiment does not serve, get the campaign's default
  send time (their reason stays ``holdout``, ``no_consent``, ...);
- a learning choice is remembered for the reward join with the window's feasible hours as its
  candidates (the choice indexes them) and a reward window that runs from ``send_at``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from bandits.base import Candidate, Choice
from bandits.send_time.policy import SendTimePolicy
from bandits.send_time.zones import BulkZoneHours, bulk_zone_hours, default_send_at_many
from bandits.spec import candidate_features
from decision_api.decisions.engine import Placed, UnitCall
from decision_api.decisions.hashing import unit_hash_list
from decision_api.learning.runtime import LearningPolicies
from decision_api.profiles.store import UnitProfile
from experiments.cache import Compiled
from tailor_contract.definitions import SendTimeSpec
from tailor_contract.send_window import (
    NO_SEND_AT,
    DefaultSendTime,
    SendWindow,
    hours_in,
    resolve_zone,
)
from tailor_contract.wire import PlacementDecision

HISTORY_TYPES = ("email_open", "email_click")

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class ChunkView(Protocol):
    """What the send-time step reads of a chunk: per unit (same order) its call, zone,
    profile (the empty one without consent) and placement decisions (filled in place)."""

    units: list[UnitCall]
    zones: list[str]
    profiles: list[UnitProfile]
    placed: list[list[Placed]]


def fill_send_times(
    learning: LearningPolicies,
    chunk: ChunkView,
    default: DefaultSendTime | None,
    window: SendWindow,
    rng: np.random.Generator,
) -> None:
    """Fill in send times: chosen hours for pending decisions, default time for the others.

    ``default`` (the campaign's default send time) overrides each experiment's own.
    """
    groups: dict[str, tuple[Compiled, list[tuple[int, int]]]] = {}
    for k, items in enumerate(chunk.placed):
        for j, placed in enumerate(items):
            compiled = placed.compiled
            if compiled is not None and compiled.experiment.kind == "send_time":
                group = groups.get(compiled.experiment.key)
                if group is None:
                    groups[compiled.experiment.key] = (compiled, [(k, j)])
                else:
                    group[1].append((k, j))
    for compiled, members in groups.values():
        SendTimeGroup(learning, compiled, chunk, members, default, window).decide(rng)


class SendTimeGroup:
    """The members of one send-time experiment in a chunk: (unit, placement) pairs."""

    def __init__(
        self,
        learning: LearningPolicies,
        compiled: Compiled,
        chunk: ChunkView,
        members: list[tuple[int, int]],
        default: DefaultSendTime | None,
        window: SendWindow,
    ) -> None:
        self.learning = learning
        self.compiled = compiled
        self.chunk = chunk
        self.members = members
        self.window = window
        timing = compiled.experiment.send_time or SendTimeSpec()
        self.n_hours = hours_in(timing.hours)
        self.table: BulkZoneHours = bulk_zone_hours(
            window, [chunk.zones[k] for k, _ in members], timing.hours
        )
        self.feasible: BoolArray = self.table.feasible_matrix()
        self.defaults: IntArray = default_send_at_many(
            window, default or timing.default, self.table
        )
        self._instants: dict[int, datetime] = {}

    def when(self, instant: int) -> datetime:
        """The aware UTC datetime of a Unix second (few distinct ones per chunk)."""
        found = self._instants.get(instant)
        if found is None:
            found = self._instants[instant] = datetime.fromtimestamp(instant, UTC)
        return found

    def decide(self, rng: np.random.Generator) -> None:
        """Choose hours for the pending members, give the others the default send time."""
        chunk, exp = self.chunk, self.compiled.experiment
        pending = [m for m, (k, j) in enumerate(self.members) if chunk.placed[k][j].pending]
        chosen, propensity, policy_name, version = self._choose_hours(pending, rng)
        send_at = self.table.send_at_of(chosen).tolist()
        chosen_list, propensity_list = chosen.tolist(), propensity.tolist()
        defaults = self.defaults.tolist()
        codes = self.table.codes.tolist()
        reason = "policy" if policy_name != "fixed" else "split"
        learns = policy_name != "fixed"
        window_ms = exp.reward_window_s * 1000
        candidates: dict[int, tuple[list[str], list[int]]] = {}
        for m, (k, j) in enumerate(self.members):
            placed = chunk.placed[k][j]
            answer = placed.answer
            hour = chosen_list[m]
            if placed.pending and hour >= 0:
                variant = exp.variants[hour]
                at = send_at[m]
                placed.answer = PlacementDecision(
                    placement=answer.placement,
                    experiment=exp.key,
                    variant=variant.key,
                    payload=variant.payload,
                    propensity=propensity_list[m],
                    policy=policy_name,
                    reason=reason,
                    model_version=version or None,
                    send_at=self.when(at),
                )
                placed.model_version = version
                placed.pending = False
                if learns:
                    code = codes[m]
                    keys, index_of = candidates.get(code) or self._candidates(code, candidates)
                    unit = chunk.units[k]
                    self.learning.remember(
                        unit.decision_id,
                        self.compiled,
                        unit.unit_id,
                        Choice(
                            index=index_of[hour],
                            key=variant.key,
                            propensity=propensity_list[m],
                            policy=policy_name,
                            model_version=version,
                        ),
                        unit.attributes,
                        unit.now_ms,
                        candidates=keys,
                        window_end_ms=at * 1000 + window_ms,
                        window_start_ms=at * 1000,
                    )
            else:
                at = defaults[m] if defaults[m] != NO_SEND_AT else self.window.start_s
                placed.answer = msgspec.structs.replace(
                    answer,
                    reason="default_send_time" if placed.pending else answer.reason,
                    variant="default",
                    payload={"send_at": "default"},
                    send_at=self.when(at),
                )
                placed.pending = False

    def _candidates(
        self, code: int, cache: dict[int, tuple[list[str], list[int]]]
    ) -> tuple[list[str], list[int]]:
        """The feasible hour keys of a zone's row and each hour's index among them."""
        row = self.table.feasible[code]
        hours = np.flatnonzero(row).tolist()
        keys = [self.compiled.experiment.variants[h].key for h in hours]
        index_of = (np.cumsum(row) - 1).tolist()
        cache[code] = (keys, index_of)
        return keys, index_of

    def _choose_hours(
        self, pending: list[int], rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, str, str]:
        """Hours (-1 = none) and propensities for the pending members, with the policy's name."""
        exp = self.compiled.experiment
        chosen = np.full(len(self.members), -1, dtype=np.int64)
        propensity = np.ones(len(self.members))
        if not pending:
            return chosen, propensity, "fixed", ""
        idx = np.array(pending)
        policy = self.learning.policy(exp.key)
        if isinstance(policy, SendTimePolicy):
            histories = self._local_histories(pending)
            hours, props = policy.choose_hours(histories, self.feasible[idx], rng)
            chosen[idx], propensity[idx] = hours, props
            return chosen, propensity, policy.name, policy.version
        if policy is not None:
            # A contextual policy (vw_cb: VW alone or the ensemble holding it). Members of one
            # zone share their feasible hours: one choose_many per zone. The version logged is
            # the one the choices carry (the ensemble's names its serving member).
            candidates = _hour_candidates(self.compiled)
            by_code: dict[int, list[int]] = {}
            codes = self.table.codes
            for m in pending:
                by_code.setdefault(int(codes[m]), []).append(m)
            version = policy.version
            history = dict(zip(pending, self._history_features(pending), strict=True))
            units, of_member = self.chunk.units, self.members
            for code, members in by_code.items():
                hours_ok = np.flatnonzero(self.table.feasible[code])
                options = [candidates[h] for h in hours_ok.tolist()]
                contexts = [{**units[of_member[m][0]].attributes, **history[m]} for m in members]
                for m, choice in zip(
                    members, policy.choose_many(contexts, options, rng), strict=True
                ):
                    chosen[m], propensity[m] = int(hours_ok[choice.index]), choice.propensity
                    version = choice.model_version
            return chosen, propensity, policy.name, version
        # fixed: uniform over the feasible hours, sticky per unit (hashed in one call)
        positions = unit_hash_list(
            exp.hash_salt, [self.chunk.units[self.members[m][0]].unit_id for m in pending]
        )
        for m, u in zip(pending, positions, strict=True):
            hours_ok = np.flatnonzero(self.feasible[m])
            chosen[m] = int(hours_ok[min(int(u * len(hours_ok)), len(hours_ok) - 1)])
            propensity[m] = 1.0 / len(hours_ok)
        return chosen, propensity, "fixed", ""

    def _weeks(self, pending: Sequence[int]) -> tuple[list[int], FloatArray]:
        """Opens and clicks per UTC hour of week of the pending members that have a history:
        their positions in ``pending`` and their weeks, shape (len(rows), 168).

        A decoded profile's stored cells (``hour_cells``, a few per unit) go into the week
        matrix by index, every history type in one unbuffered add (an open and a click in the
        same hour both count), not its 168 bins per type; a profile built without its cells
        adds its dense bins. Counts are integers: any order of the sums gives the same floats.
        """
        profiles, members = self.chunk.profiles, self.members
        of_pending = [profiles[members[m][0]] for m in pending]
        rows = [r for r, profile in enumerate(of_pending) if profile.hours]
        weeks = np.zeros((len(rows), 168))
        if not rows:
            return rows, weeks
        cell_rows: list[int] = []
        cell_hours: list[int] = []
        cell_counts: list[int] = []
        dense: list[int] = []  # rows of profiles built without their cells
        for i, r in enumerate(rows):
            cells = of_pending[r].hour_cells
            if not cells:
                dense.append(i)
                continue
            for cell_type, hour, count in cells:
                if cell_type in HISTORY_TYPES:
                    cell_rows.append(i)
                    cell_hours.append(hour)
                    cell_counts.append(count)
        if cell_rows:
            np.add.at(weeks, (cell_rows, cell_hours), np.array(cell_counts, dtype=np.float64))
        for typ in HISTORY_TYPES:
            at = [i for i in dense if of_pending[rows[i]].hours.get(typ)]
            if at:
                counts = [of_pending[rows[i]].hours[typ] for i in at]
                weeks[at] += np.array(counts, dtype=np.float64)
        return rows, weeks

    def _history_features(self, pending: Sequence[int]) -> list[dict[str, Any]]:
        """What a contextual policy sees of each pending member's history (the features of
        :func:`history_features`), computed for all of them in one vectorised pass."""
        out: list[dict[str, Any]] = [_NO_HISTORY] * len(pending)
        rows, weeks = self._weeks(pending)
        if not rows:
            return out
        totals = weeks.sum(axis=1).tolist()
        peaks = weeks.reshape(-1, 7, 24).sum(axis=1).argmax(axis=1).tolist()
        for r, total, peak in zip(rows, totals, peaks, strict=True):
            if total:
                out[r] = {"email_peak_hour_utc": str(peak), "email_opens_clicks": total}
        return out

    def _local_histories(self, pending: Sequence[int]) -> FloatArray:
        """Opens and clicks per local hour (of day or week) of the pending members, (n, H).

        UTC histograms (:meth:`_weeks`) are rolled by each zone's offset at the window start
        (one offset per zone of the group's table, one gather for every member:
        ``local[h] = week[h - offset]``).
        """
        out = np.zeros((len(pending), self.n_hours))
        rows, weeks = self._weeks(pending)
        if not rows:
            return out
        row_index = np.array(rows)
        offsets = self._zone_offsets()[self.table.codes[np.asarray(pending)[row_index]]]
        local = np.take_along_axis(weeks, (_WEEK - offsets[:, None]) % 168, axis=1)
        out[row_index] = local if self.n_hours == 168 else local.reshape(-1, 7, 24).sum(axis=1)
        return out

    def _zone_offsets(self) -> IntArray:
        """Each table row's UTC offset in whole hours at the window start (0 for the row of
        invalid zones, which has no feasible hour)."""
        offsets = [_utc_offset_hours(zone, self.window) for zone in self.table.zones]
        return np.array([*offsets, 0], dtype=np.int64)


_WEEK = np.arange(168)


_OFFSETS: dict[tuple[str, int], int] = {}


def _utc_offset_hours(zone: str, window: SendWindow) -> int:
    """The zone's UTC offset at the window start, in whole hours (rounded)."""
    key = (zone, window.start_s)
    found = _OFFSETS.get(key)
    if found is None:
        if len(_OFFSETS) > 65_536:
            _OFFSETS.clear()
        delta = resolve_zone(zone).utcoffset(datetime.fromtimestamp(window.start_s, UTC))
        found = _OFFSETS[key] = round(delta.total_seconds() / 3600) if delta else 0
    return found


_CANDIDATES: dict[int, tuple[Compiled, list[Candidate]]] = {}


def _hour_candidates(compiled: Compiled) -> list[Candidate]:
    """The experiment's hour actions with their features (built once per definition)."""
    known = _CANDIDATES.get(id(compiled))
    if known is None or known[0] is not compiled:
        if len(_CANDIDATES) > 256:
            _CANDIDATES.clear()
        candidates = [
            Candidate(key=v.key, features=candidate_features(v.payload, v.features))
            for v in compiled.experiment.variants
        ]
        known = _CANDIDATES[id(compiled)] = (compiled, candidates)
    return known[1]


_NO_HISTORY: dict[str, Any] = {"email_history": "none"}


def history_features(week: FloatArray) -> dict[str, Any]:
    """The features a contextual send-time policy sees of one UTC hour-of-week history (168
    bins): the peak hour of day (UTC) and the count of opens and clicks, or ``email_history:
    none`` without any."""
    total = float(week.sum())
    if total == 0:
        return dict(_NO_HISTORY)
    day = week.reshape(7, 24).sum(axis=0)
    return {"email_peak_hour_utc": str(int(day.argmax())), "email_opens_clicks": total}
