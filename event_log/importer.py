"""Import logged decisions from another system into the event log, all or nothing.

A file (CSV, Parquet or JSON lines) holds one logged decision per row:

==================  ========  ==================================================================
column              required  meaning
==================  ========  ==================================================================
``unit_id``         yes       who saw it: 1-256 characters, no control characters or braces
                              (the rule of the HTTP API, so the unit can be exported and erased)
``ts``              yes       when: ISO 8601 (UTC unless zoned), or epoch seconds (ms above 1e11),
                              from 2000-01-01 to an hour from now (outcome times too)
``variant``         yes       the variant shown — one of the experiment's variant keys
``propensity``      yes       the probability the logging policy gave it, in (0, 1]
``decision_id``     no        the original id (default: derived from the import and the row)
``context``         no        features at decision time: an object (or its JSON text)
``context.<name>``  no        one feature per column (wins over ``context``)
``outcomes``        no        a list (or its JSON text) of ``{"type", "value", "ts"}``;
                              ``value`` defaults to 1, ``ts`` to the decision's
``outcome.<type>``  no        shorthand: an outcome of ``<type>`` with this value, at ``ts``
==================  ========  ==================================================================

An ``outcome.<type>`` column whose values are all 0 or 1 is a flag: 1 is an outcome, 0 is *no*
outcome (a 0/1 ``outcome.click`` column used to make every row a click). A type named in
``zero_outcomes`` keeps its zeros as outcomes of value 0; columns with other values (revenue)
keep them too. A flag column that is 1 on every row is imported but warned about in the
summary's ``warnings``: every decision then counts as that outcome.

Every row is validated first (`validate_file`, which a caller creating the experiment from the
file runs *before* creating it, so a rejected file creates nothing); one bad row and nothing is
written (`ImportRejected` lists the
first 100 problems, with row numbers counted from 1, each naming its field). Rows become
exposures with policy
``imported`` (or the caller's name), reason ``policy`` and their propensity — so reports and
off-policy evaluation treat them like native traffic — and outcomes tagged with the experiment.
Event ids derive from the file's content: importing the same file again changes nothing (insert
tokens drop the replayed batches). Rows are inserted in time order, in blocks of at most
``BATCH_ROWS`` rows over at most ``MAX_MONTHS_PER_INSERT`` months (the tables are partitioned by
month, and ClickHouse refuses an insert over more than 100 partitions), so a history of any
length loads. Should an insert fail midway, the rows already written are deleted again before
the error is raised.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from event_log.rows import Exposure, Outcome, Table, stringify
from event_log.sql import EXPOSURE_COLUMNS, OUTCOME_COLUMNS
from event_log.store import EventLog
from tailor_contract.definitions import KEY_PATTERN, Experiment, ExperimentSpec
from tailor_contract.errors import EventLogUnavailable
from tailor_contract.wire import UNIT_ID_PATTERN

__all__ = [
    "ImportFormat",
    "ImportRejected",
    "ImportSummary",
    "LoggedDecision",
    "detect_format",
    "draft_experiment",
    "flag_columns",
    "import_decisions",
    "infer_spec",
    "read_rows",
    "validate_file",
    "validate_rows",
]

ImportFormat = Literal["csv", "parquet", "jsonl"]
MAX_ERRORS = 100
BATCH_ROWS = 50_000
MAX_MONTHS_PER_INSERT = 90
MAX_UNIT_ID = 256
EARLIEST_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)
MAX_LEAD_MS = 3600 * 1000
_UNIT_ID = re.compile(UNIT_ID_PATTERN)
_NAMESPACE = uuid.UUID("6c1f8f5e-4c55-4a9b-9d3e-2a1b7d0c9e11")
_json = msgspec.json.Decoder()
_EXTENSIONS: dict[str, ImportFormat] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


class ImportRejected(ValueError):
    """The file has invalid rows; nothing was written."""

    def __init__(self, errors: Sequence[str], total: int) -> None:
        shown = "\n".join(errors)
        more = f"\n... and {total - len(errors)} more" if total > len(errors) else ""
        super().__init__(f"{total} invalid row(s), nothing imported:\n{shown}{more}")
        self.errors = list(errors)
        self.total = total


class LoggedOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """Something the unit did after the decision."""

    type: str
    value: float
    ts_ms: int


class LoggedDecision(msgspec.Struct, frozen=True, kw_only=True):
    """One validated row."""

    row: int
    unit_id: str
    ts_ms: int
    variant: str
    propensity: float
    decision_id: str
    context: dict[str, str]
    outcomes: list[LoggedOutcome]


class ImportSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What an import wrote (or found already written)."""

    experiment: str
    import_id: str
    decisions: int
    outcomes: int
    variants: dict[str, int]
    already_imported: bool = False
    warnings: tuple[str, ...] = ()


