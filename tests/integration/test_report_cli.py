"""`tailor report` and `tailor import`: directly on the event log, and through the API."""

from __future__ import annotations

import io
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
from litestar.testing import TestClient

from decision_api.app import create_app
from decision_api.cli.main import main
from decision_api.redis_server import free_port
from decision_api.settings import AuthSettings, Settings
from event_log.rows import AuditEntry
from event_log.store import ClickHouseEventLog
from experiments.reports.build import build_report
from experiments.reports.options import report_options
from experiments.reports.text import render_report_text
from tailor_contract.definitions import Experiment, RewardRule, RewardSpec, Variant
from tests.experiments.report_rows import insert_log, random_log

EXPERIMENT = Experiment(
    key="exp",
    placement="home",
    variants=[Variant(key="control"), Variant(key="b"), Variant(key="c")],
    default_variant="control",
    primary_metric="purchase",
    guardrail_metrics=["unsubscribe"],
    reward=RewardSpec(rules=[RewardRule(type="purchase")]),
)
CSV = "unit_id,ts,variant,propensity,context.device,outcome.purchase\n"


def _audit(event_log: ClickHouseEventLog, experiment: Experiment) -> None:
    entry = AuditEntry(
        event_id=uuid.uuid4(),
        ts_ms=int(time.time() * 1000),
        actor="test",
        action="create",
        entity="experiment",
        entity_key=experiment.key,
        version=experiment.version,
        detail=msgspec.json.encode(experiment).decode(),
    )
    event_log.insert("audit", [entry.row()], uuid.uuid4().hex)


@pytest.fixture
def direct(
    event_log: ClickHouseEventLog, event_log_url: str, monkeypatch: pytest.MonkeyPatch
) -> ClickHouseEventLog:
    """The CLI pointed at this test's event log, with no API and no Redis configured."""
    for name in ("TAILOR_API_URL", "TAILOR_API_KEY", "TAILOR_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TAILOR_EVENT_LOG_URL", event_log_url)
    return event_log


def test_report_reads_the_event_log_directly(
    direct: ClickHouseEventLog, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --local the command finds the definition in the audit table and prints the same
    table the API's text format gives."""
    _audit(direct, EXPERIMENT)
    insert_log(direct, random_log(np.random.default_rng(3)))
    assert main(["report", "exp", "--local", "--to", "2023-11-25", "--segment", "device"]) == 0
    printed = capsys.readouterr().out
    options = report_options(end="2023-11-25", segment="device")
    assert printed == render_report_text(build_report(direct, EXPERIMENT, options))
    assert "purchase (primary)" in printed and "unsubscribe (guardrail)" in printed


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["report", "nope", "--local"], 1, "no experiment 'nope'"),
        (["report", "exp", "--local", "--from", "soon"], 2, "$.from"),
    ],
)
def test_report_errors(
    direct: ClickHouseEventLog,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    message: str,
) -> None:
    """Unknown experiments and bad parameters exit non-zero with the reason."""
    _audit(direct, EXPERIMENT)
    assert main(argv) == code
    assert message in capsys.readouterr().err


