"""``tailor warm-start``: teach a learning experiment's model its logged history, with progress.

Asks the running server (found as ``tailor report`` finds it; the key in ``TAILOR_API_KEY``
needs the ``admin`` scope) to warm-start the model from the event log, and prints the new
model's summary as JSON. A warm start over a long history takes a while: on a terminal a bar
on stderr shows that it is running and for how long.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import TextIO

import httpx

from decision_api.cli.reports import _problem, _settings, _unreachable, server_url

__all__ = ["add_model_commands", "cmd_warm_start"]


def add_model_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``warm-start`` to the ``tailor`` command's sub-parsers."""
    parser = sub.add_parser(
        "warm-start",
        help="teach a learning experiment's model its logged history",
        description=(
            "Ask the running server to train a fresh model of a learning experiment on the "
            "decisions and outcomes in its event log (native or imported) and publish it. Needs "
            "a key with the admin scope in TAILOR_API_KEY."
        ),
    )
    parser.add_argument("experiment", help="the experiment's key")
    parser.set_defaults(func=cmd_warm_start)


def _waiting(done: threading.Event, what: str, out: TextIO) -> None:
    """A bar without a total, ticking every 0.2 s until ``done`` (only on a terminal)."""
    from tqdm import tqdm

    with tqdm(total=None, desc=what, unit="", file=out, disable=not out.isatty(),
              bar_format="{desc}: {elapsed}") as bar:  # fmt: skip
        while not done.wait(0.2):
            bar.update(1)


def cmd_warm_start(args: argparse.Namespace) -> int:
    """Warm-start one experiment's model through the server; print the model's summary."""
    settings = _settings()
    if settings is None:
        return 2
    url = server_url(os.environ, settings)
    key = os.environ.get("TAILOR_API_KEY", "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    done = threading.Event()
    ticker = threading.Thread(
        target=_waiting, args=(done, f"warm start of {args.experiment}", sys.stderr), daemon=True
    )
    ticker.start()
    try:
        answer = httpx.post(
            f"{url}/v1/experiments/{args.experiment}/model/warm-start",
            headers=headers,
            timeout=3600,
        )
    except httpx.TransportError as exc:
        print(_unreachable(url, exc), file=sys.stderr)
        return 1
    finally:
        done.set()
        ticker.join()
    if answer.status_code != 200:
        print(f"tailor warm-start: {_problem(answer)}", file=sys.stderr)
        return 1
    print(answer.text)
    return 0
