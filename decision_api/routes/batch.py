"""``POST /v1/decide/batch``: variants and send times for many recipients (email, flows).

The body (up to ``decisions.max_batch_recipients`` recipients, 50,000 by default) is decoded in
one pass by msgspec straight into :class:`~tailor_contract.wire.BatchDecideRequest` (the
:class:`~decision_api.routes.bodies.StructBody` DTO, strict as every body of the API):
Litestar's default path decodes JSON into builtins and converts them, which costs about twice
as much for a large campaign. The OpenAPI schema documents the body all
the same. Answers are one JSON document, or with ``Accept: application/x-ndjson`` one line per
recipient; either way the body is streamed chunk by chunk as recipients are decided.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import numpy as np
from litestar import Controller, MediaType, Request, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body
from litestar.response import Stream

from decision_api.decisions.bulk import Campaign, check_campaign_default, decide_bulk
from decision_api.routes.bodies import StructBody
from decision_api.routes.guards import require
from decision_api.services import Services
from event_log.writer import now_ms
from tailor_contract.errors import InvalidInput
from tailor_contract.send_window import SendWindow
from tailor_contract.wire import BatchDecideRequest, BatchDecideResponse, RecipientDecision

NDJSON = "application/x-ndjson"
_encoder = msgspec.json.Encoder()


class NDJSONStream(Stream):
    """A streamed answer whose media type wins over the handler's (JSON) one."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        """The ASGI response, with ``application/x-ndjson`` as the content type."""
        kwargs["media_type"] = NDJSON
        return super().to_asgi_response(*args, **kwargs)


def check_window_open(window: SendWindow | None, at_ms: int) -> None:
    """Refuse a send window that has already closed at ``at_ms`` (epoch milliseconds).

    A window whose end is past could only give ``send_at`` instants in the past: the email
    system would send at once (or never), and the send-time policy would learn from hours it
    never chose. The start may be past: the campaign is then sent from now to the end.

    Raises:
        InvalidInput: naming ``$.send_window.end``.
    """
    if window is None or window.end.timestamp() * 1000 > at_ms:
        return
    now = datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="seconds")
    raise InvalidInput(
        f"send window end == {window.end.isoformat()}, must be in the future (now {now})",
        field="$.send_window.end",
    )


def campaign_of(data: BatchDecideRequest, services: Services) -> Campaign:
    """The campaign a request describes, after the checks that fail the whole request."""
    limit = services.settings.decisions.max_batch_recipients
    if len(data.recipients) > limit:
        raise InvalidInput(
            f"at most {limit} recipients per request, got {len(data.recipients)}; split the "
            "campaign into several requests",
            field="$.recipients",
        )
    check_window_open(data.send_window, now_ms())
    for placement in data.placements:
        for compiled in services.cache.for_placement(placement):
            exp = compiled.experiment
            if exp.kind != "send_time":
                continue
            if data.send_window is None:
                raise InvalidInput(
                    f"placement {placement!r} chooses send times: send_window is required",
                    field="$.send_window",
                )
            default = data.default_send_time or (exp.send_time.default if exp.send_time else None)
            if default is None:
                continue
            try:
                check_campaign_default(data.send_window, default, exp.send_time)
            except ValueError as exc:
                source = "" if data.default_send_time else f" (experiment {exp.key!r}'s default)"
                raise InvalidInput(f"{exc}{source}", field="$.default_send_time") from exc
    return Campaign(
        name=data.campaign,
        placements=tuple(data.placements),
        window=data.send_window,
        default_send_time=data.default_send_time,
        step=data.step,
        context=data.context,
        explain=data.explain,
        slates=data.slates,
    )


class BatchController(Controller):
    """Bulk decisions: one request for a whole campaign (or a chunk of it)."""

    path = "/v1/decide/batch"
    tags = ["decisions"]

    @post(
        "",
        guards=[require("ingest")],
        status_code=200,
        dto=StructBody[BatchDecideRequest],
        return_dto=None,
        responses={
            200: ResponseSpec(
                data_container=BatchDecideResponse,
                generate_examples=False,
                description=(
                    "Every recipient's answer, streamed as chunks are decided. With `Accept: "
                    "application/x-ndjson` the body is instead one `RecipientDecision` object "
                    "per line, in request order."
                ),
            )
        },
        description=(
            "Answers every recipient. With `Accept: application/x-ndjson` the answer streams one "
            "JSON object per recipient per line, in request order, as chunks are decided."
        ),
    )
    async def decide_batch(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[BatchDecideRequest, Body(media_type="application/json")],
        services: NamedDependency[Services],
    ) -> Stream:
        """Decide every placement (and send time) for every recipient."""
        campaign = campaign_of(data, services)
        batches = decide_bulk(
            services.engine,
            services.features,
            services.learning,
            data.recipients,
            campaign,
            now_ms=now_ms(),
            rng=np.random.default_rng(),
        )
        if NDJSON in request.headers.get("accept", ""):

            async def lines() -> AsyncIterator[bytes]:
                async for batch in batches:
                    yield _encoder.encode_lines(batch)

            return NDJSONStream(lines())
        return Stream(json_document(campaign.name, batches), media_type=MediaType.JSON)


async def json_document(
    campaign: str, batches: AsyncIterator[list[RecipientDecision]]
) -> AsyncIterator[bytes]:
    """The :class:`BatchDecideResponse` document, sent piece by piece as chunks are decided.

    Neither the answers nor the whole document are ever held: a 50,000-recipient answer is
    ~25 MB of JSON (more as objects), and the server's memory stays flat. The summary fields
    (``count``, ``errors``, ``degraded``) follow the recipients, once they are known.
    """
    yield b'{"campaign":' + _encoder.encode(campaign) + b',"recipients":['
    count = errors = 0
    degraded = False
    async for batch in batches:
        if not batch:
            continue
        piece = _encoder.encode(batch)[1:-1]
        yield piece if count == 0 else b"," + piece
        count += len(batch)
        errors += sum(1 for a in batch if a.error is not None)
        degraded = degraded or any(a.degraded for a in batch)
    flag = b"true" if degraded else b"false"
    yield b'],"count":%d,"errors":%d,"degraded":%s}' % (count, errors, flag)
