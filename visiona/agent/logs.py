"""The agent's logging set-up: text lines on stderr.

The agent runs on the user's machine and imports no server code, so it does not use
:mod:`visiona.kit.logs`; its lines have the server's text layout without the request
id (an agent has no requests of its own to tag).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class _AgentHandler(logging.StreamHandler[TextIO]):
    """The agent's own stderr handler (so a second set-up replaces it)."""


def configure_logging(level: str = "INFO") -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    handler = _AgentHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _AgentHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
