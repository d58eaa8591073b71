"""One webhook attempt: a signed POST, bounded in time and in what is read back.

:meth:`Sender.attempt` POSTs a delivery's body (the compact JSON bytes that are signed,
exactly) with the Standard Webhooks headers — ``webhook-id`` (the event id receivers
de-duplicate on), ``webhook-timestamp`` (the attempt's time, Unix seconds) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` by
``standardwebhooks.Webhook(secret).sign``) — so a receiver verifies it with any
Standard Webhooks library.

Safe by default: the target is vetted and the connection pinned to the vetted
address (:mod:`visiona.webhooks.ssrf`) before every attempt; redirects are not
followed (a 3xx is a failed attempt); the proxy environment variables are ignored;
the connection has ``VISIONA_WEBHOOK_CONNECT_TIMEOUT`` and the whole attempt
``VISIONA_WEBHOOK_TIMEOUT``; at most :data:`RESPONSE_LIMIT` bytes of the answer are
read (undecoded: ``Accept-Encoding: identity`` is asked for), the rest is never read.
A 2xx answer is a success; anything else — another status, a timeout, a refused or
failed connection, a forbidden target — is a failure with a short reason. The
secret and the URL's path and query are never logged.

Plain ``http`` connections are kept alive and reused (pooled per address and port);
``https`` ones are not, since the pool would hand one connection, checked against
one name's certificate, to another name served on the same address.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from datetime import datetime

import httpx
from standardwebhooks import Webhook
from standardwebhooks.webhooks import EmptyWebhookSecretError

from visiona import __version__
from visiona.kit.clock import utcnow
from visiona.kit.errors import AppError
from visiona.webhooks.ssrf import (
    WebhookTargetForbiddenError,
    WebhookTargetUnresolvedError,
    WebhookUrlInvalidError,
    resolve_target,
    safe_name,
)

_LOGGER = logging.getLogger(__name__)

#: How much of an answer is read and kept (the delivery log's ``last_response``).
RESPONSE_LIMIT = 1024
USER_AGENT = f"visionA-Webhooks/{__version__}"
_MAX_CONNECTIONS = 100


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one attempt, as the delivery log keeps it."""

    #: whether the receiver answered 2xx
    ok: bool
    attempted_at: datetime
    latency_ms: int
    #: the receiver's status (None: no answer)
    status: int | None = None
    #: the answer's first :data:`RESPONSE_LIMIT` bytes, as text
    response: str | None = None
    #: why the attempt failed (None on success)
    error: str | None = None


