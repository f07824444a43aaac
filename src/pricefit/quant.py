"""bitsandbytes quantization: resolve device and compute dtype, validate, build the config, load.

Rules (each rejection says what to change):

- 4-bit / 8-bit need bitsandbytes importable.
- fp4 is a 4-bit format: it does not apply to 8-bit.
- On CPU, bitsandbytes 0.50.2's 4-bit layers with bfloat16/float16 compute ran 25x slower than
  with float32 compute (measured; float32 compute runs as fast as a dense float32 layer), so a
  16-bit compute dtype with quantization on CPU is rejected; ``auto`` picks float32 on CPU and
  bfloat16 on CUDA.
- paged and 8-bit optimizers are CUDA-only.

Why the 4-bit load is slow on CPU (profiled with cProfile, see docs in the train report):
bitsandbytes 0.50.2 has no native CPU 4-bit quantizer; ``from_pretrained(quantization_config=...)``
quantizes every Linear through the pure-PyTorch fallback (``backends/default/ops.py``:
``torch.bucketize`` plus elementwise ops), which is most of the load; importing bitsandbytes also
pulls in torch._dynamo (its kernels are wrapped in ``torch.compile``). Fix: quantize once and keep
the 4-bit copy in the cache (``load_model``); a pre-quantized checkpoint loads without quantizing.
Embedding and lm_head (tied in SmolLM2) stay unquantized, as transformers does by default.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import atomic_dir, canonical_json, sha256_bytes
from .paths import cache_home
from .devices import resolve_device
from .errors import PricefitError
from .models import check_hub_model

log = logging.getLogger("pricefit.quant")

CUDA_ONLY_OPTIMIZERS = ("paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit")
CPU_BF16_SLOWDOWN = 25  # measured: bitsandbytes 0.50.2 4-bit layer, bf16 vs float32 compute on CPU


@dataclass(frozen=True)
class Plan:
    """What the training run will actually use, after resolving ``auto``."""

    device: str  # "cpu" | "cuda"
    compute_dtype: str  # "float32" | "bfloat16" | "float16"
    quantization: str  # "none" | "8bit" | "4bit"
    warnings: tuple[str, ...] = ()

    @property
    def memory_method(self) -> str:
        """The memory planner's name for this setup."""
        return {"none": "lora", "8bit": "lora"}.get(self.quantization, "qlora")


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def resolve(cfg: Any, *, has_cuda: bool | None = None, has_bnb: bool | None = None) -> Plan:
    """Resolve device/dtype of a TrainConfig and reject impossible or pathological combinations."""
    has_bnb = bitsandbytes_available() if has_bnb is None else has_bnb
    device = resolve_device(cfg.device, setting="train.device", has_cuda=has_cuda)
    dtype = cfg.compute_dtype
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    warnings: list[str] = []
    if cfg.quantization != "none":
        if not has_bnb:
            raise PricefitError(
                f"quantization: {cfg.quantization} needs bitsandbytes, which is not installed",
                hint="pip install 'bitsandbytes>=0.48', or set train.quantization=none",
            )
        if cfg.quant_type == "fp4" and cfg.quantization != "4bit":
            raise PricefitError("quant_type: fp4 only applies to 4-bit quantization",
                                hint="set train.quantization=4bit or train.quant_type=nf4")
        if device == "cpu" and dtype != "float32":
            raise PricefitError(
                f"compute_dtype: {dtype} with {cfg.quantization} quantization on CPU: bitsandbytes' 4-bit layers "
                f"ran {CPU_BF16_SLOWDOWN}x slower with 16-bit compute than with float32 on CPU",
                hint="set train.compute_dtype=float32 (or auto) on CPU",
            )
    elif device == "cpu" and dtype != "float32":
        warnings.append(f"compute_dtype {dtype} on CPU: 16-bit matmuls are slow on most CPUs; float32 is faster")
    if device == "cpu" and cfg.optimizer in CUDA_ONLY_OPTIMIZERS:
        raise PricefitError(
            f"optimizer: {cfg.optimizer} is a bitsandbytes CUDA optimizer and does not run on CPU",
            hint="set train.optimizer=adamw on CPU (paged/8-bit optimizers are for CUDA)",
        )
    if device == "cpu" and cfg.gradient_checkpointing:
        warnings.append("gradient_checkpointing on CPU trades ~30% speed for memory the CPU run rarely needs")
    for w in warnings:
        log.warning(w)
    return Plan(device=device, compute_dtype=dtype, quantization=cfg.quantization, warnings=tuple(warnings))


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def bnb_config(cfg: Any, plan: Plan):
    """The transformers BitsAndBytesConfig for this plan (None without quantization)."""
    if plan.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if plan.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(plan.compute_dtype),
        bnb_4bit_quant_storage="uint8",
    )