def detect_format(path: Path) -> ImportFormat:
    """The format a file name implies (``.csv``, ``.parquet``/``.pq``, ``.jsonl``/``.ndjson``).

    Raises:
        ValueError: for any other extension.
    """
    found = _EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise ValueError(f"cannot tell the format of {path.name}: use csv, parquet or jsonl")
    return found


def read_rows(data: bytes, fmt: ImportFormat) -> list[dict[str, Any]]:
    """The file's rows as dictionaries (CSV cells stay strings, so ids keep leading zeros).

    Raises:
        ValueError: when the bytes are not a readable file of that format.
    """
    # pyarrow is imported here, when a file is read: it adds about 57 MB to the RSS of every
    # process that imports it (each serving worker, the learner, the event-log owner), and only
    # an import reads files.
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.csv as pa_csv  # type: ignore[import-untyped]
    import pyarrow.json as pa_json  # type: ignore[import-untyped]
    import pyarrow.parquet as pa_parquet  # type: ignore[import-untyped]

    source = pa.BufferReader(data)
    try:
        if fmt == "csv":
            # Every column is read as text (named from the header): inferring types first and
            # casting back would turn a unit id "007" into "7".
            first_line = data[: data.find(b"\n") + 1 or None].decode("utf-8-sig", "replace")
            header = next(csv.reader(io.StringIO(first_line)), [])
            table = pa_csv.read_csv(
                source,
                convert_options=pa_csv.ConvertOptions(
                    column_types={name: pa.string() for name in header},
                    strings_can_be_null=True,
                    auto_dict_encode=False,
                ),
                read_options=pa_csv.ReadOptions(autogenerate_column_names=False),
            )
        elif fmt == "parquet":
            table = pa_parquet.read_table(source)
        else:
            table = pa_json.read_json(source)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise ValueError(f"cannot read the file as {fmt}: {exc}") from exc
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def _ts_ms(value: Any) -> int:
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError("is not finite")
        return int(value * 1000) if abs(value) < 1e11 else int(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            return _ts_ms(float(text))
        except ValueError:
            pass
        try:
            return _ts_ms(datetime.fromisoformat(text))
        except ValueError:
            raise ValueError(f"{text!r} is not an ISO 8601 time or epoch seconds") from None
    raise ValueError("is missing")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or value is None or value == "":
        raise ValueError(f"{name} is missing")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} {value!r} is not finite")
    return number


def _as_list(value: Any, name: str) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = _json.decode(value)
        except msgspec.DecodeError:
            raise ValueError(f"{name} is not valid JSON") from None
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list")
    return value


def _context(raw: Mapping[str, Any]) -> dict[str, str]:
    base = raw.get("context")
    if isinstance(base, str) and base:
        try:
            base = _json.decode(base)
        except msgspec.DecodeError:
            raise ValueError("context is not valid JSON") from None
    if base is not None and base != "" and not isinstance(base, dict):
        raise ValueError("context must be an object")
    merged: dict[str, Any] = dict(base or {})
    for name, value in raw.items():
        if name.startswith("context.") and value is not None and value != "":
            merged[name[len("context.") :]] = value
    for name in merged:
        if not 1 <= len(name) <= 64:
            raise ValueError(f"context attribute {name!r} must have 1 to 64 characters")
    return stringify({k: v for k, v in merged.items() if v is not None})


def _check_time(ts_ms: int, now_ms: int, name: str) -> None:
    """Refuse a time outside [2000-01-01, now + 1 h] (``name`` is the field reported)."""
    if EARLIEST_MS <= ts_ms <= now_ms + MAX_LEAD_MS:
        return
    try:
        when = datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        when = f"{ts_ms} ms"
    raise ValueError(f"{name} {when} must be from 2000-01-01 to an hour from now")


def _flag_value(value: Any) -> float | None:
    """0.0 or 1.0 when the cell is a 0/1 number (or its text), else None."""
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number in (0.0, 1.0) else None


def flag_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """``outcome.<type>`` columns whose non-empty cells are all 0 or 1, with their count of 1s.

    Types only (the ``outcome.`` prefix removed); a column with no non-empty cell is left out.
    """
    ones: dict[str, int] = {}
    other: set[str] = set()
    for raw in rows:
        for name, value in raw.items():
            if not name.startswith("outcome.") or value is None or value == "":
                continue
            kind = name[len("outcome.") :]
            flag = _flag_value(value)
            if flag is None:
                other.add(kind)
            else:
                ones[kind] = ones.get(kind, 0) + int(flag)
    return {k: v for k, v in ones.items() if k not in other}


