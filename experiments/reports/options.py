"""Report options from what a person types: query parameters or command-line flags.

``from`` / ``to`` take an ISO 8601 date (``2024-05-01``, a whole UTC day) or date-time
(``2024-05-01T12:00:00Z``; no zone means UTC); ``to`` is exclusive, and a bare date as ``to``
includes that whole day. ``metric`` may repeat. ``correction`` is ``holm`` or ``bh``.
``off_policy`` forces off-policy estimates on or off (default: on for learning policies).
``mde`` (relative, 0.1 = +10%) and ``power`` set what the report's ``plan`` section plans for.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec

from experiments.reports.results import ReportOptions

__all__ = ["ReportOptionsError", "parse_time_ms", "report_options"]

_CORRECTIONS = {
    "holm": "holm",
    "bh": "benjamini_hochberg",
    "benjamini_hochberg": "benjamini_hochberg",
}


class ReportOptionsError(ValueError):
    """A report parameter that cannot be used; ``field`` names it (``$.from``)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def parse_time_ms(text: str, *, end: bool = False) -> int:
    """Epoch milliseconds of an ISO date or date-time (UTC unless a zone is given).

    A bare date is its midnight, or — with ``end`` — the next midnight (so the day is included).

    Raises:
        ValueError: when the text is not an ISO 8601 date or date-time.
    """
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            if end:
                moment += timedelta(days=1)
        else:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an ISO 8601 date or date-time") from exc
    except OverflowError as exc:  # the day after 9999-12-31
        raise ValueError(f"{text!r} is past the last representable date") from exc
    return int(moment.timestamp() * 1000)


def report_options(
    *,
    start: str | None = None,
    end: str | None = None,
    segment: str | None = None,
    metrics: Sequence[str] = (),
    level: float | None = None,
    correction: str | None = None,
    horizon_units: int | None = None,
    window_s: int | None = None,
    pre_period_s: int | None = None,
    off_policy: bool | None = None,
    mde: float | None = None,
    power: float | None = None,
    cap_percentile: float | None = None,
) -> ReportOptions:
    """Validated options; unset parameters keep their defaults.

    Raises:
        ReportOptionsError: naming the parameter that is wrong.
    """
    raw: dict[str, Any] = {}
    for field, text, is_end in (("from", start, False), ("to", end, True)):
        if text:
            try:
                raw["start_ms" if field == "from" else "end_ms"] = parse_time_ms(text, end=is_end)
            except ValueError as exc:
                raise ReportOptionsError(str(exc), f"$.{field}") from exc
    if segment:
        raw["segment"] = segment
    if metrics:
        raw["metrics"] = list(metrics)
    if correction is not None:
        if correction not in _CORRECTIONS:
            raise ReportOptionsError("correction must be 'holm' or 'bh'", "$.correction")
        raw["correction"] = _CORRECTIONS[correction]
    for name, value in (
        ("level", level),
        ("horizon_units", horizon_units),
        ("window_s", window_s),
        ("pre_period_s", pre_period_s),
        ("off_policy", off_policy),
        ("mde", mde),
        ("power", power),
        ("cap_percentile", cap_percentile),
    ):
        if value is not None:
            raw[name] = value
    try:
        return msgspec.convert(raw, ReportOptions)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = "$"
        for name, wire in (
            ("start_ms", "from"),
            ("end_ms", "to"),
            ("metrics", "metric"),
            ("segment", "segment"),
            ("level", "level"),
            ("horizon_units", "horizon_units"),
            ("window_s", "window_s"),
            ("pre_period_s", "pre_period_s"),
            ("mde", "mde"),
            ("power", "power"),
            ("cap_percentile", "cap_percentile"),
        ):
            if f"$.{name}" in message or message.startswith(wire):
                field = f"$.{wire}"
                break
        if message.startswith("to:"):
            field = "$.to"
        raise ReportOptionsError(message, field) from exc
