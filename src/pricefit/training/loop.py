"""The training loop: :func:`train`, read top to bottom.

Each optimizer step accumulates ``grad_accum`` micro-batches through one of three branches,
chosen once per run:

- :func:`_plain_step`: one process, eager, a host read per micro-batch (the CPU default, and
  the loop the exact-resume tests pin down);
- :class:`~pricefit.training.fastpath.FastStep`: the CUDA fast path;
- :func:`_rank_step`: this rank's share of a data-parallel run, whose processes
  :func:`~pricefit.training.launch.launch` started (``_dist`` is then set).

Everything after the accumulation (clipping, the optimizer, the loss window, checkpoints,
progress) is shared, so the three give the same history, checkpoints and artifact.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import artifacts, models, quant
from ..artifacts import ArtifactRef
from ..errors import PricefitError
from ..heads import HeadSpec, make_head, save_price_head, target_stats
from ..progress import progress_bar
from .checkpoints import (checkpoint_dir, checkpoint_key, latest_checkpoint, load_checkpoint, remove_checkpoints,
                          rng_state, save_checkpoint)
from .data import Schedule, collate, load_split, make_schedule, micro_batch_indices, train_index
from .fastpath import FastPath, FastStep, fast_path
from .launch import launch
from .model import autocast, build_model, estimate_gib, head_loss, label_loss, make_optimizer
from .outputs import fit_blend, hardware, merge, model_card, peak_gib, write_loss

log = logging.getLogger("pricefit.training")  # one logger for the package: the log lines keep their name

ProgressFn = Callable[[int, int, float, float], None]  # (step, total_steps, loss, tokens_per_s)
StepResult = tuple[list, int, int, int]  # (per-micro-batch losses, tokens, micro-batches counted, widest)


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
    ``accelerate launch`` (pricefit.training.launch); this call waits for them and returns the
    same artifact. ``_dist`` (a :class:`~pricefit.training.ranks.Dist`) is set inside those processes only.
    """
    tokenized_dir, out_dir = Path(tokenized_dir), Path(out_dir)
    if cfg.num_processes > 1 and _dist is None:
        return launch(tokenized_dir, out_dir, cfg, progress, slices)

    import torch
    from transformers import get_scheduler

    rank = _dist.rank if _dist is not None else 0
    run = _Inputs.read(tokenized_dir, cfg, slices)
    sched = run.sched
    key = checkpoint_key(run.tokenized_sha, cfg)
    ckdir = checkpoint_dir(out_dir, key)
    net = _Trainee.build(run, cfg, _dist)
    opt = make_optimizer(cfg, net.params, run.plan, net.head)
    lr_sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=sched.warmup_steps,
                             num_training_steps=sched.total_steps)
    step, history, latest = _start_or_resume(ckdir, cfg, net, opt, lr_sched, rank, sched.total_steps, _dist)

    log.info("training %s: %d items, %d steps, %d trainable params, %s %s on %s",
             cfg.base_model, len(run.train_ds), sched.total_steps, net.n_trainable, run.plan.quantization,
             run.plan.compute_dtype, run.plan.device)
    bar = progress_bar(total=sched.total_steps, initial=step, file=sys.stderr, desc="train", unit="step",
                       enabled=rank == 0)
    fast = fast_path(cfg, run.plan, distributed=_dist is not None)
    fast_step = (FastStep(fast, net.model, net.head, run.train_ds, run.index, sched, cfg, run.pad_id, net.targets,
                          run.plan, net.trainable, opt) if fast.on else None)
    accumulate: Callable[[int], StepResult]  # one optimizer step's micro-batches, by one of the three branches
    if _dist is not None:
        accumulate = functools.partial(_rank_step, _dist, cfg=cfg, run=run, net=net)
    elif fast_step is not None:
        accumulate = fast_step
    else:
        accumulate = functools.partial(_plain_step, cfg=cfg, run=run, net=net)

    t_start = time.perf_counter()
    tokens_seen, max_seq = 0, 0
    window = _LossWindow(bar)
    try:
        while step < sched.total_steps:
            opt.zero_grad(set_to_none=True)
            micro, step_tokens, counted, seq = accumulate(step)
            max_seq = max(max_seq, seq)
            if counted == 0:
                raise PricefitError(f"step {step + 1}: no label tokens in the batch (every completion truncated?)",
                                    hint="raise tokenize.max_length so the price completion fits")
            if cfg.max_grad_norm and cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(net.trainable, cfg.max_grad_norm)  # its returned norm is never read
            lr = opt.param_groups[0]["lr"]
            opt.step()
            lr_sched.step()
            step += 1
            tokens_seen += step_tokens
            window.add(step, micro, counted, lr, step_tokens)
            if not (step % fast.sync_steps == 0 or step % cfg.save_steps == 0 or step == sched.total_steps):
                continue
            done, tps = window.read(history)
            if step % cfg.save_steps == 0 and step < sched.total_steps:
                rank_rngs = None if _dist is None else _dist.gather_object(rng_state(one_device=True))
                if rank == 0:
                    save_checkpoint(ckdir, step, net.model, opt, lr_sched, history, net.head, rank_rngs)
            if progress is not None:
                for st, step_loss in done:
                    progress(st, sched.total_steps, step_loss, tps)
            window.restart()
    finally:
        bar.close()
        if fast_step is not None:
            fast_step.close()
    runtime = time.perf_counter() - t_start
    if rank > 0:
        return None  # rank 0 writes the artifact

    summary = _summary(cfg, run, net, fast, fast_step, step, history, runtime, tokens_seen, max_seq, key,
                       resumed=latest is not None, dist=_dist)
    _write_adapter(out_dir, tokenized_dir, cfg, run, net, step, history, summary)
    remove_checkpoints(ckdir)
    return artifacts.ref_for(out_dir, "adapter", rows=len(run.train_ds))


