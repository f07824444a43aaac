"""GPU memory planner for full fine-tuning, LoRA, QLoRA and QLoRA with double quantization.

``estimate(shape, method, batch, seq, ...)`` returns an itemised :class:`MemoryEstimate` computed
from the model's architecture alone (no weights are loaded). The formulas, per item, with
``P`` = all parameters, ``Q`` = parameters of the decoder's Linear layers (what bitsandbytes
quantizes; embeddings, lm_head and norms stay in 16-bit), ``A`` = LoRA parameters
(``r * (in + out)`` per adapted Linear), ``T`` = tokens in a micro-batch (batch x seq):

weights
    full, lora: ``2 P`` (bf16).  qlora*: ``0.5 Q`` (4-bit, two weights a byte) + ``2 (P - Q)``.
quant_constants
    qlora: one fp32 absmax per block of 64 weights: ``4 ceil(n/64)`` per Linear.
    qlora-dq: the absmaxes are themselves quantized to 8 bits in blocks of 256, leaving one fp32
    constant per 256 blocks (+ one fp32 offset a tensor): ``ceil(n/64) + 4 ceil(ceil(n/64)/256) + 4``.
    That is the QLoRA paper's 0.5 -> 0.127 bits a parameter.
adapters / adapter_grads
    ``4 A`` each (peft keeps LoRA weights and their gradients in fp32). Full fine-tuning: weight
    gradients ``2 P`` (bf16) instead.
optimizer
    AdamW's two fp32 moments: ``8 A`` (LoRA) or ``8 P`` (full; pure bf16 training, no fp32 master
    copy -- add ``4 P`` for mixed precision with master weights).
activations
    Tensors saved for the backward pass, per token per decoder layer:
    ``layer_bytes = c_h * hidden + c_i * intermediate`` (bytes). Without gradient checkpointing all
    ``L`` layers keep theirs: ``T * L * layer_bytes``. With it, each layer keeps only its bf16 input
    (``c_ckpt * hidden``) and one layer is recomputed at a time: ``T * (L * c_ckpt * hidden + layer_bytes)``.
logits
    ``T_logits * vocab * c_vocab`` -- bf16 logits, their fp32 upcast, the log-softmax output and its
    gradient at every position that produces logits (all ``T`` positions in plain Hugging Face;
    only the label positions in a loss-at-the-price-only fast path: pass ``logits_positions``).
overhead
    a fixed allowance for the CUDA workspace (cuBLAS) and allocator slack.

The activation coefficients (:class:`ActivationModel`) come from counting the tensors a Llama
decoder layer saves in bf16 with SDPA attention and LoRA dropout on q/k/v/o (see ``FIRST_PRINCIPLES``);
:func:`calibrate` refits them to measured peaks (``H200_MEASURED``) so the planner can be tuned
to a machine and a training loop.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable

from .errors import PricefitError

GIB = 1024**3
METHODS: tuple[str, ...] = ("full", "lora", "qlora", "qlora-dq")
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NF4_BLOCK = 64
DQ_BLOCK = 256


@dataclass(frozen=True)
class ModelShape:
    """The architecture numbers the planner needs (Llama-style decoder)."""

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_embeddings: bool = False

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each Linear in one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        """Q: parameters of all decoder Linear layers (the ones 4-bit quantization packs)."""
        return self.num_layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        """Input embedding plus lm_head (counted once when tied)."""
        n = self.vocab_size * self.hidden_size
        return n if self.tie_embeddings else 2 * n

    @property
    def norm_params(self) -> int:
        return (2 * self.num_layers + 1) * self.hidden_size

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embedding_params + self.norm_params

    def lora_params(self, r: int, target_modules: Iterable[str] | str) -> int:
        shapes = self.linear_shapes()
        names = list(LINEAR_NAMES) if target_modules == "all-linear" else list(target_modules)
        unknown = [n for n in names if n not in shapes]
        if unknown:
            raise PricefitError(
                f"unknown target module(s) {unknown} for the memory plan",
                hint=f"use names from {list(LINEAR_NAMES)} or 'all-linear'",
            )
        return self.num_layers * sum(r * (shapes[n][0] + shapes[n][1]) for n in names)


# Meta's published config.json values.
BUILTIN_SHAPES: dict[str, ModelShape] = {
    "llama-3.1-8b": ModelShape("llama-3.1-8b", 128256, 4096, 14336, 32, 32, 8, 128),
    "llama-3.1-70b": ModelShape("llama-3.1-70b", 128256, 8192, 28672, 80, 64, 8, 128),
    "llama-3.1-405b": ModelShape("llama-3.1-405b", 128256, 16384, 53248, 126, 128, 8, 128),
}
_ALIASES = {"8b": "llama-3.1-8b", "70b": "llama-3.1-70b", "405b": "llama-3.1-405b"}


def shape_from_config(cfg: dict, name: str) -> ModelShape:
    """ModelShape from a Hugging Face config.json mapping."""
    try:
        h = int(cfg["hidden_size"])
        nh = int(cfg["num_attention_heads"])
        return ModelShape(
            name=name,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=h,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=nh,
            num_kv_heads=int(cfg.get("num_key_value_heads") or nh),
            head_dim=int(cfg.get("head_dim") or h // nh),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )
    except KeyError as e:
        raise PricefitError(
            f"config of {name} lacks {e.args[0]!r}: the planner needs a Llama-style decoder config",
            hint="pass a Llama/Mistral/Qwen-style model, or llama-3.1-8b/70b/405b",
        ) from None


def load_shape(model: str) -> ModelShape:
    """Shape of ``model``: a built-in name (llama-3.1-8b|70b|405b, 8b|70b|405b), a local directory or
    config.json, a pricefit built-in model (smollm2-135m, tiny-random), or a hub id."""
    key = model.lower()
    key = _ALIASES.get(key, key)
    if key.startswith("meta-llama/"):
        key = key.split("/", 1)[1].replace("meta-llama-", "")
    if key in BUILTIN_SHAPES:
        return BUILTIN_SHAPES[key]
    path = Path(model)
    if path.is_file() and path.suffix == ".json":
        return shape_from_config(json.loads(path.read_text()), model)
    if (path / "config.json").is_file():
        return shape_from_config(json.loads((path / "config.json").read_text()), model)
    try:  # pricefit's own built-in models (tiny-random, smollm2-135m) resolve to a local directory
        from . import models  # deferred: optional here (without its dependencies the estimate falls through to the next lookup)

        if model in models.builtin_models():
            rpath = Path(models.resolve_model(model))
            return shape_from_config(json.loads((rpath / "config.json").read_text()), model)
    except ImportError:
        pass
    try:
        from transformers import AutoConfig  # noqa: PLC0415

        cfg = AutoConfig.from_pretrained(model)
    except Exception as e:  # offline, unknown id, gated repo
        raise PricefitError(
            f"cannot read the config of {model!r} ({type(e).__name__})",
            hint="pass llama-3.1-8b|70b|405b, a local model directory, or a path to its config.json",
        ) from None
    return shape_from_config(cfg.to_dict(), model)


@dataclass(frozen=True)
class ActivationModel:
    """Bytes kept for backward per token (see the module docstring)."""

    c_h: float  # per decoder layer, times hidden_size
    c_i: float  # per decoder layer, times intermediate_size
    c_ckpt: float  # per decoder layer with gradient checkpointing, times hidden_size
    c_vocab: float  # per logits position, times vocab_size
    overhead_gib: float  # CUDA workspace + allocator slack
    source: str = ""


# Counted for a Llama layer in bf16, SDPA attention, LoRA (dropout) on q/k/v/o:
#   2 RMSNorms   x 8h  (fp32 input copy 4h + bf16 normalised 2h + bf16 output 2h)        = 16h
#   attention    qkv input 2h, 3 LoRA dropout copies 6h + masks 3h, q 2h, k+v (GQA) ~1h,
#                RoPE q/k copies ~5h, SDPA q/k/v/out ~5h, o input 2h + dropout 2h + mask 1h = 29h
#   residual     2h;  MLP: gate out, silu out, up out, product: 4 x 2i                    = 8i
# Logits: bf16 2V + fp32 upcast 4V + log-softmax 4V + its gradient (bf16) 2V           = 12V
FIRST_PRINCIPLES = ActivationModel(c_h=47.0, c_i=8.0, c_ckpt=2.0, c_vocab=12.0, overhead_gib=0.75,
                                   source="first principles (bf16, SDPA, LoRA dropout on q/k/v/o)")

# pricefit's own CUDA loop (pricefit.training): the frozen base stays in bf16 (no float32 upcast of norms
# and embeddings), autocast runs the fp32 LoRA weights in bf16, and lm_head runs only at the label
# positions. Fitted (c_h/c_i scale, c_ckpt) to 8 peaks measured on one H200 with
# bench/gpu_bench.py (bench/results/h200-2026-11-29-*.jsonl: batch 4-64, with and without
# gradient checkpointing); every one of the 8 within 2.5%. Float32 hidden states were the
# difference to the plain Trainer run, whose counted model (FIRST_PRINCIPLES) is 1.6x larger.
PRICEFIT_CUDA = ActivationModel(c_h=29.0, c_i=4.94, c_ckpt=2.27, c_vocab=12.0, overhead_gib=0.0,
                                source="pricefit CUDA loop, fitted to H200 peaks (bench/results)")
LOOPS = {"pricefit": PRICEFIT_CUDA, "plain-hf": FIRST_PRINCIPLES}

# Plain Hugging Face Trainer + peft + bitsandbytes 0.50.2 on one H200 (../shared/DESIGN.md):
# Llama-3.1-8B, NF4 + double quant, LoRA r=32 on q/k/v/o, sequence 182, logits at every position.
H200_MEASURED: tuple[dict, ...] = (
    {"batch": 4, "seq": 182, "gradient_checkpointing": False, "peak_gib": 15.5},
    {"batch": 32, "seq": 182, "gradient_checkpointing": False, "peak_gib": 64.5},
    {"batch": 64, "seq": 182, "gradient_checkpointing": True, "peak_gib": 31.2},
)
H200_SETUP = {"model": "llama-3.1-8b", "method": "qlora-dq", "lora_r": 32,
              "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


@dataclass
class MemoryEstimate:
    model: str
    method: str
    batch: int
    seq: int
    lora_r: int
    gradient_checkpointing: bool
    items: dict[str, int] = field(default_factory=dict)  # bytes
    params: dict[str, int] = field(default_factory=dict)
    activation_model: str = ""

    @property
    def total(self) -> int:
        return sum(self.items.values())

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    def to_dict(self) -> dict:
        d = asdict(self)
        d["items_gib"] = {k: round(v / GIB, 3) for k, v in self.items.items()}
        d["total_bytes"] = self.total
        d["total_gib"] = round(self.total_gib, 3)
        return d


def quant_constant_bytes(numel: int, double_quant: bool) -> int:
    blocks = math.ceil(numel / NF4_BLOCK)
    if not double_quant:
        return 4 * blocks
    return blocks + 4 * math.ceil(blocks / DQ_BLOCK) + 4


def estimate(
    shape: ModelShape,
    method: str,
    batch: int,
    seq: int,
    lora_r: int = 32,
    target_modules: Iterable[str] | str = ("q_proj", "k_proj", "v_proj", "o_proj"),
    gradient_checkpointing: bool = False,
    logits_positions: int | None = None,
    act: ActivationModel = FIRST_PRINCIPLES,
) -> MemoryEstimate:
    """Itemised peak-memory estimate in bytes (see the module docstring for every formula).

    ``logits_positions``: positions per sequence that produce logits (None: all ``seq``).
    """
    if method not in METHODS:
        raise PricefitError(f"unknown method {method!r}", hint=f"one of {', '.join(METHODS)}")
    if batch < 1 or seq < 1 or lora_r < 1:
        raise PricefitError("batch, seq and lora_r must be at least 1")
    P, Q = shape.total_params, shape.linear_params
    A = 0 if method == "full" else shape.lora_params(lora_r, target_modules)
    items: dict[str, int] = {}
    if method in ("full", "lora"):
        items["weights"] = 2 * P
        items["quant_constants"] = 0
    else:
        items["weights"] = Q // 2 + 2 * (P - Q)
        per_layer = sum(quant_constant_bytes(a * b, method == "qlora-dq") for a, b in shape.linear_shapes().values())
        items["quant_constants"] = shape.num_layers * per_layer
    items["adapters"] = 4 * A
    items["gradients"] = 2 * P if method == "full" else 4 * A
    items["optimizer"] = 8 * (P if method == "full" else A)
    T = batch * seq
    layer = act.c_h * shape.hidden_size + act.c_i * shape.intermediate_size
    if gradient_checkpointing:
        items["activations"] = int(T * (shape.num_layers * act.c_ckpt * shape.hidden_size + layer))
    else:
        items["activations"] = int(T * shape.num_layers * layer)
    positions = seq if logits_positions is None else min(seq, max(1, logits_positions))
    items["logits"] = int(batch * positions * shape.vocab_size * act.c_vocab)
    items["overhead"] = int(act.overhead_gib * GIB)
    return MemoryEstimate(
        model=shape.name, method=method, batch=batch, seq=seq, lora_r=lora_r,
        gradient_checkpointing=gradient_checkpointing, items=items,
        params={"total": P, "quantized_linear": Q, "lora": A},
        activation_model=act.source,
    )


def plan(shape: ModelShape, batch: int, seq: int, **kw) -> dict[str, MemoryEstimate]:
    """One estimate per method."""
    return {m: estimate(shape, m, batch, seq, **kw) for m in METHODS}


def calibrate(measurements: Iterable[dict], shape: ModelShape, method: str, lora_r: int,
              target_modules: Iterable[str] | str, base: ActivationModel = FIRST_PRINCIPLES) -> ActivationModel:
    """Refit the activation model to measured peaks (GiB) by least squares.

    Three unknowns are fitted: a scale on the per-layer bytes (c_h, c_i keep their ratio), the
    logits bytes per vocab entry, and the fixed overhead; c_ckpt stays as counted. Each
    measurement is ``{batch, seq, gradient_checkpointing, peak_gib}``. With three measurements
    the fit is exact by construction: validate on a fourth before trusting it.
    """
    import numpy as np  # noqa: PLC0415

    rows, rhs = [], []
    layer0 = base.c_h * shape.hidden_size + base.c_i * shape.intermediate_size
    for m in measurements:
        fixed = estimate(shape, method, m["batch"], m["seq"], lora_r, target_modules,
                         m["gradient_checkpointing"], act=replace(base, overhead_gib=0.0))
        static = sum(v for k, v in fixed.items.items() if k not in ("activations", "logits", "overhead"))
        T = m["batch"] * m["seq"]
        if m["gradient_checkpointing"]:
            ckpt = T * shape.num_layers * base.c_ckpt * shape.hidden_size
            layers = T * layer0
        else:
            ckpt, layers = 0.0, T * shape.num_layers * layer0
        rows.append([layers, T * shape.vocab_size, GIB])
        rhs.append(m["peak_gib"] * GIB - static - ckpt)
    sol, *_ = np.linalg.lstsq(np.array(rows, dtype=float), np.array(rhs, dtype=float), rcond=None)
    scale, c_vocab, overhead = (float(x) for x in sol)
    return ActivationModel(c_h=base.c_h * scale, c_i=base.c_i * scale, c_ckpt=base.c_ckpt,
                           c_vocab=c_vocab, overhead_gib=overhead, source="calibrated to measured peaks")


def check_against_measurements(act: ActivationModel = FIRST_PRINCIPLES) -> list[dict]:
    """The estimate beside each H200 measurement (relative error)."""
    shape = BUILTIN_SHAPES[H200_SETUP["model"]]
    out = []
    for m in H200_MEASURED:
        e = estimate(shape, H200_SETUP["method"], m["batch"], m["seq"], H200_SETUP["lora_r"],
                     H200_SETUP["target_modules"], m["gradient_checkpointing"], act=act)
        out.append({**m, "estimate_gib": round(e.total_gib, 2),
                    "error_pct": round(100 * (e.total_gib - m["peak_gib"]) / m["peak_gib"], 1)})
    return out
