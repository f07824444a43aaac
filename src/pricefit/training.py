"""QLoRA / LoRA fine-tuning with a lean custom loop: ``train(tokenized_dir, out_dir, cfg)``.

Why a custom loop and not the Trainer: the loss is computed only at the label positions (the
price completion). The decoder runs once, then ``lm_head`` is applied to the few hidden states
whose next token carries a label, instead of full-vocabulary logits at every position. On a GPU
that is where most of the activation memory of a plain Trainer run goes (see memory.py); on CPU
it saves the vocab x sequence matmul. GPU fast paths (fused kernels, packing) slot into
``_loss`` and ``_batches``.

Determinism and resume: the data order is a function of (seed, epoch) only, so micro-batch ``k``
is known without replaying the run; checkpoints hold adapter weights, optimizer, scheduler,
every RNG state and the step, and are keyed on sha256(tokenized manifest + config) so a
checkpoint of other inputs is never resumed. On CPU a run killed after any step and restarted
ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import platform
import random
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import artifacts
from .artifacts import ArtifactRef
from .errors import PricefitError

log = logging.getLogger("pricefit.training")

ProgressFn = Callable[[int, int, float, float], None]  # (step, total_steps, loss, tokens_per_s)

# config fields that do not change the result: a checkpoint written under other values still fits
_NOT_IN_KEY = ("save_steps", "logging_steps", "merge", "loss_sync_steps", "pad_to", "pad_multiple", "device_data",
               "compile", "compile_mode", "compile_scope")
CKPT_SUFFIX = ".ckpt"


# ----------------------------------------------------------------------------------------------
# data


def _load_split(tokenized_dir: Path, cfg) -> tuple[Any, dict]:
    from datasets import load_from_disk

    manifest = artifacts.read_manifest(tokenized_dir)
    verdict = manifest.get("contract")  # recorded before the rename by `pricefit tokenize`; absent: library use
    if isinstance(verdict, dict) and verdict.get("success") is not True:
        raise PricefitError(f"{tokenized_dir}: its tokenized data contract did not pass ({verdict.get('failed', '?')} "
                            f"check(s) failed; report: {tokenized_dir / 'contracts' / 'tokenized.json'})",
                            hint="fix the curated data or the tokenize settings the report names, then re-run `pricefit tokenize`")
    ds_dir = tokenized_dir / "dataset"
    if not ds_dir.exists():
        raise PricefitError(f"{tokenized_dir} has no dataset/ directory",
                            hint="point --tokenized at the output of `pricefit tokenize`")
    dd = load_from_disk(str(ds_dir))
    if "train" not in dd:
        raise PricefitError(f"{ds_dir} has no train split", hint="re-run `pricefit tokenize`")
    train = dd["train"]
    missing = {"input_ids", "attention_mask", "labels"} - set(train.column_names)
    if missing:
        raise PricefitError(f"tokenized train split lacks columns {sorted(missing)}", hint="re-run `pricefit tokenize`")
    if cfg.max_train_items is not None:
        train = train.select(range(min(cfg.max_train_items, len(train))))
    if len(train) == 0:
        raise PricefitError("the tokenized train split is empty", hint="curate more items or lower the filters")
    tok_model = manifest.get("base_model")
    if tok_model and tok_model != cfg.base_model:
        raise PricefitError(
            f"data was tokenized for {tok_model!r} but train.base_model is {cfg.base_model!r}",
            hint=f"set train.base_model={tok_model} or re-tokenize for {cfg.base_model}",
        )
    keep = ["input_ids", "attention_mask", "labels"] + [c for c in ("item_id", "category", "price") if c in train.column_names]
    if cfg.head == "regression" and "price" not in keep:
        raise PricefitError("train.head regression needs the price column in the tokenized train split",
                            hint="re-run `pricefit tokenize`")
    train = train.select_columns(keep)
    return train, manifest


def train_index(train, cfg, slices=None, seed: int | None = None) -> list[int]:
    """Row indices of one epoch, repeats included: ``oversample`` and ``price_balance`` act here.

    Deterministic (a function of the data, the config and the seed): an item of weight w appears
    floor(w) times plus once more with probability frac(w). Without either setting: every row once.
    """
    n = len(train)
    if not cfg.oversample and not cfg.price_balance:
        return list(range(n))
    weights = [1.0] * n
    if cfg.oversample:
        from .slices import find, slice_masks

        declared = list(slices or [])
        specs = [find(declared, name) for name in cfg.oversample]
        cols = {c: train[c] for c in ("item_id", "category", "price") if c in train.column_names}
        for name, mask in slice_masks(specs, cols).items():
            factor = cfg.oversample[name]
            weights = [w * factor if m else w for w, m in zip(weights, mask)]
            log.info("oversample: %d training items of slice %r x%g", sum(mask), name, factor)
    if cfg.price_balance:
        # bins of width 0.5 in log price (about x1.65); weight = (mean count / bin count) ** balance
        bins = [int(math.log1p(max(float(p), 0.0)) / 0.5) for p in train["price"]]
        counts: dict[int, int] = {}
        for b in bins:
            counts[b] = counts.get(b, 0) + 1
        mean_count = n / len(counts)
        weights = [w * (mean_count / counts[b]) ** cfg.price_balance for w, b in zip(weights, bins)]
        total = sum(weights)
        weights = [w * n / total for w in weights]  # the same epoch size as the data
    rng = random.Random((cfg.seed if seed is None else seed) * 7_919 + 17)
    index: list[int] = []
    for i, w in enumerate(weights):
        reps = int(w)
        if rng.random() < w - reps:
            reps += 1
        index.extend([i] * reps)
    if not index:
        raise PricefitError("the training sample is empty after oversample/price_balance", hint="raise the weights")
    return index


@dataclass(frozen=True)
class Schedule:
    n_items: int
    batch_size: int
    grad_accum: int
    micro_per_epoch: int
    total_steps: int
    warmup_steps: int


def make_schedule(n_items: int, cfg) -> Schedule:
    micro_per_epoch = math.ceil(n_items / cfg.batch_size)
    if cfg.max_steps is not None:
        total = cfg.max_steps
    else:
        total = max(1, math.ceil(cfg.epochs * micro_per_epoch / cfg.grad_accum))
    return Schedule(n_items, cfg.batch_size, cfg.grad_accum, micro_per_epoch, total,
                    math.ceil(cfg.warmup_ratio * total))


def micro_batch_indices(k: int, sched: Schedule, seed: int, index: list[int] | None = None) -> list[int]:
    """Row indices of global micro-batch ``k``: a pure function of (k, seed), so resume needs no replay.

    ``index`` (from :func:`train_index`) maps epoch positions to rows when items are repeated.
    """
    import torch

    epoch, pos = divmod(k, sched.micro_per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(sched.n_items, generator=g)
    picked = perm[pos * sched.batch_size:(pos + 1) * sched.batch_size].tolist()
    return picked if index is None else [index[i] for i in picked]


def collate(rows: dict[str, list], pad_id: int):
    """Right-pad a micro-batch to its longest row (labels padded with -100)."""
    import torch

    n = len(rows["input_ids"])
    width = max(len(x) for x in rows["input_ids"])
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    for i in range(n):
        L = len(rows["input_ids"][i])
        ids[i, :L] = torch.tensor(rows["input_ids"][i])
        mask[i, :L] = torch.tensor(rows["attention_mask"][i])
        labels[i, :L] = torch.tensor(rows["labels"][i])
    return ids, mask, labels


# ----------------------------------------------------------------------------------------------
# model


def _build_model(cfg, plan, base_path: str, device_index: int = 0):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from . import quant

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
        # matmuls in float32. The base stays frozen in the compute dtype; autocast (see _loss)
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


def _autocast(plan):
    """bf16/fp16 autocast on CUDA (the float32 LoRA weights then run in the compute dtype)."""
    import contextlib

    import torch

    if plan.device == "cuda" and plan.compute_dtype in ("bfloat16", "float16"):
        return torch.autocast("cuda", dtype=getattr(torch, plan.compute_dtype))
    return contextlib.nullcontext()


def _loss(model, ids, mask, labels):
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


def _head_loss(model, head, ids, mask, labels, target, cfg, share: tuple[float, int] | None = None):
    """Regression head: Huber (or MSE) on the standardized log price, from the pooled prompt state.

    The pooled position is the last prompt token (the one before the first label); the completion
    tokens after it cannot change it (causal attention), so the batch is the same as generation's.
    Returns (loss, n_rows). With ``head_lm_weight`` the digit completion's cross-entropy is added.
    ``share`` (data-parallel ranks): (these rows / the global micro-batch's rows, the global
    micro-batch's label tokens); the loss is then this rank's part of the global micro-batch's loss.
    """
    import torch
    import torch.nn.functional as F

    from .heads import pool_hidden

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


# ----------------------------------------------------------------------------------------------
# fast path (CUDA defaults): no host sync per step, static shapes, data on the device, torch.compile

LOSS_SYNC_CUDA = 25  # loss_sync_steps "auto" on CUDA


@dataclass(frozen=True)
class FastPath:
    """The speed levers of the loop, resolved for a device (TrainConfig: loss_sync_steps, pad_to,
    device_data, compile). All off is the eager per-step loop the CPU tests pin down."""

    sync_steps: int = 1
    pad: str = "longest"  # longest | buckets | max
    pad_multiple: int = 32
    device_data: bool = False
    compile: bool = False
    compile_mode: str = "default"
    compile_scope: str = "layers"

    @property
    def on(self) -> bool:
        return self.sync_steps > 1 or self.pad != "longest" or self.device_data or self.compile

    def describe(self) -> dict:
        return {"loss_sync_steps": self.sync_steps, "pad_to": self.pad, "pad_multiple": self.pad_multiple,
                "device_data": self.device_data,
                "compile": f"{self.compile_mode}/{self.compile_scope}" if self.compile else False}


def fast_path(cfg, plan, distributed: bool = False) -> FastPath:
    """Resolve the "auto" levers: on for CUDA, off on CPU. A data-parallel run keeps the eager loop."""
    cuda = plan.device == "cuda"

    def pick(v) -> bool:
        return cuda if v == "auto" else bool(v)

    sync = (LOSS_SYNC_CUDA if cuda else 1) if cfg.loss_sync_steps == "auto" else int(cfg.loss_sync_steps)
    pad = ("max" if cuda else "longest") if cfg.pad_to == "auto" else cfg.pad_to
    compile_ = pick(cfg.compile)
    mode = cfg.compile_mode
    if mode == "auto":  # CUDA graphs where the step is launch-bound and nothing else is in the way (docs/PERFORMANCE.md)
        graphs = compile_ and cuda and plan.quantization == "none" and not use_checkpointing(cfg, plan)
        mode = "reduce-overhead" if graphs else "default"
    fp = FastPath(sync, pad, cfg.pad_multiple, pick(cfg.device_data), compile_, mode, cfg.compile_scope)
    if distributed and fp.on:
        log.info("data-parallel run: the fast-path levers (%s) are not used; the per-step loop runs", fp.describe())
        return FastPath()
    return fp


class _FastData:
    """The train split as padded tensors, built once (on the device with ``device_data``).

    Everything the loop needs to know on the host (tokens, label counts, widths) is computed here
    from the row lengths, so a micro-batch costs no device -> host read. Micro-batch ``k`` holds the
    rows :func:`micro_batch_indices` gives; the epoch's order is copied to the device once per epoch.
    """

    def __init__(self, train_ds, index, sched: Schedule, cfg, pad_id: int, targets, plan, fast: FastPath):
        import numpy as np
        import torch

        self.sched, self.seed, self.index, self.fast = sched, cfg.seed, index, fast
        self.device = torch.device(plan.device)
        store = self.device if fast.device_data else torch.device("cpu")
        ids_l, mask_l, lab_l = train_ds["input_ids"], train_ds["attention_mask"], train_ds["labels"]
        n = len(ids_l)
        lens = np.array([len(x) for x in ids_l], dtype=np.int64)
        self.data_width = int(lens.max())
        width = self.data_width
        if fast.pad in ("buckets", "max"):
            width = -(-width // fast.pad_multiple) * fast.pad_multiple if fast.pad == "buckets" else width
        ids = np.full((n, width), pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        labels = np.full((n, width), -100, dtype=np.int64)
        for i in range(n):
            L = lens[i]
            ids[i, :L], mask[i, :L], labels[i, :L] = ids_l[i], mask_l[i], lab_l[i]
        # rows whose mask is all ones up to their length (tokenize writes them so): right padding then
        # needs no attention mask at all, causal attention never lets a real token see a pad
        self.mask_free = bool(all(mask[i, :lens[i]].all() for i in range(n)))
        self.tokens = mask.sum(1)  # the per-step token count the eager loop reads from the mask
        is_lab = labels[:, 1:] != -100
        self.n_labels = is_lab.sum(1)
        K = max(1, int(self.n_labels.max()))
        pos = np.zeros((n, K), dtype=np.int64)
        tgt = np.full((n, K), -100, dtype=np.int64)
        for i in range(n):
            ps = np.nonzero(is_lab[i])[0]
            pos[i, :len(ps)] = ps
            tgt[i, :len(ps)] = labels[i, ps + 1]
        has = (labels != -100).any(1)
        first = (labels != -100).argmax(1)
        last = np.where(has, first - 1, self.tokens - 1).clip(min=0)  # _head_loss's pooled position
        self.lens = lens
        t = lambda a: torch.from_numpy(a).to(store)  # noqa: E731
        self.ids, self.mask, self.pos, self.tgt, self.last = t(ids), t(mask), t(pos), t(tgt), t(last)
        self.target = None if targets is None else torch.tensor(targets, dtype=torch.float32).to(store)
        self._epoch_cache: tuple[int, Any, Any] | None = None

    def _epoch(self, epoch: int):
        import numpy as np
        import torch

        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)  # micro_batch_indices' order
            perm = torch.randperm(self.sched.n_items, generator=g).numpy()
            rows = perm if self.index is None else np.asarray(self.index, dtype=np.int64)[perm]
            self._epoch_cache = (epoch, rows, torch.from_numpy(rows).to(self.ids.device))
        return self._epoch_cache[1], self._epoch_cache[2]

    def width(self, longest: int) -> int:
        if self.fast.pad == "max":
            return self.ids.shape[1]
        if self.fast.pad == "buckets":
            return min(-(-longest // self.fast.pad_multiple) * self.fast.pad_multiple, self.ids.shape[1])
        return longest

    def get(self, k: int) -> dict:
        epoch, p = divmod(k, self.sched.micro_per_epoch)
        rows_h, rows_d = self._epoch(epoch)
        B = self.sched.batch_size
        rows = rows_h[p * B:(p + 1) * B]
        sel = rows_d[p * B:(p + 1) * B]
        w = self.width(int(self.lens[rows].max()))
        nb = self.device.type == "cuda"
        mv = lambda x: x.to(self.device, non_blocking=nb)  # noqa: E731 - a no-op when the data is resident
        mb = {"rows": rows, "width": w, "tokens": int(self.tokens[rows].sum()), "n_labels": int(self.n_labels[rows].sum()),
              "ids": mv(self.ids[sel, :w]), "mask": mv(self.mask[sel, :w]), "pos": mv(self.pos[sel]), "tgt": mv(self.tgt[sel]),
              "last": mv(self.last[sel])}
        mb["target"] = None if self.target is None else mv(self.target[sel])
        return mb


def _amp(device_type: str, dtype):
    import contextlib

    import torch

    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _fast_forwards(model, head, cfg, plan, mask_free: bool):
    """(digit loss fn, head loss fn): the decoder + loss without boolean indexing or host reads.

    Label positions come gathered (``pos``/``tgt``, padded with -100): the loss is the mean over
    the same label tokens as :func:`_loss`, and lm_head still runs on those positions only.
    """
    import torch
    import torch.nn.functional as F

    from .heads import pool_hidden

    inner = model.get_base_model()
    decoder = getattr(inner, "model", None) or inner.get_decoder()
    lm_head = inner.get_output_embeddings()
    amp = getattr(torch, plan.compute_dtype) if plan.device == "cuda" and plan.compute_dtype in ("bfloat16", "float16") else None
    dev = plan.device

    def hidden_of(ids, mask):
        return decoder(input_ids=ids, attention_mask=None if mask_free else mask, use_cache=False).last_hidden_state

    def ce(hidden, pos, tgt):
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        h = hidden[rows, pos]
        logits = lm_head(h.reshape(-1, h.shape[-1])).float()
        return F.cross_entropy(logits, tgt.reshape(-1), ignore_index=-100)

    def gen_loss(ids, mask, pos, tgt):
        with _amp(dev, amp):
            return ce(hidden_of(ids, mask), pos, tgt)

    def head_loss(ids, mask, last, target, pos, tgt, with_ce: bool):
        with _amp(dev, amp):
            hidden = hidden_of(ids, mask)
            with torch.autocast(dev, enabled=False):
                z = head(pool_hidden(hidden, mask, last, cfg.head_pool)).squeeze(-1)
                if cfg.head_loss == "huber":
                    loss = F.huber_loss(z, target, delta=cfg.huber_delta)
                else:
                    loss = F.mse_loss(z, target)
            if with_ce:
                loss = loss + cfg.head_lm_weight * ce(hidden, pos, tgt)
            return loss

    return gen_loss, head_loss


class _Compiled:
    """The step's forward run through torch.compile, or eagerly after a compile failure (with a warning).

    ``compile_scope`` "layers" compiles each decoder layer in place (``nn.Module.compile``: the
    module and its state-dict keys stay as they are); the layers share one graph, so compilation
    takes seconds, and the embedding, final norm and loss stay eager (a few kernels). "model"
    compiles the whole function (decoder + loss) as one graph. :meth:`release` undoes it.
    """

    def __init__(self, fn, fast: FastPath, layers=None):
        self.eager = self.fn = fn
        self.compiled = False
        self.fell_back: str | None = None  # the compile error that sent training back to eager
        self.cudagraphs = False
        self.layers: list = []
        if fast.compile:
            import torch

            from .heads import compile_layers, raise_compile_limits

            mode = None if fast.compile_mode == "default" else fast.compile_mode
            if fast.compile_scope == "layers" and layers:
                self.layers = compile_layers(layers, mode)
            else:
                raise_compile_limits()
                self.fn = torch.compile(fn, mode=mode, dynamic=False)
            self.compiled = True
            self.cudagraphs = fast.compile_mode in ("reduce-overhead", "max-autotune")

    def __call__(self, *args):
        if self.cudagraphs:
            import torch

            torch.compiler.cudagraph_mark_step_begin()  # the loss it returns is copied by _fast_accumulate
        return self.fn(*args)

    def release(self) -> None:
        for layer in self.layers:
            layer._compiled_call_impl = None
        self.layers = []
        self.fn, self.compiled, self.cudagraphs = self.eager, False, False

    def fall_back(self, err: BaseException) -> None:
        self.fell_back = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        log.warning("torch.compile failed (%s: %s); training continues eagerly. Set train.compile: false to skip "
                    "compiling.", type(err).__name__, str(err).splitlines()[0][:300] if str(err) else "")
        self.release()


def _decoder_layers(model) -> list:
    inner = model.get_base_model()
    decoder = getattr(inner, "model", None) or inner.get_decoder()
    return list(getattr(decoder, "layers", None) or [])


def _is_compile_error(err: BaseException) -> bool:
    import torch

    if isinstance(err, (torch.OutOfMemoryError, KeyboardInterrupt)):
        return False
    mod = type(err).__module__ or ""
    return mod.startswith(("torch._dynamo", "torch._inductor", "torch.fx", "triton", "torch._subclasses"))


def _fast_accumulate(data: _FastData, step: int, cfg, gen_fn, head_fn, head,
                     params: list | None = None) -> tuple[list, int, int, int]:
    """One optimizer step's micro-batches: (per-micro-batch loss tensors, tokens, counted, widest).

    No device -> host read: the tokens and label counts come from the host-side row lengths, the
    losses stay on the device until the loop reads a window of them at once.

    With CUDA graphs and ``grad_accum`` > 1 the first backward's gradients are CUDA-graph outputs:
    autograd keeps them as ``.grad``, and the next micro-batch's replay would overwrite them before
    its backward adds to them (torch raises "accessing tensor output of CUDAGraphs that has been
    overwritten", seen on an H200). They are copied out of the graph's memory after each backward
    but the last; ``params`` are the parameters whose gradients the step accumulates.
    """
    fn = head_fn if head is not None else gen_fn
    copy_grads = bool(params) and cfg.grad_accum > 1 and fn.cudagraphs
    losses, tokens, width = [], 0, 0
    for a in range(cfg.grad_accum):
        mb = data.get(step * cfg.grad_accum + a)
        tokens += mb["tokens"]
        width = max(width, mb["width"])
        if head is None:
            if mb["n_labels"] == 0:  # _loss returns None: the micro-batch is skipped
                continue
            loss = gen_fn(mb["ids"], mb["mask"], mb["pos"], mb["tgt"])
        else:
            loss = head_fn(mb["ids"], mb["mask"], mb["last"], mb["target"], mb["pos"], mb["tgt"],
                           cfg.head_lm_weight > 0 and mb["n_labels"] > 0)
        (loss / cfg.grad_accum).backward()
        losses.append(loss.detach().clone())  # clone: a CUDA-graph output is overwritten by the next replay
        if copy_grads and a < cfg.grad_accum - 1:
            for p in params:
                if p.grad is not None:
                    p.grad = p.grad.clone()
    return losses, tokens, len(losses), width


def _fit_blend(tokenized_dir: Path, model, tokenizer, head, head_spec, plan, parts: str, min_items: int = 1):
    """train.blend: TF-IDF on the training prompts and/or a retrieval index of the training items'
    embeddings, their weights against the head chosen on validation."""
    from datasets import load_from_disk

    from .blend import fit_blend
    from .heads import head_outputs

    dd = load_from_disk(str(tokenized_dir / "dataset"))
    if "validation" not in dd or "prompt" not in dd["validation"].column_names:
        raise PricefitError("train.blend needs the tokenized validation split with its prompts", hint="re-run `pricefit tokenize`")
    val, knn = dd["validation"], "knn" in parts.split("+")
    def score(prompts, pooled):
        return head_outputs(prompts, model, tokenizer, head, head_spec, plan.device, lambda: _autocast(plan), pooled=pooled)

    head_val, val_pooled = score(val["prompt"], knn)
    train_pooled = score(dd["train"]["prompt"], True)[1] if knn else None
    blend = fit_blend(dd["train"]["prompt"], dd["train"]["price"], val["prompt"], val["price"], head_val,
                      parts=parts.split("+"), train_pooled=train_pooled, val_pooled=val_pooled, min_items=min_items)
    v = blend.validation
    if v.get("note"):
        log.info("blend: %s (validation MAE: %s)", v["note"],
                 ", ".join(f"{k[:-4]} ${x:.2f}" for k, x in v.items() if k.endswith("_mae") and k != "blend_mae"))
        return blend
    log.info("blend: weights %s chosen on %d validation items (MAE: %s)", ", ".join(f"{k} {w:.2f}" for k, w in v["weights"].items()),
             len(val), ", ".join(f"{k[:-4]} ${x:.2f}" for k, x in v.items() if k.endswith("_mae")))
    return blend


def _optimizer(cfg, params, plan, head=None):
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


# ----------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_key(tokenized_sha256: str, cfg) -> str:
    body = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_IN_KEY}
    if body.get("num_processes") == 1:  # one process: the key it had before the field existed
        del body["num_processes"]
    return artifacts.sha256_bytes(artifacts.canonical_json({"tokenized": tokenized_sha256, "config": body}).encode())[:16]


def checkpoint_root(out_dir: Path) -> Path:
    return out_dir.with_name(out_dir.name + CKPT_SUFFIX)


def _rng_state(one_device: bool = False) -> dict:
    """``one_device`` (a data-parallel rank): the current GPU's state only (get_rng_state_all would
    open a CUDA context on every GPU from every rank)."""
    import numpy as np
    import torch

    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        if one_device:
            st["cuda_device"] = torch.cuda.get_rng_state()
        else:
            st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    import numpy as np
    import torch

    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
    if "cuda_device" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda_device"])


def _rng_file(rank: int) -> str:
    return "rng.pt" if rank == 0 else f"rng-rank{rank}.pt"


def _save_checkpoint(ckdir: Path, step: int, model, opt, sched, history: list[dict], head=None,
                     rank_rngs: list[dict] | None = None) -> None:
    """``rank_rngs``: every rank's RNG state, from rank 0 of a data-parallel run (the only writer)."""
    import torch
    from peft import get_peft_model_state_dict

    final = ckdir / f"step-{step:07d}"
    with artifacts.atomic_dir(final) as tmp:
        torch.save({k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}, tmp / "adapter.pt")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        torch.save(sched.state_dict(), tmp / "scheduler.pt")
        if rank_rngs is None:
            torch.save(_rng_state(), tmp / "rng.pt")
        else:
            for r, st in enumerate(rank_rngs):
                torch.save(st, tmp / _rng_file(r))
        if head is not None:
            torch.save({k: v.detach().cpu() for k, v in head.state_dict().items()}, tmp / "head.pt")
        # every file on disk (fsync) and its sha256 in state.json, written last: a step directory is
        # complete when state.json exists, and intact when every file still has its recorded hash
        files = {f.name: artifacts.sha256_file(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        for f in tmp.iterdir():
            _fsync(f)
        artifacts.write_json_atomic(tmp / "state.json", {"step": step, "history": history, "files": files})
        _fsync(tmp / "state.json")
    _fsync(ckdir)
    # keep the previous checkpoint too: if the newest is damaged (a disk fault, a copy cut short),
    # the run resumes from the one before instead of starting over
    for old in sorted(p for p in ckdir.glob("step-*") if p.is_dir())[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


KEEP_CHECKPOINTS = 2


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint directory cannot be resumed from (None: it is intact)."""
    try:
        state = json.loads((path / "state.json").read_text())
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"state.json unreadable ({e})"
    for name, digest in (state.get("files") or {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if artifacts.sha256_file(f) != digest:
            return f"{name} does not match its recorded sha256 ({f.stat().st_size} bytes)"
    return None


def _latest_checkpoint(ckdir: Path) -> Path | None:
    """The newest intact checkpoint; damaged ones are skipped with a warning and set aside."""
    done = sorted((p for p in ckdir.glob("step-*") if (p / "state.json").is_file()), reverse=True)
    for p in done:
        problem = checkpoint_problem(p)
        if problem is None:
            return p
        aside = p.with_name(f"damaged-{p.name}")
        shutil.rmtree(aside, ignore_errors=True)
        p.rename(aside)
        log.warning("checkpoint %s is damaged (%s): skipped and moved to %s; resuming from the previous good one "
                    "if there is one", p, problem, aside.name)
    if done:
        log.warning("no intact checkpoint left in %s: training starts from step 0", ckdir)
    return None


def _load_checkpoint(path: Path, model, opt, sched, head=None, rank: int = 0) -> tuple[int, list[dict]]:
    import torch
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, torch.load(path / "adapter.pt", weights_only=True))
    if head is not None:
        head.load_state_dict(torch.load(path / "head.pt", weights_only=True))
    opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    sched.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    state = json.loads((path / "state.json").read_text())
    _set_rng_state(torch.load(path / _rng_file(rank), weights_only=False))
    return int(state["step"]), list(state["history"])


# ----------------------------------------------------------------------------------------------
# outputs


def _write_loss(tmp: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["step", "loss", "lr", "tokens_per_s"], lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow(row)
    artifacts.write_text_atomic(tmp / "loss.csv", buf.getvalue())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set(ylabel="training loss", title="training loss")
    ax.xaxis.get_major_locator().set_params(integer=True)  # steps are whole: no 0.5 ticks on a short run
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(tmp / "loss.png", dpi=100)
    plt.close(fig)


def _hardware(plan) -> str:
    import torch

    if plan.device == "cuda":
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}"


def _peak_gib(plan) -> tuple[float, str]:
    import torch

    if plan.device == "cuda":
        return torch.cuda.max_memory_allocated() / 1024**3, "torch.cuda.max_memory_allocated"
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return kb / 1024**2, "process peak RSS (CPU run)"


def _estimate_gib(cfg, plan, base_path: str, seq: int) -> float | None:
    from . import memory

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


def _model_card(cfg, summary: dict) -> str:
    cfg_yaml = json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True)
    peak = summary["peak_mem_gib"]
    est = summary["estimate_gib"]
    return f"""# pricefit adapter: {cfg.base_model} + LoRA r={cfg.lora_r}

Predicts a product's price from its listing text: {"a linear price head on the prompt's final hidden state (price_head.safetensors + price_head.json beside the adapter; pricefit.heads)" if cfg.head == "regression" else 'the completion after "Price is $"'}.

| | |
|---|---|
| base model | `{cfg.base_model}` |
| training data | tokenized artifact sha256 `{summary['tokenized_sha256']}` ({summary['train_items']} items) |
| method | {summary['quantization']['quantization']} quantization, compute {summary['quantization']['compute_dtype']}, LoRA r={cfg.lora_r} alpha={cfg.lora_alpha} on {cfg.target_modules} |
| steps | {summary['steps']} optimizer steps (batch {cfg.batch_size} x accum {cfg.grad_accum}) |
| final loss | {summary['final_loss']:.4f} |
| hardware | {summary['hardware']} |
| time | {summary['runtime_s']:.1f} s, {summary['tokens_per_s']:.0f} tokens/s |
| peak memory | {peak:.2f} GiB ({summary['peak_mem_source']}) |
| planner estimate | {'n/a' if est is None else f'{est:.2f} GiB'} (pricefit plan-memory) |

## Metrics

Filled in by `pricefit evaluate` (held-out MAE, RMSLE, hit rate); see the evaluation artifact.

## Configuration

```json
{cfg_yaml}
```
"""


def _merge(base_path: str, adapter_dir: Path, out: Path) -> None:
    """Merged model in float32: base (unquantized) + adapter, so it loads without peft/bitsandbytes."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out)


def _dist_accumulate(dist, step, cfg, sched, index, train_ds, pad_id, plan, model, head, targets, trainable):
    """One optimizer step's micro-batches on this rank of a data-parallel run (pricefit.distributed).

    Global micro-batch ``k`` is the one a single process takes; this rank takes ``rows[rank::world]``
    and scales its loss to its share of that micro-batch's loss (its label tokens / the micro-batch's
    for the cross-entropy, its rows / the micro-batch's for the head), so the gradients summed over
    the ranks (one all-reduce after the last micro-batch) are the single process's. Returns
    (loss_sum, step_tokens, counted) over all ranks, as the one-process loop counts them, and this
    rank's widest micro-batch.
    """
    import torch

    stats = [0.0] * (cfg.grad_accum + 1)  # this rank's part of each micro-batch's loss, then its tokens
    has_loss = [False] * cfg.grad_accum  # a micro-batch with no label token anywhere is skipped, as in one process
    seq = 0
    for a in range(cfg.grad_accum):
        rows = micro_batch_indices(step * cfg.grad_accum + a, sched, cfg.seed, index)
        batch = train_ds[rows]
        n_all = sum(sum(1 for t in lab[1:] if t != -100) for lab in batch["labels"])  # _loss's label positions
        has_loss[a] = head is not None or n_all > 0
        mine = list(range(dist.rank, len(rows), dist.world))
        if not mine:
            continue
        ids, mask, labels = collate({c: [batch[c][i] for i in mine] for c in ("input_ids", "attention_mask", "labels")},
                                    pad_id)
        seq = max(seq, ids.shape[1])
        ids, mask, labels = ids.to(plan.device), mask.to(plan.device), labels.to(plan.device)
        stats[-1] += int(mask.sum())
        if not has_loss[a]:
            continue
        with _autocast(plan):
            if head is None:
                loss, n = _loss(model, ids, mask, labels)
                if loss is not None:
                    loss = loss * (n / n_all)
            else:
                target = torch.tensor([targets[rows[i]] for i in mine], dtype=torch.float32, device=plan.device)
                loss, _ = _head_loss(model, head, ids, mask, labels, target, cfg, share=(len(mine) / len(rows), n_all))
        if loss is None:  # none of the micro-batch's label tokens are in this rank's rows
            continue
        (loss / cfg.grad_accum).backward()
        stats[a] = float(loss.detach())
    totals = dist.all_reduce_step(trainable, stats)
    loss_sum = sum(x for x, h in zip(totals[:-1], has_loss) if h)
    return loss_sum, int(round(totals[-1])), sum(has_loss), seq


# ----------------------------------------------------------------------------------------------
# the loop


def train(tokenized_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg, progress: ProgressFn | None = None,
          slices=None, _dist=None) -> ArtifactRef:
    """Fine-tune ``cfg.base_model`` with LoRA on the tokenized train split; write an adapter artifact.

    ``slices``: the declared slices (pricefit.slices.SliceSpec) that ``cfg.oversample`` names.
    With ``cfg.head == "regression"`` a price head (pricefit.heads) is trained with the adapter
    and saved beside it.

    Resumes from ``<out_dir>.ckpt/<key>/`` when a run with the same inputs and config was killed.
    ``progress(step, total_steps, loss, tokens_per_s)`` is called after every optimizer step
    (after the checkpoint of that step is written).

    ``cfg.num_processes`` > 1: data-parallel over that many processes, launched here through
    ``accelerate launch`` (pricefit.distributed); this call waits for them and returns the same
    artifact. ``_dist`` is set inside those processes only.
    """
    tokenized_dir, out_dir = Path(tokenized_dir), Path(out_dir)
    if cfg.num_processes > 1 and _dist is None:
        from . import distributed

        return distributed.launch(tokenized_dir, out_dir, cfg, progress, slices)

    import torch
    from transformers import get_scheduler

    from . import models, quant

    rank = _dist.rank if _dist is not None else 0
    plan = quant.resolve(cfg)
    train_ds, tok_manifest = _load_split(tokenized_dir, cfg)
    tokenized_sha = artifacts.sha256_file(tokenized_dir / artifacts.MANIFEST)
    index = train_index(train_ds, cfg, slices)
    sched_plan = make_schedule(len(index), cfg)
    base_path = models.resolve_model(cfg.base_model)
    tokenizer = models.load_tokenizer(cfg.base_model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    key = checkpoint_key(tokenized_sha, cfg)
    ckroot = checkpoint_root(out_dir)
    ckdir = ckroot / key
    others = [p.name for p in ckroot.glob("*") if p.is_dir() and p.name != key] if ckroot.exists() else []
    if others:
        log.warning("ignoring checkpoints of other inputs/configs in %s: %s", ckroot, ", ".join(others))

    model = (_build_model(cfg, plan, base_path) if _dist is None
             else _dist.load_in_turn(plan, lambda: _build_model(cfg, plan, base_path, _dist.local_rank)))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    head = head_spec = targets = None
    if cfg.head == "regression":
        from .heads import HeadSpec, make_head, target_stats

        prices = [float(p) for p in train_ds["price"]]
        mean, std = target_stats(prices[i] for i in index)
        hidden_size = model.get_base_model().config.get_text_config().hidden_size
        head_spec = HeadSpec("regression", hidden_size, cfg.head_pool, "log1p", mean, std)
        head = make_head(hidden_size, plan.device)
        targets = [(math.log1p(max(p, 0.0)) - mean) / std for p in prices]
    if _dist is not None:
        trainable_params = params + (list(head.parameters()) if head is not None else [])
        _dist.broadcast_params(trainable_params)
    opt = _optimizer(cfg, params, plan, head)
    lr_sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=sched_plan.warmup_steps,
                             num_training_steps=sched_plan.total_steps)

    step, history = 0, []
    latest = _latest_checkpoint(ckdir) if ckdir.exists() else None
    if _dist is not None:
        latest = _dist.broadcast_object(latest)  # every rank resumes the checkpoint rank 0 found
    if latest is not None:
        step, history = _load_checkpoint(latest, model, opt, lr_sched, head, rank)
        log.info("resuming from %s (step %d of %d)", latest, step, sched_plan.total_steps)
    else:
        torch.manual_seed(cfg.seed + rank)  # ranks draw different dropout masks
        random.seed(cfg.seed + rank)

    trainable = sum(p.numel() for p in params) + (sum(p.numel() for p in head.parameters()) if head is not None else 0)
    log.info("training %s: %d items, %d steps, %d trainable params, %s %s on %s",
             cfg.base_model, len(train_ds), sched_plan.total_steps, trainable, plan.quantization,
             plan.compute_dtype, plan.device)
    from .progress import progress_bar  # tqdm on a terminal, a line every 30 s elsewhere

    bar = progress_bar(total=sched_plan.total_steps, initial=step, file=sys.stderr, desc="train", unit="step",
                       enabled=rank == 0)
    import contextlib

    fast = fast_path(cfg, plan, distributed=_dist is not None)
    gen_fn = head_fn = data = None
    attention = contextlib.ExitStack()
    if fast.on:
        data = _FastData(train_ds, index, sched_plan, cfg, pad_id, targets, plan, fast)
        gen_raw, head_raw = _fast_forwards(model, head, cfg, plan, data.mask_free)
        layers = _decoder_layers(model)
        gen_fn = _Compiled(gen_raw, fast, layers) if head is None else None
        head_fn = _Compiled(head_raw, fast, layers) if head is not None else None
        if data.mask_free:  # right padding without a mask (heads.causal_attention), until the loop ends
            from .heads import causal_attention

            attention.enter_context(causal_attention(model))
        log.info("fast path: %s (attention mask %s)", fast.describe(), "not needed" if data.mask_free else "kept")
    clip_params = params + (list(head.parameters()) if head is not None else [])
    t_start = time.perf_counter()
    tokens_seen, max_seq = 0, 0
    pending: list[tuple[int, list, int, float, int]] = []  # (step, micro-batch losses, counted, lr, tokens)
    t_window = time.perf_counter()
    try:
        while step < sched_plan.total_steps:
            opt.zero_grad(set_to_none=True)
            if _dist is not None:
                loss_sum, step_tokens, counted, seq = _dist_accumulate(
                    _dist, step, cfg, sched_plan, index, train_ds, pad_id, plan, model, head, targets, trainable_params)
                max_seq = max(max_seq, seq)
                micro = [loss_sum]
            elif fast.on:
                fn = head_fn if head is not None else gen_fn
                rng = _rng_state() if fn.compiled else None
                try:
                    micro, step_tokens, counted, seq = _fast_accumulate(data, step, cfg, gen_fn, head_fn, head, clip_params)
                except Exception as e:  # noqa: BLE001 - only compile failures are caught, see _is_compile_error
                    if not fn.compiled or not _is_compile_error(e):
                        raise
                    fn.fall_back(e)
                    opt.zero_grad(set_to_none=True)
                    _set_rng_state(rng)  # the eager retry draws the dropout masks the first try drew
                    micro, step_tokens, counted, seq = _fast_accumulate(data, step, cfg, gen_fn, head_fn, head, clip_params)
                max_seq = max(max_seq, seq)
            else:
                micro, step_tokens, counted = [], 0, 0
                for a in range(cfg.grad_accum):
                    k = step * cfg.grad_accum + a
                    rows = micro_batch_indices(k, sched_plan, cfg.seed, index)
                    ids, mask, labels = collate(train_ds[rows], pad_id)
                    max_seq = max(max_seq, ids.shape[1])
                    ids, mask, labels = ids.to(plan.device), mask.to(plan.device), labels.to(plan.device)
                    with _autocast(plan):
                        if head is None:
                            loss, n = _loss(model, ids, mask, labels)
                        else:
                            target = torch.tensor([targets[r] for r in rows], dtype=torch.float32, device=plan.device)
                            loss, n = _head_loss(model, head, ids, mask, labels, target, cfg)
                    step_tokens += int(mask.sum())
                    if loss is None:
                        continue
                    (loss / cfg.grad_accum).backward()
                    micro.append(float(loss.detach()))
                    counted += 1
            if counted == 0:
                raise PricefitError(f"step {step + 1}: no label tokens in the batch (every completion truncated?)",
                                    hint="raise tokenize.max_length so the price completion fits")
            if cfg.max_grad_norm and cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(clip_params, cfg.max_grad_norm)  # its returned norm is never read
            lr = opt.param_groups[0]["lr"]
            opt.step()
            lr_sched.step()
            step += 1
            tokens_seen += step_tokens
            pending.append((step, micro, counted, lr, step_tokens))
            if not (step % fast.sync_steps == 0 or step % cfg.save_steps == 0 or step == sched_plan.total_steps):
                continue
            # read the window's losses at once: the only device -> host sync of the fast path
            flat = [x for _, m, _, _, _ in pending for x in m]
            if flat and not isinstance(flat[0], float):
                flat = torch.stack(flat).float().tolist()
            dt = max(time.perf_counter() - t_window, 1e-9)
            tps = sum(p[4] for p in pending) / dt  # the window's tokens/s (one step: that step's)
            done, j = [], 0
            for st, m, cnt, lr_, _ in pending:
                loss_sum = 0.0
                for x in flat[j:j + len(m)]:
                    loss_sum += x
                j += len(m)
                step_loss = loss_sum / cnt
                history.append({"step": st, "loss": round(step_loss, 6), "lr": lr_, "tokens_per_s": round(tps, 1)})
                done.append((st, step_loss))
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tps:.0f}")
            pending = []
            if step % cfg.save_steps == 0 and step < sched_plan.total_steps:
                rank_rngs = None if _dist is None else _dist.gather_object(_rng_state(one_device=True))
                if rank == 0:
                    _save_checkpoint(ckdir, step, model, opt, lr_sched, history, head, rank_rngs)
            if progress is not None:
                for st, step_loss in done:
                    progress(st, sched_plan.total_steps, step_loss, tps)
            t_window = time.perf_counter()
    finally:
        bar.close()
        attention.close()
        for f in (gen_fn, head_fn):  # the saved model and the blend's scoring run eagerly
            if f is not None:
                f.release()
    runtime = time.perf_counter() - t_start
    if rank > 0:
        return None  # rank 0 writes the artifact

    peak, peak_src = _peak_gib(plan)
    summary = {
        "steps": step,
        "total_steps": sched_plan.total_steps,
        "train_items": len(train_ds),
        "epoch_items": len(index),
        "head": cfg.head,
        "final_loss": history[-1]["loss"],
        "first_loss": history[0]["loss"],
        "runtime_s": round(runtime, 2),
        "tokens_per_s": round(tokens_seen / runtime, 1) if runtime > 0 and tokens_seen else 0.0,
        "peak_mem_gib": round(peak, 3),
        "peak_mem_source": peak_src,
        "estimate_gib": _estimate_gib(cfg, plan, base_path, max_seq or 128),
        "hardware": _hardware(plan),
        "trainable_params": trainable,
        "tokenized_sha256": tokenized_sha,
        "checkpoint_key": key,
        "resumed": latest is not None,
        "quantization": quant.describe(cfg, plan),
        "warnings": list(plan.warnings),
        "fast_path": fast.describe() if fast.on else None,
    }
    compiled = head_fn if head is not None else gen_fn
    if summary["fast_path"] is not None and compiled is not None and compiled.fell_back:
        summary["fast_path"]["compile_fell_back"] = compiled.fell_back  # it says compile, it ran eager
    if _dist is not None:
        summary.update(_dist.summary(summary["hardware"], peak_src, cfg.batch_size))
    for peft_cfg in model.peft_config.values():
        # peft keeps target_modules as a set: saved in the order of this process's string hashing
        # (PYTHONHASHSEED), so two identical runs wrote different adapter_config.json bytes
        if isinstance(peft_cfg.target_modules, (set, frozenset)):
            peft_cfg.target_modules = sorted(peft_cfg.target_modules)
    with artifacts.atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp / "adapter"))
        if head is not None:
            from .heads import save_price_head

            save_price_head(tmp / "adapter", head, head_spec)
        if cfg.blend != "none":
            blend = _fit_blend(tokenized_dir, model, tokenizer, head, head_spec, plan, cfg.blend, cfg.blend_min_items)
            from .blend import save_blend

            save_blend(tmp / "adapter", blend)
            summary["blend"] = {"weight": blend.weight, **blend.validation}
        _write_loss(tmp, history)
        artifacts.write_json_atomic(tmp / "train_summary.json", summary)
        artifacts.write_text_atomic(tmp / "model_card.md", _model_card(cfg, summary))
        if cfg.merge:
            _merge(base_path, tmp / "adapter", tmp / "merged")
        artifacts.write_manifest(tmp, {
            "kind": "adapter", "schema_version": 1, "base_model": cfg.base_model,
            "tokenized_sha256": tokenized_sha, "tokenizer_sha256": tok_manifest.get("tokenizer_sha256"),
            "config": cfg.model_dump(mode="json"), "steps": step, "final_loss": summary["final_loss"],
            "train_items": len(train_ds), "head": cfg.head,
            # how the prompts were built: evaluate and predict rebuild them the same way
            "tokenize_config": tok_manifest.get("config"), "curate_config": tok_manifest.get("curate_config"),
        })
    shutil.rmtree(ckdir, ignore_errors=True)
    if ckroot.exists() and not any(ckroot.iterdir()):
        ckroot.rmdir()
    return artifacts.ref_for(out_dir, "adapter", rows=len(train_ds))
