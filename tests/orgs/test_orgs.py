"""Organisations, members and invitations through the API, on SQLite and PostgreSQL:
sign-up's personal organisation, invitations (email, expiry, revocation, shown once,
stored hashed), roles and the last owner, and the audit trail of all of it."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import select, update

from tests.support.api import error_code, signup
from tests.support.devices import API, runtime
from tests.support.orgs import accept, acting, create_org, invite, member
from visiona.kit.clock import utcnow
from visiona.kit.schema import invitations


async def test_sign_up_makes_a_personal_organisation_owned_by_the_user(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    listed = await client.get(f"{API}/orgs", headers=user.headers)
    assert listed.status_code == 200
    (org,) = listed.json()["items"]
    assert (org["personal"], org["role"], org["id"]) == (True, "owner", user.org_id)
    assert listed.json()["next_cursor"] is None
    explicit = await client.get(f"{API}/devices", headers=acting(user, user.org_id))
    assert explicit.status_code == 200


async def test_created_organisation_is_owned_and_another_is_404(
    client: httpx.AsyncClient,
) -> None:
    owner, stranger = await signup(client), await signup(client)
    team = await create_org(client, owner, "Lab")
    got = await client.get(f"{API}/orgs/{team}", headers=owner.headers)
    assert got.json()["role"] == "owner"
    assert got.json()["personal"] is False
    for url in (f"{API}/orgs/{team}", f"{API}/orgs/{team}/members", f"{API}/orgs/{uuid.uuid4()}"):
        hidden = await client.get(url, headers=stranger.headers)
        assert hidden.status_code == 404, url
        assert error_code(hidden) == "not_found"
    for header in (team, str(uuid.uuid4()), "not-an-id"):
        refused = await client.get(f"{API}/devices", headers=acting(stranger, header))
        assert refused.status_code == 404
        assert error_code(refused) == "not_found"
    bad = await client.post(f"{API}/orgs", json={"name": ""}, headers=owner.headers)
    assert bad.status_code == 422


async def test_an_invitation_is_shown_once_stored_hashed_and_accepted_by_its_email(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    team = await create_org(client, owner)
    invitee = await signup(client)
    other = await signup(client)
    created = await invite(client, owner, team, invitee.email.upper(), "operator")
    token = created["token"]
    assert token.startswith("vin_")
    assert created["state"] == "pending"
    assert created["expires_at"] > created["created_at"]
    listed = await client.get(f"{API}/orgs/{team}/invitations", headers=owner.headers)
    assert "token" not in listed.json()["items"][0]
    async with runtime(app).db.reading() as conn:
        stored = (await conn.execute(select(invitations))).mappings().one()
    assert stored["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in {str(value) for value in stored.values()}

    wrong = await accept(client, other, token)
    assert wrong.status_code == 403
    assert error_code(wrong) == "invitation_email_mismatch"
    joined = await accept(client, invitee, token)  # the email matches in any letter case
    assert joined.status_code == 200, joined.text
    assert (joined.json()["id"], joined.json()["role"]) == (team, "operator")
    again = await accept(client, invitee, token)
    assert again.status_code == 410
    assert error_code(again) == "invitation_invalid"
    unknown = await accept(client, invitee, "vin_" + "x" * 43)
    assert error_code(unknown) == "invitation_invalid"
    members = await client.get(f"{API}/orgs/{team}/members", headers=acting(invitee, team))
    assert {(m["email"], m["role"]) for m in members.json()["items"]} == {
        (owner.email, "owner"),
        (invitee.email, "operator"),
    }


async def test_an_expired_or_revoked_invitation_is_refused(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await signup(client)
    team = await create_org(client, owner)
    invitee = await signup(client)
    expired = await invite(client, owner, team, invitee.email, "viewer")
    async with runtime(app).db.transaction() as conn:
        await conn.execute(
            update(invitations)
            .where(invitations.c.id == uuid.UUID(expired["id"]))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    late = await accept(client, invitee, expired["token"])
    assert late.status_code == 410
    assert error_code(late) == "invitation_invalid"
    revoked = await invite(client, owner, team, invitee.email, "viewer")
    url = f"{API}/orgs/{team}/invitations/{revoked['id']}"
    assert (await client.delete(url, headers=owner.headers)).status_code == 204
    assert (await client.delete(url, headers=owner.headers)).status_code == 404
    refused = await accept(client, invitee, revoked["token"])
    assert error_code(refused) == "invitation_invalid"
    states = await client.get(f"{API}/orgs/{team}/invitations", headers=owner.headers)
    assert [i["state"] for i in states.json()["items"]] == ["revoked", "expired"]
    owner_invite = await client.post(
        f"{API}/orgs/{team}/invitations",
        json={"email": invitee.email, "role": "owner"},
        headers=owner.headers,
    )
    assert owner_invite.status_code == 422


async def test_the_last_owner_stays_and_only_owners_touch_the_owner_role(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    team = await create_org(client, owner)
    admin = await member(client, owner, team, "admin")
    viewer = await member(client, owner, team, "viewer")
    me = f"{API}/orgs/{team}/members/{owner.id}"
    leave = await client.delete(me, headers=owner.headers)
    assert (leave.status_code, error_code(leave)) == (409, "last_owner")
    demote = await client.patch(me, json={"role": "admin"}, headers=owner.headers)
    assert (demote.status_code, error_code(demote)) == (409, "last_owner")
    # an admin manages roles below owner, never the owner role
    viewer_url = f"{API}/orgs/{team}/members/{viewer.id}"
    raised = await client.patch(viewer_url, json={"role": "operator"}, headers=admin.headers)
    assert raised.status_code == 200
    assert raised.json()["role"] == "operator"
    crowned = await client.patch(viewer_url, json={"role": "owner"}, headers=admin.headers)
    assert (crowned.status_code, error_code(crowned)) == (403, "forbidden")
    assert "'org'" in crowned.json()["error"]["message"]
    ousted = await client.delete(me, headers=admin.headers)
    assert ousted.status_code == 403
    # a viewer manages nobody; with a second owner the first may leave
    refused = await client.patch(
        f"{API}/orgs/{team}/members/{admin.id}", json={"role": "viewer"}, headers=viewer.headers
    )
    assert (refused.status_code, error_code(refused)) == (403, "forbidden")
    second = await client.patch(
        f"{API}/orgs/{team}/members/{admin.id}", json={"role": "owner"}, headers=owner.headers
    )
    assert second.status_code == 200
    assert (await client.delete(me, headers=owner.headers)).status_code == 204
    gone = await client.get(f"{API}/devices", headers=acting(owner, team))
    assert gone.status_code == 404  # at once: the leaving node forgot the membership
    personal = await client.delete(
        f"{API}/orgs/{owner.org_id}/members/{owner.id}", headers=owner.headers
    )
    assert (personal.status_code, error_code(personal)) == (409, "personal_org")
    unknown = await client.patch(
        f"{API}/orgs/{team}/members/{uuid.uuid4()}", json={"role": "viewer"}, headers=admin.headers
    )
    assert unknown.status_code == 404
    bad = await client.patch(viewer_url, json={"role": "king"}, headers=admin.headers)
    assert bad.status_code == 422


async def test_a_demotion_and_a_removal_take_effect_on_the_next_request(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    team = await create_org(client, owner)
    operator = await member(client, owner, team, "operator")
    body = {"name": "d", "serial_number": f"SN-{uuid.uuid4().hex[:8]}"}
    made = await client.post(f"{API}/devices", json=body, headers=acting(operator, team))
    assert made.status_code == 201
    url = f"{API}/orgs/{team}/members/{operator.id}"
    assert (await client.patch(url, json={"role": "viewer"}, headers=owner.headers)).is_success
    body["serial_number"] += "x"
    refused = await client.post(f"{API}/devices", json=body, headers=acting(operator, team))
    assert refused.status_code == 403
    assert (await client.delete(url, headers=owner.headers)).status_code == 204
    gone = await client.get(f"{API}/devices", headers=acting(operator, team))
    assert gone.status_code == 404


async def test_membership_changes_are_in_the_organisations_trail_with_who_acted(
    client: httpx.AsyncClient,
) -> None:
    owner = await signup(client)
    team = await create_org(client, owner)
    leaver = await member(client, owner, team, "viewer")
    removed = await member(client, owner, team, "operator")
    revoked = await invite(client, owner, team, "nobody@example.com", "viewer")
    await client.delete(f"{API}/orgs/{team}/invitations/{revoked['id']}", headers=owner.headers)
    await client.patch(
        f"{API}/orgs/{team}/members/{removed.id}", json={"role": "admin"}, headers=owner.headers
    )
    await client.delete(f"{API}/orgs/{team}/members/{removed.id}", headers=owner.headers)
    await client.delete(f"{API}/orgs/{team}/members/{leaver.id}", headers=leaver.headers)
    events = await client.get(
        f"{API}/audit-events", params={"limit": 200}, headers=acting(owner, team)
    )
    assert events.status_code == 200
    seen = [(e["action"], e["actor_email"]) for e in reversed(events.json()["items"])]
    assert seen == [
        ("org.created", owner.email),
        ("member.invited", owner.email),
        ("member.joined", leaver.email),
        ("member.invited", owner.email),
        ("member.joined", removed.email),
        ("member.invited", owner.email),
        ("invitation.revoked", owner.email),
        ("member.role_changed", owner.email),
        ("member.removed", owner.email),
        ("member.left", leaver.email),
    ]
    personal = await client.get(f"{API}/audit-events", headers=owner.headers)
    assert "member.invited" not in {e["action"] for e in personal.json()["items"]}
