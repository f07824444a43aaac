"""What every stage's settings share: unknown keys are errors, assignments are validated."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: Fields that change how fast a step runs, never what it writes: kept out of its cache key
    #: (tasks/cache.py), so changing one reuses the cached result.
    speed_only: ClassVar[tuple[str, ...]] = ()

    def key_outside(self) -> dict[str, Any]:
        """What a step with these settings reads from outside its inputs (besides files, which the
        cache finds by itself) and that changes its result; it goes into the step's cache key."""
        return {}
