"""The caller's side of a data-parallel run (``train.num_processes`` > 1): launch the ranks
through ``accelerate launch``, wait for them, return the artifact rank 0 wrote.

:func:`pricefit.training.train` in the calling process (the Prefect task, ``pricefit train``)
checks the config and the data, writes a small launch spec and runs

    python -m accelerate.commands.launch --multi_gpu --num_processes N --num_machines 1 \\
        --main_process_port 0 --module pricefit.distributed SPEC

accelerate hands that to ``torch.distributed.run`` (torchrun), which starts N copies of
:func:`pricefit.training.ranks.main`: the ranks' side, which runs ``train`` again in each process
(see that module for what a rank does). The caller streams their output to its stderr, turns rank 0's
progress lines into its ``progress`` callback and returns the same ArtifactRef as a one-process
run. ``--multi_gpu`` on a CPU host too: accelerate's ``--cpu`` path starts a single process
unless MPI is set up; ``--multi_gpu`` is its torchrun path.

The loop imports this module and this module imports neither the loop nor the ranks' side
(which imports the loop): no import circle.

NVLink multicast stays off in the launched processes (:data:`NVLS_OFF`), unless the user set
those variables.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Callable

from .. import artifacts, models, quant
from ..errors import PricefitError
from .data import load_split, train_index

log = logging.getLogger("pricefit.distributed")  # the name this side's log line always had

# NVLink multicast off in NCCL, PyTorch and NVSHMEM: on the shared H200 hosts a program that uses it can
# put the host's GPUs out of service (the device tool's KINDS.md); kept in the ranks' environment
NVLS_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# the ranks print these line prefixes (training/ranks.py); the caller reads them from their output
PROGRESS = "PRICEFIT_PROGRESS "
ERROR = "PRICEFIT_ERROR "
LAUNCHER = "accelerate launch"


def check(cfg, plan) -> None:
    """Refuse, before anything is launched, a run the processes could not do."""
    n = cfg.num_processes
    if cfg.batch_size % n:
        raise PricefitError(
            f"batch_size {cfg.batch_size} does not divide into num_processes {n} equal per-process micro-batches",
            hint=f"set train.batch_size to a multiple of {n} (the global batch stays batch_size x grad_accum)",
        )
    if plan.device == "cuda":
        import torch

        have = torch.cuda.device_count()
        if have < n:
            raise PricefitError(f"num_processes {n} needs {n} CUDA GPUs; {have} visible",
                                hint=f"set train.num_processes to at most {have} (or check CUDA_VISIBLE_DEVICES)")


def child_env(cfg, plan, base: dict[str, str] | None = None) -> dict[str, str]:
    """The launched processes' environment: the caller's, NVLink multicast off unless set, this pricefit first."""
    env = dict(os.environ if base is None else base)
    for k, v in NVLS_OFF.items():
        env.setdefault(k, v)
    src = str(Path(__file__).resolve().parents[2])  # the directory holding this pricefit package
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if Path(src).name not in ("site-packages", "dist-packages") and (not parts or parts[0] != src):
        env["PYTHONPATH"] = os.pathsep.join([src] + parts)  # the ranks run this code, not another install
    env["PYTHONUNBUFFERED"] = "1"  # progress lines arrive as they are printed
    if plan.device == "cpu":  # torchrun's default is 1 thread per process; share the cores instead
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.num_processes)))
    return env


def launch_command(spec: Path, cfg) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(cfg.num_processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no",  # the loop does its own autocast
            "--main_process_port", "0",  # a free port: two runs on one host do not collide
            "--module", "pricefit.distributed", str(spec)]


def launch(tokenized_dir: Path, out_dir: Path, cfg, progress: Callable | None = None, slices=None):
    """Run ``train`` in ``cfg.num_processes`` processes; wait; return rank 0's artifact."""
    plan = quant.resolve(cfg)
    check(cfg, plan)
    # the errors one process would give, here, before N processes start
    train_ds, _ = load_split(tokenized_dir, cfg)
    train_index(train_ds, cfg, slices)
    models.resolve_model(cfg.base_model)  # one download/build, not one per rank
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="pricefit-launch-", suffix=".json")
    spec = Path(name)
    with os.fdopen(fd, "w") as f:
        json.dump({"tokenized": str(tokenized_dir.resolve()), "out": str(out_dir.resolve()),
                   "cfg": cfg.model_dump(mode="json"),
                   "slices": [s.model_dump(mode="json") for s in slices] if slices else None}, f)
    cmd = launch_command(spec, cfg)
    log.info("data-parallel training on %d processes: %s", cfg.num_processes, shlex.join(cmd))
    try:
        rc, error, tail = _run(cmd, child_env(cfg, plan), progress)
    finally:
        spec.unlink(missing_ok=True)
    if rc != 0:
        if error is not None:
            raise PricefitError(error["message"], hint=error.get("hint"))
        raise PricefitError(
            f"the {cfg.num_processes}-process training run failed (exit code {rc}); its last output:\n" + "".join(tail),
            hint="rerun the same command to resume from the last checkpoint once the cause is fixed",
        )
    return artifacts.ref_for(out_dir, "adapter", rows=len(train_ds))


def _run(cmd: list[str], env: dict[str, str], progress: Callable | None) -> tuple[int, dict | None, list[str]]:
    """Start the launcher in its own process group, forward its output, call ``progress``; stop it on any exception."""
    from tqdm.auto import tqdm

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)
    error, tail, bar = None, deque(maxlen=40), None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(PROGRESS):
                p = json.loads(line[len(PROGRESS):])
                if bar is None:
                    bar = tqdm(total=p["total"], initial=p["step"] - 1, file=sys.stderr, desc="train", unit="step",
                               dynamic_ncols=True, disable=None)
                bar.update(1)
                bar.set_postfix(loss=f"{p['loss']:.4f}", tok_s=f"{p['tps']:.0f}")
                if progress is not None:
                    progress(p["step"], p["total"], p["loss"], p["tps"])
                continue
            if line.startswith(ERROR) and error is None:
                error = json.loads(line[len(ERROR):])
                continue
            tail.append(line)
            sys.stderr.write(line)
        return proc.wait(), error, list(tail)
    finally:
        if bar is not None:
            bar.close()
        if proc.poll() is None:
            _stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def _stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM to the launcher's process group (it and its ranks), SIGKILL if still alive after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
