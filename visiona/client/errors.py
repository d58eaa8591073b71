"""The client's one error type, apart from the HTTP code so commands import it cheaply."""

from __future__ import annotations


class ClientError(Exception):
    """A request failed; ``str()`` is the one line to show."""
