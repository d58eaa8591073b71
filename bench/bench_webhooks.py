"""Webhooks benchmark: events per second from change to delivery, and what the outbox
write adds to a change.

(a) *Change to delivery*, one real `visiona serve` node (SQLite file, then a throwaway
PostgreSQL), a receiver on loopback that verifies nothing and answers 200 at once:
EVENTS device renames through the API (``PATCH /devices/{id}``, one after another),
each queued for one endpoint (created by ``POST /webhooks``) subscribed to
``device.*``; the figure is EVENTS over the time from the first rename's request to
the last delivery's arrival (the dispatcher polls every
``VISIONA_WEBHOOK_POLL_INTERVAL``, 0.5 s by default, and delivers an endpoint's events
one at a time, in order), with the slowest single event's delay.

(b) *Outbox write cost*, in process through the project's engine and unit of work (no
HTTP, no dispatcher): a device rename with its ``device.renamed`` audit event, in
rounds with and without an enabled endpoint subscribed to it (interleaved: without,
with, without, ...), ROUNDS runs of WRITES renames each, median and range per
transaction. Without an endpoint the outbox write is the one indexed ``INSERT …
SELECT`` that finds nothing; with one it inserts a delivery row.

Sizes: ``BENCH_WEBHOOK_EVENTS`` (default 500), ``BENCH_WEBHOOK_WRITES`` (300),
``BENCH_WEBHOOK_ROUNDS`` (3). Reproduce: `.venv/bin/python -m bench webhooks`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import insert, update
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.support import visiona_server
from testkit.live import serve_in_thread
from testkit.servers import PostgresServer
from visiona.audit import service as audit
from visiona.audit.service import Actor
from visiona.devices import repository as devices
from visiona.kit import migrate
from visiona.kit.database import Database
from visiona.kit.schema import organizations, users, webhook_endpoints, webhook_subscriptions
from visiona.kit.settings import Settings

EVENTS = int(os.environ.get("BENCH_WEBHOOK_EVENTS", "500"))
WRITES = int(os.environ.get("BENCH_WEBHOOK_WRITES", "300"))
ROUNDS = max(3, int(os.environ.get("BENCH_WEBHOOK_ROUNDS", "3")))
SECRET = "whsec_YmVuY2hiZW5jaGJlbmNoYmVuY2g="
API = "/api/v1"


class _Counter:
    """The receiver: counts deliveries, keeps each arrival's time."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self._lock = threading.Lock()

    async def hook(self, _request: Request) -> Response:
        await _request.body()
        with self._lock:
            self.arrivals.append(time.perf_counter())
        return Response(b"ok")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])


def _database(url: str, data_dir: Path) -> Database:
    settings = Settings(_env_file=None, database_url=url, data_dir=data_dir)
    return Database(settings.build_engine(), settings.database_target, hot_connections=0)


async def _add_endpoint(db: Database, org_id: uuid.UUID, url: str) -> uuid.UUID:
    endpoint_id = uuid.uuid4()
    async with db.transaction() as conn:
        await conn.execute(
            insert(webhook_endpoints).values(
                id=endpoint_id, org_id=org_id, url=url, secret=SECRET, events="device.*"
            )
        )
        await conn.execute(
            insert(webhook_subscriptions).values(endpoint_id=endpoint_id, event_type="device.*")
        )
    return endpoint_id