# ----------------------------------------------------------------------------------------------
# before the loop


@dataclass(frozen=True)
class _Inputs:
    """What a run reads before it builds the model: the device plan, the data and its epoch, the
    tokenizer."""

    plan: Any
    train_ds: Any
    manifest: dict  # the tokenized artifact's
    tokenized_sha: str
    index: list[int]  # one epoch's rows (train_index)
    sched: Schedule
    base_path: str
    tokenizer: Any
    pad_id: int

    @classmethod
    def read(cls, tokenized_dir: Path, cfg, slices) -> _Inputs:
        plan = quant.resolve(cfg)
        train_ds, manifest = load_split(tokenized_dir, cfg)
        tokenized_sha = artifacts.sha256_file(tokenized_dir / artifacts.MANIFEST)
        index = train_index(train_ds, cfg, slices)
        sched = make_schedule(len(index), cfg)
        base_path = models.resolve_model(cfg.base_model)
        tokenizer = models.load_tokenizer(cfg.base_model)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(plan, train_ds, manifest, tokenized_sha, index, sched, base_path, tokenizer, pad_id)


@dataclass(frozen=True)
class _Trainee:
    """The model being trained and, with ``head: regression``, its price head and the rows'
    standardized targets."""

    model: Any
    params: list  # the LoRA parameters
    trainable: list  # every parameter the step updates: the LoRA ones, then the head's
    head: Any = None
    head_spec: HeadSpec | None = None
    targets: list[float] | None = None

    @property
    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable)

    @classmethod
    def build(cls, run: _Inputs, cfg, dist) -> _Trainee:
        plan = run.plan
        model = (build_model(cfg, plan, run.base_path) if dist is None
                 else dist.load_in_turn(plan, lambda: build_model(cfg, plan, run.base_path, dist.local_rank)))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        head = head_spec = targets = None
        if cfg.head == "regression":
            prices = [float(p) for p in run.train_ds["price"]]
            mean, std = target_stats(prices[i] for i in run.index)
            hidden_size = model.get_base_model().config.get_text_config().hidden_size
            head_spec = HeadSpec("regression", hidden_size, cfg.head_pool, "log1p", mean, std)
            head = make_head(hidden_size, plan.device)
            targets = [(math.log1p(max(p, 0.0)) - mean) / std for p in prices]
        trainable = params + (list(head.parameters()) if head is not None else [])
        if dist is not None:
            dist.broadcast_params(trainable)  # every rank starts from rank 0's LoRA and head values
        return cls(model, params, trainable, head, head_spec, targets)


def _start_or_resume(ckdir: Path, cfg, net: _Trainee, opt, lr_sched, rank: int, total_steps: int, dist):
    """(step, history, the checkpoint resumed from or None). A fresh start seeds the dropout RNGs
    (per rank: ranks draw different masks); a resumed run gets them back from the checkpoint."""
    import torch

    step, history = 0, []
    latest = latest_checkpoint(ckdir) if ckdir.exists() else None
    if dist is not None:
        latest = dist.broadcast_object(latest)  # every rank resumes the checkpoint rank 0 found
    if latest is not None:
        step, history = load_checkpoint(latest, net.model, opt, lr_sched, net.head, rank)
        log.info("resuming from %s (step %d of %d)", latest, step, total_steps)
    else:
        torch.manual_seed(cfg.seed + rank)
        random.seed(cfg.seed + rank)
    return step, history, latest


# ----------------------------------------------------------------------------------------------
# one optimizer step's micro-batches: the eager branches (the fast one is fastpath.FastStep)


