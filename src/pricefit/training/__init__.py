"""QLoRA / LoRA fine-tuning with a lean custom loop: ``train(tokenized_dir, out_dir, cfg)``.

Why a custom loop and not the Trainer: the loss is computed only at the label positions (the
price completion), and the GPU defaults run a loop with no host sync per step (training/model.py,
training/fastpath.py).

Determinism and resume: the data order is a function of (seed, epoch) only, so micro-batch ``k``
is known without replaying the run; checkpoints hold adapter weights, optimizer, scheduler,
every RNG state and the step, and are keyed on sha256(tokenized manifest + config) so a
checkpoint of other inputs is never resumed. On CPU a run killed after any step and restarted
ends bit-identical to an uninterrupted one.

The modules, in the order a run meets them:

- ``data``: the tokenized train split, the epoch's rows, the micro-batches;
- ``launch``: the caller's side of a data-parallel run, which starts the ranks;
- ``model``: base + LoRA, the eager losses, the optimizer, the memory estimate;
- ``checkpoints``: the checkpoint key and directory, save / find / load, the RNG state;
- ``fastpath``: the CUDA fast path's levers and its step;
- ``loop``: :func:`train` and its eager steps;
- ``outputs``: the loss curve, model card, blend and merged model written with the adapter;
- ``ranks``: the ranks' side of a data-parallel run (each runs ``train`` with its ``Dist``).

The names below are what the rest of pricefit, the flows, the benches and the tests use. ``ranks``
is imported here although nothing in the package calls it: the train step's cache key follows
the imports from this module, and the ranks run that code too.
"""

from __future__ import annotations

from .checkpoints import CKPT_SUFFIX, KEEP_CHECKPOINTS, checkpoint_key, checkpoint_problem, checkpoint_root
from .data import Schedule, collate, load_split, make_schedule, micro_batch_indices, train_index
from .fastpath import LOSS_SYNC_CUDA, FastPath, fast_path
from .loop import ProgressFn, train
from .model import estimate_gib, use_checkpointing
from .ranks import Dist

__all__ = [
    "CKPT_SUFFIX", "KEEP_CHECKPOINTS", "LOSS_SYNC_CUDA", "Dist", "FastPath", "ProgressFn", "Schedule", "checkpoint_key",
    "checkpoint_problem", "checkpoint_root", "collate", "estimate_gib", "fast_path", "load_split", "make_schedule",
    "micro_batch_indices", "train", "train_index", "use_checkpointing",
]
