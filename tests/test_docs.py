"""The reference docs in ``docs/`` keep up with the code: cheap checks, no servers.

Each test compares a vocabulary the code defines (settings, routes, reason codes, policies,
fields, metrics, tables, Redis keys) with what the pages name, and the pages' own JSON examples and
links with themselves.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import msgspec
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute

from decision_api.app import create_app
from decision_api.cli.main import build_parser
from decision_api.metrics import Metrics
from decision_api.settings import CLIENT_VARIABLES, PREFIX, Settings
from event_log.sql import COLUMNS
from tailor_contract import placement
from tailor_contract.definitions import (
    Condition,
    ContactCap,
    ExperimentSpec,
    FrequencyCap,
    Operator,
    RewardRule,
    RewardSpec,
    SendTimeSpec,
    Variant,
)
from tailor_contract.policies import _ALIASES, _ALLOWED, _RESERVED, PolicyConfig
from tailor_contract.wire import LocalReason
from tests.support.processes import TailorServer, server_env

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
# Routes that exist for people and browsers but are left out of the OpenAPI document.
UNDOCUMENTED_IN_SCHEMA = {
    "GET /sdk/tailor.js",
    "GET /reports/static/{name}",
    "GET /",
    "GET /ui",
    "GET /ui/static/{name}",
    "POST /ui/session",
    "DELETE /ui/session",
}


def page(name: str) -> str:
    """The text of one docs page."""
    return (DOCS / name).read_text(encoding="utf-8")


def fields(struct: type[msgspec.Struct]) -> list[str]:
    """The field names of a Struct (its wire names)."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return [f.encode_name for f in info.fields]


def setting_variables() -> set[str]:
    """Every ``TAILOR_*`` variable ``Settings.from_env`` reads, plus the client ones."""
    names = set(CLIENT_VARIABLES)
    for name, section in msgspec.structs.asdict(Settings()).items():
        if isinstance(section, msgspec.Struct):
            names |= {f"{PREFIX}{name}_{f}".upper() for f in section.__struct_fields__}
        else:
            names.add(f"{PREFIX}{name}".upper())
    return names


@pytest.fixture(scope="module")
def app() -> Litestar:
    """The app as the factory builds it (the lifespan never runs: nothing is opened)."""
    return create_app(Settings(log_format="console", log_level="warning"))


def app_routes(app: Litestar) -> set[str]:
    """``METHOD /path`` of every HTTP route, path parameters without their type."""
    out = set()
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path.startswith("/schema"):
            continue
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for method in route.methods:
            if method not in ("OPTIONS", "HEAD"):
                out.add(f"{method} {path}")
    return out


def headings(text: str, level: str) -> list[str]:
    """The headings of one level (``"###"``) of a page, without the hashes."""
    return [m.group(1).strip() for m in re.finditer(rf"^{level} (.+)$", text, re.MULTILINE)]


def test_every_setting_is_documented_and_nothing_else() -> None:
    """configuration.md names every TAILOR_ variable of Settings (and the client ones), no other."""
    documented = set(re.findall(r"\bTAILOR_[A-Z][A-Z0-9_]*[A-Z0-9]\b", page("configuration.md")))
    expected = setting_variables()
    assert expected - documented == set(), "undocumented settings"
    assert documented - expected == set(), "documented variables that do not exist"


def test_every_route_has_a_section_and_every_section_a_route(app: Litestar) -> None:
    """http-api.md has a `### METHOD /path` section per route of the app, and only those."""
    schema_routes = {
        f"{method.upper()} {path}"
        for path, item in (app.openapi_schema.paths or {}).items()
        for method in ("get", "post", "put", "delete", "patch")
        if getattr(item, method, None) is not None
    }
    routes = app_routes(app)
    assert schema_routes <= routes
    assert routes - schema_routes == UNDOCUMENTED_IN_SCHEMA
    sections = {h for h in headings(page("http-api.md"), "###") if re.match(r"[A-Z]+ /", h)}
    assert routes - sections == set(), "routes without a section"
    assert sections - routes - {"GET /schema"} == set(), "sections for routes that do not exist"


def _constants(node: ast.AST) -> Iterator[str]:
    """String constants an expression can evaluate to (through conditional expressions)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.IfExp):
        yield from _constants(node.body)
        yield from _constants(node.orelse)


def reason_codes(source: str) -> set[str]:
    """Reason strings in the decision engine's source: ``reason=`` keywords, assignments to
    ``reason`` (plain or in a tuple), ``_default(..., "<reason>")`` and ``fallback`` pairs."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.keyword) and node.arg == "reason":
            found.update(_constants(node.value))
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name == "_default" and len(node.args) >= 3:
                found.update(_constants(node.args[2]))
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == "reason":
                    found.update(_constants(node.value))
                elif isinstance(target, ast.Name) and target.id == "fallback":
                    for sub in ast.walk(node.value):
                        if isinstance(sub, ast.Tuple) and len(sub.elts) == 2:
                            found.update(_constants(sub.elts[1]))
                elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    for name_node, value in zip(target.elts, node.value.elts, strict=False):
                        if isinstance(name_node, ast.Name) and name_node.id == "reason":
                            found.update(_constants(value))
    return found


