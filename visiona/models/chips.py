"""The Kneron chips a model targets.

The enum lives in :mod:`visiona.wire` (the command line shares it with the server and
must not import a feature package); the models feature names it from here.
"""

from __future__ import annotations

from visiona.wire import TargetChip

__all__ = ["TargetChip"]
