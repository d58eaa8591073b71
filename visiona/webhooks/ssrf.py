"""Where a webhook may be sent: the target's address is vetted, then pinned.

A webhook URL is chosen by an organisation's admin, and the server POSTs to it from
inside the operator's network: without a check it could reach the loopback, the
private network or the cloud's metadata service (``169.254.169.254``). So, unless
the operator allows it (``VISIONA_WEBHOOK_ALLOW_PRIVATE``, tests and closed
networks), :func:`resolve_target` refuses a host that is, or resolves to, an address
that is not globally routable: loopback, private (RFC 1918, unique local IPv6),
link-local (metadata included), unspecified, multicast, reserved, shared
(``100.64.0.0/10``), documentation ranges, and the IPv6 forms that embed one of them
(IPv4-mapped, 6to4, NAT64). A name is resolved with the event loop's ``getaddrinfo``
and refused when *any* of its addresses is forbidden.

Checked at connect too: the attempt connects to the vetted address itself
(:attr:`Target.connect_url`), never to the name again, so a DNS answer that changes
between the check and the connection (DNS rebinding) is not followed. For ``https``
the name is kept for SNI and the certificate check (httpx's ``sni_hostname``
extension) and for the ``Host`` header.

The API calls :func:`vet_url` when an endpoint is created or its URL changed; the
sender calls :func:`resolve_target` before every attempt. Errors are
:class:`~visiona.kit.errors.AppError` with stable codes and messages that name no
address the server resolved.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

import httpx

from visiona.kit.errors import AppError

_LOGGER = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SCHEMES = {"http": 80, "https": 443}
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052)


class WebhookUrlInvalidError(AppError):
    """The URL is not an absolute ``http://`` or ``https://`` URL with a host."""

    status_code = 422
    code = "invalid_webhook_url"  # as the API's own check of the URL's form
    default_message = "The webhook URL must be an absolute http:// or https:// URL with a host."


class WebhookTargetForbiddenError(AppError):
    """The host is, or resolves to, an address the server does not send to."""

    status_code = 422
    code = "webhook_target_forbidden"
    default_message = (
        "The webhook URL's host is a loopback, private, link-local or otherwise internal "
        "address; the server does not send webhooks there."
    )


class WebhookTargetUnresolvedError(AppError):
    """The host's name does not resolve (now)."""

    status_code = 422
    code = "webhook_target_unresolved"
    default_message = "The webhook URL's host could not be resolved."


@dataclass(frozen=True, slots=True)
class Target:
    """A vetted webhook target: the URL as configured and the address to connect to."""

    #: the URL as configured (never logged: its path or query may carry a token)
    url: httpx.URL
    #: the host as sent in ``Host`` and SNI (IDNA-encoded; an IP literal as written)
    host: str
    port: int
    #: the vetted address the attempt connects to
    address: str

    @property
    def scheme(self) -> str:
        """``http`` or ``https``."""
        return self.url.scheme

    @property
    def connect_url(self) -> httpx.URL:
        """The URL with its host replaced by the vetted address (the connection is pinned)."""
        return self.url.copy_with(host=self.address, port=self.port)

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the configured host, with its port unless the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _SCHEMES[self.scheme] else f"{host}:{self.port}"

    @property
    def extensions(self) -> dict[str, Any]:
        """httpx request extensions: for ``https``, SNI and the certificate check use
        the configured name, not the address connected to."""
        if self.scheme == "https" and _literal(self.host) is None:
            return {"sni_hostname": self.host}
        return {}

    @property
    def safe_name(self) -> str:
        """``scheme://host:port`` for logs (no path, no query, no credentials)."""
        return f"{self.scheme}://{self.host_header}"


def safe_name(url: str) -> str:
    """``scheme://host`` of ``url`` for logs (no path, no query, no credentials)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return "(invalid URL)"
    return f"{parsed.scheme}://{parsed.host}"


def is_forbidden(address: IPAddress) -> bool:
    """Whether the server refuses to send to ``address`` (not globally routable, or an
    IPv6 form embedding such an IPv4 address)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_forbidden(embedded)
        if address.is_site_local:
            return True
    elif address in _SHARED:
        return True
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
        or not address.is_global
    )


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo's server, NAT64)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's own address, obfuscated in the tunnel
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def parse_url(url: str) -> tuple[httpx.URL, str, int]:
    """``url`` parsed, its host (IDNA-encoded) and port; :class:`WebhookUrlInvalidError`
    unless it is an absolute ``http``/``https`` URL with a host."""
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, TypeError, ValueError, UnicodeError):
        raise WebhookUrlInvalidError from None
    if parsed.scheme not in _SCHEMES or not host:
        raise WebhookUrlInvalidError
    return parsed, host, parsed.port or _SCHEMES[parsed.scheme]


async def _addresses(host: str, port: int) -> list[IPAddress]:
    literal = _literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError):
        raise WebhookTargetUnresolvedError from None
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in found:
            found.append(address)
    if not found:
        raise WebhookTargetUnresolvedError
    return found


async def resolve_target(url: str, *, allow_private: bool) -> Target:
    """Resolve ``url``'s host and vet its addresses; the :class:`Target` to connect to.

    Raises :class:`WebhookUrlInvalidError` (not an http(s) URL),
    :class:`WebhookTargetUnresolvedError` (the name does not resolve) or
    :class:`WebhookTargetForbiddenError` (an address is not allowed and
    ``allow_private`` is false). The caller bounds the time it may take.
    """
    parsed, host, port = parse_url(url)
    addresses = await _addresses(host, port)
    if not allow_private and any(is_forbidden(a) for a in addresses):
        _LOGGER.debug("webhooks: target %s://%s refused (internal address)", parsed.scheme, host)
        raise WebhookTargetForbiddenError
    return Target(url=parsed, host=host, port=port, address=str(addresses[0]))


async def vet_url(
    url: str, *, allow_private: bool, must_resolve: bool = False, within: float = 5.0
) -> None:
    """Refuse ``url`` as a webhook target now (the API, at create and URL change).

    Raises :class:`WebhookUrlInvalidError` or :class:`WebhookTargetForbiddenError`. A
    name that does not resolve (or not within ``within`` seconds) is accepted unless
    ``must_resolve``: it may resolve later, and every attempt checks again.
    """
    parse_url(url)
    try:
        async with asyncio.timeout(within):
            await resolve_target(url, allow_private=allow_private)
    except (WebhookTargetUnresolvedError, TimeoutError):
        if must_resolve:
            raise WebhookTargetUnresolvedError from None


def check_url(url: str, *, allow_private: bool) -> None:
    """:func:`vet_url` without DNS (sync, e.g. in a validator): the URL's form, and its
    host when it is an IP literal or ``localhost``. Raises as :func:`vet_url` does."""
    _parsed, host, _port = parse_url(url)
    if allow_private:
        return
    literal = _literal(host)
    lowered = host.lower().rstrip(".")
    if (literal is not None and is_forbidden(literal)) or (
        lowered == "localhost" or lowered.endswith(".localhost")
    ):
        raise WebhookTargetForbiddenError
