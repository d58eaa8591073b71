"""Errors the proxy answers with (rendered as ``{"error": {"code", "message"}}``)."""

from __future__ import annotations

from typing import Any

from visiona.kit.errors import AppError, ForbiddenError


class DeviceOfflineError(AppError):
    """The device has no live tunnel on this node."""

    status_code = 502
    code = "device_offline"
    default_message = "The device is not connected."


class DeviceUnreachableError(AppError):
    """The tunnel is up but the agent could not deliver the request or sent no valid answer."""

    status_code = 502
    code = "device_unreachable"
    default_message = "The device did not answer the request."


class DeviceTimeoutError(AppError):
    """No response head from the device within ``proxy_response_timeout``."""

    status_code = 504
    code = "device_timeout"
    default_message = "The device did not answer in time."


class ReservedPathError(ForbiddenError):
    """The proxy target is ``/visiona/...``: the agent handles those paths itself."""

    code = "reserved_path"
    default_message = "Paths under /visiona/ are reserved for the agent and cannot be proxied."


class ForbiddenByAgentError(ForbiddenError):
    """The agent's own policy refused the request (relayed from the agent, never raised here).

    Declared so the proxy's OpenAPI lists the code; the agent answers it itself
    (``X-Visiona-Refused: policy``) and the request never reaches the local service.
    """

    code = "forbidden_by_agent"
    default_message = "The device's agent does not allow this request."


class DeviceBusyError(AppError):
    """The device takes no more proxied requests now: 429 with ``Retry-After``.

    ``reason``: ``inflight`` (``VISIONA_PROXY_MAX_INFLIGHT_PER_DEVICE`` requests already
    in flight), ``deploying`` or ``busy`` (with ``VISIONA_PROXY_DURING_DEPLOY=refuse``:
    a deployment in progress, or the agent reported its local service busy).
    """

    status_code = 429
    code = "device_busy"
    default_message = "The device is busy; retry later."

    def __init__(self, reason: str, retry_after: int, message: str | None = None) -> None:
        """Refuse for ``reason``; ask the client to retry after ``retry_after`` seconds."""
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})
        self.reason = reason

    def body(self) -> dict[str, Any]:
        """The error body, with the ``reason``."""
        body = super().body()
        body["error"]["reason"] = self.reason
        return body


class TunnelUnavailableError(AppError):
    """A tunnel upgrade refused before the handshake: 503 with ``Retry-After``.

    ``reason``: ``paced`` (more upgrades than ``VISIONA_TUNNEL_ACCEPT_RATE`` per
    second), ``capacity`` (the tunnels would eat the file descriptors kept for the API,
    ``VISIONA_TUNNEL_FD_RESERVE``) or ``draining`` (the node is stopping).
    """

    status_code = 503
    code = "tunnel_unavailable"
    default_message = "The node takes no new tunnel now; retry later."

    def __init__(self, reason: str, retry_after: int, message: str | None = None) -> None:
        """Refuse for ``reason``; ask the agent to retry after ``retry_after`` seconds."""
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})
        self.reason = reason

    def body(self) -> dict[str, Any]:
        """The error body, with the ``reason``."""
        body = super().body()
        body["error"]["reason"] = self.reason
        return body
