"""The web console: server-rendered pages plus a little hand-written JavaScript and CSS.

Pages read through the same services as the API; every change a page makes goes
through the JSON API from the browser (same session cookie, same same-origin check),
so no business rule exists twice. :func:`install` adds the routes and ``/static``.
"""

from __future__ import annotations

from fastapi import FastAPI

from visiona.console.endpoints import router
from visiona.console.security import SecureStaticFiles, static_dir


def install(app: FastAPI) -> None:
    """Serve the console pages and their static files from ``app``."""
    app.include_router(router)
    app.mount("/static", SecureStaticFiles(directory=static_dir()), name="static")
