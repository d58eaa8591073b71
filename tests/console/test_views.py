"""The console's presentation rules: badges, sizes, the filter, the no-JS-safe forms."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.support.console import Live, pair_device, register
from visiona.audit.repository import AuditEvent
from visiona.console.views import (
    Badge,
    batch_label,
    busy_badge,
    deployment_badge,
    event_actor,
    forward_commands,
    matches,
    pairing_state,
    rollout_badge,
    rollout_device_badge,
    session_state,
    size,
    tunnel_badge,
    usb_label,
)
from visiona.deployments.repository import Deployment
from visiona.deployments.schemas import DeploymentStatus
from visiona.devices.repository import Device
from visiona.tokens.repository import PairingToken, SessionToken
from visiona.wire import RemoteStatus

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SEEN = NOW - timedelta(days=20)
DEVICE = Device(
    id=uuid.uuid4(),
    owner_user_id=uuid.uuid4(),
    org_id=uuid.uuid4(),
    name="Lab PC",
    device_type="kl520",
    serial_number="KL-1",
    remote_status="offline",
    status="unknown",
    busy=False,
    tcp_ports=None,
    last_seen_at=None,
    last_connected_at=None,
    paired_at=None,
    created_at=SEEN,
    updated_at=SEEN,
)
PAIRING = PairingToken(
    token_hash="0" * 64,
    public_id=uuid.uuid4(),
    user_id=uuid.uuid4(),
    org_id=uuid.uuid4(),
    device_id=None,
    created_at=SEEN,
    expires_at=NOW + timedelta(minutes=5),
    used_at=None,
    revoked_at=None,
)
SESSION = SessionToken(
    token_hash="1" * 64,
    public_id=uuid.uuid4(),
    user_id=uuid.uuid4(),
    device_id=uuid.uuid4(),
    parent_token_hash=None,
    pairing_token_id=None,
    created_at=SEEN,
    expires_at=None,
    revoked_at=None,
)


@pytest.mark.parametrize(
    ("remote_status", "last_connected_at", "label", "kind"),
    [
        ("online", SEEN, "Online", "online"),
        ("reconnecting", SEEN, "Reconnecting", "reconnecting"),
        ("offline", SEEN, "Offline", "offline"),
        ("error", SEEN, "Offline", "offline"),
        ("offline", None, "Never connected", "never"),
    ],
)
def test_tunnel_badge_reads_the_status_and_whether_it_ever_connected(
    remote_status: RemoteStatus, last_connected_at: datetime | None, label: str, kind: str
) -> None:
    device = replace(DEVICE, remote_status=remote_status, last_connected_at=last_connected_at)
    badge = tunnel_badge(device)
    assert (badge.label, badge.kind) == (label, kind)


def test_offline_is_neutral_not_the_error_colour() -> None:
    assert tunnel_badge(replace(DEVICE, last_connected_at=SEEN)).kind != "error"


def test_usb_label_names_the_dongle_status() -> None:
    assert usb_label(replace(DEVICE, status="offline")) == "Disconnected"
    assert usb_label(replace(DEVICE, status="online")) == "Connected"
    assert usb_label(DEVICE) == "Unknown"


def test_busy_badge_shows_what_the_agent_reported() -> None:
    assert busy_badge(replace(DEVICE, busy=True)).label == "Busy"
    assert busy_badge(DEVICE).label == "Idle"  # never reported: stored false


def test_token_states() -> None:
    assert pairing_state(PAIRING, NOW).label == "Unused"
    assert pairing_state(replace(PAIRING, used_at=NOW), NOW).label == "Used"
    assert pairing_state(replace(PAIRING, expires_at=NOW), NOW).label == "Expired"
    assert pairing_state(replace(PAIRING, used_at=NOW, revoked_at=NOW), NOW).label == "Revoked"
    assert session_state(SESSION, NOW).label == "Active"
    assert session_state(replace(SESSION, revoked_at=NOW), NOW).label == "Revoked"
    failed = Deployment(
        id=uuid.uuid4(),
        owner_user_id=uuid.uuid4(),
        org_id=uuid.uuid4(),
        device_id=uuid.uuid4(),
        model_id=uuid.uuid4(),
        status=DeploymentStatus.FAILED,
        error="no",
        created_at=SEEN,
        updated_at=SEEN,
        finished_at=SEEN,
    )
    assert deployment_badge(failed).label == "Failed"


@pytest.mark.parametrize(
    ("num_bytes", "text"),
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (999, "999 bytes"),
        (1000, "1.0 kB"),
        (1024, "1.0 kB"),
        (999_960, "1.0 MB"),
        (4 * 1024 * 1024, "4.2 MB"),
        (5 * 10**9, "5.0 GB"),
    ],
)
def test_size(num_bytes: int, text: str) -> None:
    assert size(num_bytes) == text


def test_rollout_badges_keep_offline_neutral_and_failures_red() -> None:
    assert rollout_device_badge("waiting").kind == "offline"  # an offline device, no fault
    assert rollout_device_badge("failed").kind == "error"
    assert rollout_device_badge("succeeded") == Badge("Succeeded", "online")
    assert rollout_badge("paused").kind == "reconnecting"  # waits for someone
    assert rollout_badge("failed").kind == "error"
    assert rollout_badge("completed").label == "Completed"


def test_batch_zero_is_the_canary_and_the_others_are_numbered_as_the_planner_does() -> None:
    assert [batch_label(b) for b in (0, 1, 2, None)] == ["Canary", "Batch 1", "Batch 2", "Not yet"]


def test_filter_and_search() -> None:
    online = replace(DEVICE, remote_status="online")
    gone = replace(DEVICE, remote_status="reconnecting", name="Door", serial_number="kl-2")
    assert [matches(d, "online", "") for d in (online, gone)] == [True, False]
    assert [matches(d, "offline", "") for d in (online, gone)] == [False, True]
    assert [matches(d, "all", "KL-2") for d in (online, gone)] == [False, True]
    assert [matches(d, "all", "lab") for d in (online, gone)] == [True, False]


def test_forms_post_so_a_password_never_lands_in_a_url(http: httpx.Client) -> None:
    for path in ("/sign-in", "/sign-up"):
        assert '<form id="sign-' in http.get(path).text
        assert 'method="post"' in http.get(path).text


def test_forward_commands_give_ssh_for_22_and_a_listener_for_every_port() -> None:
    device = dataclasses.replace(DEVICE, tcp_ports=[22, 80, 5900])
    shown = str(device.id)
    assert [(c.port, c.command) for c in forward_commands(device)] == [
        (22, f"ssh -o ProxyCommand='visiona forward --stdio %h 22' USER@{shown}"),
        (22, f"visiona forward {shown} 10022:22"),
        (80, f"visiona forward {shown} 10080:80"),
        (5900, f"visiona forward {shown} 5900:5900"),
    ]
    assert forward_commands(dataclasses.replace(DEVICE, tcp_ports=None)) == []


def test_the_device_page_shows_the_commands_for_the_ports_the_agent_allows(
    http: httpx.Client, live: Live
) -> None:
    account = register(http)
    cookie = {"Cookie": f"{live.settings.cookie_name}={account.token}"}
    shown = {}
    for ports in ([22, 5900], [], None):
        paired = pair_device(http, account, f"Ports {ports}")
        if ports is not None:  # what the agent reports with its status
            reported = http.post(
                "/api/v1/agent/status",
                json={"usb_status": "unknown", "tcp_ports": ports},
                headers={"Authorization": f"Bearer {paired['session_token']}"},
            )
            assert reported.status_code == 204, reported.text
        page = http.get(f"/devices/{paired['device_id']}", headers=cookie)
        assert page.status_code == 200
        shown[str(ports)] = (paired["device_id"], page.text)
    device_id, text = shown["[22, 5900]"]
    ssh = f"ssh -o ProxyCommand=&#39;visiona forward --stdio %h 22&#39; USER@{device_id}"
    assert f"<code>{ssh}</code>" in text
    assert f'data-copy="visiona forward {device_id} 5900:5900"' in text
    assert "--allow-port 22" in shown["[]"][1]
    assert "No port of the device" in shown["[]"][1]
    assert "has not said which ports" in shown["None"][1]


def test_the_activity_names_who_in_the_team_acted() -> None:
    me, colleague = uuid.uuid4(), uuid.uuid4()
    event = AuditEvent(
        id=uuid.uuid4(),
        occurred_at=NOW,
        owner_id=colleague,
        org_id=uuid.uuid4(),
        actor_type="user",
        actor_id=colleague,
        action="device.renamed",
        target_type="device",
        target_id=None,
        device_id=None,
        client_addr=None,
        request_id=None,
        detail={},
        actor_email="grace@example.com",
        actor_name="Grace",
    )
    assert event_actor(event, colleague, {}) == "You"
    assert event_actor(event, me, {}) == "Grace"
    assert event_actor(replace(event, actor_name=""), me, {}) == "grace@example.com"
    gone = replace(event, actor_name=None, actor_email=None)
    assert event_actor(gone, me, {}) == "Someone"
