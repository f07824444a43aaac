"""Typed configuration: one pydantic model per stage, and RunConfig that holds them all.

Profiles are YAML files (deployments/profiles/*.yaml, or the folder in PRICEFIT_PROFILES:
:func:`profiles_dir`) that fill a RunConfig; command-line
``--set key.sub=value`` overrides apply on top. Impossible combinations fail here, once, with a
message that says what to change.

Ownership: each stage's config class belongs to that stage's module; add fields there, with a
description, a default that works on the 2-core CPU demo, and validation of impossible values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import PricefitError
from .parsing import DEFAULT_MAX_PRICE, DEFAULT_MIN_PRICE
from .slices import SliceSpec

# Reference product-pricer prompt, split into the part the model reads and the part it must write.
DEFAULT_PROMPT_TEMPLATE = "How much does this cost to the nearest dollar?\n\n{text}\n\nPrice is $"
DEFAULT_COMPLETION_TEMPLATE = "{price}.00"

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


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CurateConfig(_Stage):
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


class TokenizeConfig(_Stage):
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


Quantization = Literal["none", "8bit", "4bit"]


class TrainConfig(_Stage):
    base_model: str = Field("smollm2-135m", description="Hub id, local directory, or built-in name.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quantization: Quantization = Field("4bit", description="none, 8bit or 4bit (bitsandbytes).")
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on CUDA, float32 on CPU (bitsandbytes bf16 is 25x slower on CPU)."
    )
    lora_r: int = Field(32, ge=1)
    lora_alpha: int = Field(64, ge=1)
    lora_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, description="Stop after this many optimizer steps (overrides epochs).")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = 0.0
    max_grad_norm: float = 0.3
    optimizer: Literal["adamw", "adamw_fused", "paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit"] = Field(
        "adamw", description="paged/8-bit optimizers need CUDA."
    )
    gradient_checkpointing: bool = False
    seed: int = 42
    save_steps: int = Field(50, ge=1, description="Checkpoint every N optimizer steps.")
    logging_steps: int = Field(1, ge=1)
    merge: bool = Field(False, description="Also write a merged (base + adapter) model.")
    max_train_items: int | None = None
    mode: Literal["auto", "throughput", "memory"] = Field(
        "auto",
        description=(
            "CUDA speed/memory trade-off (docs/PERFORMANCE.md): throughput = no gradient checkpointing; "
            "memory = gradient checkpointing; auto = as gradient_checkpointing says."
        ),
    )
    head: Literal["generate", "regression"] = Field(
        "generate",
        description="generate: the model writes the price digits (the reference); regression: a linear price head on "
        "the prompt's final hidden state, trained on standardized log1p(price) (pricefit.heads).",
    )
    head_pool: Literal["last", "mean"] = Field("last", description="regression: pool the last prompt token or the mean of the prompt.")
    head_loss: Literal["huber", "mse"] = Field("huber", description="regression: loss on the standardized log price.")
    huber_delta: float = Field(1.0, gt=0, description="regression: Huber threshold (in standard deviations of log price).")
    head_lr_scale: float = Field(1.0, gt=0, description="regression: the head's learning rate = learning_rate x this.")
    head_lm_weight: float = Field(
        0.0, ge=0, description="regression: also train the digit completion with this weight (0: the head's loss only)."
    )
    blend: Literal["none", "tfidf", "knn", "tfidf+knn"] = Field(
        "none",
        description="regression: blend the head in log space with TF-IDF + ridge (tfidf) and/or the prices of the nearest "
        "training items in the fine-tuned model's embedding space (knn), the weights chosen on the validation split "
        "(pricefit.blend, pricefit.retrieval; weights 0 = the head alone).",
    )
    blend_min_items: int = Field(
        100, ge=1,
        description="Fewest validation items the blend weights are chosen on; with fewer the head stands alone "
        "(weights chosen on a few dozen items are noise: the demo's 33 put all weight on TF-IDF, which then lost on test).",
    )
    oversample: dict[str, float] = Field(
        default_factory=dict,
        description="Repeat the training items of a named slice (the profile's slices:) this many times, e.g. {reference: 3}.",
    )
    price_balance: float = Field(
        0.0, ge=0, le=1,
        description="Reweight training items toward a flat distribution over log-price bins: 0 = as curated, 1 = flat.",
    )
    num_processes: int = Field(
        1, ge=1,
        description="Data-parallel processes (one per GPU of this host; gloo on CPU). Above 1, the train step runs "
        "`accelerate launch` itself; batch_size is the global micro-batch and must divide by it (docs/PERFORMANCE.md).",
    )
    # speed levers of the training loop (docs/PERFORMANCE.md, "Levers"); "auto" = on for CUDA, off on CPU.
    # None of them is part of the checkpoint key: they change the speed, not the run.
    loss_sync_steps: int | Literal["auto"] = Field(
        "auto", description="Read the loss from the device every N optimizer steps (the loss history still has every "
        "step); auto: 1 on CPU, 25 on CUDA (no host sync per step). Checkpoint steps and the last step always read it.",
    )
    pad_to: Literal["auto", "longest", "buckets", "max"] = Field(
        "auto", description="Width of a micro-batch: longest = its longest row (CPU default); buckets = the next multiple "
        "of pad_multiple; max = the longest row of the data (one shape; CUDA default, for torch.compile).",
    )
    pad_multiple: int = Field(32, ge=1, description="pad_to buckets: widths are multiples of this.")
    device_data: bool | Literal["auto"] = Field(
        "auto", description="Put the whole tokenized train split on the device once and index micro-batches there "
        "(auto: on for CUDA).",
    )
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the decoder + loss (auto: on for CUDA); falls back to eager with a warning "
        "if compilation fails.",
    )
    compile_mode: Literal["auto", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"] = Field(
        "auto", description="torch.compile mode. reduce-overhead adds CUDA graphs (one replay per layer instead of its "
        "kernel launches); auto: reduce-overhead on CUDA for an unquantized base in throughput mode (where the step is "
        "bound by launches), default otherwise (a 4-bit base, gradient checkpointing, the CPU).",
    )
    compile_scope: Literal["layers", "model"] = Field(
        "layers", description="layers: compile each decoder layer (one graph for all: compiles in seconds); model: the "
        "whole decoder + loss as one graph (longer to compile).",
    )

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.quant_type == "fp4" and self.quantization != "4bit":
            raise ValueError("quant_type fp4 only applies with quantization: 4bit")
        if self.blend != "none" and self.head != "regression":
            raise ValueError("train.blend needs train.head: regression (it blends the price head's predictions)")
        if self.loss_sync_steps != "auto" and self.loss_sync_steps < 1:
            raise ValueError(f"loss_sync_steps must be >= 1 or auto, got {self.loss_sync_steps}")
        for name, factor in self.oversample.items():
            if factor <= 0:
                raise ValueError(f"oversample[{name!r}] must be > 0 (1 keeps the slice as it is), got {factor}")
        if self.batch_size % self.num_processes:
            raise ValueError(
                f"batch_size {self.batch_size} does not divide into num_processes {self.num_processes} equal per-process "
                f"micro-batches; set batch_size to a multiple of {self.num_processes} (the global batch stays batch_size x grad_accum)"
            )
        return self


class EvaluateConfig(_Stage):
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


class FrontierConfig(_Stage):
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


class BaselinesConfig(_Stage):
    include: list[Literal["constant", "linear", "tfidf", "base_model", "frontier"]] = Field(
        default_factory=lambda: ["constant", "linear", "tfidf", "base_model", "frontier"]
    )
    frontier: FrontierConfig = Field(default_factory=FrontierConfig)
    base_model: str = Field("smollm2-135m", description="Model scored before fine-tuning (the base_model baseline).")
    split: Literal["test", "validation"] = Field("test", description="Held-out split; must match evaluate.split.")
    max_items: int | None = Field(
        None, description="Score the first N held-out items (None: all); must match evaluate.max_items."
    )


CLASSICAL_BASELINES = ("constant", "linear", "tfidf")


class PromoteConfig(_Stage):
    metric: Literal["mae", "rmsle"] = "mae"
    margin: float = Field(0.02, ge=0, description="Challenger must beat the champion by this relative margin.")
    slice: str | None = Field(None, description="Decide on this named slice (the profile's slices:) instead of all items.")
    require_beat_baselines: bool = Field(
        True,
        description=f"Never promote a challenger that does not beat the best classical baseline ({', '.join(CLASSICAL_BASELINES)}) "
        "on the decision metric and slice.",
    )


# where each stage names the base model: a profile writes it once, as the top-level base_model
BASE_MODEL_FIELDS = (("curate", "tokenizer"), ("tokenize", "base_model"), ("train", "base_model"), ("baselines", "base_model"))


class RunConfig(_Stage):
    """Everything one retrain run needs."""

    profile: str = Field("demo", description="Name of the profile this config came from.")
    base_model: str | None = Field(
        None,
        description="The base model, named once: fills curate.tokenizer, tokenize.base_model, train.base_model and "
        "baselines.base_model where those are not set (they must all agree). None: the stages' own values.",
    )
    source: str = Field("demo:600", description="Listings source: demo[:N], file/glob, hf:Cat1,Cat2, csv:...")
    workdir: str = Field(
        default_factory=lambda: os.environ.get("PRICEFIT_WORKDIR", "runs"),
        description="Root directory of artifacts and caches.",
    )
    curate: CurateConfig = Field(default_factory=CurateConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)
    slices: list[SliceSpec] = Field(
        default_factory=list, description="Named slices of held-out items, reported beside the overall metrics (pricefit.slices)."
    )

    tracking: Literal["auto", "mlflow", "off"] = Field("auto", description="MLflow tracking (pricefit.tracking): auto = when MLFLOW_TRACKING_URI is set.")

    @model_validator(mode="before")
    @classmethod
    def _fill_base_model(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("base_model"):
            return data
        data = dict(data)
        for section, key in BASE_MODEL_FIELDS:
            sec = data.get(section)
            if sec is None or isinstance(sec, dict):
                sec = dict(sec or {})
                sec.setdefault(key, data["base_model"])
                data[section] = sec
        return data

    @model_validator(mode="after")
    def _check_written_once(self) -> "RunConfig":
        """The settings two sections share hold one value: the base model, the held-out items, the clip range."""
        named = {f"{section}.{key}": getattr(getattr(self, section), key) for section, key in BASE_MODEL_FIELDS}
        if self.base_model:
            named = {"base_model": self.base_model, **named}
        (first, value), *rest = named.items()
        for other, v in rest:
            if v != value:
                raise ValueError(
                    f"{first} is {value!r} but {other} is {v!r}: every stage must use one base model; "
                    "write it once as the top-level base_model and remove the per-section values"
                )
        self.__dict__["base_model"] = value  # (validate_assignment would re-run this validator)
        b, e = self.baselines, self.evaluate
        if (b.split, b.max_items) != (e.split, e.max_items):
            raise ValueError(
                f"baselines score split={b.split} max_items={b.max_items} but evaluate scores split={e.split} "
                f"max_items={e.max_items}: the comparison would not be on the same items; "
                "set baselines.split/max_items equal to evaluate.split/max_items"
            )
        if (e.min_price, e.max_price) != (DEFAULT_MIN_PRICE, DEFAULT_MAX_PRICE):
            raise ValueError(
                f"evaluate clips predictions to [{e.min_price}, {e.max_price}] but the language-model baselines clip "
                f"theirs to [{DEFAULT_MIN_PRICE}, {DEFAULT_MAX_PRICE}] (pricefit.parsing): the comparison would not be fair; "
                "leave evaluate.min_price/max_price at that range in a run profile"
            )
        return self

    @model_validator(mode="after")
    def _check_slices(self) -> "RunConfig":
        names = [s.name for s in self.slices]
        if len(set(names)) != len(names):
            raise ValueError(f"slice names must be unique: {names}")
        if self.promote.slice is not None and self.promote.slice not in names:
            raise ValueError(f"promote.slice {self.promote.slice!r} is not a declared slice ({', '.join(names) or 'none declared'})")
        unknown = sorted(set(self.train.oversample) - set(names))
        if unknown:
            raise ValueError(f"train.oversample names undeclared slices {unknown} (declared: {', '.join(names) or 'none'})")
        return self


# ----------------------------------------------------------------------------------------------
# loading


def _parse_scalar(value: str) -> Any:
    """Parse an override value the way YAML would ("1e-4" -> float, "true" -> bool, "[a,b]" -> list)."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, str):
        # YAML 1.1 reads "1e-4" as a string; a learning rate is a number
        try:
            return float(parsed)
        except ValueError:
            return parsed
    return parsed