def test_reason_code_extraction_finds_the_known_codes() -> None:
    """The extractor sees codes written in each of the forms the engine uses."""
    engine = ROOT / "decision_api" / "decisions" / "engine.py"
    codes = reason_codes(engine.read_text(encoding="utf-8"))
    assert {"split", "policy", "model_unavailable", "frequency_capped", "pending"} <= codes


def test_every_reason_code_is_documented() -> None:
    """Every reason code of the decision modules and the SDK exposure schema is in http-api.md,
    and every row of its reason-code table is a code the engine uses."""
    codes = set(get_args(LocalReason)) | set(placement.DEFAULT_REASONS) | {placement.NO_EXPERIMENT}
    for module in ("engine.py", "bulk.py", "send_times.py"):
        source = ROOT / "decision_api" / "decisions" / module
        codes |= reason_codes(source.read_text(encoding="utf-8"))
    text = page("http-api.md")
    assert {c for c in codes if f"`{c}`" not in text} == set()
    table = text.split("#### Reason codes", 1)[1].split("\n\n", 3)[2]
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE))
    assert rows, "the reason-code table was not found"
    assert rows - codes == set(), "documented codes the engine never uses"
    assert codes - rows == {"pending"}, "codes missing from the table"


def policy_configs() -> dict[str, type[msgspec.Struct]]:
    """Policy kind -> its config Struct, from the ``PolicyConfig`` union."""
    out = {}
    for config in get_args(PolicyConfig):
        info = msgspec.inspect.type_info(config)
        assert isinstance(info, msgspec.inspect.StructType)
        out[str(info.tag)] = config
    return out


def test_every_policy_and_hyper_parameter_is_documented() -> None:
    """experiments.md has a section per policy kind naming each of its hyper-parameters."""
    text = page("experiments.md")
    sections = text.split("\n### ")
    for kind, config in policy_configs().items():
        section = next((s for s in sections if s.startswith(f"`{kind}`")), None)
        assert section is not None, f"no section for policy {kind!r}"
        missing = [f for f in fields(config) if f"`{f}`" not in section]
        assert missing == [], f"{kind}: undocumented hyper-parameters"


def test_every_vw_option_is_documented() -> None:
    """The VW allow-list, its aliases and reserved options are all in experiments.md."""
    text = page("experiments.md")
    options = set(_ALLOWED) | set(_ALIASES) | set(_RESERVED)
    assert {o for o in options if f"`{o}`" not in text} == set()


@pytest.mark.parametrize(
    "struct",
    [
        ExperimentSpec,
        Variant,
        RewardSpec,
        RewardRule,
        FrequencyCap,
        ContactCap,
        SendTimeSpec,
        Condition,
    ],
)
def test_every_definition_field_is_documented(struct: type[msgspec.Struct]) -> None:
    """experiments.md names every field of the experiment definition and its parts."""
    text = page("experiments.md")
    assert [f for f in fields(struct) if f"`{f}`" not in text] == []


def test_every_targeting_operator_is_documented() -> None:
    """The operator table of experiments.md covers every operator."""
    text = page("experiments.md")
    assert [op for op in get_args(Operator) if f"`{op}`" not in text] == []


def test_every_metric_is_documented() -> None:
    """operations.md lists every metric the service exports, by its exposition name."""
    text = page("operations.md")
    missing = []
    for metric in Metrics().registry.collect():
        name = metric.name + ("_total" if metric.type == "counter" else "")
        if f"`{name}`" not in text:
            missing.append(name)
    assert missing == []


@pytest.mark.parametrize("table", sorted(COLUMNS))
def test_every_event_log_column_is_documented(table: str) -> None:
    """data-model.md documents every column of every event-log table, in its table's section."""
    section = page("data-model.md").split(f"### {table}", 1)[1].split("\n### ", 1)[0]
    assert [c for c in COLUMNS[table] if f"| `{c}` |" not in section] == []


def redis_key_stems() -> set[str]:
    """Key shapes the code builds: what follows the prefix in ``f"{prefix}:..."`` strings
    (documented as ``{p}:...``), and what follows the hash-tagged prefix in ``f"{shared}:..."``
    and ``f"{{{prefix}}}:..."`` strings (documented as ``{{p}}:...``)."""
    stems = set()
    plain = r'f"\{(?:self\._)?prefix\}:([a-z_:]+)'
    tagged = r'f"(?:\{(?:self\._)?shared\}|\{\{\{(?:self\._)?prefix\}\}\}):([a-z_:]+)'
    for package in ("decision_api", "bandits", "experiments"):
        for path in (ROOT / package).rglob("*.py"):
            source = path.read_text(encoding="utf-8")
            stems |= {"{p}:" + s for s in re.findall(plain, source)}
            stems |= {"{{p}}:" + s for s in re.findall(tagged, source)}
    return stems


