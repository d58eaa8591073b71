"""What the audit feature hands out: its retention pruner (no route uses it; ops and
tests read it). Built and started by the composition root, stopped at shutdown."""

from __future__ import annotations

from visiona.audit.retention import Pruner
from visiona.kit.runtime import Provided

#: Deletes audit events older than ``VISIONA_AUDIT_RETENTION_DAYS``.
PRUNER = Provided[Pruner]("audit_pruner")

__all__ = ["PRUNER"]
