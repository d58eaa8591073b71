"""One error root for the whole service.

Every error a client can see is an :class:`AppError` carrying an HTTP status and a
stable machine-readable ``code``; one handler renders it as
``{"error": {"code": ..., "message": ...}}``. Messages are written for clients and
never contain driver, SQL or stack text.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AppError(Exception):
    """Root of every error that is turned into an HTTP response."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "Internal server error."

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        self.message = message or self.default_message
        self.headers = headers or {}
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        """Return the JSON body for this error."""
        return {"error": {"code": self.code, "message": self.message}}


class BadRequestError(AppError):
    """The request is malformed in a way validation cannot express."""

    status_code = 400
    code = "bad_request"
    default_message = "Bad request."


class UnauthorizedError(AppError):
    """No credentials, or credentials that are not valid."""

    status_code = 401
    code = "unauthorized"
    default_message = "Authentication required."


class InvalidCredentialsError(UnauthorizedError):
    """Login with a wrong email or password (one message for both: no oracle)."""

    code = "invalid_credentials"
    default_message = "Invalid email or password."


class ForbiddenError(AppError):
    """Authenticated, but this request is not allowed."""

    status_code = 403
    code = "forbidden"
    default_message = "Forbidden."


class CsrfError(ForbiddenError):
    """A cookie-authenticated unsafe request without a same-origin ``Origin``."""

    code = "csrf_failed"
    default_message = "Cross-site request refused: a same-origin Origin header is required."


class NotFoundError(AppError):
    """Not found, or not the caller's (no cross-tenant existence oracle)."""

    status_code = 404
    code = "not_found"
    default_message = "Not found."


class MethodNotAllowedError(AppError):
    """The route exists but not for this method."""

    status_code = 405
    code = "method_not_allowed"
    default_message = "Method not allowed."


class RequestTimeoutError(AppError):
    """The request body stalled longer than ``body_read_timeout`` between two reads."""

    status_code = 408
    code = "request_timeout"
    default_message = "The request body did not arrive in time."


class ConflictError(AppError):
    """A uniqueness or reference rule would be broken."""

    status_code = 409
    code = "conflict"
    default_message = "The request conflicts with the current state of the resource."


class PayloadTooLargeError(AppError):
    """The request body is over the configured limit."""

    status_code = 413
    code = "payload_too_large"
    default_message = "Request body too large."


class HeadersTooLargeError(AppError):
    """The request head is over ``max_header_bytes`` or has more than ``max_headers``."""

    status_code = 431
    code = "headers_too_large"
    default_message = "Request headers too large or too many."


class ValidationFailedError(AppError):
    """The body, query or path failed validation; ``fields`` lists what and why."""

    status_code = 422
    code = "validation_error"
    default_message = "The request is not valid."

    def __init__(self, fields: list[dict[str, Any]], message: str | None = None):
        super().__init__(message)
        self.fields = fields

    def body(self) -> dict[str, Any]:
        """Return the JSON body, with the failing fields."""
        body = super().body()
        body["error"]["fields"] = self.fields
        return body


class InvalidValueError(AppError):
    """A value the database refuses (bad text, out of range) that validation let through."""

    status_code = 422
    code = "invalid_value"
    default_message = "A value in the request cannot be stored."


class RateLimitedError(AppError):
    """Too many attempts; ``Retry-After`` says when to try again."""

    status_code = 429
    code = "rate_limited"
    default_message = "Too many requests; try again later."

    def __init__(self, retry_after: int, message: str | None = None):
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})


class ServiceUnavailableError(AppError):
    """A dependency is down; the request may be retried."""

    status_code = 503
    code = "service_unavailable"
    default_message = "Service temporarily unavailable."


class DatabaseUnavailableError(ServiceUnavailableError):
    """The SQL database cannot be reached (refused, pool timeout, server gone)."""

    code = "database_unavailable"
    default_message = "The database is temporarily unavailable."


class SessionStoreUnavailableError(ServiceUnavailableError):
    """The web-session store (Redis) cannot be reached."""

    code = "session_store_unavailable"
    default_message = "The session store is temporarily unavailable."


class StorageUnavailableError(ServiceUnavailableError):
    """The object store (model files) cannot be reached or failed."""

    code = "storage_unavailable"
    default_message = "The file storage is temporarily unavailable."
