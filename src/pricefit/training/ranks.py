"""The ranks' side of a data-parallel run (``train.num_processes`` > 1): :func:`main` runs in each
of the N processes that :func:`~pricefit.training.launch.launch` started (through
``python -m pricefit.distributed SPEC``, which calls it). Each joins the process group (nccl on
CUDA, gloo on CPU) and runs :func:`~pricefit.training.train` with its :class:`Dist`; rank 0's
progress lines and a PricefitError's message reach the caller on stdout.

What each rank does (the ``_dist`` branches of training/loop.py):

- loads a whole model copy on its own device (``device_map={"": local_rank}``; ``"auto"`` would
  split one model across the GPUs); the LoRA and head initial values are broadcast from rank 0;
- takes ``rows[rank::N]`` of global micro-batch ``k`` (``micro_batch_indices``, the micro-batch
  one process takes), so the global batch and step count are those of one process;
- scales its loss to its share of that micro-batch's loss (label tokens for the cross-entropy,
  rows for the price head), so the gradients summed over ranks are the one-process gradients;
- after the ``grad_accum`` micro-batches: one all-reduce (sum) of the trainable gradients (LoRA
  and head) and of the step's loss/token counts. That is what DDP does with ``no_sync`` over the
  accumulation steps; DDP's wrapper itself does not fit: the loss runs the decoder and lm_head
  (at the label positions only) outside the module's ``forward``, which DDP's reducer hooks on;
- clips and steps the optimizer on identical gradients, so the copies stay identical;
- rank 0 alone writes checkpoints (with every rank's RNG state), the adapter, head and manifest;
  on resume every rank loads the checkpoint rank 0 picked.

This module is in the training package (imported by its ``__init__``) so that the train step's
cache key (tasks/cache.py follows imports) covers the code the ranks run; it imports the loop,
and the loop never imports it back.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import quant
from ..settings.train import TrainConfig
from ..errors import PricefitError
from ..slices import SliceSpec
from .launch import ERROR, LAUNCHER, NVLS_OFF, PROGRESS
from .loop import train


@dataclass(frozen=True)
class Dist:
    """This process's place in the run; the collectives the loop needs (its ``_dist``)."""

    rank: int
    world: int
    local_rank: int
    backend: str

    def barrier(self) -> None:
        import torch.distributed as td

        td.barrier()

    def load_in_turn(self, plan, load: Callable[[], Any]):
        """``load()`` on every rank; on CPU rank 0 first (it may write the shared 4-bit cache, quant.load_model)."""
        if plan.device != "cpu":
            return load()
        if self.rank > 0:
            self.barrier()
        out = load()
        if self.rank == 0:
            self.barrier()
        return out

    def broadcast_params(self, params) -> None:
        """Every rank starts from rank 0's values (LoRA init, head init)."""
        import torch.distributed as td

        for p in params:
            td.broadcast(p.data, src=0)

    def broadcast_object(self, obj):
        import torch.distributed as td

        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, obj) -> list:
        import torch.distributed as td

        out: list = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def all_reduce_step(self, params, stats: list[float]) -> list[float]:
        """Sum over the ranks the gradients of ``params`` (None counts as zero) and ``stats``.

        Returns the summed stats. A parameter without a gradient on every rank keeps grad None,
        as it would in one process (the optimizer then leaves it alone).
        """
        import torch
        import torch.distributed as td

        device = params[0].device
        meta = torch.tensor(list(stats) + [0.0 if p.grad is None else 1.0 for p in params],
                            dtype=torch.float64, device=device)
        td.all_reduce(meta)
        has = meta[len(stats):].tolist()
        by_dtype: dict[Any, list] = {}
        for p, h in zip(params, has):
            if h > 0:
                by_dtype.setdefault(p.dtype, []).append(p)
        for dtype, group in by_dtype.items():
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
                              for p in group])
            td.all_reduce(flat)
            o = 0
            for p in group:
                g = flat[o:o + p.numel()].view_as(p)
                o += p.numel()
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
        return meta[:len(stats)].tolist()

    def summary(self, hardware: str, peak_src: str, batch_size: int) -> dict:
        return {
            "num_processes": self.world,
            "hardware": f"{self.world} x {hardware}",
            "peak_mem_source": f"{peak_src}, rank 0",
            "distributed": {
                "launcher": LAUNCHER, "backend": self.backend, "world_size": self.world,
                "per_process_batch": batch_size // self.world,
                "env": {k: os.environ.get(k) for k in NVLS_OFF},
            },
        }


def _print_progress(step: int, total: int, loss: float, tps: float) -> None:
    print(PROGRESS + json.dumps({"step": step, "total": total, "loss": loss, "tps": tps}), flush=True)


def main(argv: list[str] | None = None) -> int:
    """One rank of a launched run: ``python -m pricefit.distributed SPEC`` under torchrun (that module
    calls this)."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    import torch
    import torch.distributed as td

    cfg = TrainConfig.model_validate(spec["cfg"])
    slices = [SliceSpec.model_validate(s) for s in spec["slices"]] if spec.get("slices") else None
    try:
        plan = quant.resolve(cfg)
        if plan.device == "cuda":
            torch.cuda.set_device(local)  # "cuda" is this rank's GPU from here on (inputs, head, autocast)
        backend = "nccl" if plan.device == "cuda" else "gloo"
        td.init_process_group(backend)
        dist = Dist(rank, world, local, backend)
        # no barrier after it: rank 0 may write (and merge) for longer than a collective waits;
        # torchrun waits for every rank to exit
        train(spec["tokenized"], spec["out"], cfg, progress=_print_progress if rank == 0 else None,
              slices=slices, _dist=dist)
    except PricefitError as e:
        print(ERROR + json.dumps({"rank": rank, "message": e.message, "hint": e.hint}), flush=True)
        return 1  # torchrun stops the other ranks
    if td.is_initialized():
        td.destroy_process_group()
    return 0

