"""Security headers and the sign-in redirect of every console response.

Console pages carry a strict Content-Security-Policy (scripts and styles from this
server only, no inline script, no framing), ``nosniff`` and a same-origin referrer
policy. A signed-out visitor of a page is redirected to the sign-in page and back.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from starlette.datastructures import MutableHeaders
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from visiona.kit.errors import UnauthorizedError

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
DEFAULT_NEXT = "/devices"


def static_dir() -> Path:
    """The packaged folder of the console's CSS, JavaScript and icon."""
    return Path(__file__).parent / "static"


def add_security_headers(headers: MutableHeaders) -> None:
    """Set the console's security headers on ``headers``."""
    for name, value in SECURITY_HEADERS.items():
        headers[name] = value


def safe_next(value: str | None) -> str:
    """``value`` if it is a path on this server, else the devices page (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return DEFAULT_NEXT
    if any(ch in value for ch in "\r\n\\"):
        return DEFAULT_NEXT
    return value


def sign_in_redirect(request: Request) -> RedirectResponse:
    """A 303 to the sign-in page that comes back to the requested page afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/sign-in?next={quote(target, safe='')}", status_code=303)


class ConsoleRoute(APIRoute):
    """A console route: security headers on every response; signed out → sign-in page.

    Routes whose path ends in ``.json`` are polled by scripts: for them a missing
    session stays the API's 401 instead of a redirect.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler (dependencies included) of this route."""
        handler = super().get_route_handler()
        wants_json = self.path.endswith(".json")

        async def console_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except UnauthorizedError:
                if wants_json:
                    raise
                response = sign_in_redirect(request)
            add_security_headers(response.headers)
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return console_handler


class SecureStaticFiles(StaticFiles):
    """Static files with the console's security headers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the file, adding the headers to the response start."""

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                add_security_headers(MutableHeaders(scope=message))
            await send(message)

        await super().__call__(scope, receive, send_with_headers)
