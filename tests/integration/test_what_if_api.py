"""``POST /v1/experiments/{key}/what-if`` end to end: logged decisions in the event log, a
candidate config replayed over them, its value against the deployed policy's."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from decision_api.app import create_app
from decision_api.settings import Settings
from tests.integration.test_learning_loop import definition, start


@pytest.fixture
async def quiet_client(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """A client whose worker runs no learner: the logs are a fixed split's alone."""
    quiet = msgspec.structs.replace(
        settings, learner=msgspec.structs.replace(settings.learner, in_process=False)
    )
    async with AsyncTestClient(app=create_app(quiet)) as c:
        yield c


@pytest.fixture(scope="module")
async def quiet_module_client(
    shared_settings: Settings,
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """Like :func:`quiet_client`, one app for a module's tests of refused requests (each on an
    experiment and placement of its own)."""
    quiet = msgspec.structs.replace(
        shared_settings, learner=msgspec.structs.replace(shared_settings.learner, in_process=False)
    )
    async with AsyncTestClient(app=create_app(quiet)) as c:
        yield c


def own_key(prefix: str) -> str:
    """An experiment key (also used as its placement) no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# The visitor's segment decides which variant earns a click: "x" clicks on a, "y" on c.
CLICKS = {"x": "a", "y": "c"}


async def uniform_log(client: AsyncTestClient[Litestar], n: int, placement: str = "home") -> int:
    """``n`` decisions of the fixed uniform split on ``placement``, each clicked when it suits
    the segment; returns the number of clicks."""
    clicks = 0
    for i in range(n):
        segment = "x" if i % 2 == 0 else "y"
        got = await client.post(
            "/v1/decide",
            json={"unit_id": f"u{i}", "placements": [placement], "context": {"seg": segment}},
        )
        decision = got.json()
        if decision["decisions"][0]["variant"] == CLICKS[segment]:
            outcome = {"decision_id": decision["decision_id"], "type": "click"}
            assert (await client.post("/v1/outcomes", json=outcome)).status_code == 202
            clicks += 1
    return clicks


async def test_a_segmented_candidate_beats_the_uniform_split_on_its_logs(
    quiet_client: AsyncTestClient[Litestar],
) -> None:
    client = quiet_client
    await start(client, definition("wi", {"kind": "fixed"}))
    clicks = await uniform_log(client, 400)
    body = {"policy": {"kind": "thompson", "segment_by": "seg"}, "batch_size": 20}
    got = await client.post("/v1/experiments/wi/what-if", json=body)
    assert got.status_code == 200, got.text
    answer = got.json()
    assert answer["n"] == 400 and answer["policy"] == "thompson"
    deployed, candidate = answer["deployed"], answer["candidate"]
    # The deployed split's value is its observed click rate (every importance weight is 1).
    assert deployed["ips"]["estimate"] == pytest.approx(clicks / 400)
    assert deployed["ips"]["lower"] < clicks / 400 < deployed["ips"]["upper"]
    assert candidate["snips"]["estimate"] > 0.6
    assert answer["difference"]["lower"] > 0.2
    assert candidate["doubly_robust"]["estimate"] > deployed["doubly_robust"]["estimate"]


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"kind": "thompson", "min_share": 0.5}, "$.policy.min_share"),
        ({"kind": "thompson", "min_propensity": 0.4}, "$.policy.min_propensity"),
        ({"kind": "epsilon_greedy", "epsilon": 1.5}, "$.policy.epsilon"),
        ({"kind": "vw_cb", "extra_args": ["--data", "x"]}, "$.policy"),
        ({"kind": "vw_cb", "extra_args": ["--cover", "3", "--bag", "2"]}, "$.policy.extra_args"),
        ({"kind": "nope"}, "$.policy"),
        ({"kind": "send_time_thompson"}, "$.policy.kind"),
    ],
)
async def test_a_bad_candidate_config_is_a_422_naming_the_field(
    quiet_module_client: AsyncTestClient[Litestar], policy: dict[str, object], field: str
) -> None:
    key = own_key("wb")
    await start(quiet_module_client, definition(key, {"kind": "fixed"}, placement=key))
    got = await quiet_module_client.post(f"/v1/experiments/{key}/what-if", json={"policy": policy})
    assert got.status_code == 422, got.text
    problem = got.json()
    fields = [e["field"] for e in problem.get("errors", [])] + [problem.get("field")]
    assert any(f is not None and f.startswith(field) for f in fields), problem


async def test_without_logged_decisions_the_what_if_is_a_409(
    quiet_client: AsyncTestClient[Litestar],
) -> None:
    await start(quiet_client, definition("we", {"kind": "fixed"}))
    got = await quiet_client.post("/v1/experiments/we/what-if", json={"policy": {"kind": "vw_cb"}})
    assert got.status_code == 409, got.text
