"""Settings of train (pricefit.training)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .base import Stage

Quantization = Literal["none", "8bit", "4bit"]


class TrainConfig(Stage):
    base_model: str = Field("smollm2-135m", description="Hub id, local directory, or built-in name.")

    # loss_sync_steps: when the loss is read from the device (loss.csv is the same to the bit);
    # save_steps: checkpoint cadence (a resumed run ends with the same bytes); logging_steps: read by
    # nothing that writes. Speed levers that can move the numbers stay in the key: pad_to,
    # pad_multiple, device_data (tensor shapes), compile* (kernels), batch sizes.
    speed_only: ClassVar[tuple[str, ...]] = ("loss_sync_steps", "save_steps", "logging_steps")
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
