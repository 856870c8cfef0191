"""The published OpenAPI document says what the API does (see :mod:`decision_api.openapi`).

Checked against real answers of an app on real Redis and chdb, with the document a client gets
from ``/schema/openapi.json``: answers validate under a standard JSON Schema validator
(``jsonschema_rs``, ECMA-262 patterns, the one schemathesis uses); ``Allow`` lists every
operation of a path; the declared security schemes and scopes are the ones the guards enforce.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient

from decision_api.app import create_app
from decision_api.openapi import ecma_pattern, portable_document
from decision_api.settings import EventLogSettings, RedisSettings, Settings
from tests.decision_api.test_access import SECRETS, bearer, with_auth

Client = AsyncTestClient[Litestar]
METHODS = ("get", "put", "post", "delete", "patch")
OPEN = ("/healthz", "/readyz", "/metrics")
PATH_VALUES = {"{key}": "k1", "{unit_id}": "u1", "{key_id}": "key_000000000000"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def keyed(
    redis_url: str, chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Client]:
    """One app with a bootstrap key per scope for the module."""
    namespace = "oa" + uuid.uuid4().hex[:10]
    settings = Settings(
        redis=RedisSettings(url=redis_url, key_prefix=namespace),
        event_log=EventLogSettings(
            url=f"chdb://{chdb_dir}?database={namespace}",
            flush_interval_s=0.05,
            spool_dir=str(tmp_path_factory.mktemp("spool")),
        ),
        log_format="console",
        log_level="warning",
    )
    async with AsyncTestClient(app=create_app(with_auth(settings))) as c:
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def document(keyed: Client) -> dict[str, Any]:
    """The document as a client downloads it."""
    response = await keyed.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def response_validator(
    document: dict[str, Any], path: str, method: str, status: int
) -> jsonschema_rs.Validator:
    """A 2020-12 validator of the JSON body the document promises for this answer."""
    content = document["paths"][path][method]["responses"][str(status)]["content"]
    schema = next(iter(content.values()))["schema"]
    return jsonschema_rs.Draft202012Validator(
        {**schema, "components": document["components"]}, validate_formats=True
    )


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(path, method, operation) for every operation of the document."""
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def concrete(path: str) -> str:
    """A request path for a path template."""
    for template, value in PATH_VALUES.items():
        path = path.replace(template, value)
    return path


def test_every_component_schema_is_standard(document: dict[str, Any]) -> None:
    """Every schema compiles under a standard 2020-12 validator: patterns are ECMA-262 (Python's
    ``\\A``/``\\Z`` anchors are not, and mean a literal ``A``/``Z`` there)."""
    refused = {}
    for name in document["components"]["schemas"]:
        ref = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
        try:
            jsonschema_rs.Draft202012Validator(ref, validate_formats=True)
        except jsonschema_rs.ValidationError as exc:
            refused[name] = str(exc)[:300]
    assert not refused, refused


@pytest.mark.parametrize(
    "policy",
    [
        {"kind": "vw_cb"},
        {"kind": "vw_cb", "interactions": ["UA", "UUA"], "extra_args": ["--l2", "1e-6"]},
        {"kind": "thompson"},
        {"kind": "epsilon_greedy"},
        {"kind": "fixed"},
    ],
)
async def test_experiment_answers_validate(
    keyed: Client, document: dict[str, Any], policy: dict[str, Any]
) -> None:
    """Created, read, listed, updated and started experiments of every policy kind validate
    against the published schema of their operation (vw_cb's string lists did not)."""
    admin = bearer(SECRETS["admin"])
    key = "oa" + uuid.uuid4().hex[:8]
    spec = {
        "key": key,
        "placement": "p" + key,
        "variants": [{"key": "a"}, {"key": "b"}],
        "default_variant": "a",
        "policy": policy,
    }
    answers = [
        (
            "/v1/experiments",
            "post",
            201,
            await keyed.post("/v1/experiments", json=spec, headers=admin),
        ),
        (
            "/v1/experiments/{key}",
            "get",
            200,
            await keyed.get(f"/v1/experiments/{key}", headers=admin),
        ),
        ("/v1/experiments", "get", 200, await keyed.get("/v1/experiments", headers=admin)),
        (
            "/v1/experiments/{key}",
            "put",
            200,
            await keyed.put(f"/v1/experiments/{key}", json=spec, headers=admin),
        ),
        (
            "/v1/experiments/{key}/start",
            "post",
            200,
            await keyed.post(f"/v1/experiments/{key}/start", headers=admin),
        ),
        (
            "/v1/experiments/{key}/history",
            "get",
            200,
            await keyed.get(f"/v1/experiments/{key}/history", headers=admin),
        ),
    ]
    for path, method, status, response in answers:
        assert response.status_code == status, (path, method, response.text)
        validator = response_validator(document, path, method, status)
        errors = [str(e)[:300] for e in validator.iter_errors(response.json())]
        assert not errors, (path, method, errors)


async def test_allow_lists_every_method_of_the_path(
    keyed: Client, document: dict[str, Any]
) -> None:
    """``OPTIONS`` answers ``Allow`` with exactly the path's operations (and ``OPTIONS``), and an
    unsupported method is a 405 whose ``Allow`` lists them too (4 paths said less)."""
    wrong = {}
    admin = bearer(SECRETS["admin"])  # OPTIONS passes its controller's guard
    for path, item in document["paths"].items():
        declared = {m.upper() for m in item if m in METHODS}
        options = await keyed.options(concrete(path), headers=admin)
        allowed = {m.strip() for m in options.headers.get("allow", "").split(",") if m.strip()}
        if options.status_code != 204 or allowed != declared | {"OPTIONS"}:
            wrong[f"OPTIONS {path}"] = (options.status_code, sorted(allowed))
        refused = await keyed.request("PATCH", concrete(path), headers=admin)
        allowed = {m.strip() for m in refused.headers.get("allow", "").split(",") if m.strip()}
        if refused.status_code != 405 or allowed != declared | {"OPTIONS"}:
            wrong[f"PATCH {path}"] = (refused.status_code, sorted(allowed))
    assert not wrong, wrong


