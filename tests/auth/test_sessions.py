"""Web-session stores: idle and absolute expiry with the same semantics in process and in Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.support.servers import RedisServer, free_port
from visiona.auth.sessions import MemorySessionStore, RedisSessionStore
from visiona.kit.errors import SessionStoreUnavailableError


class FakeClock:
    """A settable clock for the in-process store."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_session_idles_out_without_use() -> None:
    clock = FakeClock()
    store = MemorySessionStore(idle_ttl=10, absolute_ttl=100, clock=clock)
    user = uuid.uuid4()
    await store.create("h", user)
    clock.now += 9
    session = await store.touch("h")
    assert session is not None
    assert session.user_id == user
    clock.now += 9  # refreshed at the last touch, so still alive
    assert await store.touch("h") is not None
    clock.now += 11
    assert await store.touch("h") is None


async def test_memory_session_ends_at_absolute_deadline_despite_use() -> None:
    clock = FakeClock()
    store = MemorySessionStore(idle_ttl=10, absolute_ttl=25, clock=clock)
    await store.create("h", uuid.uuid4())
    for _ in range(2):
        clock.now += 9
        assert await store.touch("h") is not None
    clock.now += 9  # 27 s after creation
    assert await store.touch("h") is None


async def test_memory_session_delete_ends_it() -> None:
    store = MemorySessionStore(idle_ttl=10, absolute_ttl=25)
    await store.create("h", uuid.uuid4())
    await store.delete("h")
    assert await store.touch("h") is None


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def test_redis_key_ttl_is_the_idle_timeout_and_touch_refreshes_it(
    redis_client: Redis,
) -> None:
    prefix = f"t:{uuid.uuid4().hex}:"
    store = RedisSessionStore(redis_client, idle_ttl=100, absolute_ttl=1000, prefix=prefix)
    user = uuid.uuid4()
    await store.create("h", user)
    assert 98 <= await redis_client.ttl(prefix + "h") <= 100
    await redis_client.expire(prefix + "h", 5)
    session = await store.touch("h")
    assert session is not None
    assert session.user_id == user
    assert await redis_client.ttl(prefix + "h") >= 98


async def test_redis_session_idles_out(redis_client: Redis) -> None:
    store = RedisSessionStore(redis_client, idle_ttl=1, absolute_ttl=100, prefix="t:idle:")
    await store.create("h", uuid.uuid4())
    await asyncio.sleep(1.3)
    assert await store.touch("h") is None


async def test_redis_session_ends_at_absolute_deadline_despite_use(redis_client: Redis) -> None:
    prefix = f"t:{uuid.uuid4().hex}:"
    store = RedisSessionStore(redis_client, idle_ttl=100, absolute_ttl=2, prefix=prefix)
    await store.create("h", uuid.uuid4())
    assert await store.touch("h") is not None
    # the TTL never outlives the deadline
    assert await redis_client.ttl(prefix + "h") <= 2
    await asyncio.sleep(2.2)
    assert await store.touch("h") is None
    assert await redis_client.exists(prefix + "h") == 0


async def test_redis_session_delete_ends_it(redis_client: Redis) -> None:
    store = RedisSessionStore(redis_client, idle_ttl=100, absolute_ttl=1000, prefix="t:del:")
    await store.create("h", uuid.uuid4())
    await store.delete("h")
    assert await store.touch("h") is None


async def test_unreachable_redis_is_session_store_unavailable() -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    errors: list[int] = []
    store = RedisSessionStore(
        client, idle_ttl=10, absolute_ttl=100, on_error=lambda: errors.append(1)
    )
    try:
        with pytest.raises(SessionStoreUnavailableError):
            await store.touch("h")
        with pytest.raises(SessionStoreUnavailableError):
            await store.create("h", uuid.uuid4())
        assert len(errors) == 2
    finally:
        await client.aclose()


async def test_redis_touch_reloads_its_script_after_redis_forgot_it(redis_client: Redis) -> None:
    # A restarted (or flushed) Redis answers NOSCRIPT to EVALSHA; the store loads the
    # script once and the session check still succeeds in the same call.
    prefix = f"t:{uuid.uuid4().hex}:"
    store = RedisSessionStore(redis_client, idle_ttl=100, absolute_ttl=1000, prefix=prefix)
    user = uuid.uuid4()
    await store.create("h", user)
    await redis_client.script_flush()
    session = await store.touch("h")
    assert session is not None
    assert session.user_id == user
    again = await store.touch("h")
    assert again is not None
