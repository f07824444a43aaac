"""Settings of baselines (pricefit.baselines), the frontier model's included."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from ..endpoints import key_inputs
from .base import Stage

#: The classical baselines, each ``pricefit.baselines.<name>.baseline(train, test)``; the promotion
#: guard requires beating the best of them (settings.promote).
CLASSICAL_BASELINES = ("constant", "linear", "tfidf")


class FrontierConfig(Stage):
    speed_only: ClassVar[tuple[str, ...]] = ("concurrency",)  # requests in flight; each reply is per item

    enabled: bool = True
    model: str = "gpt-4o"
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint (env OPENAI_BASE_URL).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Name of the environment variable holding the key.")
    concurrency: int = Field(4, ge=1)
    max_retries: int = Field(5, ge=0)
    timeout_s: float = Field(60.0, gt=0)
    max_items: int | None = None
    input_cost_per_mtok: float = Field(2.50, description="USD per million input tokens (estimate).")
    output_cost_per_mtok: float = Field(10.00, description="USD per million output tokens (estimate).")
    max_tokens: int = Field(5, ge=1, description="Completion tokens per reply (the reference used 5).")
    seed: int | None = Field(42, description="Sampling seed sent with each request (reference: 42).")
    backoff_base_s: float = Field(1.0, ge=0, description="First retry delay; doubles each retry, plus jitter.")
    backoff_max_s: float = Field(60.0, ge=0, description="Cap on one retry delay (Retry-After included).")
    cache: bool = Field(True, description="Keep each reply on disk so a rerun sends no request.")


class BaselinesConfig(Stage):
    include: list[Literal[(*CLASSICAL_BASELINES, "base_model", "frontier")]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: [*CLASSICAL_BASELINES, "base_model", "frontier"]
    )
    frontier: FrontierConfig = Field(default_factory=FrontierConfig)
    base_model: str = Field("smollm2-135m", description="Model scored before fine-tuning (the base_model baseline).")
    split: Literal["test", "validation"] = Field("test", description="Held-out split; must match evaluate.split.")
    max_items: int | None = Field(
        None, description="Score the first N held-out items (None: all); must match evaluate.max_items."
    )

    def key_outside(self) -> dict[str, Any]:
        """With the frontier model: the endpoint it would call (config, else OPENAI_BASE_URL,
        credentials stripped), the model, and whether an API key is set (a boolean, never the key),
        so a result whose frontier was "skipped: no API key" is not served once the key is there."""
        return {"frontier": key_inputs(self.frontier)} if "frontier" in self.include else {}
