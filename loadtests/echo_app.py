"""The yardstick for ``bench_serving.py``: a Litestar + msgspec app that does no decision at all.

``POST /v1/decide`` decodes the body strictly as a :class:`~tailor_contract.wire.DecideRequest`
and answers a decide-shaped :class:`~tailor_contract.wire.DecideResponse` (a fresh decision id,
one placement decision per placement asked for). Served by the same server as Tailor (granian,
uvloop, one worker), its throughput is the most a decide endpoint can reach on this machine
with this stack; Tailor's throughput is reported as a ratio to it, measured in the same run.

Run: ``granian --interface asgi --loop uvloop --workers 1 loadtests.echo_app:app``.
"""

from __future__ import annotations

import uuid

import msgspec
from litestar import Litestar, Request, Response, post

from tailor_contract.wire import DecideRequest, DecideResponse, PlacementDecision

_decoder = msgspec.json.Decoder(DecideRequest)
_encoder = msgspec.json.Encoder()
_PAYLOAD = {"img": "a.png", "headline": "Welcome back"}


def _decision(placement: str) -> PlacementDecision:
    return PlacementDecision(
        placement=placement,
        reason="split",
        policy="fixed",
        experiment="echo",
        variant="control",
        payload=_PAYLOAD,
    )


@post("/v1/decide", status_code=200)
async def decide(request: Request[object, object, object]) -> Response[bytes]:
    """Decode a decide request and answer one split decision per placement."""
    body = _decoder.decode(await request.body())
    answer = DecideResponse(
        decision_id=uuid.uuid4().hex,
        degraded=False,
        decisions=[_decision(p) for p in body.placements],
    )
    return Response(_encoder.encode(answer), media_type="application/json")


app = Litestar(route_handlers=[decide], openapi_config=None)
