"""The Kneron chips a model targets: a plain enum, light enough for the command line."""

from __future__ import annotations

from enum import StrEnum


class TargetChip(StrEnum):
    """Kneron chips a ``.nef`` model can be compiled for."""

    KL520 = "kl520"
    KL530 = "kl530"
    KL630 = "kl630"
    KL720 = "kl720"
    KL730 = "kl730"

    @classmethod
    def _missing_(cls, value: object) -> TargetChip | None:
        """Case-insensitive: ``KL520`` is ``kl520`` on every route and in the CLI."""
        if isinstance(value, str):
            lowered = value.strip().lower()
            for chip in cls:
                if chip.value == lowered:
                    return chip
        return None