def _plain_step(step: int, cfg, run: _Inputs, net: _Trainee) -> StepResult:
    """One process, eager: the losses are read back (as floats) after every micro-batch."""
    import torch

    plan = run.plan
    micro, step_tokens, counted, seq = [], 0, 0, 0
    for a in range(cfg.grad_accum):
        rows = micro_batch_indices(step * cfg.grad_accum + a, run.sched, cfg.seed, run.index)
        ids, mask, labels = collate(run.train_ds[rows], run.pad_id)
        seq = max(seq, ids.shape[1])
        ids, mask, labels = ids.to(plan.device), mask.to(plan.device), labels.to(plan.device)
        with autocast(plan):
            if net.head is None:
                loss, n = label_loss(net.model, ids, mask, labels)
            else:
                target = torch.tensor([net.targets[r] for r in rows], dtype=torch.float32, device=plan.device)
                loss, n = head_loss(net.model, net.head, ids, mask, labels, target, cfg)
        step_tokens += int(mask.sum())
        if loss is None:
            continue
        (loss / cfg.grad_accum).backward()
        micro.append(float(loss.detach()))
        counted += 1
    return micro, step_tokens, counted, seq


def _rank_step(dist, step: int, cfg, run: _Inputs, net: _Trainee) -> StepResult:
    """One optimizer step's micro-batches on this rank of a data-parallel run (training/ranks.py).

    Global micro-batch ``k`` is the one a single process takes; this rank takes ``rows[rank::world]``
    and scales its loss to its share of that micro-batch's loss (its label tokens / the micro-batch's
    for the cross-entropy, its rows / the micro-batch's for the head), so the gradients summed over
    the ranks (one all-reduce after the last micro-batch) are the single process's. Returns
    ([loss_sum], step_tokens, counted) over all ranks, as the one-process loop counts them, and this
    rank's widest micro-batch.
    """
    import torch

    plan, head = run.plan, net.head
    stats = [0.0] * (cfg.grad_accum + 1)  # this rank's part of each micro-batch's loss, then its tokens
    has_loss = [False] * cfg.grad_accum  # a micro-batch with no label token anywhere is skipped, as in one process
    seq = 0
    for a in range(cfg.grad_accum):
        rows = micro_batch_indices(step * cfg.grad_accum + a, run.sched, cfg.seed, run.index)
        batch = run.train_ds[rows]
        n_all = sum(sum(1 for t in lab[1:] if t != -100) for lab in batch["labels"])  # label_loss's label positions
        has_loss[a] = head is not None or n_all > 0
        mine = list(range(dist.rank, len(rows), dist.world))
        if not mine:
            continue
        ids, mask, labels = collate({c: [batch[c][i] for i in mine] for c in ("input_ids", "attention_mask", "labels")},
                                    run.pad_id)
        seq = max(seq, ids.shape[1])
        ids, mask, labels = ids.to(plan.device), mask.to(plan.device), labels.to(plan.device)
        stats[-1] += int(mask.sum())
        if not has_loss[a]:
            continue
        with autocast(plan):
            if head is None:
                loss, n = label_loss(net.model, ids, mask, labels)
                if loss is not None:
                    loss = loss * (n / n_all)
            else:
                target = torch.tensor([net.targets[rows[i]] for i in mine], dtype=torch.float32, device=plan.device)
                loss, _ = head_loss(net.model, head, ids, mask, labels, target, cfg, share=(len(mine) / len(rows), n_all))
        if loss is None:  # none of the micro-batch's label tokens are in this rank's rows
            continue
        (loss / cfg.grad_accum).backward()
        stats[a] = float(loss.detach())
    totals = dist.all_reduce_step(net.trainable, stats)
    loss_sum = sum(x for x, h in zip(totals[:-1], has_loss) if h)
    return [loss_sum], int(round(totals[-1])), sum(has_loss), seq


# ----------------------------------------------------------------------------------------------
# after each step


class _LossWindow:
    """The steps whose losses have not been read yet. The fast path keeps its losses on the device
    and reads a window of them at once (every ``loss_sync_steps``, at a checkpoint, at the end):
    its only device -> host sync. The eager branches' losses are already floats."""

    def __init__(self, bar) -> None:
        self.bar = bar
        self.pending: list[tuple[int, list, int, float, int]] = []  # (step, micro-batch losses, counted, lr, tokens)
        self.t0 = time.perf_counter()

    def add(self, step: int, micro: list, counted: int, lr: float, tokens: int) -> None:
        self.pending.append((step, micro, counted, lr, tokens))

    def read(self, history: list[dict]) -> tuple[list[tuple[int, float]], float]:
        """Append the window's steps to ``history`` and the progress bar; ((step, loss) of each,
        the window's tokens/s, one step's when the window is one step)."""
        import torch

        flat = [x for _, m, _, _, _ in self.pending for x in m]
        if flat and not isinstance(flat[0], float):
            flat = torch.stack(flat).float().tolist()
        dt = max(time.perf_counter() - self.t0, 1e-9)
        tps = sum(p[4] for p in self.pending) / dt
        done, j = [], 0
        for st, m, cnt, lr_, _ in self.pending:
            loss_sum = 0.0
            for x in flat[j:j + len(m)]:
                loss_sum += x
            j += len(m)
            step_loss = loss_sum / cnt
            history.append({"step": st, "loss": round(step_loss, 6), "lr": lr_, "tokens_per_s": round(tps, 1)})
            done.append((st, step_loss))
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tps:.0f}")
        self.pending = []
        return done, tps

    def restart(self) -> None:
        self.t0 = time.perf_counter()


