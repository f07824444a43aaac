"""Settings of tokenize (pricefit.tokenization) and the prompt every model reads."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import Stage

# Reference product-pricer prompt, split into the part the model reads and the part it must write.
DEFAULT_PROMPT_TEMPLATE = "How much does this cost to the nearest dollar?\n\n{text}\n\nPrice is $"
DEFAULT_COMPLETION_TEMPLATE = "{price}.00"


class TokenizeConfig(Stage):
    base_model: str = Field("smollm2-135m", description="Hub id, local directory, or built-in name.")
    prompt_template: str = Field(DEFAULT_PROMPT_TEMPLATE, description="Prompt with a {text} slot.")
    completion_template: str = Field(
        DEFAULT_COMPLETION_TEMPLATE, description="The only part that carries loss; {price} is the rounded price."
    )
    max_length: int = Field(182, description="Sequence length cap in tokens (prompt + completion).")
    batch_size: int = Field(1000, description="Rows per batch for the fast tokenizer.")

    @model_validator(mode="after")
    def _check(self) -> "TokenizeConfig":
        if "{text}" not in self.prompt_template:
            raise ValueError("prompt_template must contain the {text} placeholder")
        if "{price}" not in self.completion_template:
            raise ValueError("completion_template must contain the {price} placeholder")
        return self
