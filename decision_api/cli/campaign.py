"""``tailor campaign``: decide an email campaign for a file of recipients, with a progress bar.

For an email system without code of its own: the recipients (CSV or JSON lines with a
``unit_id`` column, optionally ``timezone`` and ``consent``; any other column is request
context) go to the running server's ``POST /v1/decide/batch`` through the SDK, streamed, and
each recipient's answer is printed as one JSON line on stdout, in input order: variants, reasons
and ``send_at`` for send-time placements. A bar on stderr counts the recipients answered (only
when stderr is a terminal). The server is found as ``tailor report`` finds it
(``TAILOR_API_URL``, else ``TAILOR_HOST``/``TAILOR_PORT``); the key (``TAILOR_API_KEY``) needs
the ``ingest`` scope.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import msgspec

from decision_api.cli.reports import _settings, server_url
from sdk import TailorClient
from sdk.results import RecipientResult
from tailor_contract.send_window import LocalHour, SendWindow

__all__ = ["add_campaign_commands", "cmd_campaign", "read_recipients"]

_TRUE = frozenset({"1", "true", "yes", "y"})


def add_campaign_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``campaign`` to the ``tailor`` command's sub-parsers."""
    parser = sub.add_parser(
        "campaign",
        help="decide an email campaign for a file of recipients (JSON lines out)",
        description=(
            "Ask the running server which variant (and, for send-time placements, when to "
            "send) for every recipient of a CSV or JSON-lines file; print one JSON line per "
            "recipient. Needs a key with the ingest scope in TAILOR_API_KEY."
        ),
    )
    parser.add_argument("file", type=Path, help="recipients: .csv or .jsonl with a unit_id column")
    parser.add_argument("--name", required=True, help="the campaign's name (logged with it)")
    parser.add_argument(
        "--placements", required=True, help="comma-separated placements, e.g. subject,send_time"
    )
    parser.add_argument(
        "--window-start", help="send window start, ISO 8601 with a zone (default: in an hour)"
    )
    parser.add_argument("--window-hours", type=float, default=24.0, help="window length (24)")
    parser.add_argument(
        "--default-hour", type=int, default=10, help="local hour for holdout recipients (10)"
    )
    parser.set_defaults(func=cmd_campaign)


def read_recipients(path: Path) -> list[dict[str, Any]]:
    """The recipients of a CSV or JSON-lines file; raises ValueError naming a bad line."""
    text = path.read_text(encoding="utf-8")
    rows: list[dict[str, Any]] = []
    if path.suffix.lower() == ".csv":
        raw_rows: list[dict[str, Any]] = list(csv.DictReader(io.StringIO(text)))
    else:
        raw_rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = msgspec.json.decode(line)
            except msgspec.DecodeError as exc:
                raise ValueError(f"line {number}: not JSON ({exc})") from None
            if not isinstance(item, dict):
                raise ValueError(f"line {number}: must be a JSON object")
            raw_rows.append(item)
    for number, raw in enumerate(raw_rows, start=1):
        unit = raw.pop("unit_id", None)
        if unit in (None, ""):
            raise ValueError(f"recipient {number}: unit_id is missing")
        recipient: dict[str, Any] = {"unit_id": str(unit)}
        zone = raw.pop("timezone", None)
        if zone:
            recipient["timezone"] = str(zone)
        consent = raw.pop("consent", None)
        if consent not in (None, ""):
            recipient["consent"] = str(consent).strip().lower() in _TRUE
        context = {k: v for k, v in raw.items() if v not in (None, "")}
        if context:
            recipient["context"] = context
        rows.append(recipient)
    return rows


def _answers(results: Iterator[RecipientResult], total: int, out: TextIO) -> Iterator[bytes]:
    from tqdm import tqdm

    with tqdm(total=total, desc="recipients", unit="", file=out, disable=not out.isatty()) as bar:
        for result in results:
            line = {
                "unit_id": result.unit_id,
                "decision_id": result.decision_id,
                "fallback": result.fallback,
                "decisions": {
                    p: {
                        "variant": d.variant,
                        "reason": d.reason,
                        "experiment": d.experiment,
                        **({"send_at": d.send_at.isoformat()} if d.send_at else {}),
                    }
                    for p, d in result.decisions.items()
                },
            }
            if result.error is not None:
                line["error"] = str(result.error)
            bar.update(1)
            yield msgspec.json.encode(line)


def cmd_campaign(args: argparse.Namespace) -> int:
    """Decide every recipient of the file through the running server; JSON lines on stdout."""
    import os

    settings = _settings()
    if settings is None:
        return 2
    try:
        recipients = read_recipients(args.file)
        start = (
            datetime.fromisoformat(args.window_start)
            if args.window_start
            else datetime.now().astimezone() + timedelta(hours=1)
        )
        window = SendWindow(start=start, end=start + timedelta(hours=args.window_hours))
        default = LocalHour(hour=args.default_hour)
    except (ValueError, OSError, msgspec.ValidationError) as exc:
        print(f"tailor campaign: {exc}", file=sys.stderr)
        return 2
    placements = [p.strip() for p in args.placements.split(",") if p.strip()]
    url = server_url(os.environ, settings)
    key = os.environ.get("TAILOR_API_KEY") or None
    failed = 0
    with TailorClient(url, key, close_at_exit=False) as client:
        results = client.decide_batch(
            args.name, recipients, placements, send_window=window, default_send_time=default
        )
        for encoded in _answers(results, len(recipients), sys.stderr):
            sys.stdout.buffer.write(encoded + b"\n")
            failed += b'"fallback":true' in encoded
    sys.stdout.flush()
    if failed:
        print(f"tailor campaign: {failed} of {len(recipients)} recipients got the defaults "
              "(see the warnings above)", file=sys.stderr)  # fmt: skip
        return 1
    return 0
