"""What the rollouts feature hands to routes: its :class:`Scheduler` (to wake it).

Built by the composition root (:mod:`visiona.app`) in the lifespan.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from visiona.kit.runtime import Provided
from visiona.rollouts.scheduler import Scheduler

#: The node's rollout scheduler.
SCHEDULER = Provided[Scheduler]("rollout_scheduler")
SchedulerDep = Annotated[Scheduler, Depends(SCHEDULER.dependency)]

__all__ = ["SCHEDULER", "SchedulerDep"]
