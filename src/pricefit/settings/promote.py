"""Settings of compare and promote (pricefit.compare)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Stage
from .baselines import CLASSICAL_BASELINES


class PromoteConfig(Stage):
    metric: Literal["mae", "rmsle"] = "mae"
    margin: float = Field(0.02, ge=0, description="Challenger must beat the champion by this relative margin.")
    slice: str | None = Field(None, description="Decide on this named slice (the profile's slices:) instead of all items.")
    require_beat_baselines: bool = Field(
        True,
        description=f"Never promote a challenger that does not beat the best classical baseline ({', '.join(CLASSICAL_BASELINES)}) "
        "on the decision metric and slice.",
    )