def _outcomes(
    raw: Mapping[str, Any], ts_ms: int, now_ms: int, skip_zero: frozenset[str] = frozenset()
) -> list[LoggedOutcome]:
    out = []
    for i, item in enumerate(_as_list(raw.get("outcomes"), "outcomes")):
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise ValueError(f"outcomes[{i}] must be an object with a string type")
        value = 1.0 if item.get("value") is None else _number(item["value"], f"outcomes[{i}].value")
        when = ts_ms if item.get("ts") is None else _ts_ms(item["ts"])
        _check_time(when, now_ms, f"outcomes[{i}].ts")
        out.append(LoggedOutcome(type=item["type"], value=value, ts_ms=when))
    for name, value in raw.items():
        if name.startswith("outcome.") and value is not None and value != "":
            kind = name[len("outcome.") :]
            number = _number(value, name)
            if number == 0.0 and kind in skip_zero:
                continue
            out.append(LoggedOutcome(type=kind, value=number, ts_ms=ts_ms))
    for o in out:
        if not 1 <= len(o.type) <= 40 or not o.type.replace("_", "").isalnum():
            raise ValueError(f"outcome type {o.type!r} must be 1-40 letters, digits or _")
        if o.ts_ms < ts_ms:
            raise ValueError(f"outcome {o.type!r} happens before its decision")
    return out


def _unit_id(raw: Mapping[str, Any]) -> str:
    unit = raw.get("unit_id")
    unit_id = "" if unit is None else str(unit).strip()
    if not unit_id or len(unit_id) > MAX_UNIT_ID:
        raise ValueError(f"unit_id must be 1 to {MAX_UNIT_ID} characters")
    if _UNIT_ID.search(unit_id) is None:
        raise ValueError(
            f"unit_id {unit_id!r} must not contain control characters or braces "
            "(the API could not export or erase that unit)"
        )
    return unit_id


def _decision(
    raw: Mapping[str, Any],
    row: int,
    experiment: Experiment,
    import_id: str,
    now_ms: int,
    skip_zero: frozenset[str] = frozenset(),
) -> LoggedDecision:
    unit_id = _unit_id(raw)
    try:
        ts_ms = _ts_ms(raw.get("ts"))
    except ValueError as exc:
        raise ValueError(f"ts {exc}") from None
    _check_time(ts_ms, now_ms, "ts")
    variant = "" if raw.get("variant") is None else str(raw["variant"])
    keys = [v.key for v in experiment.variants]
    if variant not in keys:
        raise ValueError(f"variant {variant!r} is not one of {keys}")
    propensity = _number(raw.get("propensity"), "propensity")
    if not 0.0 < propensity <= 1.0:
        raise ValueError(f"propensity {propensity} must be in (0, 1]")
    given = raw.get("decision_id")
    decision_id = str(given) if given not in (None, "") else _uid(import_id, row, "d").hex
    if len(decision_id) > 128:
        raise ValueError("decision_id must be at most 128 characters")
    return LoggedDecision(
        row=row,
        unit_id=unit_id,
        ts_ms=ts_ms,
        variant=variant,
        propensity=propensity,
        decision_id=decision_id,
        context=_context(raw),
        outcomes=_outcomes(raw, ts_ms, now_ms, skip_zero),
    )