def test_every_redis_key_is_documented() -> None:
    """The Redis key table of data-model.md shows every key shape the code builds."""
    stems = redis_key_stems()
    assert {"{{p}}:exp:defs", "{{p}}:train", "{p}:rl:", "{{p}}:dec:"} <= stems
    text = page("data-model.md")
    assert [s for s in sorted(stems) if f"`{s}" not in text] == []


def code_blocks(text: str, language: str) -> list[str]:
    """The bodies of fenced code blocks of one language."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_json_examples_parse(path: Path) -> None:
    """Every ```json block of every page is valid JSON."""
    for block in code_blocks(path.read_text(encoding="utf-8"), "json"):
        json.loads(block)


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_shell_examples_parse(path: Path) -> None:
    """Every ```bash block of every page is valid shell (``bash -n``)."""
    for block in code_blocks(path.read_text(encoding="utf-8"), "bash"):
        checked = subprocess.run(
            ["bash", "-n"], input=block, text=True, capture_output=True, check=False
        )
        assert checked.returncode == 0, checked.stderr


def test_experiment_examples_are_valid_definitions() -> None:
    """The definitions, targeting and reward examples of experiments.md decode as such."""
    decoded = 0
    for block in code_blocks(page("experiments.md"), "json"):
        data = json.loads(block)
        if "placement" in data:
            msgspec.convert(data, ExperimentSpec)
        elif "all" in data or "any" in data:
            msgspec.convert(data, Condition)
        elif "rules" in data:
            msgspec.convert(data, RewardSpec)
        else:
            continue
        decoded += 1
    assert decoded >= 4


def shell_values(block: str) -> str:
    """A block with its shell insertions into quoted JSON (``'"$DAY"'``, ``'"$(date ...)"'``)
    replaced by sample values of the same shape."""
    block = re.sub(r"""'"\$\(date [^)]*\)"'""", "2030-01-01T00:00:00Z", block)
    return re.sub(r"""'"\$[A-Z_]+"'""", "2030-01-01", block)


def test_curl_bodies_are_valid() -> None:
    """Every literal ``-d '...'`` body in http-api.md is JSON; experiment bodies are definitions."""
    bodies = [
        body
        for block in code_blocks(page("http-api.md"), "bash")
        for body in re.findall(r"-d '(\{.*?\})'", shell_values(block), re.DOTALL)
    ]
    definitions = 0
    for body in bodies:
        data = json.loads(body)
        if "placement" in data and "key" in data:
            msgspec.convert(data, ExperimentSpec)
            definitions += 1
    assert len(bodies) >= 20
    assert definitions >= 5


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in ("L", "N"))
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a page defines (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for match in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE):
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def without_code(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_links_between_pages_resolve(path: Path) -> None:
    """Every relative link points at an existing page and, with #anchor, an existing heading."""
    text = without_code(path.read_text(encoding="utf-8"))
    broken: list[Any] = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part) if file_part else path
        exists = linked.exists()
        defined = anchors(without_code(linked.read_text(encoding="utf-8"))) if exists else set()
        if not exists or (anchor and anchor not in defined):
            broken.append(target)
    assert broken == []


def test_every_command_is_documented() -> None:
    """operations.md describes every `tailor` subcommand."""
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    commands = sorted(actions[0].choices)
    assert {"serve", "learn", "keys"} <= set(commands)
    text = page("operations.md")
    assert [c for c in commands if f"`tailor {c}" not in text] == []


def test_index_links_every_page() -> None:
    """docs/README.md links every other page."""
    index = page("README.md")
    assert [p.name for p in PAGES if p.name != "README.md" and f"]({p.name})" not in index] == []


# --- the commands of the README and the docs, run as written against a real server ---------

# Blocks that cannot run in the suite, by a phrase they contain, and why.
NOT_RUN = {
    "scripts/demo": "sets up the machine and runs the whole suite",
}
# Commands whose documented answer is an error, by a phrase of the block: the statuses shown.
DOCUMENTED_ERRORS = {
    '{"features": {"religion": "x"}}': {422},
    # "404 before the first snapshot": the learner may not have published one yet.
    'carousel-order/model" -H': {404},
}


def runnable_blocks(path: Path) -> list[str]:
    """The ```bash blocks of a page that the suite runs (all but ``NOT_RUN``)."""
    blocks = code_blocks(path.read_text(encoding="utf-8"), "bash")
    return [b for b in blocks if not any(phrase in b for phrase in NOT_RUN)]


