"""Hostile input beyond the basic bad-input table: feature counts and sizes, nesting, key ids.

(test_bad_input.py covers syntax, types, placements, context and body size; test_batch.py the
recipients per batch; test_admin_api.py the rule depth.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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


# --- Issue 13: anchored patterns, strict types, bounded event times --------------------------

HEX = "0123456789abcdef" * 2
NL_ID = HEX + "\n"
SPEC = {
    "key": "k13",
    "placement": "p13",
    "default_variant": "a",
    "variants": [{"key": "a"}, {"key": "b"}],
}
OUT = {"type": "click", "unit_id": "u-1"}
EXPOSURE = {
    "event_id": HEX,
    "decision_id": "d1",
    "unit_id": "u-1",
    "experiment": "k13",
    "experiment_version": 1,
    "placement": "p13",
    "variant": "a",
    "reason": "split",
    "propensity": 0.5,
    "ts": "2026-01-01T00:00:00Z",
}


def ago(days: float) -> str:
    """An RFC 3339 time ``days`` before now (negative: in the future)."""
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


def exposure_at(ts: str, **changes: Any) -> dict[str, Any]:
    """An exposure report of experiment k13 at ``ts``."""
    return {**EXPOSURE, "ts": ts, **changes}


# A trailing newline passes an unanchored ``^...$`` pattern (msgspec uses re.search).
NEWLINE_CASES: list[tuple[str, str, Any, str]] = [
    ("POST", "/v1/outcomes", {**OUT, "event_id": NL_ID}, "$.event_id"),
    ("POST", "/v1/outcomes/batch", {"outcomes": [OUT, {**OUT, "event_id": NL_ID}]},
     "$.outcomes[1].event_id"),
    ("POST", "/v1/exposures/batch", {"exposures": [exposure_at(ago(0), event_id=NL_ID)]},
     "$.exposures[0].event_id"),
    ("POST", "/v1/exposures/batch", {"exposures": [exposure_at(ago(0), experiment="k13\n")]},
     "$.exposures[0].experiment"),
    ("POST", "/v1/exposures/batch", {"exposures": [exposure_at(ago(0), variant="a\n")]},
     "$.exposures[0].variant"),
    ("POST", "/v1/outcomes", {**OUT, "unit_id": "u-1\n"}, "$.unit_id"),
    ("POST", "/v1/outcomes", {**OUT, "type": "click\n"}, "$.type"),
    ("POST", "/v1/outcomes", {**OUT, "decision_id": "d1\n"}, "$.decision_id"),
    ("POST", "/v1/decide", {"unit_id": "u-1\n", "placements": ["home"]}, "$.unit_id"),
    ("POST", "/v1/decide", {"unit_id": "u-1", "placements": ["home\n"]}, "$.placements[0]"),
    ("POST", "/v1/events", {"unit_id": "u-1", "type": "view\n"}, "$.type"),
    ("POST", "/v1/experiments", {**SPEC, "key": "nlkey\n"}, "$.key"),
    ("POST", "/v1/experiments", {**SPEC, "variants": [{"key": "a"}, {"key": "b\n"}]},
     "$.variants[1].key"),
    ("POST", "/v1/experiments", {**SPEC, "primary_metric": "m\n"}, "$.primary_metric"),
    ("POST", "/v1/keys", {"scopes": ["decide"], "name": "n\n"}, "$.name"),
    ("PUT", "/v1/units/u-1%0A/features", {"features": {"a": 1}}, "path:unit_id"),
    ("DELETE", "/v1/keys/key_0123456789ab%0A", None, "path:key_id"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "field"), NEWLINE_CASES)
async def test_a_trailing_newline_is_a_422_naming_the_field(
    shared_client: Client, method: str, path: str, body: Any, field: str
) -> None:
    """Ids, keys and names with a trailing newline are refused (422 naming the field), never a
    500 and never stored."""
    response = await shared_client.request(method, path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field


# Values of the wrong JSON type are refused, never coerced (Litestar converts leniently).
STRICT_CASES: list[tuple[str, str, Any, str, str]] = [
    ("PUT", "/v1/kill-switch", {"engaged": "true"}, "$.engaged", "Expected `bool`"),
    ("PUT", "/v1/kill-switch", {"engaged": 1}, "$.engaged", "Expected `bool`"),
    ("PUT", "/v1/units/u-1/consent", {"personalization": 0}, "$.personalization",
     "Expected `bool`"),
    ("PUT", "/v1/units/u-1/consent", {"personalization": "false"}, "$.personalization",
     "Expected `bool`"),
    ("POST", "/v1/outcomes", {**OUT, "value": "10"}, "$.value", "Expected `float`"),
    ("POST", "/v1/outcomes/batch", {"outcomes": [{**OUT, "value": "10"}]},
     "$.outcomes[0].value", "Expected `float`"),
    ("POST", "/v1/events", {"unit_id": "u-1", "type": "buy", "value": "10"}, "$.value",
     "Expected `float`"),
    ("POST", "/v1/decide", {"unit_id": "u-1", "placements": ["home"], "consent": "yes"},
     "$.consent", "Expected `bool`"),
    ("POST", "/v1/exposures/batch", {"exposures": [exposure_at(ago(0), propensity="0.5")]},
     "$.exposures[0].propensity", "Expected `float`"),
    ("POST", "/v1/exposures/batch",
     {"exposures": [exposure_at(ago(0), experiment_version="1")]},
     "$.exposures[0].experiment_version", "Expected `int`"),
    ("POST", "/v1/keys", {"scopes": ["decide"], "burst": "10"}, "$.burst", "Expected `int | null`"),
    ("POST", "/v1/experiments", {**SPEC, "traffic": "1"}, "$.traffic", "Expected `float`"),
    ("POST", "/v1/experiments", {**SPEC, "variants": [{"key": "a", "weight": -0.0},
                                                      {"key": "b"}]},
     "$.variants[0].weight", "negative zero"),
    ("POST", "/v1/experiments", {**SPEC, "variants": [{"key": "a", "weight": "2"},
                                                      {"key": "b"}]},
     "$.variants[0].weight", "Expected `float`"),
    ("POST", "/v1/experiments", {**SPEC, "kind": "send_time", "variants": [],
                                 "send_time": {"default": {"kind": "local_hour", "hour": 25}}},
     "$.send_time.default.hour", "0..23"),
    ("POST", "/v1/experiments", {**SPEC, "kind": "send_time", "variants": [],
                                 "send_time": {"hours": "hour_of_week",
                                               "default": {"kind": "local_hour", "hour": 168}}},
     "$.send_time.default.hour", "<= 167"),
    ("POST", "/v1/decide/batch", {"campaign": "c", "placements": ["home"],
                                  "recipients": [{"unit_id": "u"}],
                                  "default_send_time": {"kind": "local_hour", "hour": -1}},
     "$.default_send_time.hour", ">= 0"),
    ("POST", "/v1/decide/batch", {"campaign": "c", "placements": ["home"],
                                  "recipients": [{"unit_id": "u", "consent": "true"}]},
     "$.recipients[0].consent", "Expected `bool`"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "field", "match"), STRICT_CASES)
async def test_wrong_types_are_refused_not_coerced(
    shared_client: Client, method: str, path: str, body: Any, field: str, match: str
) -> None:
    """A string for a bool or a number (or a bool for a number) is a 422 naming the field."""
    response = await shared_client.request(method, path, json=body)
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["field"] == field
    assert match in error["message"]


async def test_the_kill_switch_stays_released_after_a_string_true(shared_client: Client) -> None:
    """``{"engaged": "true"}`` does not engage the kill switch."""
    assert (await shared_client.put("/v1/kill-switch", json={"engaged": "true"})).status_code == 422
    assert (await shared_client.get("/v1/kill-switch")).json()["engaged"] is False


# Event times far from now would make one insert span too many monthly partitions.
TIME_CASES: list[tuple[str, str, Any, str]] = [
    ("POST", "/v1/outcomes", {**OUT, "ts": "0001-01-01T00:00:00Z"}, "$.ts"),
    ("POST", "/v1/outcomes", {**OUT, "ts": "9999-12-31T00:00:00Z"}, "$.ts"),
    ("POST", "/v1/outcomes", {**OUT, "ts": ago(31)}, "$.ts"),
    ("POST", "/v1/outcomes", {**OUT, "ts": ago(-0.1)}, "$.ts"),
    ("POST", "/v1/outcomes/batch", {"outcomes": [{**OUT, "ts": ago(1)},
                                                 {**OUT, "ts": "1970-01-01T00:00:00Z"}]},
     "$.outcomes[1].ts"),
    ("POST", "/v1/exposures/batch", {"exposures": [exposure_at(ago(0)),
                                                   exposure_at("0001-01-01T00:00:00Z")]},
     "$.exposures[1].ts"),
    ("POST", "/v1/exposures/batch", {"exposures": [exposure_at("9999-12-31T00:00:00Z")]},
     "$.exposures[0].ts"),
    ("POST", "/v1/events", {"unit_id": "u-1", "type": "view", "ts": ago(401)}, "$.ts"),
    ("POST", "/v1/events", {"unit_id": "u-1", "type": "view", "ts": "0001-01-01T00:00:00Z"},
     "$.ts"),
    ("GET", "/v1/experiments/k13/report?to=9999-12-31", None, "$.to"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "field"), TIME_CASES)
async def test_times_outside_the_window_are_a_422_naming_the_field(
    shared_client: Client, method: str, path: str, body: Any, field: str
) -> None:
    """Times more than 30 days back or an hour ahead (and dates past 9999-12-31) are a 422
    naming the field; nothing of a refused batch is logged."""
    response = await shared_client.request(method, path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field


async def test_times_inside_the_window_are_accepted(shared_client: Client) -> None:
    """An outcome 29 days old and one 30 minutes ahead are accepted."""
    body = {"outcomes": [{**OUT, "ts": ago(29)}, {**OUT, "ts": ago(-1 / 48)}]}
    response = await shared_client.post("/v1/outcomes/batch", json=body)
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("line", "match"),
    [("u{1},2024-03-01T10:00:00Z,a,0.5", "unit_id 'u{1}'"),
     ('"u\n1",2024-03-01T10:00:00Z,a,0.5', "unit_id 'u\\n1'"),
     ("u1,9999-03-01T10:00:00Z,a,0.5", "ts 9999-03-01T10:00:00+00:00 must be from")],
)  # fmt: skip
async def test_an_import_with_an_id_or_time_the_api_refuses_is_a_422(
    shared_client: Client, line: str, match: str
) -> None:
    """The import route refuses unit ids the API refuses and times out of range: 422 naming the
    row, nothing imported."""
    spec = {**SPEC, "key": "imp13", "placement": "imp13"}
    assert (await shared_client.post("/v1/experiments", json=spec)).status_code in (201, 409)
    body = f"unit_id,ts,variant,propensity\nok,2024-03-01T10:00:00Z,a,0.5\n{line}\n"
    response = await shared_client.post(
        "/v1/experiments/imp13/imports?format=csv", content=body.encode()
    )
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert error["field"] == "$.rows[2]"
    assert match in error["message"]
