"""The fast path of the training loop (the CUDA defaults): no host sync per step, static shapes,
the data on the device, torch.compile.

It computes the same losses over the same label tokens as the eager loop (training/model.py)
without boolean indexing or device -> host reads, so the GPU is never waiting on Python. On CPU
every lever is off by default and the eager loop runs, which is what the exact-resume tests pin.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from ..heads import causal_attention, compile_layers, pool_hidden, raise_compile_limits
from .checkpoints import rng_state, set_rng_state
from .data import Schedule
from .model import use_checkpointing

log = logging.getLogger("pricefit.training")  # one logger for the package: the log lines keep their name

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


class FastStep:
    """One optimizer step's forward and backward passes on the fast path: ``step(k)`` returns
    (per-micro-batch loss tensors, tokens, micro-batches counted, widest micro-batch).

    Built once before the loop; :meth:`close` (in the loop's ``finally``) undoes what it changed
    on the model: the mask-free attention and the compiled layers, so the saved model and the
    blend's scoring run eagerly.
    """

    def __init__(self, fast: FastPath, model, head, train_ds, index, sched: Schedule, cfg, pad_id: int, targets,
                 plan, params: list, opt):
        self.cfg, self.head, self.params, self.opt = cfg, head, params, opt
        self.data = _FastData(train_ds, index, sched, cfg, pad_id, targets, plan, fast)
        gen_raw, head_raw = _fast_forwards(model, head, cfg, plan, self.data.mask_free)
        layers = _decoder_layers(model)
        self.gen_fn = _Compiled(gen_raw, fast, layers) if head is None else None
        self.head_fn = _Compiled(head_raw, fast, layers) if head is not None else None
        self._attention = contextlib.ExitStack()
        if self.data.mask_free:  # right padding without a mask (heads.causal_attention), until close()
            self._attention.enter_context(causal_attention(model))
        log.info("fast path: %s (attention mask %s)", fast.describe(), "not needed" if self.data.mask_free else "kept")

    @property
    def fn(self) -> _Compiled:
        return self.head_fn if self.head is not None else self.gen_fn

    @property
    def fell_back(self) -> str | None:
        """The compile error that sent the run back to eager (None: it did not)."""
        return self.fn.fell_back

    def __call__(self, step: int) -> tuple[list, int, int, int]:
        fn = self.fn
        rng = rng_state() if fn.compiled else None
        try:
            return _fast_accumulate(self.data, step, self.cfg, self.gen_fn, self.head_fn, self.head, self.params)
        except Exception as e:  # noqa: BLE001 - only compile failures are caught, see _is_compile_error
            if not fn.compiled or not _is_compile_error(e):
                raise
            fn.fall_back(e)
            self.opt.zero_grad(set_to_none=True)
            set_rng_state(rng)  # the eager retry draws the dropout masks the first try drew
            return _fast_accumulate(self.data, step, self.cfg, self.gen_fn, self.head_fn, self.head, self.params)

    def close(self) -> None:
        self._attention.close()
        for f in (self.gen_fn, self.head_fn):
            if f is not None:
                f.release()


class _FastData:
    """The train split as padded tensors, built once (on the device with ``device_data``).

    Everything the loop needs to know on the host (tokens, label counts, widths) is computed here
    from the row lengths, so a micro-batch costs no device -> host read. Micro-batch ``k`` holds the
    rows :func:`~pricefit.training.data.micro_batch_indices` gives; the epoch's order is copied to
    the device once per epoch.
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
        last = np.where(has, first - 1, self.tokens - 1).clip(min=0)  # head_loss's pooled position
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
    import torch

    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _fast_forwards(model, head, cfg, plan, mask_free: bool):
    """(digit loss fn, head loss fn): the decoder + loss without boolean indexing or host reads.

    Label positions come gathered (``pos``/``tgt``, padded with -100): the loss is the mean over
    the same label tokens as :func:`~pricefit.training.model.label_loss`, and lm_head still runs
    on those positions only.
    """
    import torch
    import torch.nn.functional as F

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
            if mb["n_labels"] == 0:  # label_loss returns None: the micro-batch is skipped
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
