"""Settings of ingest and curate (pricefit.curation)."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import Stage

# details keys the reference product pricer dropped as noise
DEFAULT_DROP_DETAIL_KEYS = [
    "Batteries Included?",
    "Batteries Required?",
    "Batteries",
    "Best Sellers Rank",
    "Customer Reviews",
    "Date First Available",
    "Discontinued by manufacturer",
    "Is Discontinued By Manufacturer",
    "Item model number",
    "Manufacturer recommended age",
    "Manufacturer Part Number",
    "Part Number",
    "Product Dimensions",
    "Item Weight",
    "Model Number",
    "Model Name",
    "UPC",
    "ASIN",
]


class CurateConfig(Stage):
    """Curation rules (reference product pricer defaults)."""

    min_price: float = Field(0.5, description="Drop items cheaper than this (USD).")
    max_price: float = Field(999.49, description="Drop items dearer than this (USD).")
    min_chars: int = Field(300, description="Drop items whose cleaned text is shorter than this.")
    max_text_tokens: int = Field(160, description="Truncate the text to this many tokens of the tokenizer.")
    tokenizer: str = Field(
        "smollm2-135m",
        description="Base model whose tokenizer measures the token budget (hub id, local dir, or built-in name).",
    )
    drop_detail_keys: list[str] = Field(default_factory=lambda: list(DEFAULT_DROP_DETAIL_KEYS))
    part_number_min_len: int = Field(7, description="Remove words at least this long that contain a digit.")
    balance: bool = Field(True, description="Balanced sampling over whole-dollar prices.")
    balance_keep_all_above: float = Field(240.0, description="Keep every item priced above this.")
    balance_cap_per_dollar: int = Field(1200, description="At most this many items per whole-dollar price.")
    category_weights: dict[str, float] = Field(
        default_factory=lambda: {"Automotive": 1.0}, description="Sampling weight per category."
    )
    default_category_weight: float = Field(5.0, description="Sampling weight of categories not listed.")
    seed: int = Field(42, description="Seed of the hash-based splits and of sampling.")
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    max_items: int | None = Field(None, description="Keep at most this many items after balancing (None: all).")
    csv_columns: dict[str, str | list[str]] | None = Field(
        None,
        description="CSV sources: item-metadata field -> CSV column(s), e.g. {title: name, price: cost} "
        "(None: the built-in Amazon Products 2023 layout).",
    )
    csv_categories: str | None = Field(
        None, description="CSV sources: id,category_name file for a category_id column (default: beside the CSV)."
    )
    max_bad_row_fraction: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Data contracts: rows failing a row-level check (a price out of range, a null key) are "
        "quarantined/dropped with the check's name while they are at most this fraction of a table; more stops "
        "the run (GX's mostly = 1 - this; 0: any bad row stops it).",
    )

    @model_validator(mode="after")
    def _check(self) -> "CurateConfig":
        if self.min_price >= self.max_price:
            raise ValueError(f"min_price ({self.min_price}) must be below max_price ({self.max_price})")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError("validation_fraction + test_fraction must leave room for a train split (< 1.0)")
        return self
