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
