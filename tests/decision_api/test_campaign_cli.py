"""``tailor campaign``: a file of recipients decided through a live server, one JSON line each,
with a progress bar on a terminal only."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from decision_api.cli.campaign import read_recipients
from decision_api.cli.main import main
from tests.sdk.servers import ApiServer

pytestmark = pytest.mark.slow


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        """Always."""
        return True


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """``tailor serve`` on its embedded defaults with a subject test and a send-time test."""
    tmp = tmp_path_factory.mktemp("campaign_cli")
    env = {"TAILOR_DATA_DIR": str(tmp / "data"), "TAILOR_LOG_LEVEL": "warning",
           "TAILOR_DECISIONS_CONFIG_POLL_INTERVAL_S": "0.05"}  # fmt: skip
    server = ApiServer(env, tmp / "server.log").start()
    specs = [
        {"key": "subj", "placement": "subject", "default_variant": "a",
         "variants": [{"key": "a"}, {"key": "b"}], "policy": {"kind": "thompson"}},
        {"key": "when", "placement": "send_time", "kind": "send_time",
         "send_time": {"hours": "hour_of_day", "default": {"kind": "local_hour", "hour": 10}},
         "policy": {"kind": "send_time_thompson", "n_hours": 24}, "holdout": 0.1},
    ]  # fmt: skip
    for spec in specs:
        assert httpx.post(server.url + "/v1/experiments", json=spec).status_code == 201
        assert httpx.post(f"{server.url}/v1/experiments/{spec['key']}/start").status_code == 200
    yield server
    server.stop()


def test_recipients_are_read_from_csv_and_jsonl(tmp_path: Path) -> None:
    """unit_id, timezone and consent are the recipient's; other columns are context; a line
    without unit_id is refused naming it."""
    csv_file = tmp_path / "r.csv"
    csv_file.write_text("unit_id,timezone,consent,segment\nu1,Europe/Paris,no,vip\nu2,,,\n")
    assert read_recipients(csv_file) == [
        {"unit_id": "u1", "timezone": "Europe/Paris", "consent": False,
         "context": {"segment": "vip"}},
        {"unit_id": "u2"},
    ]  # fmt: skip
    bad = tmp_path / "r.jsonl"
    bad.write_text('{"unit_id": "u1"}\n{"segment": "x"}\n')
    with pytest.raises(ValueError, match="recipient 2: unit_id is missing"):
        read_recipients(bad)


def test_campaign_prints_a_line_per_recipient_with_a_bar_on_a_terminal(
    live: ApiServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every recipient gets its subject variant and a send time inside the window, in input
    order; the bar is drawn on a terminal and absent when stderr is piped."""
    recipients = tmp_path / "recipients.csv"
    recipients.write_text(
        "unit_id,timezone\n" + "".join(f"r{i},Europe/Berlin\n" for i in range(300))
    )
    monkeypatch.setenv("TAILOR_API_URL", live.url)
    start = "2037-01-05T06:00:00+00:00"
    argv = ["campaign", str(recipients), "--name", "jan", "--placements", "subject,send_time",
            "--window-start", start]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["unit_id"] for line in lines] == [f"r{i}" for i in range(300)]
    assert {line["decisions"]["subject"]["variant"] for line in lines} == {"a", "b"}
    opens = datetime.fromisoformat(start)
    for line in lines:
        send_at = datetime.fromisoformat(line["decisions"]["send_time"]["send_at"])
        assert 0 <= (send_at - opens).total_seconds() < 24 * 3600
    assert "recipients" not in captured.err
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(argv) == 0
    assert "recipients" in terminal.getvalue() and "300/300" in terminal.getvalue()


def test_warm_start_prints_the_model_and_shows_progress_on_a_terminal(
    live: ApiServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tailor warm-start`` publishes a model of the subject test through the server (its
    summary on stdout) and draws a running indicator on a terminal; an unknown experiment is
    an error naming the server's answer."""
    monkeypatch.setenv("TAILOR_API_URL", live.url)
    for i in range(20):
        answer = httpx.post(live.url + "/v1/decide",
                            json={"unit_id": f"w{i}", "placements": ["subject"]})  # fmt: skip
        assert answer.status_code == 200
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["warm-start", "subj"]) == 0
    model = json.loads(capsys.readouterr().out)
    assert model["experiment"] == "subj" and model["kind"] == "thompson"
    assert "warm start of subj" in terminal.getvalue()
    assert main(["warm-start", "nope"]) == 1
    assert "HTTP 404" in terminal.getvalue()
