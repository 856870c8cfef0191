"""Operations: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from redis.exceptions import RedisError

from decision_api.services import Services
from tailor_contract.wire import Health


@get("/healthz", tags=["ops"], include_in_schema=True)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@get(
    "/readyz",
    tags=["ops"],
    responses={503: ResponseSpec(Health, description="A backend is unreachable")},
)
async def readyz(services: NamedDependency[Services]) -> Response[Health]:
    """Redis and the event log answer and accepted events are durable; 503 otherwise.

    ``checks.events`` is ``memory_only`` while the writer holds events that neither the event
    log nor the disk spool would take: a crash would lose them, so the worker is not ready.
    """
    checks: dict[str, str] = {}
    try:
        await services.redis.ping()
        checks["redis"] = "ok"
    except RedisError as exc:
        checks["redis"] = f"down: {type(exc).__name__}"
    log_ok = await asyncio.to_thread(services.event_log.ping)
    checks["event_log"] = "ok" if log_ok else "down"
    checks["spool"] = "empty" if services.writer.healthy else "replaying"
    durable = services.writer.durable
    checks["events"] = "durable" if durable else "memory_only"
    ready = checks["redis"] == "ok" and log_ok and durable
    return Response(
        Health(status="ready" if ready else "unavailable", checks=checks),
        status_code=200 if ready else 503,
    )


@get("/metrics", tags=["ops"], media_type="text/plain; version=0.0.4")
async def metrics(services: NamedDependency[Services]) -> bytes:
    """Prometheus text exposition."""
    return services.metrics.render()