# ----------------------------------------------------------------------------------------------
# after the loop (rank 0)


def _summary(cfg, run: _Inputs, net: _Trainee, fast: FastPath, fast_step: FastStep | None, step: int,
             history: list[dict], runtime: float, tokens_seen: int, max_seq: int, key: str, resumed: bool,
             dist) -> dict:
    """train_summary.json (the blend's validation is added once it is fitted)."""
    plan = run.plan
    peak, peak_src = peak_gib(plan)
    summary = {
        "steps": step,
        "total_steps": run.sched.total_steps,
        "train_items": len(run.train_ds),
        "epoch_items": len(run.index),
        "head": cfg.head,
        "final_loss": history[-1]["loss"],
        "first_loss": history[0]["loss"],
        "runtime_s": round(runtime, 2),
        "tokens_per_s": round(tokens_seen / runtime, 1) if runtime > 0 and tokens_seen else 0.0,
        "peak_mem_gib": round(peak, 3),
        "peak_mem_source": peak_src,
        "estimate_gib": estimate_gib(cfg, plan, run.base_path, max_seq or 128),
        "hardware": hardware(plan),
        "trainable_params": net.n_trainable,
        "tokenized_sha256": run.tokenized_sha,
        "checkpoint_key": key,
        "resumed": resumed,
        "quantization": quant.describe(cfg, plan),
        "warnings": list(plan.warnings),
        "fast_path": fast.describe() if fast.on else None,
    }
    if summary["fast_path"] is not None and fast_step is not None and fast_step.fell_back:
        summary["fast_path"]["compile_fell_back"] = fast_step.fell_back  # it says compile, it ran eager
    if dist is not None:
        summary.update(dist.summary(summary["hardware"], peak_src, cfg.batch_size))
    return summary


def _write_adapter(out_dir: Path, tokenized_dir: Path, cfg, run: _Inputs, net: _Trainee, step: int,
                   history: list[dict], summary: dict) -> None:
    """The adapter artifact: adapter (+ price head, + blend), loss curve, summary, model card,
    merged model if asked, manifest; in place at once (artifacts.atomic_dir)."""
    model = net.model
    for peft_cfg in model.peft_config.values():
        # peft keeps target_modules as a set: saved in the order of this process's string hashing
        # (PYTHONHASHSEED), so two identical runs wrote different adapter_config.json bytes
        if isinstance(peft_cfg.target_modules, (set, frozenset)):
            peft_cfg.target_modules = sorted(peft_cfg.target_modules)
    with artifacts.atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp / "adapter"))
        if net.head is not None:
            save_price_head(tmp / "adapter", net.head, net.head_spec)
        if cfg.blend != "none":
            blend = fit_blend(tokenized_dir, model, run.tokenizer, net.head, net.head_spec, run.plan, cfg.blend,
                              cfg.blend_min_items)
            from ..blend import save_blend  # deferred: numpy behind it, needed only with train.blend

            save_blend(tmp / "adapter", blend)
            summary["blend"] = {"weight": blend.weight, **blend.validation}
        write_loss(tmp, history)
        artifacts.write_json_atomic(tmp / "train_summary.json", summary)
        artifacts.write_text_atomic(tmp / "model_card.md", model_card(cfg, summary))
        if cfg.merge:
            merge(run.base_path, tmp / "adapter", tmp / "merged")
        manifest = run.manifest
        artifacts.write_manifest(tmp, {
            "kind": "adapter", "schema_version": 1, "base_model": cfg.base_model,
            "tokenized_sha256": run.tokenized_sha, "tokenizer_sha256": manifest.get("tokenizer_sha256"),
            "config": cfg.model_dump(mode="json"), "steps": step, "final_loss": summary["final_loss"],
            "train_items": len(run.train_ds), "head": cfg.head,
            # how the prompts were built: evaluate and predict rebuild them the same way
            "tokenize_config": manifest.get("config"), "curate_config": manifest.get("curate_config"),
        })
