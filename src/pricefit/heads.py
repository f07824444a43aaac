"""Price heads: predict a price from the fine-tuned LM's hidden state instead of writing digits.

``train.head: regression`` puts a linear layer on the decoder's final hidden state of the prompt
(the last prompt token, "...Price is $", or the mean over the prompt's tokens) and trains it,
together with the LoRA adapter, on a standardized ``log1p(price)`` with a Huber loss. Why:

- a digit-writing model commits to the leading digit first (an error there costs a factor of ten)
  and its cross-entropy treats $99 vs $100 as unlike as $99 vs $900; a regression on log price
  is penalised in proportion to the relative error, which is what a price error is;
- one forward pass per item prices it (no decoding loop), so evaluation is a single batched pass.

Saved beside the PEFT adapter, in formats a Hugging Face user loads without pricefit:
``price_head.safetensors`` (``weight`` [1, hidden], ``bias`` [1]) and ``price_head.json`` (the
pooling, the target transform and its mean/std). :func:`load_price_head` reads them back;
``price = expm1(head(h) * std + mean)``.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import PricefitError

HEAD_CONFIG = "price_head.json"
HEAD_WEIGHTS = "price_head.safetensors"
HEAD_KINDS = ("generate", "regression")
POOLS = ("last", "mean")


@dataclass(frozen=True)
class HeadSpec:
    """What :func:`load_price_head` needs to turn a hidden state into dollars."""

    kind: str
    hidden_size: int
    pool: str
    target: str  # "log1p": the head predicts (log1p(price) - mean) / std
    mean: float
    std: float

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "format": "pricefit price head v1",
                "price": "expm1((weight @ h + bias) * std + mean), h the pooled final hidden state"}


def target_stats(prices: Iterable[float]) -> tuple[float, float]:
    """Mean and std of log1p(price) over the training items (std floored: one price, or all alike)."""
    logs = [math.log1p(max(float(p), 0.0)) for p in prices]
    if not logs:
        raise PricefitError("no training prices to fit the price head's target scale")
    mean = sum(logs) / len(logs)
    var = sum((x - mean) ** 2 for x in logs) / len(logs)
    return mean, max(math.sqrt(var), 1e-3)


def make_head(hidden_size: int, device: Any):
    """A float32 Linear(hidden, 1), zero-initialised: training starts at the mean log price."""
    import torch

    head = torch.nn.Linear(hidden_size, 1, dtype=torch.float32, device=device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


def pool_hidden(hidden, mask, last_index, pool: str):
    """Pooled prompt representation per row, float32.

    ``last_index[i]``: position of row i's last prompt token. ``mask``: the attention mask; with
    ``pool="mean"`` the mean runs over positions ``<= last_index`` that the mask keeps.
    """
    import torch

    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pool == "last":
        return hidden[rows, last_index].float()
    if pool == "mean":
        pos = torch.arange(hidden.shape[1], device=hidden.device)[None, :]
        keep = (pos <= last_index[:, None]) & mask.bool()
        w = keep.to(hidden.dtype).unsqueeze(-1)
        return ((hidden * w).sum(1) / w.sum(1).clamp(min=1)).float()
    raise PricefitError(f"unknown head pool {pool!r}", hint=f"use one of {', '.join(POOLS)}")


def to_price(z, spec: HeadSpec):
    """Head output (standardized log price) -> dollars."""
    import torch

    return torch.expm1(z.double() * spec.std + spec.mean).clamp(min=0.0)


def head_prices(model, head, spec: HeadSpec, input_ids, attention_mask, return_pooled: bool = False):
    """Dollar prices (float64 tensor) of LEFT-padded prompts: one forward pass, the pooled final state.

    Positions are counted from each row's first real token, as in (right-padded) training.
    ``return_pooled``: also return the pooled states (float32), what retrieval compares.
    """
    import torch

    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(inner, "model", None) or inner.get_decoder()
    with torch.inference_mode():
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=False).last_hidden_state
        last = torch.full((hidden.shape[0],), hidden.shape[1] - 1, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):  # the head in float32, as in training
            pooled = pool_hidden(hidden, attention_mask, last, spec.pool)
            prices = to_price(head(pooled).squeeze(-1), spec)
    return (prices, pooled) if return_pooled else prices


def head_outputs(prompts, model, tokenizer, head, spec: HeadSpec, device, autocast, pooled: bool, batch: int = 64):
    """The head's prices (list) and, with ``pooled``, the pooled states (float32 array) of ``prompts``,
    left-padded batches of ``batch`` under ``autocast()`` (training's scoring of the blend's splits)."""
    import numpy as np

    model.eval()
    head.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    prices: list[float] = []
    states = []
    try:
        for i in range(0, len(prompts), batch):
            enc = tokenizer(prompts[i:i + batch], return_tensors="pt", padding=True)
            with autocast():
                out = head_prices(model, head, spec, enc["input_ids"].to(device), enc["attention_mask"].to(device), return_pooled=pooled)
            if pooled:
                out, st = out
                states.append(st.float().cpu().numpy())
            prices += out.tolist()
    finally:
        tokenizer.padding_side = side
    return prices, (np.concatenate(states) if states else None)


def head_prices_right(hidden_fn, head, spec: HeadSpec, input_ids, lengths, return_pooled: bool = False):
    """Dollar prices (float64) of RIGHT-padded prompts of ``lengths`` tokens: one forward pass.

    ``hidden_fn(input_ids)`` returns the decoder's last hidden state with no attention mask (run
    it under :func:`causal_attention`); positions then start at 0 in every row, as in training.
    The pooled position is each row's last real token, so this equals :func:`head_prices` on the
    same prompts left-padded.
    """
    import torch

    hidden = hidden_fn(input_ids)
    last = lengths - 1
    mask = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]
    with torch.autocast(hidden.device.type, enabled=False):
        pooled = pool_hidden(hidden, mask, last, spec.pool)
        prices = to_price(head(pooled).squeeze(-1), spec)
    return (prices, pooled) if return_pooled else prices


CAUSAL_ATTENTION = "pricefit_causal_sdpa"


def raise_compile_limits() -> None:
    """Room in torch.compile's caches for one graph per input shape (and per layer, where layers
    do not share theirs): the widths of a run, the epoch's short last batch, the evaluation batches."""
    import torch._dynamo

    cfg = torch._dynamo.config
    cfg.cache_size_limit = max(cfg.cache_size_limit, 256)
    cfg.accumulated_cache_size_limit = max(cfg.accumulated_cache_size_limit, 4096)


