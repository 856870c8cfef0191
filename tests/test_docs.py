"""The reference docs in ``docs/`` keep up with the code: cheap checks, no servers.

Each test compares a vocabulary the code defines (settings, routes, reason codes, policies,
fields, metrics, tables, Redis keys) with what the pages name, and the pages' own JSON examples and
links with themselves.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import unicodedata
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
    [ExperimentSpec, Variant, RewardSpec, RewardRule, FrequencyCap, SendTimeSpec, Condition],
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
    """Key shapes the code builds: what follows the prefix in ``f"{prefix}:..."`` strings."""
    stems = set()
    for package in ("decision_api", "bandits", "experiments"):
        for path in (ROOT / package).rglob("*.py"):
            source = path.read_text(encoding="utf-8")
            stems |= set(re.findall(r'f"\{(?:self\._)?prefix\}:([a-z_:]+)', source))
    return stems


def test_every_redis_key_is_documented() -> None:
    """The Redis key table of data-model.md shows every key shape the code builds."""
    stems = redis_key_stems()
    assert {"exp:defs", "train", "rl:"} <= stems
    text = page("data-model.md")
    assert [s for s in sorted(stems) if f"`{{p}}:{s}" not in text] == []


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


def test_curl_bodies_are_valid() -> None:
    """Every literal ``-d '...'`` body in http-api.md is JSON; experiment bodies are definitions."""
    bodies = [
        body
        for block in code_blocks(page("http-api.md"), "bash")
        for body in re.findall(r"-d '(\{.*?\})'", block, re.DOTALL)
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
