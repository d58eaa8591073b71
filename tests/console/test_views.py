"""The console's presentation rules: badges, sizes, the filter, the no-JS-safe forms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import httpx
import pytest

from tests.console.support import Live, pair_device, register
from visiona.console.views import (
    busy_badge,
    deployment_badge,
    forward_commands,
    matches,
    pairing_state,
    session_state,
    size,
    tunnel_badge,
    usb_label,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SEEN = NOW - timedelta(days=20)


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
    remote_status: str, last_connected_at: datetime | None, label: str, kind: str
) -> None:
    badge = tunnel_badge({"remote_status": remote_status, "last_connected_at": last_connected_at})
    assert (badge.label, badge.kind) == (label, kind)


def test_offline_is_neutral_not_the_error_colour() -> None:
    assert tunnel_badge({"remote_status": "offline", "last_connected_at": SEEN}).kind != "error"


def test_rows_may_be_mappings_or_objects() -> None:
    row = SimpleNamespace(remote_status="online", last_connected_at=SEEN, status="offline")
    assert tunnel_badge(row).label == "Online"
    assert usb_label(row) == "Disconnected"
    assert usb_label({"status": "weird"}) == "Unknown"


def test_busy_badge_shows_what_the_agent_reported() -> None:
    assert busy_badge({"busy": True}).label == "Busy"
    assert busy_badge(SimpleNamespace(busy=False)).label == "Idle"
    assert busy_badge({}).label == "Idle"  # never reported


def test_token_states() -> None:
    fresh = {"revoked_at": None, "used_at": None, "expires_at": NOW + timedelta(minutes=5)}
    assert pairing_state(fresh, NOW).label == "Unused"
    assert pairing_state({**fresh, "used_at": NOW}, NOW).label == "Used"
    assert pairing_state({**fresh, "expires_at": NOW}, NOW).label == "Expired"
    assert pairing_state({**fresh, "used_at": NOW, "revoked_at": NOW}, NOW).label == "Revoked"
    assert session_state({"revoked_at": None, "expires_at": None}, NOW).label == "Active"
    assert session_state({"revoked_at": NOW, "expires_at": None}, NOW).label == "Revoked"
    assert deployment_badge({"status": "failed"}).label == "Failed"


@pytest.mark.parametrize(
    ("num_bytes", "text"),
    [(0, "0 bytes"), (1023, "1023 bytes"), (1024, "1.0 KiB"), (4 * 1024 * 1024, "4.0 MiB")],
)
def test_size(num_bytes: int, text: str) -> None:
    assert size(num_bytes) == text


def test_filter_and_search() -> None:
    online = {"remote_status": "online", "name": "Lab PC", "serial_number": "KL-1"}
    gone = {"remote_status": "reconnecting", "name": "Door", "serial_number": "kl-2"}
    assert [matches(d, "online", "") for d in (online, gone)] == [True, False]
    assert [matches(d, "offline", "") for d in (online, gone)] == [False, True]
    assert [matches(d, "all", "KL-2") for d in (online, gone)] == [False, True]
    assert [matches(d, "all", "lab") for d in (online, gone)] == [True, False]


def test_forms_post_so_a_password_never_lands_in_a_url(http: httpx.Client) -> None:
    for path in ("/sign-in", "/sign-up"):
        assert '<form id="sign-' in http.get(path).text
        assert 'method="post"' in http.get(path).text


def test_forward_commands_give_ssh_for_22_and_a_listener_for_every_port() -> None:
    device = {"id": "6f1c", "tcp_ports": [22, 80, 5900]}
    assert [(c.port, c.command) for c in forward_commands(device)] == [
        (22, "ssh -o ProxyCommand='visiona forward --stdio %h 22' USER@6f1c"),
        (22, "visiona forward 6f1c 10022:22"),
        (80, "visiona forward 6f1c 10080:80"),
        (5900, "visiona forward 6f1c 5900:5900"),
    ]
    assert forward_commands({"id": "6f1c", "tcp_ports": None}) == []


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
