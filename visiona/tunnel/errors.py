"""Errors the proxy answers with (rendered as ``{"error": {"code", "message"}}``)."""

from __future__ import annotations

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
