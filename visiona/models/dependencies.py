"""What the models feature hands to routes: the object storage of model files.

Built by the composition root (:mod:`visiona.app`) from settings in the lifespan,
before the first request (a bad storage URL stops the start-up).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from visiona.kit.runtime import Provided
from visiona.models.storage import ObjectStorage

#: Model files: a local directory by default, any object store by URL in production.
STORAGE = Provided[ObjectStorage]("object_storage")
StorageDep = Annotated[ObjectStorage, Depends(STORAGE.dependency)]
get_storage = STORAGE.dependency

__all__ = ["STORAGE", "StorageDep", "get_storage"]
