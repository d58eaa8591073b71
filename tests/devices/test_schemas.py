"""The hot routes' device answer (plain values through orjson) is pydantic's, byte for byte."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from visiona.devices.repository import Device
from visiona.devices.schemas import DeviceList, DeviceOut, device_body
from visiona.kit.jsonout import dumps


def _device(**values: object) -> Device:
    fields: dict[str, object] = {
        "id": uuid.uuid4(),
        "owner_user_id": uuid.uuid4(),
        "org_id": uuid.uuid4(),
        "name": 'ä\u2028 "quoted" </script>',
        "device_type": "KL520",
        "serial_number": "s-1",
        "remote_status": "online",
        "status": "unknown",
        "busy": True,
        "tcp_ports": [22, 8080],
        "last_seen_at": datetime(2026, 1, 2, 3, 4, 5, 678900, tzinfo=UTC),
        "last_connected_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "paired_at": None,
        "created_at": datetime(2026, 1, 2, 3, 4, 5, 1, tzinfo=UTC),
        "updated_at": datetime(2026, 1, 2, tzinfo=UTC),
        "current_model_id": uuid.uuid4(),
        "current_model_sha256": "ab" * 32,
    }
    fields.update(values)
    return Device(**fields)  # type: ignore[arg-type]  # a dict of the record's own fields


@pytest.mark.parametrize(
    "device",
    [
        _device(),
        _device(tcp_ports=None, serial_number=None, device_type=None, busy=False),
        _device(previous_model_id=uuid.uuid4(), previous_model_sha256="CD" * 32),
    ],
)
def test_the_device_body_encodes_like_the_pydantic_answer(device: Device) -> None:
    tags = {"chip": "kl520", "site": "lab ü"}
    assert dumps(device_body(device, tags)) == DeviceOut.of(device, tags).model_dump_json().encode()


def test_the_device_list_body_encodes_like_the_pydantic_answer() -> None:
    devices = [_device(), _device(tcp_ports=[])]
    expected = DeviceList(items=[DeviceOut.of(d, {}) for d in devices], next_cursor="abc")
    body = {"items": [device_body(d, {}) for d in devices], "next_cursor": "abc"}
    assert dumps(body) == expected.model_dump_json().encode()
