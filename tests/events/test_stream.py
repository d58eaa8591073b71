"""GET /events: the organisation's committed audit events, live, over a real listener.

Each test serves the application on 127.0.0.1 (port 0) and reads the stream with
httpx, on SQLite and on PostgreSQL + Redis.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from testkit.live import LiveServer, serve_app
from tests.support.api import signup
from tests.support.apikeys import create_key, key_headers
from tests.support.devices import API, paired_device
from tests.support.events import open_stream
from tests.support.orgs import acting, create_org, member
from tests.support.tunnel import connect_agent, paired_agent_token
from visiona.app import create_app
from visiona.events import endpoints
from visiona.events.dependencies import EVENTS
from visiona.kit.settings import Settings


async def _rename(
    http: httpx.AsyncClient, headers: dict[str, str], device_id: str, name: str
) -> None:
    response = await http.patch(f"{API}/devices/{device_id}", json={"name": name}, headers=headers)
    assert response.status_code == 200, response.text


async def test_a_rename_made_through_the_api_is_streamed_as_its_audit_event(
    http: httpx.AsyncClient,
) -> None:
    user = await signup(http)
    device = await paired_device(http, user)
    async with open_stream(http, user.headers) as stream:
        await _rename(http, user.headers, device["device_id"], "Kitchen")
        frame = await stream.until("device.renamed")
    assert stream.retry == 3000
    body = frame.json()
    assert frame.id == body["id"]
    assert body["action"] == "device.renamed"
    assert body["detail"]["to"] == "Kitchen"
    assert body["actor_email"] == user.email
    listed = await http.get(f"{API}/audit-events", params={"limit": 1}, headers=user.headers)
    assert listed.json()["items"][0] == body  # the same item as the trail's


async def test_another_organisations_events_never_appear(http: httpx.AsyncClient) -> None:
    alice, bob = await signup(http), await signup(http)
    theirs = await paired_device(http, bob)
    mine = await paired_device(http, alice)
    async with open_stream(http, alice.headers) as stream:
        await _rename(http, bob.headers, theirs["device_id"], "Bob's")
        await _rename(http, alice.headers, mine["device_id"], "Alice's")
        frame = await stream.until("device.renamed")
        assert frame.json()["detail"]["to"] == "Alice's"
        assert await stream.quiet(1.0) == []


async def test_a_viewer_and_an_api_key_read_their_organisation_only(
    http: httpx.AsyncClient,
) -> None:
    owner = await signup(http)
    team = await create_org(http, owner)
    viewer = await member(http, owner, team, "viewer")
    device = (
        await http.post(
            f"{API}/devices",
            json={"name": "d", "serial_number": "SN-events-1", "device_type": "kl520"},
            headers=acting(owner, team),
        )
    ).json()
    key = await create_key(http, owner, ["read"], org_id=team)
    async with (
        open_stream(http, acting(viewer, team)) as by_viewer,
        open_stream(http, key_headers(key["key"])) as by_key,
        open_stream(http, viewer.headers, org=team) as by_query,  # EventSource: ?org=
    ):
        await _rename(http, acting(owner, team), device["id"], "Shared")
        for stream in (by_viewer, by_key, by_query):
            assert (await stream.until("device.renamed")).json()["target_id"] == device["id"]
    outsider = await signup(http)
    refused = [
        await http.get(f"{API}/events", headers=acting(outsider, team)),
        await http.get(f"{API}/events", headers=outsider.headers, params={"org": team}),
        await http.get(
            f"{API}/events", headers=key_headers(key["key"]), params={"org": owner.org_id}
        ),
    ]
    assert [r.status_code for r in refused] == [404, 404, 404]
    revoked = await http.delete(f"{API}/api-keys/{key['id']}", headers=acting(owner, team))
    assert revoked.status_code in (200, 204), revoked.text
    http.cookies.clear()
    gone = await http.get(f"{API}/events", headers=key_headers(key["key"]))
    assert gone.status_code == 401
    assert (await http.get(f"{API}/events")).status_code == 401


async def test_type_filters_take_actions_and_families(
    http: httpx.AsyncClient, live: LiveServer
) -> None:
    user = await signup(http)
    device_id, token = await paired_agent_token(http, user)
    async with open_stream(http, user.headers, type=["tunnel.*", "device.unpaired"]) as stream:
        await _rename(http, user.headers, device_id, "Ignored")
        async with connect_agent(live, token):
            connected = await stream.next(15)
        assert connected.event == "tunnel.connected"
        assert (await stream.next(15)).event == "tunnel.disconnected"
        unpaired = await http.delete(f"{API}/devices/{device_id}", headers=user.headers)
        assert unpaired.status_code == 204, unpaired.text
        assert (await stream.next()).event == "device.unpaired"
    for bad in ("nope", "device.nope", "tunnel.*.*"):
        response = await http.get(f"{API}/events", params={"type": bad}, headers=user.headers)
        assert response.status_code == 422, bad
        assert response.json()["error"]["code"] == "validation_error"


async def test_last_event_id_replays_exactly_the_missed_events_then_goes_on_live(
    http: httpx.AsyncClient,
) -> None:
    user = await signup(http)
    device = await paired_device(http, user)
    device_id = device["device_id"]
    async with open_stream(http, user.headers, type="device.renamed") as stream:
        await _rename(http, user.headers, device_id, "Seen")
        last = await stream.next()
    for name in ("Missed 1", "Missed 2", "Missed 3"):
        await _rename(http, user.headers, device_id, name)
    resumed = {**user.headers, "Last-Event-ID": str(last.id)}
    async with open_stream(http, resumed, type="device.renamed") as stream:
        replayed = await stream.frames(3)
        await _rename(http, user.headers, device_id, "Live")
        live = await stream.next()
        assert await stream.quiet(1.5) == []  # nothing twice
    assert [f.json()["detail"]["to"] for f in replayed] == ["Missed 1", "Missed 2", "Missed 3"]
    assert live.json()["detail"]["to"] == "Live"
    # the query parameter does the same (a client that cannot set the header)
    async with open_stream(http, user.headers, last_event_id=replayed[1].id) as stream:
        assert (await stream.until("device.renamed")).json()["detail"]["to"] == "Missed 3"


async def test_an_unknown_or_foreign_resume_id_is_answered_with_reset(
    http: httpx.AsyncClient,
) -> None:
    alice, bob = await signup(http), await signup(http)
    device = await paired_device(http, bob)
    async with open_stream(http, bob.headers) as stream:
        await _rename(http, bob.headers, device["device_id"], "Bob's")
        bobs = await stream.until("device.renamed")
    for last in ("00000000-0000-0000-0000-000000000000", "not-an-id", str(bobs.id)):
        async with open_stream(http, {**alice.headers, "Last-Event-ID": last}) as stream:
            reset = await stream.next()
            assert reset.event == "reset", last
            assert reset.id is None
            assert reset.json()["reason"] == "unknown_id"


async def test_the_tail_runs_only_while_a_stream_is_open(
    http: httpx.AsyncClient, live: LiveServer
) -> None:
    hub = EVENTS.of(live.app)
    assert not hub.tailing
    user = await signup(http)
    async with open_stream(http, user.headers):
        assert hub.tailing
        assert hub.open() == 1
    for _ in range(100):
        if not hub.tailing and hub.open() == 0:
            break
        await asyncio.sleep(0.05)
    assert hub.open() == 0
    assert not hub.tailing


async def test_a_stream_with_a_timeout_ends_by_itself(http: httpx.AsyncClient) -> None:
    user = await signup(http)
    response = await asyncio.wait_for(
        http.get(f"{API}/events", params={"timeout": 0.3}, headers=user.headers), 10
    )
    assert response.status_code == 200
    assert response.text.startswith("retry: 3000")


async def test_an_open_stream_ends_when_its_caller_signs_out(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoints, "RECHECK_EVERY", 0.1)
    quick = settings.model_copy(update={"events_keepalive": 0.2})
    async with (
        serve_app(create_app(quick), quick) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        user = await signup(http)
        http.cookies.clear()
        async with open_stream(http, user.headers) as stream:
            await stream.quiet(0.5)
            assert stream.comments  # keep-alives while the session is valid
            out = await http.post(f"{API}/auth/logout", headers=user.headers)
            assert out.status_code == 204, out.text
            with pytest.raises(EOFError):
                await stream.quiet(5)


async def test_head_answers_the_stream_headers_without_a_body(http: httpx.AsyncClient) -> None:
    user = await signup(http)
    response = await asyncio.wait_for(http.head(f"{API}/events", headers=user.headers), 10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == b""
