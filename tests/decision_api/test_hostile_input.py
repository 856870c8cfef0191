"""Hostile input beyond the basic bad-input table: feature counts and sizes, nesting, key ids.

(test_bad_input.py covers syntax, types, placements, context and body size; test_batch.py the
recipients per batch; test_admin_api.py the rule depth.)
"""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

Client = AsyncTestClient[Litestar]
FEATURES = "/v1/units/u-1/features"

CASES: list[tuple[str, str, Any, int, str, str]] = [
    ("PUT", FEATURES, {"features": {f"f{i}": i for i in range(201)}}, 422, "$.features",
     "length <= 200"),
    ("PUT", FEATURES, {"features": {"bio": "x" * 1025}}, 422, "$.features[...]",
     "length <= 1024"),
    ("PUT", FEATURES, {"features": {"tags": ["t"] * 101}}, 422, "$.features[...]",
     "length <= 100"),
    ("PUT", FEATURES, {"features": {"tags": ["x" * 257]}}, 422, "$.features[...][0]",
     "length <= 256"),
    ("PUT", FEATURES, {"features": {"x" * 65: 1}}, 422, "$.features", "regex"),
    ("PUT", "/v1/units/a%7Bb/features", {"features": {"a": 1}}, 422, "path:unit_id", "regex"),
    ("POST", "/v1/decide", {"unit_id": "a}b", "placements": ["home"]}, 422, "$.unit_id",
     "regex"),
    ("PUT", "/v1/units/u-1/consent", {"personalization": "no"}, 422, "$.personalization",
     "Expected `bool`"),
    ("PUT", "/v1/kill-switch", {"engaged": "maybe"}, 422, "$.engaged", "Expected `bool`"),
    ("DELETE", "/v1/keys/not-a-key-id", None, 422, "path:key_id", "regex"),
    ("POST", "/v1/keys", {"scopes": ["decide"], "name": "x" * 101}, 422, "$.name",
     "length <= 100"),
    ("POST", "/v1/keys", {"scopes": ["decide"] * 5}, 422, "$.scopes", "length <= 4"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "field", "match"), CASES)
async def test_limits_are_4xx_naming_the_field(
    shared_client: Client, method: str, path: str, body: Any, status: int, field: str, match: str
) -> None:
    """Each oversized or malformed input is a 4xx problem naming the field."""
    response = await shared_client.request(method, path, json=body)
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["errors"][0]["field"] == field
    assert match in problem["errors"][0]["message"]


@pytest.mark.parametrize(
    ("path", "method", "wrap"),
    [
        ("/v1/decide", "POST", lambda deep: {"unit_id": "u", "placements": ["home"],
                                             "context": {"x": deep}}),
        ("/v1/experiments", "POST", lambda deep: {"key": "deep", "placement": "p",
                                                  "default_variant": "a",
                                                  "variants": [{"key": "a",
                                                                "payload": {"x": deep}}]}),
        (FEATURES, "PUT", lambda deep: {"features": {"x": deep}}),
    ],
)  # fmt: skip
async def test_deeply_nested_json_is_a_400(
    shared_client: Client, path: str, method: str, wrap: Any
) -> None:
    """JSON nested thousands deep is refused as a 4xx, never a 500 (stack exhaustion)."""
    depth = 20_000
    body = repr(wrap("DEEP")).replace("'", '"').replace('"DEEP"', "[" * depth + "]" * depth)
    response = await shared_client.request(
        method, path, content=body.encode(), headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
