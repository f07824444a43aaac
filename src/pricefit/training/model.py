"""The model being trained: base + LoRA, the two losses of the eager loop, the optimizer, and the
memory the planner expects the run to take.

The loss is computed only at the label positions (the price completion): the decoder runs once,
then ``lm_head`` is applied to the few hidden states whose next token carries a label, instead of
full-vocabulary logits at every position. On a GPU that is where most of the activation memory of
a plain Trainer run goes (see pricefit/memory.py); on CPU it saves the vocab x sequence matmul.
"""

from __future__ import annotations

import contextlib
import logging

from .. import memory, quant
from ..errors import PricefitError
from ..heads import pool_hidden

log = logging.getLogger("pricefit.training")  # one logger for the package: the log lines keep their name


def build_model(cfg, plan, base_path: str, device_index: int = 0):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    torch.manual_seed(cfg.seed)  # LoRA init draws from the global RNG
    model = quant.load_model(base_path, cfg, plan, device_index=device_index)
    checkpointing = use_checkpointing(cfg, plan)
    if plan.quantization != "none" and plan.device != "cuda":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        # CUDA: no prepare_model_for_kbit_training. It casts every non-quantized weight
        # (embeddings, lm_head, norms) to float32: +2 GiB of weights on Llama-3.1-8B, and float32
        # hidden states through every layer, which doubles activation memory and runs the LoRA
        # matmuls in float32. The base stays frozen in the compute dtype; autocast (see autocast())
        # runs the float32 LoRA weights in bf16 matmuls, like the Trainer's bf16=True.
        for p in model.parameters():
            p.requires_grad_(False)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
    lcfg = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules, bias="none", task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lcfg)
    except ValueError as e:
        raise PricefitError(f"LoRA target_modules {cfg.target_modules!r} do not fit this model: {e}",
                            hint="use names of the model's Linear layers (q_proj, k_proj, ...) or 'all-linear'") from None
    return model


def use_checkpointing(cfg, plan) -> bool:
    """Gradient checkpointing: on in memory mode, off in throughput mode, else as configured."""
    if plan.device == "cuda" and cfg.mode == "memory":
        return True
    if plan.device == "cuda" and cfg.mode == "throughput":
        return False
    return bool(cfg.gradient_checkpointing)


def autocast(plan):
    """bf16/fp16 autocast on CUDA (the float32 LoRA weights then run in the compute dtype)."""
    import torch

    if plan.device == "cuda" and plan.compute_dtype in ("bfloat16", "float16"):
        return torch.autocast("cuda", dtype=getattr(torch, plan.compute_dtype))
    return contextlib.nullcontext()


def label_loss(model, ids, mask, labels):
    """Mean cross-entropy over the label positions only; returns (loss, n_label_tokens).

    The decoder runs on every position; lm_head runs only where the next token has a label.
    """
    import torch.nn.functional as F

    inner = model.get_base_model()  # the *ForCausalLM under peft
    decoder = getattr(inner, "model", None) or inner.get_decoder()
    hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    sel = target != -100
    n = int(sel.sum())
    if n == 0:
        return None, 0
    h = hidden[:, :-1][sel]
    logits = inner.get_output_embeddings()(h).float()
    return F.cross_entropy(logits, target[sel]), n


def head_loss(model, head, ids, mask, labels, target, cfg, share: tuple[float, int] | None = None):
    """Regression head: Huber (or MSE) on the standardized log price, from the pooled prompt state.

    The pooled position is the last prompt token (the one before the first label); the completion
    tokens after it cannot change it (causal attention), so the batch is the same as generation's.
    Returns (loss, n_rows). With ``head_lm_weight`` the digit completion's cross-entropy is added.
    ``share`` (data-parallel ranks): (these rows / the global micro-batch's rows, the global
    micro-batch's label tokens); the loss is then this rank's part of the global micro-batch's loss.
    """
    import torch
    import torch.nn.functional as F

    inner = model.get_base_model()
    decoder = getattr(inner, "model", None) or inner.get_decoder()
    hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    is_label = labels != -100
    has = is_label.any(1)
    first = is_label.int().argmax(1)
    last = torch.where(has, first - 1, mask.sum(1) - 1).clamp(min=0)
    with torch.autocast(ids.device.type, enabled=False):  # the head and its loss in float32
        z = head(pool_hidden(hidden, mask, last, cfg.head_pool)).squeeze(-1)
        if cfg.head_loss == "huber":
            loss = F.huber_loss(z, target, delta=cfg.huber_delta)
        else:
            loss = F.mse_loss(z, target)
    if share is not None:
        loss = loss * share[0]
    if cfg.head_lm_weight > 0:
        tgt = labels[:, 1:]
        sel = tgt != -100
        if bool(sel.any()):
            logits = inner.get_output_embeddings()(hidden[:, :-1][sel]).float()
            ce = F.cross_entropy(logits, tgt[sel])
            if share is not None:
                ce = ce * (int(sel.sum()) / share[1])
            loss = loss + cfg.head_lm_weight * ce
    return loss, int(ids.shape[0])


def make_optimizer(cfg, params, plan, head=None):
    import torch

    if head is not None:  # the price head learns at its own rate (head_lr_scale)
        params = [{"params": params}, {"params": list(head.parameters()), "lr": cfg.learning_rate * cfg.head_lr_scale}]
    if cfg.optimizer == "adamw":
        # fused on CUDA: one kernel for all LoRA tensors (measured 13,406 vs 12,663 tok/s with paged
        # AdamW at batch 32 on an H200, bench/results); the CPU keeps the default for exact resume tests
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                 fused=plan.device == "cuda")
    if cfg.optimizer == "adamw_fused":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
    import bitsandbytes as bnb

    cls = {"paged_adamw_32bit": bnb.optim.PagedAdamW32bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
           "adamw_8bit": bnb.optim.AdamW8bit}[cfg.optimizer]
    return cls(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def estimate_gib(cfg, plan, base_path: str, seq: int) -> float | None:
    """The memory planner's estimate (pricefit.memory) of this training run's peak GPU memory at
    sequence length ``seq``, in GiB; None when the model's shape is not known to the planner.

    The train summary records it beside the measured peak; the sweep sizes its trials per GPU by it.
    """
    try:
        shape = memory.load_shape(base_path)
        method = plan.memory_method
        if method == "qlora" and cfg.double_quant:
            method = "qlora-dq"
        targets = cfg.target_modules
        if targets != "all-linear":
            targets = [t for t in targets if t in memory.LINEAR_NAMES] or ["q_proj"]
        e = memory.estimate(shape, method, cfg.batch_size, seq, cfg.lora_r, targets, use_checkpointing(cfg, plan),
                            logits_positions=8, act=memory.PRICEFIT_CUDA)
        return round(e.total_gib, 3)
    except PricefitError as e:
        log.info("no memory estimate: %s", e.message)
        return None
