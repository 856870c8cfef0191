"""The ``tailor`` command's face: help per command, ``--version``, and one log format per stream."""

from __future__ import annotations

import argparse
import io
import json
import logging
import logging.config
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
import structlog

from decision_api.cli.main import build_parser
from decision_api.logging import configure_logging, granian_log_config
from tests.support.polling import eventually_sync


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command parser, with the words that reach it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from commands(child, (*path, name))


def test_every_command_has_a_user_facing_help() -> None:
    """`tailor <command> --help` describes each command in words for users: a description,
    a help line per argument, no reStructuredText or docstring leftovers."""
    found = list(commands(build_parser()))
    assert {p for p, _ in found} >= {("serve",), ("keys", "create"), ("report",), ("import",)}
    for path, parser in found:
        text = parser.format_help()
        assert parser.description, f"tailor {' '.join(path)}: no description"
        for leftover in ("``", ":class:", ":mod:", "Returns:", "Raises:", "Args:"):
            assert leftover not in text, f"tailor {' '.join(path)} --help shows {leftover!r}"
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"tailor {' '.join(path)}: {action.dest} has no help"


def test_version_is_the_installed_distribution() -> None:
    """`tailor --version` prints the version of the installed tailor-decision-api."""
    done = subprocess.run(
        [sys.executable, "-m", "decision_api.cli.main", "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"tailor-decision-api {version('tailor-decision-api')}"


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        """Always."""
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger's handlers and level back after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    configure_logging("console", "warning")


def test_every_line_is_json_when_not_on_a_terminal(restore_logging: None) -> None:
    """With format auto and a file or pipe as stream, structlog events and stdlib records
    (a library's, asyncio's) are all JSON lines, the latter naming their logger. (urllib3's
    warnings are not let through at all: they quote URLs with unit ids.)"""
    out = io.StringIO()
    configure_logging("auto", "info", stream=out)
    structlog.get_logger().info("decision_served", experiment="e")
    logging.getLogger("some_library.pool").warning("Retrying (%d)", 2)
    logging.getLogger("asyncio").error("Task was destroyed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["event"], x["level"]) for x in lines] == [
        ("decision_served", "info"), ("Retrying (2)", "warning"), ("Task was destroyed", "error")
    ]  # fmt: skip
    assert lines[1]["logger"] == "some_library.pool" and "timestamp" in lines[1]


def test_lines_are_readable_on_a_terminal(restore_logging: None) -> None:
    """With format auto on a terminal, both kinds of lines are console lines, not JSON."""
    out = Terminal()
    configure_logging("auto", "info", stream=out)
    structlog.get_logger().info("decision_served")
    logging.getLogger("some_library").warning("Retrying")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert all(not line.startswith("{") for line in lines)
    assert "decision_served" in lines[0] and "Retrying" in lines[1]


def test_granian_lines_are_rendered_as_tailor_lines(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """granian's own loggers, configured with granian_log_config, write JSON lines too."""
    configure_logging("json", "info")
    logging.config.dictConfig(granian_log_config("json"))
    logging.getLogger("_granian").info("Starting granian (main PID: %s)", 42)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "Starting granian (main PID: 42)" and line["logger"] == "_granian"


@pytest.mark.parametrize("nice", [7, 0])
def test_tailor_learn_runs_below_the_api_workers_priority(
    redis_url: str, tmp_path: Path, nice: int
) -> None:
    """``tailor learn`` adds ``TAILOR_LEARNER_NICE`` to its niceness (10 unless set), so API
    workers on the same machine get the CPU first; 0 keeps the launcher's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env.update(
        TAILOR_REDIS_URL=redis_url,
        TAILOR_REDIS_KEY_PREFIX="nice" + str(nice),
        TAILOR_DATA_DIR=str(tmp_path),
        TAILOR_LEARNER_NICE=str(nice),
    )
    base = os.getpriority(os.PRIO_PROCESS, 0)
    learner = subprocess.Popen(
        [sys.executable, "-m", "decision_api.cli.main", "learn"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # Niced before it connects: the lease it takes in Redis says it has started.
        eventually_sync(
            lambda: any(k.startswith("{nice") for k in _keys(redis_url, nice)),
            "the learner took its lease",
        )
        assert os.getpriority(os.PRIO_PROCESS, learner.pid) == min(19, base + nice)
    finally:
        learner.terminate()
        learner.wait(timeout=30)


def _keys(redis_url: str, nice: int) -> list[str]:
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [str(k) for k in client.scan_iter(match="{nice" + str(nice) + "}*")]
    finally:
        client.close()
