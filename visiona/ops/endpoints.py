"""``/healthz`` and ``/metrics`` (no ``/api/v1`` prefix)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from visiona.auth.dependencies import SessionsDep
from visiona.cluster.dependencies import ClusterDep
from visiona.kit.deps import DatabaseDep, MetricsDep, SettingsDep
from visiona.kit.direct import solved_get
from visiona.kit.errors import UnauthorizedError
from visiona.kit.http import error_responses
from visiona.kit.jsonout import JSONOut
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


@solved_get(
    router,
    "/healthz",
    response_model=Health,
    summary="Liveness and dependencies",
    responses={503: {"model": Health, "description": "A dependency is unavailable."}},
)
async def healthz(
    db: DatabaseDep, sessions: SessionsDep, storage: StorageDep, cluster: ClusterDep
) -> JSONOut:
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
    return JSONOut(body, status_code=200 if healthy else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses=error_responses(UnauthorizedError),
)
async def metrics(request: Request, registry: MetricsDep, settings: SettingsDep) -> Response:
    """Prometheus text exposition of this node's metrics.

    With ``VISIONA_METRICS_TOKEN`` set, only for ``Authorization: Bearer <that token>``
    (401 ``unauthorized`` otherwise); unset, for anyone who reaches the node: the
    reverse proxy in front keeps it private (docs/nginx.conf answers 404 from outside).
    """
    token = settings.metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        expected = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise UnauthorizedError(
                "The metrics need the bearer token of VISIONA_METRICS_TOKEN.",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