def compile_layers(layers, mode: str | None = None) -> list:
    """torch.compile each decoder layer in place (``nn.Module.compile``, static shapes): the layers
    share one graph, so it compiles in seconds, and the module and its state-dict keys stay as they
    are. Undo with ``layer._compiled_call_impl = None``."""
    raise_compile_limits()
    layers = list(layers)
    for layer in layers:
        layer.compile(mode=mode, dynamic=False)
    return layers


@contextlib.contextmanager
def causal_attention(model):
    """Run ``model``'s attention as plain causal SDPA with no mask, for RIGHT-padded batches.

    With right padding a real token never attends to a pad (causal attention), so no mask is
    needed and SDPA's ``is_causal`` kernels run. Telling transformers so (an attention function
    outside its mask registry) also skips its mask construction, whose checks read the device
    back on every forward (``padding_mask.all()``, the packed-sequence test). Outputs at the
    real positions are those with the mask; the pads' outputs are garbage and must not be read.
    """
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def causal_sdpa(module, query, key, value, attention_mask, **kwargs):
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)

    if CAUSAL_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(CAUSAL_ATTENTION, causal_sdpa)
    configs = {}
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "_attn_implementation"):
            configs[id(c)] = c
    before = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = CAUSAL_ATTENTION
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = before[k]


def save_price_head(directory: str | Path, head, spec: HeadSpec) -> None:
    from safetensors.torch import save_file

    from .artifacts import write_json_atomic

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {"weight": head.weight.detach().float().cpu().contiguous(), "bias": head.bias.detach().float().cpu().contiguous()}
    save_file(tensors, str(d / HEAD_WEIGHTS), metadata={"format": "pt"})
    write_json_atomic(d / HEAD_CONFIG, spec.to_json())


def has_price_head(adapter_dir: str | Path) -> bool:
    d = Path(adapter_dir)
    return any((c / HEAD_CONFIG).is_file() for c in (d, d / "adapter"))


def load_price_head(adapter_dir: str | Path, device: Any = "cpu"):
    """(head module in eval mode, HeadSpec) from an adapter directory (or its train output)."""
    import torch
    from safetensors.torch import load_file

    d = Path(adapter_dir)
    d = d if (d / HEAD_CONFIG).is_file() else d / "adapter"
    try:
        raw = json.loads((d / HEAD_CONFIG).read_text())
        spec = HeadSpec(**{k: raw[k] for k in ("kind", "hidden_size", "pool", "target", "mean", "std")})
        tensors = load_file(str(d / HEAD_WEIGHTS))
    except (OSError, KeyError, ValueError) as e:
        raise PricefitError(f"the price head in {d} cannot be read: {e}", hint="re-run `pricefit train`") from None
    if spec.target != "log1p" or spec.pool not in POOLS:
        raise PricefitError(f"{d / HEAD_CONFIG}: unsupported target {spec.target!r} or pool {spec.pool!r}")
    head = torch.nn.Linear(spec.hidden_size, 1, dtype=torch.float32)
    head.load_state_dict(tensors)
    return head.to(device).eval(), spec
