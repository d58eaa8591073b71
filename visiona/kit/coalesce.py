"""Concurrent questions of one kind answered by one round trip per batch.

A node under a storm asks the same kind of question thousands of times at once: is
this session token valid (every tunnel upgrade), release this device's lease and who
holds it now (every tunnel end). One round trip each queues them behind the few
connections of a pool until they time out. :class:`Coalescer` queues the questions
and hands all those waiting (up to ``max_batch``) to one call, one batch at a time:
while a batch is out, the next one gathers, so a busier node asks bigger questions
instead of more of them. A question alone costs one call, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: ``answer(keys) -> {key: value}`` for distinct keys; a key it leaves out gets the default.
BatchAnswer = Callable[[list[K]], Awaitable[Mapping[K, V]]]


class Coalescer(Generic[K, V]):
    """Ask ``answer`` about many keys at once: concurrent :meth:`ask` calls share a batch."""

    def __init__(self, answer: BatchAnswer[K, V], *, default: V, max_batch: int) -> None:
        """Batches of at most ``max_batch`` keys go to ``answer``; keys it leaves out of
        its mapping get ``default``."""
        self._answer = answer
        self._default = default
        self._max_batch = max_batch
        self._waiting: list[tuple[K, asyncio.Future[V]]] = []
        self._runner: asyncio.Task[None] | None = None
        #: batches run and questions answered by them, since start (tests and metrics)
        self.batches = 0
        self.asked = 0

    async def ask(self, key: K) -> V:
        """The answer about ``key``, from the next batch; the batch's failure raises here
        (in every question of that batch)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[V] = loop.create_future()
        self._waiting.append((key, answer))
        if self._runner is None:
            self._runner = loop.create_task(self._run())
        return await answer

    async def _run(self) -> None:
        """Answer the waiting questions, one batch at a time, until none wait."""
        batch: list[tuple[K, asyncio.Future[V]]] = []
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                await self._settle(batch)
        except BaseException:  # cancelled (the node stops): nobody waits for ever
            for _, answer in batch + self._waiting:
                answer.cancel()
            self._waiting.clear()
            raise
        finally:
            self._runner = None

    async def _settle(self, batch: list[tuple[K, asyncio.Future[V]]]) -> None:
        keys = list(dict.fromkeys(key for key, _ in batch))
        self.batches += 1
        self.asked += len(batch)
        try:
            found = await self._answer(keys)
        except Exception as err:  # noqa: BLE001 - each question raises it, as its own call would
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(err)
            return
        for key, answer in batch:
            if not answer.done():  # a caller that went away cancelled its own
                answer.set_result(found.get(key, self._default))
