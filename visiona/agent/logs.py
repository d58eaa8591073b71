"""The agent's logging set-up: text lines on stderr.

The agent runs on the user's machine and imports no server code, so it does not use
:mod:`visiona.kit.logs`; its lines have the server's text layout without the request
id (an agent has no requests of its own to tag).
"""

from __future__ import annotations

import logging
import sys

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_visiona_agent", False):
            root.removeHandler(old)
    handler._visiona_agent = True  # type: ignore[attr-defined]  # marks our own handler to replace
    root.addHandler(handler)
    root.setLevel(level)
