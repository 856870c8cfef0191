"""``tailor what-if KEY --policy '{"kind": ...}'``: a candidate config on an experiment's logs.

Asks the running server, as ``tailor report`` does (``TAILOR_API_URL``, else
``http://TAILOR_HOST:TAILOR_PORT``; a key with the ``report`` scope in ``TAILOR_API_KEY``):
``POST /v1/experiments/{key}/what-if`` replays the candidate's training over the logged
decisions and estimates its value next to the deployed policy's. Prints a small table, or the
JSON answer with ``--json``.

``tailor off-policy KEY --target '{"kind": "rules", ...}'`` asks
``POST /v1/experiments/{key}/off-policy`` the same way: any target policy (a rule table, always a
variant, uniform, the current model or the current model greedy) on the logged decisions.

Exit codes: 0 done, 1 the request failed, 2 bad usage (e.g. ``--policy`` is not JSON).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import msgspec

from decision_api.cli.reports import TIMEOUT_S, _api, _fail, _problem, _settings, _unreachable

__all__ = [
    "add_off_policy_command",
    "add_what_if_command",
    "cmd_off_policy",
    "cmd_what_if",
    "render_off_policy",
    "render_what_if",
]


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
    return _ask(args.key, "what-if", body, render_what_if, as_json=args.json)


def add_off_policy_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tailor off-policy`` on the top-level subcommand parser."""
    cmd = sub.add_parser(
        "off-policy",
        help="estimate any target policy's value on an experiment's logged decisions",
        description=(
            "Estimate what a target policy would have earned on an experiment's logged "
            "decisions (IPS, SNIPS, DR with intervals, next to the deployed policy's mean "
            'reward). The target is JSON: {"kind": "uniform"}, {"kind": "always", "variant": '
            '"b"}, {"kind": "rules", "rules": [{"when": <condition>, "variant": "b"}], '
            '"otherwise": "a"}, {"kind": "current"}, {"kind": "current_greedy"} or a saved '
            'model version {"kind": "saved", "version": 12, "greedy": false}. Asks the '
            "running server as `tailor report` does (key with the report scope)."
        ),
    )
    cmd.add_argument("key", help="experiment key")
    cmd.add_argument("--target", required=True, help="target policy as JSON")
    cmd.add_argument("--level", type=float, help="interval level (default 0.95)")
    cmd.add_argument("--limit", type=int, help="latest logged decisions to use (default 100000)")
    cmd.add_argument("--json", action="store_true", help="print the JSON answer")
    cmd.set_defaults(func=cmd_off_policy)


def render_off_policy(answer: dict[str, Any]) -> str:
    """The answer of ``POST /v1/experiments/{key}/off-policy`` as a small text table."""
    est = answer["estimate"]
    level = est["ips"]["level"]
    cells = ", ".join(f"{name} {count}" for name, count in answer["cells"].items())
    lines = [
        f"off-policy {answer['target']} ({answer['description']}) over {answer['n']} logged "
        f"decisions ({level:.0%} intervals)",
        _row("target IPS", est["ips"]),
        _row("target SNIPS", est["snips"]),
        _row("target DR", est.get("doubly_robust")),
        _row("deployed (mean reward)", answer["deployed"]),
        _row("difference (IPS)", answer["difference"]),
        f"  effective sample size {est['effective_sample_size']:.0f} of {answer['n']}; "
        f"decisions per cell: {cells}",
    ]
    lines += [f"  warning: {w}" for w in answer.get("warnings", [])]
    return "\n".join(lines) + "\n"


def cmd_off_policy(args: argparse.Namespace) -> int:
    """Ask the server to evaluate ``--target`` on the experiment's logs; print the result."""
    try:
        target = msgspec.json.decode(args.target)
    except msgspec.DecodeError as exc:
        return _fail(f"--target is not JSON: {exc}", 2)
    body: dict[str, Any] = {"target": target}
    for name, value in (("level", args.level), ("limit", args.limit)):
        if value is not None:
            body[name] = value
    return _ask(args.key, "off-policy", body, render_off_policy, as_json=args.json)


def _ask(
    key: str,
    route: str,
    body: dict[str, Any],
    render: Callable[[dict[str, Any]], str],
    *,
    as_json: bool,
) -> int:
    """POST ``body`` to the running server's ``/v1/experiments/{key}/{route}`` and print the
    answer (as JSON, or rendered); errors go to stderr with the server's problem."""
    import httpx

    settings = _settings()
    if settings is None:
        return 2
    url, headers = _api(settings)
    try:
        response = httpx.post(
            f"{url}/v1/experiments/{key}/{route}", json=body, headers=headers, timeout=TIMEOUT_S
        )
    except httpx.HTTPError as exc:
        return _fail(_unreachable(url, exc))
    if response.status_code != 200:
        return _fail(_problem(response))
    sys.stdout.write(response.text + "\n" if as_json else render(response.json()))
    return 0