def test_security_schemes_are_declared(document: dict[str, Any]) -> None:
    """The document declares the three ways to present a key, and every guarded operation
    (all but the operations endpoints) lists which it takes and which scopes it needs."""
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    assert (schemes["apiKeyHeader"]["type"], schemes["apiKeyHeader"]["in"]) == ("apiKey", "header")
    assert schemes["apiKeyHeader"]["name"] == "X-API-Key"
    assert (schemes["apiKeyQuery"]["in"], schemes["apiKeyQuery"]["name"]) == ("query", "key")
    for path, method, operation in operations(document):
        if path.startswith(OPEN):
            assert "security" not in operation, path
            continue
        names = {name for requirement in operation["security"] for name in requirement}
        assert {"bearer", "apiKeyHeader"} <= names, (path, method)
        scopes = operation["x-tailor-scopes"]
        assert ("apiKeyQuery" in names) == ("decide" in scopes or path.startswith("/reports")), (
            path,
            method,
        )
        assert "scope" in operation["description"], (path, method)


async def test_declared_scopes_are_the_enforced_ones(
    keyed: Client, document: dict[str, Any]
) -> None:
    """For every guarded operation, a key of a scope outside ``x-tailor-scopes`` gets 403 and a
    key of a listed scope (or admin) passes the guard; a decide key in ``?key=`` is read exactly
    where ``apiKeyQuery`` is declared."""
    wrong = {}
    guarded = [op for op in operations(document) if not op[0].startswith(OPEN)]
    assert len(guarded) >= 25
    for path, method, operation in guarded:
        if "x-tailor-scopes" not in operation:
            wrong[f"{method} {path}"] = "no x-tailor-scopes"
            continue
        listed = set(operation["x-tailor-scopes"]) | {"admin"}
        body = {} if method in ("post", "put") else None
        for scope, secret in SECRETS.items():
            response = await keyed.request(
                method.upper(), concrete(path), json=body, headers=bearer(secret)
            )
            refused = response.status_code in (401, 403)
            if refused == (scope in listed):
                wrong[f"{method} {path} {scope}"] = response.status_code
        query = any("apiKeyQuery" in r for r in operation["security"])
        response = await keyed.request(
            method.upper(), concrete(path), json=body, params={"key": SECRETS["decide"]}
        )
        if (response.status_code == 401) == query:
            wrong[f"{method} {path} ?key="] = response.status_code
    assert not wrong, wrong


@pytest.mark.parametrize(
    ("python", "ecma"),
    [
        (r"\A[a-z]{1,3}\Z", r"^[a-z]{1,3}$"),
        (r"\Akey_[0-9a-f]{12}\Z", r"^key_[0-9a-f]{12}$"),
        (r"[a-z]+", r"[a-z]+"),
        (r"\A[^\\]*\\Z", r"^[^\\]*\\Z"),  # an escaped backslash before Z is no anchor
    ],
)
def test_ecma_pattern(python: str, ecma: str) -> None:
    """Whole-string anchors become ECMA-262 ones; anything else is left alone."""
    assert ecma_pattern(python) == ecma


def test_portable_document_drops_the_empty_tuple_branch() -> None:
    """A variable tuple's ``{}`` branch goes; other ``oneOf`` lists are kept."""
    node = {
        "a": {"type": "array", "items": {"oneOf": [{"type": "string"}, {}]}, "maxItems": 8},
        "b": {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "null"}]}},
    }
    assert portable_document(node) == {
        "a": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
        "b": {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "null"}]}},
    }


async def test_decide_and_bulk_decide_document_explain(document: dict[str, Any]) -> None:
    """Both decision bodies document ``explain`` (a boolean, false by default) and the answers
    document ``explanation``."""
    schemas = document["components"]["schemas"]
    for body in ("DecideRequest", "BatchDecideRequest"):
        explain = schemas[body]["properties"]["explain"]
        assert explain.get("type") == "boolean" and explain.get("default") is False, explain
    assert "explanation" in schemas["PlacementDecision"]["properties"]


async def test_slates_are_documented(document: dict[str, Any]) -> None:
    """The decide body documents ``slates`` (per placement: 1-50 slots, candidates with ids and
    features), the answer ``slate`` (slot, item, propensity), outcomes ``item``/``slot``, and
    experiments take the ``vw_slates`` policy."""
    schemas = document["components"]["schemas"]
    slates = schemas["DecideRequest"]["properties"]["slates"]
    assert slates["additionalProperties"] == {"$ref": "#/components/schemas/SlateRequest"}
    slots = schemas["SlateRequest"]["properties"]["slots"]
    assert (slots["minimum"], slots["maximum"]) == (1, 50)
    candidates = schemas["SlateRequest"]["properties"]["candidates"]
    assert (candidates["minItems"], candidates["maxItems"]) == (1, 500)
    assert set(schemas["SlateCandidate"]["properties"]) == {"id", "features"}
    answer = schemas["PlacementDecision"]["properties"]["slate"]
    assert {"items": {"$ref": "#/components/schemas/SlotDecision"}, "type": "array"} in answer[
        "oneOf"
    ]
    assert set(schemas["SlotDecision"]["required"]) == {"slot", "item", "propensity"}
    assert {"item", "slot"} <= set(schemas["OutcomeRequest"]["properties"])
    assert "VWSlatesConfig" in schemas