# An override is "key.sub=value", or ("key.sub=value", "what the user typed") when it came from an
# option other than --set (e.g. ("base_model=x", "--base-model x")): errors name what the user typed.
Override = str | tuple[str, str]


def _split_override(item: Override) -> tuple[str, str]:
    if isinstance(item, tuple):
        return item[0], item[1]
    return item, f"--set {item}"


def _override_path(text: str, label: str) -> tuple[str, ...]:
    if "=" not in text:
        raise PricefitError(f"{label}: an override is key=value", hint="write e.g. --set train.lora_r=16")
    return tuple(p.strip() for p in text.split("=", 1)[0].strip().split("."))


def _strip_section(overrides: list[Override] | None, section: str) -> list[tuple[str, str]]:
    """Stage commands accept both "lora_r=16" and "train.lora_r=16"; the label keeps what was typed."""
    out = []
    for item in overrides or []:
        text, label = _split_override(item)
        if text.startswith(section + "."):
            text = text[len(section) + 1:]
        out.append((text, label))
    return out


def apply_overrides(data: dict[str, Any], overrides: list[Override] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (copy)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides or []:
        text, label = _split_override(item)
        parts = _override_path(text, label)
        value = text.split("=", 1)[1]
        node = out
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                typed = label.split("=", 1)[0].split(".")
                keep = ".".join(typed[: len(typed) - (len(parts) - i - 2) - 1])
                raise PricefitError(f"{label}: {'.'.join(parts[:i + 1])} is a setting, not a section", hint=f"write {keep}=VALUE")
        node[parts[-1]] = _parse_scalar(value)
    return out


def _section_model(cls: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the setting at ``path`` (None when path leaves the models)."""
    import typing

    model: Any = cls
    for part in path:
        field = getattr(model, "model_fields", {}).get(part) if isinstance(part, str) else None
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def _suggest(cls: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """The nearest valid name for the unknown last part of ``loc`` (difflib over its section's fields)."""
    import difflib

    if not loc or not isinstance(loc[-1], str):
        return None
    model = _section_model(cls, loc[:-1])
    if model is None:
        return None
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return close[0] if close else None


def _fixed_label(label: str, wrong: str, right: str) -> str | None:
    """``label`` ("--set train.learnig_rate=2e-4") with the misspelled key part replaced."""
    if not label.startswith("--set ") or "=" not in label:
        return None
    key, value = label[len("--set "):].split("=", 1)
    parts = key.split(".")
    if wrong not in parts:
        return None
    i = len(parts) - 1 - parts[::-1].index(wrong)
    parts[i] = right
    return f"--set {'.'.join(parts)}={value}"


def validate_model(
    cls: type[BaseModel],
    data: dict[str, Any],
    where: str,
    overrides: list[Override] | None = None,
    prefix: str = "",
) -> Any:
    """Validate ``data`` as ``cls``; each error names where its value came from and the nearest valid key.

    ``where`` is the file the data came from (or "defaults"); ``overrides`` are the overrides applied
    on top (an error at a key one of them set names that override, as the user typed it);
    ``prefix`` is the section name shown before each key (a stage config: "train").
    """
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        paths = []
        for item in overrides or []:
            text, label = _split_override(item)
            paths.append((_override_path(text, label), label))
        found: list[tuple[str, str]] = []  # (where the value came from, what is wrong)
        hints: list[str] = []
        for err in e.errors():
            loc = tuple(err["loc"])
            shown = ((prefix,) if prefix else ()) + loc
            key = ".".join(str(x) for x in shown) or "(root)"
            # the last override that set this key, a key inside it, or the section around it
            origin = next((label for path, label in reversed(paths) if path[: len(loc)] == loc[: len(path)]), None)
            if err["type"] == "extra_forbidden":
                near = _suggest(cls, loc)
                what = f"{key} is not a {'section' if isinstance(err.get('input'), dict) else 'setting'}"
                if near:
                    right = ".".join(str(x) for x in shown[:-1] + (near,))
                    what += f"; did you mean {right}?"
                    fixed = _fixed_label(origin, str(loc[-1]), near) if origin else None
                    hints.append(f"write {fixed}" if fixed else f"use {right}" if origin else f"rename {key} to {right} in {where}")
                else:
                    section = _section_model(cls, loc[:-1])
                    if section is not None:
                        hints.append(f"valid keys of {'.'.join(str(x) for x in shown[:-1]) or 'the top level'}: {', '.join(section.model_fields)}")
            else:
                what = f"{key}: {err['msg']}"
            found.append((origin or where, what))
        order = {label: i for i, (_, label) in enumerate(paths)}
        found.sort(key=lambda f: order.get(f[0], len(order)))  # in the order the user typed them
        if all(src == where for src, _ in found) and where != "defaults":
            head, lines = f"invalid configuration in {where}", [what for _, what in found]
        else:
            head, lines = "invalid configuration", [f"{src}: {what}" for src, what in found]
        message = f"{head}: {lines[0]}" if len(lines) == 1 else f"{head}:\n" + "\n".join(f"  {line}" for line in lines)
        raise PricefitError(
            message,
            hint="; ".join(dict.fromkeys(hints)) or "fix the named keys in the profile or --set override",
        ) from None


PROFILES_ENV = "PRICEFIT_PROFILES"
PROFILES_SUBDIR = Path("deployments") / "profiles"


def find_profiles_dir(start: Path) -> Path | None:
    """The ``deployments/profiles`` folder of the project that holds ``start``: the nearest one in
    ``start`` or a folder above it (a checkout, whatever its layout), or None (an installed wheel)."""
    for folder in (start, *start.parents):
        if (folder / PROFILES_SUBDIR).is_dir():
            return folder / PROFILES_SUBDIR
    return None


def profiles_dir() -> Path:
    """Where a profile named without a path is read from, the one lookup: ``$PRICEFIT_PROFILES``
    when set, else the ``deployments/profiles`` of the checkout this package is imported from."""
    env = os.environ.get(PROFILES_ENV)
    if env:
        d = Path(os.path.expanduser(env))
        if not d.is_dir():
            raise PricefitError(f"{PROFILES_ENV}={env} is not a folder", hint=f"point {PROFILES_ENV} at a folder of profile YAML files")
        return d
    d = find_profiles_dir(Path(__file__).resolve().parent)
    if d is None:
        raise PricefitError(
            f"no profiles folder: pricefit is not imported from a checkout with {PROFILES_SUBDIR}/",
            hint=f"export {PROFILES_ENV}=/path/to/deployments/profiles, or pass the profile as a path to its YAML file",
        )
    return d


def list_profiles() -> list[str]:
    """The profile names in :func:`profiles_dir` ([] when there is no such folder)."""
    try:
        d = profiles_dir()
    except PricefitError:
        return []
    return sorted(p.stem for p in d.glob("*.yaml"))


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise PricefitError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise PricefitError(f"config file {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise PricefitError(f"config file {p} must hold a mapping at the top level")
    return data


def load_run_config(profile: str | None = None, config_file: str | None = None, overrides: list[Override] | None = None) -> RunConfig:
    """Profile (by name or path) + overrides -> validated RunConfig."""
    data: dict[str, Any] = {}
    where = "defaults"
    if profile:
        path = Path(profile)
        # a name unless it looks like a file: "gpu-qwen1.5b" has a suffix (".5b") but is a name
        if path.suffix not in (".yaml", ".yml") and "/" not in profile and not path.is_file():
            path = profiles_dir() / f"{profile}.yaml"
        if not path.exists():
            raise PricefitError(
                f"profile {profile!r} not found at {path}",
                hint=f"available profiles: {', '.join(list_profiles()) or '(none)'}",
            )
        data = load_yaml(path)
        data.setdefault("profile", path.stem)
        where = str(path)
    if config_file:
        data = load_yaml(config_file)
        where = config_file
    data = apply_overrides(data, overrides)
    return validate_model(RunConfig, data, where, overrides)


def load_stage_config(cls: type[BaseModel], config_file: str | None, section: str, overrides: list[Override] | None = None) -> Any:
    """A stage config from a YAML file (either the stage mapping itself or a RunConfig with ``section``).

    Overrides may name the section or not ("lora_r=16" and "train.lora_r=16" are the same).
    """
    data: dict[str, Any] = {}
    where = "defaults"
    if config_file:
        raw = load_yaml(config_file)
        if section in raw:
            data = dict(raw[section] or {})
        elif set(raw) & set(RunConfig.model_fields):  # a run profile without this stage's section
            data = {}
        else:  # the stage mapping itself
            data = raw
        where = config_file
        # a profile names its base model once, at the top (as RunConfig fills it)
        for key in (k for sec, k in BASE_MODEL_FIELDS if sec == section and raw.get("base_model") and set(raw) & set(RunConfig.model_fields)):
            data.setdefault(key, raw["base_model"])
    stripped = _strip_section(overrides, section)
    data = apply_overrides(data, stripped)
    return validate_model(cls, data, where, stripped, prefix=section)


def load_slices(config_file: str | os.PathLike | None) -> list[SliceSpec]:
    """The ``slices:`` of a run profile given to a stage command's --config (none without one)."""
    if not config_file:
        return []
    raw = load_yaml(config_file).get("slices") or []
    if not isinstance(raw, list):
        raise PricefitError(f"{config_file}: slices must be a list of slice mappings", hint="see pricefit.slices")
    return [validate_model(SliceSpec, item, f"{config_file} slices[{i}]") for i, item in enumerate(raw)]


def cache_home() -> Path:
    """Where models and other caches live (PRICEFIT_HOME, default ~/.cache/pricefit)."""
    return Path(os.environ.get("PRICEFIT_HOME", Path.home() / ".cache" / "pricefit"))


def shared_data_dir() -> Path | None:
    """../shared/data, from PRICEFIT_SHARED_DATA (set by .ci/run and the Makefile)."""
    env = os.environ.get("PRICEFIT_SHARED_DATA")
    return Path(env) if env else None
