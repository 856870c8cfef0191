"""``tailor what-if KEY --policy '{"kind": ...}'``: a candidate config on an experiment's logs.

Asks the running server, as ``tailor report`` does (``TAILOR_API_URL``, else
``http://TAILOR_HOST:TAILOR_PORT``; a key with the ``report`` scope in ``TAILOR_API_KEY``):
``POST /v1/experiments/{key}/what-if`` replays the candidate's training over the logged
decisions and estimates its value next to the deployed policy's. Prints a small table, or the
JSON answer with ``--json``.

Exit codes: 0 done, 1 the request failed, 2 bad usage (e.g. ``--policy`` is not JSON).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from decision_api.cli.reports import TIMEOUT_S, _api, _fail, _problem, _settings, _unreachable

__all__ = ["add_what_if_command", "cmd_what_if", "render_what_if"]


def add_what_if_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tailor what-if`` on the top-level subcommand parser."""
    cmd = sub.add_parser(
        "what-if",
        help="evaluate a candidate policy config on an experiment's logged decisions",
        description=(
            "Replay a candidate policy configuration's training over an experiment's logged "
            "decisions (progressive validation) and print its off-policy value (IPS, SNIPS, "
            "DR with intervals) next to the deployed policy's. Asks the running server as "
            "`tailor report` does (key with the report scope in TAILOR_API_KEY)."
        ),
    )
    cmd.add_argument("key", help="experiment key")
    cmd.add_argument(
        "--policy", required=True, help='candidate config as JSON, e.g. \'{"kind": "vw_cb"}\''
    )
    cmd.add_argument("--level", type=float, help="interval level (default 0.95)")
    cmd.add_argument("--batch-size", type=int, help="decisions scored per model (default 100)")
    cmd.add_argument("--limit", type=int, help="latest logged decisions to use (default 100000)")
    cmd.add_argument("--json", action="store_true", help="print the JSON answer")
    cmd.set_defaults(func=cmd_what_if)


def _row(name: str, interval: dict[str, Any] | None) -> str:
    if interval is None:
        return f"  {name:<22} -"
    return (
        f"  {name:<22} {interval['estimate']:>9.4f}  "
        f"[{interval['lower']:.4f}, {interval['upper']:.4f}]"
    )


def render_what_if(answer: dict[str, Any]) -> str:
    """The answer of ``POST /v1/experiments/{key}/what-if`` as a small text table."""
    cand, dep = answer["candidate"], answer["deployed"]
    level = cand["ips"]["level"]
    lines = [
        f"what-if {answer['policy']} over {answer['n']} logged decisions "
        f"(batches of {answer['batch_size']}; {level:.0%} intervals)",
        _row("candidate IPS", cand["ips"]),
        _row("candidate SNIPS", cand["snips"]),
        _row("candidate DR", cand.get("doubly_robust")),
        _row("deployed (mean reward)", dep["ips"]),
        _row("difference (IPS)", answer["difference"]),
        f"  effective sample size {cand['effective_sample_size']:.0f} of {answer['n']}",
    ]
    lines += [f"  warning: {w}" for w in answer.get("warnings", [])]
    return "\n".join(lines) + "\n"


def cmd_what_if(args: argparse.Namespace) -> int:
    """Ask the server to evaluate ``--policy`` on the experiment's logs; print the result."""
    import httpx

    try:
        policy = msgspec.json.decode(args.policy)
    except msgspec.DecodeError as exc:
        return _fail(f"--policy is not JSON: {exc}", 2)
    body: dict[str, Any] = {"policy": policy}
    for name, value in (
        ("level", args.level),
        ("batch_size", args.batch_size),
        ("limit", args.limit),
    ):
        if value is not None:
            body[name] = value
    settings = _settings()
    if settings is None:
        return 2
    url, headers = _api(settings)
    try:
        response = httpx.post(
            f"{url}/v1/experiments/{args.key}/what-if",
            json=body,
            headers=headers,
            timeout=TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        return _fail(_unreachable(url, exc))
    if response.status_code != 200:
        return _fail(_problem(response))
    sys.stdout.write(response.text + "\n" if args.json else render_what_if(response.json()))
    return 0
