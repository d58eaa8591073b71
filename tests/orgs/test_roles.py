"""Roles at work through a real tunnel: a viewer cannot deploy while an operator can,
and a member of another organisation sees 404. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid

import httpx

from testkit.live import LiveServer
from tests.support.api import error_code, signup
from tests.support.deployments import Received, answer, read_request
from tests.support.devices import API, pair
from tests.support.models import nef
from tests.support.orgs import acting, create_org, member
from tests.support.tunnel import connect_agent, wait_for
from visiona.tunnel.dependencies import HUB
from visiona.yamux import Stream


async def test_a_viewer_cannot_deploy_an_operator_can_and_another_org_sees_404(
    live: LiveServer, http: httpx.AsyncClient
) -> None:
    owner = await signup(http)
    team = await create_org(http, owner, "Fleet")
    viewer = await member(http, owner, team, "viewer")
    operator = await member(http, owner, team, "operator")
    stranger = await signup(http)
    token = await http.post(f"{API}/pairing-tokens", json={}, headers=acting(owner, team))
    assert token.status_code == 201, token.text
    paired = await pair(http, token.json()["token"])
    assert paired.status_code == 201, paired.text
    device_id, session = paired.json()["device_id"], paired.json()["session_token"]
    model = await http.post(
        f"{API}/models",
        data={"target_chip": "kl520"},
        files={"file": ("m.nef", nef(4096), "application/octet-stream")},
        headers=acting(operator, team),
    )
    assert model.status_code == 201, model.text
    model_id = model.json()["id"]
    received = Received()

    async def agent(stream: Stream) -> None:
        await read_request(stream, received)
        answer(stream, 200, json.dumps({"model_id": model_id}).encode())

    async def connected() -> bool:
        return HUB.of(live.app).get(uuid.UUID(device_id)) is not None

    url = f"{API}/devices/{device_id}/deployments"
    async with connect_agent(live, session, agent):
        await wait_for(connected)
        refused = await http.post(url, json={"model_id": model_id}, headers=acting(viewer, team))
        assert refused.status_code == 403, refused.text
        assert error_code(refused) == "forbidden"
        assert "'deploy'" in refused.json()["error"]["message"]
        done = await http.post(url, json={"model_id": model_id}, headers=acting(operator, team))
        assert done.status_code == 201, done.text
        assert done.json()["status"] == "succeeded"
        # another organisation's member: the device does not exist for them
        for headers in (stranger.headers, acting(stranger, team)):
            hidden = await http.post(url, json={"model_id": model_id}, headers=headers)
            assert hidden.status_code == 404, hidden.text
            assert error_code(hidden) == "not_found"
            seen = await http.get(f"{API}/devices/{device_id}", headers=headers)
            assert seen.status_code == 404
    # the viewer reads the deployment, the personal organisation does not hold the device
    listed = await http.get(url, headers=acting(viewer, team))
    assert [d["status"] for d in listed.json()["items"]] == ["succeeded"]
    mine = await http.get(f"{API}/devices", headers=owner.headers)
    assert mine.json()["items"] == []
