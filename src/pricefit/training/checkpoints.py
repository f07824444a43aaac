"""Checkpoints of a training run and the RNG state they carry.

A checkpoint holds the adapter (and price head) weights, the optimizer, the scheduler, every RNG
state and the step. Together with the data order being a function of (seed, epoch) only
(training/data.py), that is all a killed run needs to go on: on CPU a run killed after any step
and restarted ends bit-identical to an uninterrupted one.

They live in ``<out_dir>.ckpt/<key>/step-NNNNNNN/``, the key being sha256(tokenized manifest +
the config fields that change the result), so a checkpoint of other inputs is never resumed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

from .. import artifacts

log = logging.getLogger("pricefit.training")  # one logger for the package: the log lines keep their name

# config fields that do not change the result: a checkpoint written under other values still fits
_NOT_IN_KEY = ("save_steps", "logging_steps", "merge", "loss_sync_steps", "pad_to", "pad_multiple", "device_data",
               "compile", "compile_mode", "compile_scope")
CKPT_SUFFIX = ".ckpt"
# the newest and the one before it: if the newest is damaged (a disk fault, a copy cut short), the
# run resumes from the one before instead of starting over
KEEP_CHECKPOINTS = 2


def checkpoint_key(tokenized_sha256: str, cfg) -> str:
    body = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_IN_KEY}
    if body.get("num_processes") == 1:  # one process: the key it had before the field existed
        del body["num_processes"]
    return artifacts.sha256_bytes(artifacts.canonical_json({"tokenized": tokenized_sha256, "config": body}).encode())[:16]


def checkpoint_root(out_dir: Path) -> Path:
    return out_dir.with_name(out_dir.name + CKPT_SUFFIX)


def checkpoint_dir(out_dir: Path, key: str) -> Path:
    """This run's checkpoint directory (it may not exist yet); warns of the other keys' beside it,
    which this run will not touch."""
    ckroot = checkpoint_root(out_dir)
    ckdir = ckroot / key
    others = [p.name for p in ckroot.glob("*") if p.is_dir() and p.name != key] if ckroot.exists() else []
    if others:
        log.warning("ignoring checkpoints of other inputs/configs in %s: %s", ckroot, ", ".join(others))
    return ckdir


def rng_state(one_device: bool = False) -> dict:
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


def set_rng_state(st: dict) -> None:
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


def save_checkpoint(ckdir: Path, step: int, model, opt, sched, history: list[dict], head=None,
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
            torch.save(rng_state(), tmp / "rng.pt")
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
    for old in sorted(p for p in ckdir.glob("step-*") if p.is_dir())[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def _fsync(path: Path) -> None:
    # tests/faultinject/killpoints.py wraps this function (a kill point per fsynced file)
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


def latest_checkpoint(ckdir: Path) -> Path | None:
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


def load_checkpoint(path: Path, model, opt, sched, head=None, rank: int = 0) -> tuple[int, list[dict]]:
    import torch
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, torch.load(path / "adapter.pt", weights_only=True))
    if head is not None:
        head.load_state_dict(torch.load(path / "head.pt", weights_only=True))
    opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    sched.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    state = json.loads((path / "state.json").read_text())
    set_rng_state(torch.load(path / _rng_file(rank), weights_only=False))
    return int(state["step"]), list(state["history"])


def remove_checkpoints(ckdir: Path) -> None:
    """After the artifact is written: this run's checkpoints, and the ``.ckpt`` folder once empty."""
    shutil.rmtree(ckdir, ignore_errors=True)
    if ckdir.parent.exists() and not any(ckdir.parent.iterdir()):
        ckdir.parent.rmdir()
