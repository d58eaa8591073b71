"""What the events feature hands out: the node's :class:`EventHub`.

Built by the composition root (:mod:`visiona.app`) in the lifespan; closed when the
server is asked to stop (a drain hook), so open streams end before uvicorn waits for
its connections.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from visiona.events.hub import EventHub
from visiona.kit.runtime import Provided

#: The subscribers of this node and the tail that feeds them.
EVENTS = Provided[EventHub]("event_hub")
EventsDep = Annotated[EventHub, Depends(EVENTS.dependency)]

__all__ = ["EVENTS", "EventsDep"]
