"""Revocation hooks run after commit; one failing hook stops no other."""

from __future__ import annotations

import uuid

import pytest

from visiona.kit.runtime import DeviceRevoked


async def test_failing_revocation_hook_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[uuid.UUID] = []

    async def broken(_device: uuid.UUID) -> None:
        raise RuntimeError("tunnel hub gone")

    async def recorder(device: uuid.UUID) -> None:
        seen.append(device)

    device_revoked = DeviceRevoked.of([broken, recorder])
    device = uuid.uuid4()
    await device_revoked(device)
    assert seen == [device]
    assert "revocation hook" in caplog.text