CURL_WRAPPER = r"""
curl() {  # the doc's curl, reporting each call's status on stderr
  case " $* " in
    *" -w "*|*" --write-out "*) command curl "$@" ;;
    *) command curl -w '%{stderr}__status__ %{http_code}\n' "$@" ;;
  esac
}
"""


def run_blocks(blocks: list[str], server_url: str, workdir: Path) -> list[tuple[str, list[int]]]:
    """Run ``blocks`` in order in one bash session (variables carry over, as for a reader
    pasting them into one terminal), against ``server_url`` in place of the documented
    ``localhost:8000``; returns each block with the HTTP statuses of its curl calls."""
    script = [CURL_WRAPPER]
    for index, block in enumerate(blocks):
        text = block.replace("http://127.0.0.1:8000", server_url).replace(
            "localhost:8000", server_url
        )
        script.append(f"echo '__block__ {index}' >&2\n{text}\necho >&2")
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")},
    )
    statuses: list[list[int]] = [[] for _ in blocks]
    current = -1
    for line in done.stderr.splitlines():
        if line.startswith("__block__ "):
            current = int(line.split()[1])
        elif line.startswith("__status__ ") and current >= 0:
            statuses[current].append(int(line.split()[1]))
    assert done.returncode == 0, done.stderr[-3000:]
    return list(zip(blocks, statuses, strict=True))


def check_statuses(results: list[tuple[str, list[int]]]) -> None:
    """Every curl call answered 2xx/3xx, but the documented errors with their status."""
    wrong = []
    for block, statuses in results:
        allowed = next(
            (codes for phrase, codes in DOCUMENTED_ERRORS.items() if phrase in block), set()
        )
        bad = [s for s in statuses if not (200 <= s < 400 or s in allowed)]
        unchecked = " -w " in block  # the block prints its own status line
        if bad or (not statuses and "curl" in block and not unchecked):
            wrong.append((block.strip().splitlines()[0][:100], statuses))
    assert wrong == [], "\n".join(f"{first}: {codes}" for first, codes in wrong)


@pytest.fixture
def live_server(redis_url: str, tmp_path: Path) -> Iterator[TailorServer]:
    """``tailor serve`` as a reader starts it (open API), on a free port of its own."""
    prefix = "docs" + uuid.uuid4().hex[:10]
    server = TailorServer(server_env(redis_url, prefix, tmp_path / "data"), tmp_path / "serve.log")
    try:
        server.wait_ready(timeout_s=60)
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_readme_commands_run_as_written(live_server: TailorServer, tmp_path: Path) -> None:
    """The README's quickstart works on a fresh server: the website example decides and
    reports a purchase, the email example defines its experiments and gets every recipient a
    variant and a send time (no ``no_experiment``)."""
    blocks = runnable_blocks(ROOT / "README.md")
    assert len(blocks) >= 3
    results = run_blocks(blocks, live_server.url, tmp_path)
    check_statuses(results)
    batch = subprocess.run(
        ["bash", "-c", CURL_WRAPPER + blocks[-1].replace("localhost:8000", live_server.url)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    answers = [json.loads(line) for line in batch.stdout.splitlines() if line.strip()]
    assert [a["unit_id"] for a in answers] == ["u-1", "u-2"]
    for answer in answers:
        reasons = {d["placement"]: d["reason"] for d in answer["decisions"]}
        assert reasons == {"subject_line": "policy", "send_time": "policy"}, answer
        assert all(d.get("send_at") or d["placement"] != "send_time" for d in answer["decisions"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["http-api.md", "operations.md"])
def test_doc_commands_run_as_written(name: str, live_server: TailorServer, tmp_path: Path) -> None:
    """Every command of http-api.md (then operations.md's) runs in order against a real server
    and gets the answer the page shows: success, or the documented error."""
    pages = ["http-api.md"] if name == "http-api.md" else ["http-api.md", name]
    blocks = [b for page_name in pages for b in runnable_blocks(DOCS / page_name)]
    check_statuses(run_blocks(blocks, live_server.url, tmp_path))


def test_snippet_example_says_how_to_allow_its_origin() -> None:
    """The README's browser-snippet example names TAILOR_AUTH_CORS_ORIGINS."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    snippet = readme.split("**A website, with the browser snippet.**", 1)[1]
    assert "TAILOR_AUTH_CORS_ORIGINS=" in snippet.split("**An email system.**", 1)[0]


def test_sdk_testing_example_runs() -> None:
    """The sdk.testing example of docs/sdk.md runs as written (its asserts pass)."""
    blocks = code_blocks(page("sdk.md"), "python")
    example = next(b for b in blocks if "sdk.testing" in b)
    exec(compile(example, "docs/sdk.md", "exec"), {})