def _uid(import_id: str, row: int, what: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{import_id}:{row}:{what}")


def validate_rows(
    rows: Sequence[Mapping[str, Any]],
    experiment: Experiment,
    import_id: str,
    now_ms: int | None = None,
    *,
    zero_outcomes: Sequence[str] = (),
) -> list[LoggedDecision]:
    """Every row checked (times against ``now_ms``, the clock by default); the decisions when
    all are valid.

    A 0 in a 0/1 ``outcome.<type>`` column is no outcome unless the type is in
    ``zero_outcomes``.

    Raises:
        ImportRejected: listing the invalid rows (numbered from 1).
    """
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    skip_zero = frozenset(flag_columns(rows)) - frozenset(zero_outcomes)
    decisions: list[LoggedDecision] = []
    errors: list[str] = []
    bad = 0
    for i, raw in enumerate(rows, start=1):
        try:
            decisions.append(_decision(raw, i, experiment, import_id, now, skip_zero))
        except ValueError as exc:
            bad += 1
            if len(errors) < MAX_ERRORS:
                errors.append(f"row {i}: {exc}")
    if not rows:
        raise ImportRejected(["the file has no rows"], 1)
    if bad:
        raise ImportRejected(errors, bad)
    return decisions


def _rows(
    decisions: Sequence[LoggedDecision], experiment: Experiment, import_id: str, policy: str
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    exposures, outcomes = [], []
    for d in decisions:
        exposures.append(
            Exposure(
                event_id=_uid(import_id, d.row, "e"),
                decision_id=d.decision_id,
                ts_ms=d.ts_ms,
                unit_id=d.unit_id,
                experiment=experiment.key,
                experiment_version=experiment.version,
                placement=experiment.placement,
                variant=d.variant,
                propensity=d.propensity,
                policy=policy,
                policy_version=import_id,
                reason="policy",
                holdout=False,
                context=d.context,
            ).row()
        )
        for k, o in enumerate(d.outcomes):
            outcomes.append(
                Outcome(
                    event_id=_uid(import_id, d.row, f"o{k}"),
                    ts_ms=o.ts_ms,
                    decision_id=d.decision_id,
                    unit_id=d.unit_id,
                    experiment=experiment.key,
                    type=o.type,
                    value=o.value,
                    properties={"import": import_id},
                ).row()
            )
    return exposures, outcomes


_ALREADY = """
SELECT count() FROM exposures
WHERE experiment = {experiment:String} AND policy_version = {import_id:String}
"""
_UNDO_EXPOSURES = """
ALTER TABLE exposures DELETE
WHERE experiment = {experiment:String} AND policy_version = {import_id:String}
SETTINGS mutations_sync = 2
"""
_UNDO_OUTCOMES = """
ALTER TABLE outcomes DELETE WHERE properties['import'] = {import_id:String}
SETTINGS mutations_sync = 2
"""


def _import_id(experiment: Experiment, data: bytes) -> str:
    digest = hashlib.sha256(experiment.key.encode() + b"\0" + data).hexdigest()
    return "import:" + digest[:24]


def _flag_warnings(rows: Sequence[Mapping[str, Any]], zero_outcomes: Sequence[str]) -> list[str]:
    out = []
    for kind, ones in flag_columns(rows).items():
        if kind in zero_outcomes:
            continue
        filled = sum(1 for raw in rows if raw.get(f"outcome.{kind}") not in (None, ""))
        if ones == filled == len(rows) and len(rows) > 1:
            out.append(
                f"outcome.{kind} is 1 on every one of the {len(rows)} rows: every decision "
                f"counts as a {kind} — check that this is the column you meant"
            )
    return out


def draft_experiment(spec: ExperimentSpec) -> Experiment:
    """The draft an experiment store would create from ``spec`` (version 1), without storing it:
    to validate a file against the experiment it would create."""
    spec = spec.normalised()
    return Experiment(**{f: getattr(spec, f) for f in ExperimentSpec.__struct_fields__})


def validate_file(
    experiment: Experiment,
    data: bytes,
    fmt: ImportFormat,
    *,
    zero_outcomes: Sequence[str] = (),
) -> list[LoggedDecision]:
    """Read and validate a whole file against ``experiment`` without writing anything.

    Raises:
        ValueError: when the file cannot be read.
        ImportRejected: when any row is invalid.
    """
    rows = read_rows(data, fmt)
    return validate_rows(
        rows, experiment, _import_id(experiment, data), zero_outcomes=zero_outcomes
    )


def import_decisions(
    event_log: EventLog,
    experiment: Experiment,
    data: bytes,
    fmt: ImportFormat,
    *,
    policy: str = "imported",
    zero_outcomes: Sequence[str] = (),
) -> ImportSummary:
    """Validate a file of logged decisions and write them to the event log, all or nothing.

    A 0 in a 0/1 ``outcome.<type>`` column is no outcome unless the type is in
    ``zero_outcomes``; a 0/1 column that is 1 on every row is warned about.

    Raises:
        ValueError: when the file cannot be read or the policy name is not a key.
        ImportRejected: when any row is invalid (nothing written).
        EventLogUnavailable: when writing failed (what was written has been removed).
    """
    if re.fullmatch(KEY_PATTERN, policy) is None:
        raise ValueError(f"policy {policy!r} must match {KEY_PATTERN}")
    import_id = _import_id(experiment, data)
    rows = read_rows(data, fmt)
    decisions = validate_rows(rows, experiment, import_id, zero_outcomes=zero_outcomes)
    variants: dict[str, int] = {}
    for d in decisions:
        variants[d.variant] = variants.get(d.variant, 0) + 1
    params = {"experiment": experiment.key, "import_id": import_id}
    n_outcomes = sum(len(d.outcomes) for d in decisions)
    summary = ImportSummary(
        experiment=experiment.key,
        import_id=import_id,
        decisions=len(decisions),
        outcomes=n_outcomes,
        variants=variants,
        warnings=tuple(_flag_warnings(rows, zero_outcomes)),
    )
    if int(event_log.query(_ALREADY, params)[0][0]) >= len(decisions):
        return msgspec.structs.replace(summary, already_imported=True)
    exposures, outcomes = _rows(decisions, experiment, import_id, policy)
    batches: list[tuple[Table, list[tuple[object, ...]]]] = [
        ("exposures", exposures),
        ("outcomes", outcomes),
    ]
    try:
        for table, table_rows in batches:
            for index, block in enumerate(_blocks(table_rows, TS_COLUMN[table])):
                event_log.insert(table, block, f"{import_id}:{table}:b{index}")
    except EventLogUnavailable as exc:
        _undo(event_log, params, exc)
        raise
    return summary


TS_COLUMN: dict[Table, int] = {
    "exposures": EXPOSURE_COLUMNS.index("ts"),
    "outcomes": OUTCOME_COLUMNS.index("ts"),
}


def _month(ts_ms: object) -> int:
    moment = datetime.fromtimestamp(int(ts_ms) / 1000, UTC)  # type: ignore[call-overload]
    return moment.year * 12 + moment.month


def _blocks(rows: Sequence[tuple[object, ...]], ts_column: int) -> list[list[tuple[object, ...]]]:
    """Rows in time order, cut into inserts of at most ``BATCH_ROWS`` rows over at most
    ``MAX_MONTHS_PER_INSERT`` months (deterministic: the same file gives the same blocks)."""
    blocks: list[list[tuple[object, ...]]] = []
    block: list[tuple[object, ...]] = []
    months: set[int] = set()
    for row in sorted(rows, key=lambda r: r[ts_column]):  # type: ignore[arg-type,return-value]
        month = _month(row[ts_column])
        new_month = month not in months
        if block and (
            len(block) >= BATCH_ROWS or (new_month and len(months) >= MAX_MONTHS_PER_INSERT)
        ):
            blocks.append(block)
            block, months = [], set()
        block.append(row)
        months.add(month)
    if block:
        blocks.append(block)
    return blocks


def _undo(event_log: EventLog, params: dict[str, str], cause: EventLogUnavailable) -> None:
    """Remove a failed import's rows; if even that fails, say how to finish by hand."""
    try:
        event_log.command(_UNDO_EXPOSURES, params)
        event_log.command(_UNDO_OUTCOMES, params)
    except EventLogUnavailable as undo:
        raise EventLogUnavailable(
            f"import {params['import_id']} failed ({cause}) and its partial rows could not be "
            f"removed ({undo}): run the same import again once the event log is back — it "
            "completes idempotently"
        ) from cause


def infer_spec(
    rows: Sequence[Mapping[str, Any]],
    key: str,
    *,
    placement: str | None = None,
    default_variant: str | None = None,
    primary_metric: str | None = None,
) -> ExperimentSpec:
    """A draft experiment for ``tailor import --create``: variants are the file's ``variant``
    values (first seen first, equal weights), the default variant the first of them unless
    named, the primary metric the most frequent outcome type unless named.

    Raises:
        ValueError: when the file names no variant, or the result is not a valid definition.
    """
    variants: list[str] = []
    types: dict[str, int] = {}
    for raw in rows:
        v = raw.get("variant")
        if v not in (None, "") and str(v) not in variants:
            variants.append(str(v))
        for name, value in raw.items():
            if name.startswith("outcome.") and value not in (None, ""):
                t = name[len("outcome.") :]
                types[t] = types.get(t, 0) + 1
        try:
            listed = _as_list(raw.get("outcomes"), "outcomes")
        except ValueError:
            listed = []
        for item in listed:
            if isinstance(item, dict) and isinstance(item.get("type"), str):
                types[item["type"]] = types.get(item["type"], 0) + 1
    if not variants:
        raise ValueError("the file names no variant to create the experiment with")
    metric = primary_metric or (max(types, key=lambda t: types[t]) if types else "conversion")
    try:
        return msgspec.convert(
            {
                "key": key,
                "placement": placement or key,
                "variants": [{"key": v} for v in variants],
                "default_variant": default_variant or variants[0],
                "primary_metric": metric,
                "hypothesis": "imported history",
            },
            ExperimentSpec,
        )
    except msgspec.ValidationError as exc:
        raise ValueError(f"cannot create {key!r} from the file: {exc}") from exc
