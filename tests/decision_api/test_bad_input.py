"""Bad input on every write endpoint: a 4xx problem-details body naming the field, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from decision_api.app import create_app
from decision_api.settings import DecisionSettings, Settings

Client = AsyncTestClient[Litestar]
MAX_PLACEMENTS = 3
MAX_BODY = 4096


@pytest.fixture(scope="module")
async def client(shared_settings: Settings) -> AsyncIterator[Client]:
    """An app with small limits: 3 placements per decision, 4 KiB bodies."""
    limits = DecisionSettings(
        max_placements=MAX_PLACEMENTS, max_body_bytes=MAX_BODY, config_poll_interval_s=0.05
    )
    app = create_app(msgspec.structs.replace(shared_settings, decisions=limits))
    async with AsyncTestClient(app=app) as c:
        yield c


DECIDE = {"unit_id": "u-1", "placements": ["home"]}
OUTCOME = {"unit_id": "u-1", "type": "purchase"}
EVENT = {"unit_id": "u-1", "type": "page_view"}
Body = dict[str, Any] | bytes

CASES: list[tuple[str, str, Body, int, str, str]] = [
    # decide: syntax, shape, types, limits
    ("POST", "/v1/decide", b'{"unit_id": ', 400, "$", "truncated"),
    ("POST", "/v1/decide", b'{"unit_id": "u", }', 400, "$", "malformed"),
    ("POST", "/v1/decide", b"", 400, "$", "body is required"),
    ("POST", "/v1/decide", b"[1, 2]", 422, "$", "Expected `object`, got `array`"),
    ("POST", "/v1/decide", {**DECIDE, "colour": "red"}, 422, "$.colour", "unknown field"),
    ("POST", "/v1/decide", {"placements": ["home"]}, 422, "$.unit_id", "missing required"),
    ("POST", "/v1/decide", {**DECIDE, "unit_id": 123}, 422, "$.unit_id", "Expected `str`"),
    ("POST", "/v1/decide", {**DECIDE, "unit_id": ""}, 422, "$.unit_id", "length >= 1"),
    ("POST", "/v1/decide", {**DECIDE, "unit_id": "x" * 257}, 422, "$.unit_id", "length <= 256"),
    ("POST", "/v1/decide", {**DECIDE, "unit_id": "a\nb"}, 422, "$.unit_id", "regex"),
    ("POST", "/v1/decide", {**DECIDE, "placements": "home"}, 422, "$.placements",
     "Expected `array`"),
    ("POST", "/v1/decide", {**DECIDE, "placements": []}, 422, "$.placements", "length >= 1"),
    ("POST", "/v1/decide", {**DECIDE, "placements": ["a", "b", "c", "d"]}, 422, "$.placements",
     "at most 3 placements"),
    ("POST", "/v1/decide", {**DECIDE, "placements": ["no spaces"]}, 422, "$.placements[0]",
     "regex"),
    ("POST", "/v1/decide", {**DECIDE, "consent": "yes"}, 422, "$.consent", "Expected `bool`"),
    ("POST", "/v1/decide", {**DECIDE, "context": ["device"]}, 422, "$.context",
     "Expected `object`"),
    ("POST", "/v1/decide", {**DECIDE, "context": {"page": "x" * 1025}}, 422, "$.context[...]",
     "length <= 1024"),
    ("POST", "/v1/decide", {**DECIDE, "context": {"geo": {"lat": 1}}}, 422, "$.context[...]",
     "got `object`"),
    ("POST", "/v1/decide", {**DECIDE, "context": {"bad key": 1}}, 422, "$.context", "regex"),
    ("POST", "/v1/decide", {**DECIDE, "context": {f"k{i}": i for i in range(101)}}, 422,
     "$.context", "length <= 100"),
    ("POST", "/v1/decide", {**DECIDE, "context": {"pad": "x" * MAX_BODY}}, 413, "$",
     "Too Large"),
    # outcomes
    ("POST", "/v1/outcomes", {"type": "purchase"}, 422, "$.decision_id",
     "needs `decision_id` or `unit_id`"),
    ("POST", "/v1/outcomes", {"unit_id": "u-1"}, 422, "$.type", "missing required"),
    ("POST", "/v1/outcomes", {**OUTCOME, "type": "Purchase!"}, 422, "$.type", "regex"),
    ("POST", "/v1/outcomes", {**OUTCOME, "decision_id": "has space"}, 422, "$.decision_id",
     "regex"),
    ("POST", "/v1/outcomes", {**OUTCOME, "ts": "yesterday"}, 422, "$.ts", "RFC3339"),
    ("POST", "/v1/outcomes", {**OUTCOME, "ts": "2026-01-01T00:00:00"}, 422, "$.ts",
     "timezone"),
    ("POST", "/v1/outcomes", {**OUTCOME, "ts": True}, 422, "$.ts", "got `bool`"),
    ("POST", "/v1/outcomes", {**OUTCOME, "value": "twelve"}, 422, "$.value", "Expected `float`"),
    ("POST", "/v1/outcomes", {**OUTCOME, "value": 1e13}, 422, "$.value", "<= 1000000000000"),
    ("POST", "/v1/outcomes/batch", {"outcomes": []}, 422, "$.outcomes", "length >= 1"),
    ("POST", "/v1/outcomes/batch", {"outcomes": [OUTCOME, {"type": "click"}]}, 422,
     "$.outcomes[1].decision_id", "needs `decision_id` or `unit_id`"),
    # events
    ("POST", "/v1/events", {"type": "page_view"}, 422, "$.unit_id", "missing required"),
    ("POST", "/v1/events", {**EVENT, "unit_id": ""}, 422, "$.unit_id", "length >= 1"),
    ("POST", "/v1/events", {**EVENT, "ts": "2026-13-01T00:00:00Z"}, 422, "$.ts", "RFC3339"),
    ("POST", "/v1/events", {**EVENT, "value": [1]}, 422, "$.value", "Expected `float`"),
    ("POST", "/v1/events", {**EVENT, "properties": {"category": "x" * 1025}}, 422,
     "$.properties[...]", "length <= 1024"),
    # features
    ("PUT", "/v1/units/u-1/features", {"features": {}}, 422, "$.features", "length >= 1"),
    ("PUT", "/v1/units/u-1/features", {"segment": "vip"}, 422, "$.segment", "unknown field"),
    ("PUT", "/v1/units/u-1/features", {"features": {"a": [1, 2]}}, 422, "$.features[...][0]",
     "Expected `str`"),
    ("PUT", "/v1/units/u-1/features", {"features": {"a": {"ts": "2026-01-01T00:00:00"}}}, 422,
     "$.features[...].ts", "timezone"),
    ("PUT", "/v1/units/u-1/features", b'{"features": {"a": NaN}}', 400, "$", "malformed"),
    ("PUT", "/v1/units/" + "x" * 300 + "/features", {"features": {"a": 1}}, 422,
     "path:unit_id", "length <= 256"),
    ("PUT", "/v1/units/a%0Ab/features", {"features": {"a": 1}}, 422, "path:unit_id", "regex"),
    # experiments (the definition rules have their own table in test_admin_api.py)
    ("POST", "/v1/experiments", {"key": "k"}, 422, "$.placement", "missing required"),
]  # fmt: skip


def _id(case: tuple[str, str, Body, int, str, str]) -> str:
    method, path, _, status, field, _ = case
    return f"{method} {path[:24]} {status} {field}"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field", "match"), CASES, ids=[_id(c) for c in CASES]
)
async def test_bad_input_is_a_4xx_naming_the_field(
    client: Client, method: str, path: str, body: Body, status: int, field: str, match: str
) -> None:
    """Each bad request gets the right 4xx and a problem body whose first error names the field."""
    if isinstance(body, bytes):
        kwargs: dict[str, Any] = {
            "content": body,
            "headers": {"content-type": "application/json"},
        }
    else:
        kwargs = {"json": body}
    response = await client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    assert problem["type"].startswith("https://tailor.dev/problems/")
    assert problem["request_id"] == response.headers["x-request-id"]
    assert problem["errors"], problem
    assert problem["errors"][0]["field"] == field
    assert match in problem["errors"][0]["message"]


async def test_limits_are_inclusive(client: Client) -> None:
    """Exactly the maximum number of placements, and a body just under the limit, are accepted."""
    ok = await client.post("/v1/decide", json={**DECIDE, "placements": ["a", "b", "c"]})
    assert ok.status_code == 200
    padded = {**DECIDE, "context": {"pad": "x" * 1000}}
    assert len(msgspec.json.encode(padded)) < MAX_BODY
    assert (await client.post("/v1/decide", json=padded)).status_code == 200


async def test_unknown_route_and_wrong_method_are_problem_details(client: Client) -> None:
    """An unknown path is a 404 and a wrong method a 405, both as problem details."""
    missing = await client.get("/v1/nothing-here")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    wrong = await client.get("/v1/decide")
    assert (wrong.status_code, wrong.json()["code"]) == (405, "method_not_allowed")