def test_import_loads_a_file_directly(
    direct: ClickHouseEventLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tailor import` validates and loads a CSV into the experiment; a bad file loads nothing
    and the error names its rows."""
    _audit(direct, EXPERIMENT)
    good = tmp_path / "history.csv"
    good.write_text(CSV + "u1,2024-01-02T03:04:05Z,b,0.5,mobile,12.5\nu2,1704164645,c,0.25,,\n")
    assert main(["import", str(good), "--experiment", "exp", "--local"]) == 0
    summary = msgspec.json.decode(capsys.readouterr().out)
    assert (summary["decisions"], summary["outcomes"]) == (2, 1)
    bad = tmp_path / "bad.csv"
    bad.write_text(CSV + "u3,2024-01-02,x,0.5,,\nu4,2024-01-02,b,2,,\n")
    assert main(["import", str(bad), "--experiment", "exp", "--local"]) == 1
    err = capsys.readouterr().err
    assert "row 1: variant 'x'" in err and "row 2: propensity 2.0 must be in (0, 1]" in err
    assert direct.query("SELECT count() FROM exposures") == [(2,)]


@pytest.fixture
def no_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """No TAILOR_API_URL, TAILOR_PORT on a port nothing listens on, cwd an empty directory."""
    for name in ("TAILOR_API_URL", "TAILOR_API_KEY", "TAILOR_HOST", "TAILOR_EVENT_LOG_URL"):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    monkeypatch.setenv("TAILOR_PORT", str(port))
    monkeypatch.chdir(tmp_path)
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    "argv", [["report", "hero-banner"], ["import", "history.csv", "--experiment", "hero-banner"]]
)
def test_commands_ask_the_server_and_say_when_it_is_not_running(
    no_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """By default report and import go to the server where `tailor serve` listens (the same
    TAILOR_HOST/TAILOR_PORT defaults); with none running they say so and name --local, and no
    event log is created behind the server's back."""
    (tmp_path / "history.csv").write_text(CSV)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"no Tailor server answers at {no_server}" in err
    assert "tailor serve" in err and "--local" in err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "http://127.0.0.1:8000"),
        ({"TAILOR_HOST": "0.0.0.0", "TAILOR_PORT": "9100"}, "http://127.0.0.1:9100"),
        ({"TAILOR_HOST": "10.1.2.3"}, "http://10.1.2.3:8000"),
        ({"TAILOR_HOST": "::1", "TAILOR_PORT": "81"}, "http://[::1]:81"),
        ({"TAILOR_PORT": "9100", "TAILOR_API_URL": "https://tailor.example/"},
         "https://tailor.example"),
    ],
)  # fmt: skip
def test_report_goes_where_serve_listens(
    env: dict[str, str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The URL the report is asked from: TAILOR_API_URL, else serve's host and port."""
    for name in ("TAILOR_API_URL", "TAILOR_API_KEY", "TAILOR_HOST", "TAILOR_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    asked: list[str] = []

    def get(url: str, **_: Any) -> httpx.Response:
        asked.append(url)
        return httpx.Response(200, text="the table\n")

    monkeypatch.setattr(httpx, "get", get)
    assert main(["report", "exp"]) == 0
    assert asked == [f"{expected}/v1/experiments/exp/report"]
    assert capsys.readouterr().out == "the table\n"


ADMIN, REPORT = "cli-admin", "cli-report"


@pytest.fixture
def through_api(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient[Any], list[str]]]:
    """TAILOR_API_URL set; httpx calls go to an in-process app (records the keys sent)."""
    keyed = msgspec.structs.replace(
        settings, auth=AuthSettings(api_keys=f"{ADMIN}:admin,{REPORT}:report")
    )
    base = "http://tailor.test"
    sent: list[str] = []
    with TestClient(app=create_app(keyed)) as client:

        def route(method: str) -> Any:
            def call(url: str, **kwargs: Any) -> httpx.Response:
                assert url.startswith(base)
                kwargs.pop("timeout", None)
                sent.append(kwargs["headers"].get("Authorization", ""))
                return client.request(method, url[len(base) :], **kwargs)

            return call

        monkeypatch.setattr(httpx, "get", route("GET"))
        monkeypatch.setattr(httpx, "post", route("POST"))
        monkeypatch.setenv("TAILOR_API_URL", base + "/")
        yield client, sent


def test_import_and_report_through_the_api(
    through_api: tuple[TestClient[Any], list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With TAILOR_API_URL the commands call the server with TAILOR_API_KEY: import --create
    infers the experiment from the file, and report prints the server's text table."""
    client, sent = through_api
    rows = [f"u{i},2024-01-02T00:00:{i:02d}Z,{'ab'[i % 2]},0.5,mobile,{i % 3}" for i in range(40)]
    history = tmp_path / "history.csv"
    history.write_text(CSV + "\n".join(rows) + "\n")
    monkeypatch.setenv("TAILOR_API_KEY", ADMIN)
    argv = ["import", str(history), "--experiment", "legacy", "--create"]
    assert main(argv) == 0
    assert msgspec.json.decode(capsys.readouterr().out)["decisions"] == 40
    definition = client.get("/v1/experiments/legacy", headers={"X-API-Key": ADMIN}).json()
    assert [v["key"] for v in definition["variants"]] == ["a", "b"]
    assert definition["primary_metric"] == "purchase"
    monkeypatch.setenv("TAILOR_API_KEY", REPORT)
    assert main(["report", "legacy", "--to", "2024-01-03"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("legacy [legacy v1, draft, policy fixed]")
    assert main(["report", "legacy", "--to", "2024-01-03", "--json", "--off-policy"]) == 0
    report = msgspec.json.decode(capsys.readouterr().out)
    assert {a["arm"]: a["units"] for a in report["arms"]} == {"a": 20, "b": 20}
    assert report["off_policy"]["decisions_used"] == 40
    assert sent == [f"Bearer {ADMIN}", f"Bearer {REPORT}", f"Bearer {REPORT}"]
    assert main(["report", "legacy", "--to", "2024-01-03", "--json"]) == 0
    assert msgspec.json.decode(capsys.readouterr().out)["off_policy"] is None  # a fixed split
    monkeypatch.setenv("TAILOR_API_KEY", "wrong")
    assert main(["report", "legacy"]) == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "TAILOR_API_KEY" in err


def test_what_if_asks_the_server_and_prints_the_estimates(
    through_api: tuple[TestClient[Any], list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`tailor what-if` posts the candidate config with a report key and prints its estimate
    next to the deployed policy's; a config that does not fit is exit 1 naming the field, a
    --policy that is not JSON exit 2, a key without the scope names the report scope."""
    _, sent = through_api
    rows = [
        f"u{i},2024-01-02T00:00:{i:02d}Z,{'ab'[i % 2]},0.5,{'mobile' if i % 4 < 2 else 'desktop'},"
        f"{int((i % 2 == 0) == (i % 4 < 2))}"
        for i in range(40)
    ]
    history = tmp_path / "history.csv"
    history.write_text(CSV + "\n".join(rows) + "\n")
    monkeypatch.setenv("TAILOR_API_KEY", ADMIN)
    assert main(["import", str(history), "--experiment", "wif", "--create"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("TAILOR_API_KEY", REPORT)
    policy = '{"kind": "thompson", "segment_by": "device"}'
    assert main(["what-if", "wif", "--policy", policy, "--batch-size", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("what-if thompson over 40 logged decisions (batches of 5")
    assert "candidate SNIPS" in out and "deployed (mean reward)" in out
    assert main(["what-if", "wif", "--policy", policy, "--json"]) == 0
    answer = msgspec.json.decode(capsys.readouterr().out)
    assert answer["n"] == 40 and answer["deployed"]["ips"]["estimate"] == pytest.approx(0.5)
    assert sent[-2:] == [f"Bearer {REPORT}", f"Bearer {REPORT}"]
    assert main(["what-if", "wif", "--policy", '{"kind": "thompson", "min_share": 0.9}']) == 1
    assert "$.policy.min_share" in capsys.readouterr().err
    assert main(["what-if", "wif", "--policy", "{kind"]) == 2
    assert "--policy is not JSON" in capsys.readouterr().err
    monkeypatch.setenv("TAILOR_API_KEY", "wrong")
    assert main(["what-if", "wif", "--policy", policy]) == 1
    assert "key with the report scope" in capsys.readouterr().err


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        """Always."""
        return True


def test_import_shows_upload_progress_on_a_terminal_only(
    through_api: tuple[TestClient[Any], list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bar of the upload is drawn on stderr when it is a terminal; piped, stderr stays clean
    and the file arrives whole either way."""
    rows = [
        f"u{i},2024-01-02T00:00:{i % 60:02d}Z,{'ab'[i % 2]},0.5,mobile,{i % 3}" for i in range(9000)
    ]
    history = tmp_path / "history.csv"
    history.write_text(CSV + "\n".join(rows) + "\n")
    monkeypatch.setenv("TAILOR_API_KEY", ADMIN)
    argv = ["import", str(history), "--experiment", "bars", "--create"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert msgspec.json.decode(captured.out)["decisions"] == 9000
    assert "uploading" not in captured.err
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(argv) == 0
    assert msgspec.json.decode(capsys.readouterr().out)["already_imported"] is True
    drawn = terminal.getvalue()
    assert "uploading history.csv" in drawn and "100%" in drawn


def test_a_rejected_import_creates_no_experiment(
    through_api: tuple[TestClient[Any], list[str]],
) -> None:
    """Regression: with create=true a rejected file still created the experiment, and the
    corrected retry kept the first placement. Now the file is validated against the draft
    first: 422 and no experiment; the retry creates it with its own placement."""
    client, _ = through_api
    headers = {"X-API-Key": ADMIN, "Content-Type": "application/octet-stream"}
    bad = CSV + "u1,2024-01-02T00:00:00Z,a,0.5,mobile,1\nu2,2024-01-02T00:00:01Z,b,2.0,mobile,0\n"
    url = "/v1/experiments/fresh/imports?format=csv&create=true"
    refused = client.post(url + "&placement=first", content=bad.encode(), headers=headers)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "$.rows[2]"
    assert client.get("/v1/experiments/fresh", headers=headers).status_code == 404
    good = bad.replace(",2.0,", ",0.5,")
    created = client.post(url + "&placement=second", content=good.encode(), headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["outcomes"] == 1  # the 0 of the 0/1 purchase column is no outcome
    definition = client.get("/v1/experiments/fresh", headers=headers).json()
    assert definition["placement"] == "second"


def test_off_policy_asks_the_server_for_any_target(
    through_api: tuple[TestClient[Any], list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`tailor off-policy` posts the target with a report key and prints its estimates; a target
    naming an unknown variant is exit 1 naming the field, a --target that is not JSON exit 2."""
    _, sent = through_api
    # Clicked exactly when mobile got a or desktop got b; logged by a 50/50 split.
    rows = [
        f"u{i},2024-01-02T00:00:{i:02d}Z,{'ab'[i % 2]},0.5,{'mobile' if i % 4 < 2 else 'desktop'},"
        f"{int((i % 2 == 0) == (i % 4 < 2))}"
        for i in range(40)
    ]
    history = tmp_path / "history.csv"
    history.write_text(CSV + "\n".join(rows) + "\n")
    monkeypatch.setenv("TAILOR_API_KEY", ADMIN)
    assert main(["import", str(history), "--experiment", "opc", "--create"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("TAILOR_API_KEY", REPORT)
    target = (
        '{"kind": "rules", "rules": [{"when": {"attribute": "device", "op": "eq", '
        '"value": "mobile"}, "variant": "a"}], "otherwise": "b"}'
    )
    assert main(["off-policy", "opc", "--target", target]) == 0
    out = capsys.readouterr().out
    assert out.startswith("off-policy rules (a rule table of 1 rules and a default) over 40")
    assert "target SNIPS" in out and "rule 0 20, otherwise 20" in out
    assert main(["off-policy", "opc", "--target", target, "--json"]) == 0
    answer = msgspec.json.decode(capsys.readouterr().out)
    assert answer["estimate"]["snips"]["estimate"] == pytest.approx(1.0)
    assert answer["deployed"]["estimate"] == pytest.approx(0.5)
    assert sent[-2:] == [f"Bearer {REPORT}", f"Bearer {REPORT}"]
    bad = '{"kind": "always", "variant": "z"}'
    assert main(["off-policy", "opc", "--target", bad]) == 1
    assert "$.target.variant" in capsys.readouterr().err
    assert main(["off-policy", "opc", "--target", "{kind"]) == 2
    assert "--target is not JSON" in capsys.readouterr().err