def quantized_cache_key(path: str, cfg: Any, plan: Plan) -> str | None:
    """Key of the pre-quantized copy of a local model: its files (name, size, mtime), the 4-bit
    settings and the library versions. None for hub ids (no local files to key on)."""
    import bitsandbytes
    import transformers

    root = Path(path)
    if not root.is_dir():
        return None
    files = sorted((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in root.rglob("*") if p.is_file())
    body = {"path": str(root.resolve()), "files": files, "quant_type": cfg.quant_type,
            "double_quant": bool(cfg.double_quant), "compute_dtype": plan.compute_dtype,
            "bitsandbytes": bitsandbytes.__version__, "transformers": transformers.__version__}
    return sha256_bytes(canonical_json(body).encode())[:16]


def from_pretrained(path: str, *, name: str | None = None,
                    hint: str = "check train.base_model (hub id, local directory or built-in name)", **kw):
    """``AutoModelForCausalLM.from_pretrained`` (training and inference both load through here): an
    unreachable hub id fails at once, a load error names the model (``name``, default ``path``) and ``hint``."""
    from transformers import AutoModelForCausalLM

    check_hub_model(path)
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kw)
    except OSError as e:
        raise PricefitError(f"cannot load base model {name or path!r}: {e}", hint=hint) from None


def load_model(path: str, cfg: Any, plan: Plan, use_cache: bool | None = None, device_index: int = 0):
    """Load the causal LM at ``path`` as the plan says (quantized or not), ready for LoRA.

    ``device_index``: the CUDA device of this copy (the local rank of a data-parallel run: each rank
    loads a whole copy on its own GPU; ``device_map="auto"`` would split one model across them).

    4-bit on CPU: the first load quantizes (slow: bitsandbytes' pure-PyTorch CPU quantizer) and
    saves the 4-bit model under ``cache_home()/quantized/<key>/``; later loads read that copy
    (bit-identical weights, no quantization). PRICEFIT_QUANT_CACHE=0 turns the cache off.
    """
    kw: dict[str, Any] = {"dtype": torch_dtype(plan.compute_dtype)}
    q = bnb_config(cfg, plan)
    if q is None:
        model = from_pretrained(path, **kw)
        model.to(f"cuda:{device_index}" if plan.device == "cuda" else plan.device)
        model.config.use_cache = False
        return model
    kw["device_map"] = {"": device_index} if plan.device == "cuda" else {"": "cpu"}
    if use_cache is None:
        use_cache = plan.device == "cpu" and plan.quantization == "4bit" and os.environ.get("PRICEFIT_QUANT_CACHE", "1") != "0"
    key = quantized_cache_key(path, cfg, plan) if use_cache else None
    cached = cache_home() / "quantized" / key if key else None
    if cached is not None and (cached / "config.json").is_file():
        log.info("loading pre-quantized 4-bit copy %s", cached)
        model = from_pretrained(str(cached), **kw)
    else:
        t0 = time.perf_counter()
        model = from_pretrained(path, quantization_config=q, **kw)
        log.info("quantized %s to %s in %.1f s", path, plan.quantization, time.perf_counter() - t0)
        if cached is not None:
            with atomic_dir(cached) as tmp:
                model.save_pretrained(str(tmp))
            log.info("saved the 4-bit copy to %s; later loads skip quantization", cached)
    model.config.use_cache = False
    return model


def describe(cfg: Any, plan: Plan) -> dict[str, Any]:
    """What goes into the model card and summary."""
    return {
        "device": plan.device,
        "compute_dtype": plan.compute_dtype,
        "quantization": plan.quantization,
        "quant_type": cfg.quant_type if plan.quantization == "4bit" else None,
        "double_quant": bool(cfg.double_quant) if plan.quantization == "4bit" else None,
    }
