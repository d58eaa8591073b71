"""The Kneron chips a model targets (defined in :mod:`visiona.wire`, which the CLI client
shares with the server without importing any server code)."""

from __future__ import annotations

from visiona.wire import TargetChip

__all__ = ["TargetChip"]
