"""Busy or idle: what the local service says about itself, reported to the cloud.

Two sources, both optional (without either the agent reports nothing and the cloud
shows the device as not busy):

- ``--busy-header``: every answer of the local service is looked at for the
  ``X-Visiona-Busy`` header (``1``/``true``/``yes`` busy, ``0``/``false``/``no`` idle,
  in the first bytes of the answer, i.e. its head); an answer without it changes
  nothing;
- ``--busy-probe URL``: the agent GETs the URL every poll interval; busy when it
  answers 429 or 503, or ``X-Visiona-Busy: 1``, or a JSON body ``{"busy": true}``;
  idle on any other 2xx; no answer changes nothing.

Each change wakes the agent's status reporter, which posts it with the USB status
(``POST /api/v1/agent/status``, ``{"usb_status": ..., "busy": ...}``).
"""

from __future__ import annotations

import asyncio
import logging

import httpx

_LOGGER = logging.getLogger(__name__)
BUSY_HEADER = "X-Visiona-Busy"
_NEEDLE = b"\r\n" + BUSY_HEADER.lower().encode("ascii") + b":"
_HEAD_SCAN = 16 * 1024
_TRUE = {"1", "true", "yes", "busy"}
_FALSE = {"0", "false", "no", "idle"}


class BusyState:
    """The last known busy flag (None: never said) and an event set on each change."""

    def __init__(self) -> None:
        """Start with nothing known."""
        self.busy: bool | None = None
        self.changed = asyncio.Event()

    def set(self, busy: bool) -> None:
        """Record ``busy``; wake the reporter when it changed."""
        if busy != self.busy:
            self.busy = busy
            self.changed.set()
            _LOGGER.info("agent: the local service is %s", "busy" if busy else "idle")

    def watch_head(self, data: bytes) -> None:
        """Read ``X-Visiona-Busy`` from the first bytes of a local service's answer."""
        value = header_value(data)
        if value is not None:
            self.set(value)

    async def probe(self, http: httpx.AsyncClient, url: str, interval: float) -> None:
        """Poll ``url`` every ``interval`` seconds until cancelled."""
        while True:
            try:
                response = await http.get(url, timeout=max(1.0, interval))
            except httpx.HTTPError as err:
                _LOGGER.debug("agent: busy probe failed: %s", type(err).__name__)
            else:
                verdict = probe_verdict(response)
                if verdict is not None:
                    self.set(verdict)
            await asyncio.sleep(interval)


def header_value(data: bytes) -> bool | None:
    """The ``X-Visiona-Busy`` flag in a response head (``data``), or None when absent."""
    end = data.find(b"\r\n\r\n", 0, _HEAD_SCAN)
    head = (data[:end] if end >= 0 else data[:_HEAD_SCAN]).lower()
    at = head.find(_NEEDLE)
    if at < 0:
        return None
    line_end = head.find(b"\r\n", at + len(_NEEDLE))
    raw = head[at + len(_NEEDLE) : line_end if line_end >= 0 else len(head)]
    return _flag(raw.decode("latin-1").strip())


def _flag(value: str) -> bool | None:
    value = value.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


def probe_verdict(response: httpx.Response) -> bool | None:
    """Busy (True), idle (False) or unknown (None) from the probe's answer."""
    if response.status_code in {429, 503}:
        return True
    header = response.headers.get(BUSY_HEADER)
    if header is not None and _flag(header) is not None:
        return _flag(header)
    if not response.is_success:
        return None
    try:
        body = response.json()
    except ValueError:
        return False
    if isinstance(body, dict) and isinstance(body.get("busy"), bool):
        return bool(body["busy"])
    return False
