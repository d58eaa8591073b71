"""``/healthz`` and ``/metrics`` (no ``/api/v1`` prefix)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from visiona.auth.dependencies import SessionsDep
from visiona.cluster.dependencies import ClusterDep
from visiona.kit.deps import DatabaseDep, MetricsDep
from visiona.models.dependencies import StorageDep

_LOGGER = logging.getLogger(__name__)
CHECK_TIMEOUT = 1.0

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    """Overall status and one entry per dependency (`ok` or `unavailable`)."""

    status: str
    checks: dict[str, str]
    node: str | None = Field(
        None,
        description="This node's id in a cluster (absent on a single node): tells the "
        "nodes, or the workers of `serve --workers`, behind one address apart.",
    )


async def _check(name: str, probe: Any) -> tuple[str, str]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await probe()
    except Exception as err:  # noqa: BLE001 - any failure means "unavailable"
        _LOGGER.warning("health check %s failed: %s", name, type(err).__name__)
        return name, "unavailable"
    return name, "ok"


@router.get(
    "/healthz",
    response_model=Health,
    summary="Liveness and dependencies",
    responses={503: {"model": Health, "description": "A dependency is unavailable."}},
)
async def healthz(
    db: DatabaseDep, sessions: SessionsDep, storage: StorageDep, cluster: ClusterDep
) -> JSONResponse:
    """200 when the database, the session store and the object store answer within 1 s each.

    In a cluster, ``node`` names the node that answered."""
    checks = [
        _check("database", db.ping),
        _check("session_store", sessions.ping),
        _check("object_storage", storage.ping),
    ]
    results = dict(await asyncio.gather(*checks))
    healthy = all(value == "ok" for value in results.values())
    body: dict[str, Any] = {"status": "ok" if healthy else "unavailable", "checks": results}
    if cluster.node_id is not None:
        body["node"] = cluster.node_id
    if not healthy:
        failing = ", ".join(name for name, value in results.items() if value != "ok")
        body["error"] = {"code": "dependency_unavailable", "message": f"Unavailable: {failing}."}
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(registry: MetricsDep) -> Response:
    """Prometheus text exposition of this node's metrics."""
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
