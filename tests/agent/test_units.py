"""Agent pieces on their own: backoff, session file, options, USB status, URLs."""

from __future__ import annotations

import stat
import sys
import types
from pathlib import Path

import pytest

from visiona.agent import credentials, usb
from visiona.agent.credentials import Credentials
from visiona.agent.main import parse_forward
from visiona.agent.runner import (
    RESTART_ATTEMPTS,
    RESTART_STEP,
    Backoff,
    retry_after_delay,
    tunnel_url,
)
from visiona.wire import going_away_reason, reconnect_hint


def test_backoff_doubles_from_half_a_second_to_thirty_with_jitter_and_resets() -> None:
    backoff = Backoff()
    steps = [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    for step in steps:
        delay = backoff.next_delay()
        assert step / 2 <= delay <= step
    backoff.reset()
    assert 0.25 <= backoff.next_delay() <= 0.5
    assert len({Backoff().next_delay() for _ in range(20)}) > 1  # jittered


def test_after_a_restart_hint_failures_retry_every_second_then_double_again() -> None:
    backoff = Backoff()
    for _ in range(4):
        backoff.next_delay()  # grown to 8 s while the node was away
    backoff.expect_restart()
    steady = [backoff.next_delay() for _ in range(RESTART_ATTEMPTS)]
    assert all(RESTART_STEP / 2 <= delay <= RESTART_STEP for delay in steady)
    assert len(set(steady)) > 1  # jittered
    assert 4 <= backoff.next_delay() <= 8  # the usual doubling, where it was
    backoff.expect_restart()
    backoff.reset()  # a tunnel that stayed up ends the restart pace
    assert 0.25 <= backoff.next_delay() <= 0.5


def test_a_1001_reconnect_hint_is_read_back_bounded_and_nothing_else_is() -> None:
    assert reconnect_hint(1001, going_away_reason(2.71)) == pytest.approx(2.7)
    assert reconnect_hint(1001, going_away_reason(9999)) == 300.0
    assert reconnect_hint(1001, "server shutting down") is None
    assert reconnect_hint(1000, going_away_reason(2)) is None
    assert reconnect_hint(1001, "server shutting down; reconnect in soon s") is None
    assert reconnect_hint(1001, "server shutting down; reconnect in nan s") is None


def test_retry_after_is_honoured_with_up_to_half_again_of_jitter() -> None:
    delays = [retry_after_delay(4.0) for _ in range(50)]
    assert all(4.0 <= d <= 6.0 for d in delays)
    assert len(set(delays)) > 1


def test_session_file_is_private_and_bound_to_its_server(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "session.json"
    creds = Credentials("http://cloud:8080", "dev-1", "vst_secret", "2030-01-01T00:00:00Z")
    credentials.store(path, creds)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credentials.load(path, "http://cloud:8080/") == creds
    assert credentials.load(path, "http://elsewhere:8080") is None
    assert credentials.load(tmp_path / "missing.json", "http://cloud:8080") is None
    path.write_text("{not json")
    assert credentials.load(path, "http://cloud:8080") is None


def test_forward_and_tunnel_url_parsing() -> None:
    assert parse_forward("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert parse_forward("[::1]:81") == ("::1", 81)
    for bad in ("nohost", ":80", "host:", "host:0", "host:99999", "host:http"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_forward(bad)
    assert tunnel_url("http://h:1/") == "ws://h:1/api/v1/agent/tunnel"
    assert tunnel_url("https://cloud.example") == "wss://cloud.example/api/v1/agent/tunnel"


def _fake_usb(monkeypatch: pytest.MonkeyPatch, find: object) -> list[dict[str, object]]:
    calls: list[dict[str, object]] = []

    def record(**kwargs: object) -> object:
        calls.append(kwargs)
        if isinstance(find, Exception):
            raise find
        return find

    core = types.ModuleType("usb.core")
    monkeypatch.setattr(core, "find", record, raising=False)
    package = types.ModuleType("usb")
    monkeypatch.setattr(package, "core", core, raising=False)
    monkeypatch.setitem(sys.modules, "usb", package)
    monkeypatch.setitem(sys.modules, "usb.core", core)
    monkeypatch.setattr(usb, "_BACKENDS", usb.BackendCache(probe=lambda: _BACKEND))
    return calls


_BACKEND = object()


def test_usb_status_looks_for_kneron_vendor_id(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_usb(monkeypatch, object())
    assert usb.usb_status() == "online"
    assert calls == [{"idVendor": 0x3231, "backend": _BACKEND}]
    _fake_usb(monkeypatch, None)
    assert usb.usb_status() == "offline"
    _fake_usb(monkeypatch, RuntimeError("No backend available"))
    assert usb.usb_status() == "unknown"


def test_a_found_backend_is_looked_up_once() -> None:
    probes: list[int] = []

    def probe() -> object:
        probes.append(1)
        return _BACKEND

    cache = usb.BackendCache(probe=probe)
    assert cache.get() is _BACKEND
    assert cache.get() is _BACKEND
    assert probes == [1]


def test_a_missing_backend_is_looked_for_again_only_after_the_retry_interval() -> None:
    now = [1000.0]
    found: list[object] = [None]
    probes: list[float] = []

    def probe() -> object:
        probes.append(now[0])
        return found[0]

    cache = usb.BackendCache(probe=probe, retry=600.0, clock=lambda: now[0])
    for step in range(5):  # every status poll of ten minutes: one probe (subprocesses)
        now[0] = 1000.0 + step * 100
        with pytest.raises(usb.NoBackendError):
            cache.get()
    assert probes == [1000.0]
    found[0] = _BACKEND  # libusb installed meanwhile
    now[0] = 1601.0
    assert cache.get() is _BACKEND
    assert probes == [1000.0, 1601.0]


def test_no_backend_reads_as_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_usb(monkeypatch, object())
    monkeypatch.setattr(usb, "_BACKENDS", usb.BackendCache(probe=lambda: None))
    assert usb.usb_status() == "unknown"
    assert usb.detect_device_type() is None


def test_usb_status_on_this_machine_is_a_known_value() -> None:
    assert usb.usb_status() in {"online", "offline", "unknown"}