async def _paired_device(http: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    """A new user's auth headers and paired device."""
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    password = "correct horse battery staple"
    await http.post(
        f"{API}/auth/register", json={"email": email, "password": password, "name": "b"}
    )
    login = await http.post(f"{API}/auth/login", json={"email": email, "password": password})
    headers = {"Authorization": f"Bearer {login.json()['token']}"}
    token = (await http.post(f"{API}/pairing-tokens", json={}, headers=headers)).json()["token"]
    paired = await http.post(
        f"{API}/agent/pair",
        json={
            "pairing_token": token,
            "serial_number": f"SN-{uuid.uuid4().hex[:10]}",
            "device_type": "kl520",
            "name": "bench",
        },
    )
    return headers, paired.json()["device_id"]


async def _change_to_delivery(label: str, url: str, data_dir: Path) -> None:
    counter = _Counter()
    env = {
        "VISIONA_DATABASE_URL": url,
        "VISIONA_DATA_DIR": str(data_dir),
        "VISIONA_WEBHOOK_ALLOW_PRIVATE": "true",
        "VISIONA_LOGIN_RATE_LIMIT": "100000",
    }
    with serve_in_thread(counter.app()) as receiver, visiona_server(env) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            headers, device = await _paired_device(http)
            created = await http.post(
                f"{API}/webhooks",
                json={"url": f"{receiver.url}/hook", "events": ["device.*"]},
                headers=headers,
            )
            created.raise_for_status()
            sent_at: list[float] = []
            started = time.perf_counter()
            for number in range(EVENTS):
                sent_at.append(time.perf_counter())
                renamed = await http.patch(
                    f"{API}/devices/{device}", json={"name": f"n{number}"}, headers=headers
                )
                renamed.raise_for_status()
            requests_done = time.perf_counter() - started
            deadline = time.monotonic() + 120 + EVENTS
            while len(counter.arrivals) < EVENTS and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        arrivals = counter.arrivals[:EVENTS]
        if len(arrivals) < EVENTS:
            print(f"{label:<10} only {len(arrivals)} of {EVENTS} deliveries arrived")
            return
        total = arrivals[-1] - started
        delays = [a - s for a, s in zip(arrivals, sent_at, strict=True)]
        print(
            f"{label:<10} {EVENTS} renames → deliveries: {EVENTS / total:7.1f} events/s "
            f"(last delivery {total:.2f} s after the first request; the renames took "
            f"{requests_done:.2f} s; slowest event {max(delays) * 1000:.0f} ms, "
            f"median {statistics.median(delays) * 1000:.0f} ms)"
        )


async def _setup(db: Database) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    owner = uuid.uuid4()
    async with db.transaction() as conn:
        await conn.execute(insert(users).values(id=owner, email=f"{owner}@b.example", name="b"))
        await conn.execute(insert(organizations).values(id=owner, name="b", personal=True))
        device = await devices.insert_device_if_absent(
            conn,
            device_id=uuid.uuid4(),
            org_id=owner,
            owner_user_id=owner,
            name="bench",
            device_type="kl520",
            serial_number="SN-BENCH",
            now=datetime.now(UTC),
        )
    if device is None:
        raise RuntimeError("the bench device was not created")
    endpoint = await _add_endpoint(db, owner, "https://receiver.example/hook")
    return owner, device.id, endpoint


async def _writes(db: Database, owner: uuid.UUID, device: uuid.UUID) -> float:
    """Seconds per rename + audit event transaction, over WRITES of them."""
    started = time.perf_counter()
    for number in range(WRITES):
        async with db.transaction() as conn:
            now = datetime.now(UTC)
            await devices.rename_device(
                conn, owner, device, name=f"n{number}", now=now, stale_before=now
            )
            await audit.record(
                conn,
                "device.renamed",
                actor=Actor.user(owner),
                owner_id=owner,
                org_id=owner,
                target_id=device,
                device_id=device,
                detail={"from": f"n{number - 1}", "to": f"n{number}"},
            )
    return (time.perf_counter() - started) / WRITES


async def _enable(db: Database, endpoint: uuid.UUID, enabled: bool) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            update(webhook_endpoints)
            .where(webhook_endpoints.c.id == endpoint)
            .values(enabled=enabled)
        )


async def _outbox_cost(label: str, url: str, data_dir: Path) -> None:
    db = _database(url, data_dir)
    try:
        owner, device, endpoint = await _setup(db)
        await _writes(db, owner, device)  # warm-up
        without: list[float] = []
        with_endpoint: list[float] = []
        for _ in range(ROUNDS):
            await _enable(db, endpoint, enabled=False)
            without.append(await _writes(db, owner, device))
            await _enable(db, endpoint, enabled=True)
            with_endpoint.append(await _writes(db, owner, device))
        for name, values in (("no endpoint", without), ("one endpoint", with_endpoint)):
            print(
                f"{label:<10} rename + event, {name:<13} median "
                f"{statistics.median(values) * 1000:6.3f} ms/tx  range "
                f"{min(values) * 1000:6.3f}-{max(values) * 1000:6.3f}  (n={WRITES} x {ROUNDS})"
            )
        added = statistics.median(with_endpoint) - statistics.median(without)
        print(f"{label:<10} the delivery row adds {added * 1000:+.3f} ms per change (medians)")
    finally:
        await db.dispose()


def main() -> None:
    """(a) then (b), on SQLite, then on a throwaway PostgreSQL."""
    print(
        f"reproduce: BENCH_WEBHOOK_EVENTS={EVENTS} BENCH_WEBHOOK_WRITES={WRITES} "
        f"BENCH_WEBHOOK_ROUNDS={ROUNDS} .venv/bin/python -m bench webhooks"
    )
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = Path(tmp) / "serve"
        sqlite.mkdir()
        asyncio.run(_change_to_delivery("sqlite", f"sqlite:///{sqlite / 'v.db'}", sqlite))
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        migrate.upgrade(url)
        asyncio.run(_outbox_cost("sqlite", url, Path(tmp)))
        pg = PostgresServer()
        pg.start()
        try:
            served = pg.create_database("bench_webhooks_serve")
            asyncio.run(_change_to_delivery("postgres", served, Path(tmp)))
            pg_url = pg.create_database("bench_webhooks")
            migrate.upgrade(pg_url)
            asyncio.run(_outbox_cost("postgres", pg_url, Path(tmp)))
        finally:
            pg.cleanup()


if __name__ == "__main__":
    main()
