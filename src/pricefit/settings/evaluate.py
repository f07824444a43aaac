"""Settings of evaluate and champion (pricefit.evaluation)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..parsing import DEFAULT_MAX_PRICE, DEFAULT_MIN_PRICE
from .base import Stage


class EvaluateConfig(Stage):
    split: Literal["test", "validation"] = "test"
    max_items: int | None = Field(None, ge=1, description="Score at most this many held-out items (None: all).")
    batch_size: int | None = Field(
        None, ge=1, description="Prompts per batch; None: 16 on CPU, 128 on CUDA (batching is where the GPU speed comes from)."
    )
    max_new_tokens: int = Field(6, ge=1, description="Tokens generated per item in greedy mode ('999.00' is 6 digit tokens).")
    mode: Literal["auto", "greedy", "expected", "head"] = Field(
        "auto",
        description="auto: the adapter's price head when it has one, else greedy; greedy: parse the generated string; "
        "expected: mean over the price-token distribution; head: the regression head (train.head: regression).",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quantization: Literal["none", "8bit", "4bit"] = Field("none", description="Load the base model quantized (bitsandbytes).")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on CUDA, float32 on CPU."
    )
    beam: int = Field(8, ge=1, description="expected mode: digit hypotheses kept per item.")
    min_price: float = Field(DEFAULT_MIN_PRICE, ge=0, description="Parsed predictions are clipped to [min_price, max_price].")
    max_price: float = Field(DEFAULT_MAX_PRICE, gt=0, description="Upper clip of parsed predictions (USD).")
    head_fast: bool | Literal["auto"] = Field(
        "auto", description="head mode: tokenize once, right-pad length-sorted batches with no attention mask, bf16 "
        "autocast, one device read at the end (auto: on for CUDA).",
    )
    compile: bool = Field(False, description="head mode with head_fast: torch.compile each decoder layer (widths padded to "
                          "multiples of 32); pays off on large item counts only (seconds of compilation per width).")
    merge_lora: bool | Literal["auto"] = Field(
        "auto", description="Fold the adapter into the base weights before predicting (one matmul per layer instead of "
        "three); auto: on for CUDA with an unquantized base. Never with a 4-bit or 8-bit base.",
    )

    @model_validator(mode="after")
    def _check(self) -> "EvaluateConfig":
        if self.min_price >= self.max_price:
            raise ValueError(f"min_price ({self.min_price}) must be below max_price ({self.max_price})")
        return self
