"""``POST /v1/decide/batch``: variants and send times for many recipients (email, flows).

The body (up to ``decisions.max_batch_recipients`` recipients, 50,000 by default) is decoded in
one pass by msgspec straight into :class:`~tailor_contract.wire.BatchDecideRequest` (the
:class:`StructBody` DTO): Litestar's default path decodes JSON into builtins and converts them,
which costs about twice as much for a large campaign. The OpenAPI schema documents the body all
the same. Answers are one JSON document, or with ``Accept: application/x-ndjson`` one line per
recipient; either way the body is streamed chunk by chunk as recipients are decided.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Generator
from functools import cache
from typing import Annotated, Any, TypeVar

import msgspec
import numpy as np
from litestar import Controller, MediaType, Request, post
from litestar.di import NamedDependency
from litestar.dto import AbstractDTO, DTOConfig, DTOFieldDefinition
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body
from litestar.response import Stream
from litestar.typing import FieldDefinition

from decision_api.decisions.bulk import Campaign, check_campaign_default, decide_bulk
from decision_api.problems import from_validation_error
from decision_api.routes.guards import require
from decision_api.services import Services
from event_log.writer import now_ms
from tailor_contract.errors import BadRequest, InvalidInput
from tailor_contract.wire import BatchDecideRequest, BatchDecideResponse, RecipientDecision

NDJSON = "application/x-ndjson"
T = TypeVar("T")
_encoder = msgspec.json.Encoder()


@cache
def _decoder(model: Any) -> msgspec.json.Decoder[Any]:
    # strict=False: the same coercions as Litestar's own body conversion.
    return msgspec.json.Decoder(model, strict=False)


class StructBody(AbstractDTO[T]):
    """Decode a JSON body straight into its msgspec Struct (one pass, no builtins step).

    Validation errors become 422 problems naming the field (``$.recipients[3].unit_id``),
    unparseable JSON a 400; the OpenAPI schema is the Struct's own.
    """

    config = DTOConfig()

    @classmethod
    def generate_field_definitions(
        cls, model_type: type[Any]
    ) -> Generator[DTOFieldDefinition, None, None]:
        """No transfer model: the Struct is decoded as it is."""
        yield from ()

    @classmethod
    def detect_nested_field(cls, field_definition: FieldDefinition) -> bool:
        """Nothing is nested from the DTO's point of view."""
        return False

    @classmethod
    def create_for_field_definition(
        cls, field_definition: FieldDefinition, handler_id: str, backend_cls: Any = None
    ) -> None:
        """No backend to build."""

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: Any
    ) -> Any:
        """The Struct's schema, as Litestar documents any msgspec body."""
        return schema_creator.for_field_definition(
            FieldDefinition.from_annotation(
                cls.model_type, kwarg_definition=field_definition.kwarg_definition
            )
        )

    def decode_bytes(self, value: bytes) -> Any:
        """Decode and validate the raw body."""
        model: object = self.model_type
        try:
            return _decoder(model).decode(value)
        except msgspec.ValidationError as exc:
            raise from_validation_error(exc) from exc
        except msgspec.DecodeError as exc:
            raise BadRequest(f"JSON is malformed: {exc}", field="$") from exc

    def decode_builtins(self, value: Any) -> Any:
        """Convert already decoded builtins (form data never reaches this route)."""
        try:
            return msgspec.convert(value, self.model_type, strict=False)
        except msgspec.ValidationError as exc:
            raise from_validation_error(exc) from exc

    def data_to_encodable_type(self, data: T | Collection[T]) -> Any:
        """Answers are not encoded through this DTO."""
        return data


class NDJSONStream(Stream):
    """A streamed answer whose media type wins over the handler's (JSON) one."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        """The ASGI response, with ``application/x-ndjson`` as the content type."""
        kwargs["media_type"] = NDJSON
        return super().to_asgi_response(*args, **kwargs)


def campaign_of(data: BatchDecideRequest, services: Services) -> Campaign:
    """The campaign a request describes, after the checks that fail the whole request."""
    limit = services.settings.decisions.max_batch_recipients
    if len(data.recipients) > limit:
        raise InvalidInput(
            f"at most {limit} recipients per request, got {len(data.recipients)}; split the "
            "campaign into several requests",
            field="$.recipients",
        )
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
