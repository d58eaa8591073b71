"""Cache invalidation across nodes: ids published on a Redis channel, heard by every node.

The membership cache (visiona/orgs/access.py) and the API key cache
(visiona/apikeys/access.py) keep entries per node; a change on one node is published as
the changed id, and :func:`listen_for_ids` on every node drops what it names.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

_LOGGER = logging.getLogger(__name__)


async def listen_for_ids(
    redis: Redis,
    channel: str,
    *,
    forget: Callable[[uuid.UUID], None],
    lost: Callable[[], None],
    closing: Callable[[], bool],
) -> None:
    """Call ``forget`` with every id published on ``channel`` until ``closing()``.

    A message that is not a UUID is ignored. When the channel is lost (Redis away),
    ``lost`` is called (changes may be missed meanwhile: drop everything) and the
    subscription is tried again a second later. The ``closing`` flag ends the loop too:
    redis-py's read timeout can swallow a cancellation.
    """
    while not closing():
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                while not closing():
                    message: dict[str, Any] | None = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=0.5
                    )
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        changed = uuid.UUID(bytes(message["data"]).decode("ascii"))
                    except (ValueError, UnicodeDecodeError):
                        continue
                    forget(changed)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - Redis away: retry; entries expire
            if closing():
                return
            _LOGGER.warning("channel %s lost (%s); retrying", channel, type(err).__name__)
            lost()
            await asyncio.sleep(1.0)
