"""What crosses the proxy boundary: the device's request target and response headers.

The request target is derived from the matched proxy route.

The route ``/devices/{device_id}/proxy/{path:path}`` gives the path already
percent-decoded by the HTTP server; the raw path is never searched. The decoded
path is normalised and re-encoded canonically, so whatever encoding the client used
(``%2F``, ``%2e``, ``//``, mixed case) the device sees one target and the reserved
``/visiona/`` prefix (the agent's own paths) cannot be reached:

- empty segments (``//``) and ``.`` segments are dropped;
- a ``..`` segment is refused (400 ``bad_request``): nothing above the proxy root;
- a NUL or another control character is refused (400);
- a first segment equal to ``visiona`` in any letter case is refused (403
  ``reserved_path``).

A device's response is served on the cloud's own origin, so it is sandboxed
(:func:`sandboxed_headers`): ``Content-Security-Policy: sandbox ...`` without
``allow-same-origin`` makes its pages run in an opaque origin (their scripts
cannot read the cloud's cookies or call ``/api/v1`` as the user),
``X-Content-Type-Options: nosniff`` stops content sniffing, and ``Set-Cookie`` is
dropped (a device must not set cookies on the cloud's origin, the session cookie
included).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from visiona.kit.errors import BadRequestError

if TYPE_CHECKING:
    from starlette.requests import Request
from visiona.tunnel.errors import ReservedPathError
from visiona.wire import RESERVED_PREFIX

#: Targets under it are the agent's own (docs/tunnel-protocol.md); never proxied.
RESERVED_SEGMENT = RESERVED_PREFIX.strip("/")
# RFC 3986 pchar minus the percent sign itself (re-encoded from the decoded text).
_SAFE = "!$&'()*+,;=:@-._~"


class InvalidProxyPathError(BadRequestError):
    """The proxied path climbs above the proxy root or holds control characters."""

    default_message = "The proxied path must not contain '..' segments or control characters."


def device_target(path: str, query: bytes) -> bytes:
    """The origin-form target (path and query) to send to the device for route ``path``.

    ``path`` is the route's decoded ``{path}`` parameter (no leading slash);
    ``query`` is the raw query string, forwarded as the client sent it.
    """
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in path):
        raise InvalidProxyPathError()
    segments = path.split("/")
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            raise InvalidProxyPathError()
        if segment not in ("", "."):
            kept.append(segment)
    if kept and kept[0].lower() == RESERVED_SEGMENT:
        raise ReservedPathError()
    trailing = bool(kept) and segments[-1] in ("", ".")
    encoded = "/" + "/".join(quote(segment, safe=_SAFE) for segment in kept)
    if trailing:
        encoded += "/"
    target = encoded.encode("ascii")
    return target + b"?" + query if query else target


def cloud_prefix(path: str, decoded_route_path: str) -> str:
    """The cloud path in front of the device path (for ``X-Forwarded-Prefix``).

    ``decoded_route_path`` is the request's decoded path, which ends with ``path``.
    """
    end = len(decoded_route_path) - len(path)
    return decoded_route_path[:end].rstrip("/")


#: Scripts and forms run, but in an opaque origin (no ``allow-same-origin``).
SANDBOX_POLICY = b"sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"
_DROPPED = frozenset({b"set-cookie", b"x-content-type-options"})


def sandboxed_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The device's response headers with the sandbox added and ``Set-Cookie`` removed.

    The device's own ``Content-Security-Policy`` headers stay (every policy applies,
    so they can only restrict further); its ``Date`` and ``Server`` stay as sent.
    """
    kept = [(name, value) for name, value in headers if name.lower() not in _DROPPED]
    kept += [
        (b"content-security-policy", SANDBOX_POLICY),
        (b"x-content-type-options", b"nosniff"),
    ]
    return kept


def forward_target(request: Request, path: str) -> tuple[bytes, str]:
    """The path and query to request on the device, and the cloud prefix in front of it."""
    query: bytes = request.scope.get("query_string", b"")
    return device_target(path, query), cloud_prefix(path, request.scope["path"])