def sign(secret: str, event_id: str, timestamp: datetime, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of ``body`` sent at ``timestamp``."""
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, timestamp, body),
    }


async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body as sent; the rest is left unread."""
    buffer = bytearray()
    async for chunk in response.aiter_raw():
        buffer += chunk
        if len(buffer) >= limit:
            break
    return bytes(buffer[:limit])


def _text(raw: bytes) -> str:
    """Raw answer bytes as storable text (undecodable bytes and NUL replaced)."""
    return raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def _connect_reason(err: httpx.HTTPError) -> str:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate rejected: {cause.verify_message or 'not trusted'}"
        if isinstance(cause, ssl.SSLError):
            return "TLS handshake failed"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and cause.strerror:
            return f"could not connect: {cause.strerror.lower()}"
        cause = cause.__cause__ or cause.__context__
    return "could not connect"


class Sender:
    """Sends attempts over two shared httpx clients (closed by :meth:`aclose`)."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        timeout: float,
        allow_private: bool,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """Attempts connect within ``connect_timeout`` s and finish within ``timeout`` s;
        ``allow_private``: internal addresses are allowed (tests, closed networks);
        ``verify``: how ``https`` certificates are checked (default: the public CAs)."""
        self._timeout = timeout
        self._allow_private = allow_private
        limits = httpx.Limits(max_connections=_MAX_CONNECTIONS, max_keepalive_connections=20)
        common = {
            "follow_redirects": False,
            "trust_env": False,  # no proxy from the environment: the connection is pinned
            "timeout": httpx.Timeout(timeout, connect=connect_timeout),
            "verify": verify,
        }
        self._plain = httpx.AsyncClient(limits=limits, **common)  # type: ignore[arg-type]
        self._tls = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=_MAX_CONNECTIONS, max_keepalive_connections=0),
            **common,  # type: ignore[arg-type]
        )

    async def aclose(self) -> None:
        """Close the clients' connections."""
        await self._plain.aclose()
        await self._tls.aclose()

    async def attempt(self, *, url: str, secret: str, event_id: str, body: bytes) -> Attempt:
        """POST ``body`` to ``url`` signed with ``secret`` as event ``event_id``; never
        raises for the receiver's or the network's faults (see :class:`Attempt`)."""
        attempted_at = utcnow()
        started = time.perf_counter()
        answer = _Answer()
        try:
            signature = sign(secret, event_id, attempted_at, body)
        except (ValueError, EmptyWebhookSecretError):  # binascii.Error is a ValueError
            error: str | None = "the endpoint's secret is not a valid whsec_ key"
        else:
            error = await self._attempt(url, signature, body, answer)
        latency_ms = round((time.perf_counter() - started) * 1000)
        status = answer.status
        ok = status is not None and 200 <= status < 300
        if status is not None and not ok and error is None:
            error = (
                f"answered {status} (redirects are not followed)"
                if 300 <= status < 400
                else f"answered {status}"
            )
        if error is not None:
            _LOGGER.debug(
                "webhooks: attempt of %s to %s failed: %s", event_id, safe_name(url), error
            )
        return Attempt(
            ok=ok,
            attempted_at=attempted_at,
            latency_ms=latency_ms,
            status=status,
            response=None if answer.body is None else _text(answer.body),
            error=error,
        )

    async def _attempt(
        self, url: str, signature: dict[str, str], body: bytes, answer: _Answer
    ) -> str | None:
        """Run the exchange within the total timeout; why it got no answer, if it did not."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._exchange(url, signature, body, answer)
        except TimeoutError:
            if answer.status is None:  # else: the status decided, the body was late
                return f"no answer within {self._timeout:g} s"
        except (AppError, httpx.HTTPError) as err:
            return _failure(err, self._timeout)
        except Exception as err:  # a fault of ours: a failed attempt, retried on schedule
            _LOGGER.exception("webhooks: an attempt failed unexpectedly")
            return f"the attempt failed ({type(err).__name__})"
        return None

    async def _exchange(
        self, url: str, signature: dict[str, str], body: bytes, answer: _Answer
    ) -> None:
        """Vet and pin the target, POST, read the answer's head and first bytes."""
        target = await resolve_target(url, allow_private=self._allow_private)
        headers = {
            "host": target.host_header,
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "accept-encoding": "identity",
            **signature,
        }
        client = self._tls if target.scheme == "https" else self._plain
        request = client.build_request(
            "POST", target.connect_url, content=body, headers=headers, extensions=target.extensions
        )
        response = await client.send(request, stream=True)
        answer.status = response.status_code
        answer.body = b""
        try:
            answer.body = await _read_bounded(response, RESPONSE_LIMIT)
        except httpx.HTTPError as err:  # the status decided: the body is only logged
            _LOGGER.debug("webhooks: answer body cut (%s)", type(err).__name__)
        finally:
            await response.aclose()


class _Answer:
    """What the receiver answered so far (filled in while the attempt runs)."""

    __slots__ = ("body", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.body: bytes | None = None


_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (
        WebhookTargetForbiddenError,
        "the URL's host is an internal address (loopback, private, link-local)",
    ),
    (WebhookTargetUnresolvedError, "the URL's host could not be resolved"),
    (WebhookUrlInvalidError, "the URL is not a valid http(s) URL"),
    (httpx.ConnectTimeout, "connect timed out"),
)


def _failure(err: AppError | httpx.HTTPError, timeout: float) -> str:
    """The delivery log's reason for an attempt that got no answer."""
    for kind, reason in _REASONS:
        if isinstance(err, kind):
            return reason
    if isinstance(err, httpx.TimeoutException):
        return f"no answer within {timeout:g} s"
    if isinstance(err, httpx.ConnectError):
        return _connect_reason(err)
    return f"the exchange failed ({type(err).__name__})"
