"""``tailor demo``: registered through the ``tailor.commands`` entry point, so the server's CLI
lists it without importing the demo (which sits above every other package)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_demo_command"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the simulated shop through a fresh server and print truth vs findings."""
    from demo import DemoOptions, run_demo

    options = DemoOptions(
        fast=args.fast,
        days=args.days,
        port=args.port,
        serve=not args.no_serve,
        seed=args.seed,
        data_dir=Path(args.data_dir),
    )
    return run_demo(options)


def add_demo_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to the ``tailor`` command's sub-parsers."""
    demo = sub.add_parser(
        "demo",
        help="start a server, simulate a shop through it and print what the reports found "
        "next to the simulated truth",
        description="Start a server on the embedded defaults in ./data/demo (wiped at start), "
        "define a shop's experiments (hero A/B test, vw_cb carousel, capped offer, newsletter "
        "subject line and send time), simulate a few days of shoppers and newsletter readers "
        "with known behaviour through the API, and print the reports' findings next to the "
        "simulated truth. About 1-2 minutes; then the reports stay served until Ctrl-C.",
    )
    demo.add_argument("--fast", action="store_true", help="a few seconds: tiny shop, one day")
    demo.add_argument("--days", type=_positive, help="simulated days (default 3; --fast 1)")
    demo.add_argument("--port", type=int, help="port (default 8000 if free, else any; 0: any)")
    demo.add_argument(
        "--no-serve",
        action="store_true",
        help="exit when done (default: keep serving the reports until Ctrl-C)",
    )
    demo.add_argument("--seed", type=int, default=7, help="simulation seed (default 7)")
    demo.add_argument(
        "--data-dir",
        default="data/demo",
        help="the demo's data directory, wiped at start (default data/demo)",
    )
    demo.set_defaults(func=cmd_demo)
