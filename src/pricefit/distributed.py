"""Data-parallel training on the GPUs of one host (``train.num_processes`` > 1), through ``accelerate launch``.

How a run goes. ``training.train`` in the calling process (the Prefect task, ``pricefit train``)
checks the config and the data, writes a small launch spec and runs

    python -m accelerate.commands.launch --multi_gpu --num_processes N --num_machines 1 \\
        --main_process_port 0 --module pricefit.distributed SPEC

accelerate hands that to ``torch.distributed.run`` (torchrun), which starts N copies of
:func:`main`. Each joins the process group (nccl on CUDA, gloo on CPU) and runs
``training.train`` with its :class:`Dist`. The caller waits, streams their output to its stderr,
turns rank 0's progress lines into its ``progress`` callback and returns the artifact rank 0 wrote:
the same ArtifactRef as a one-process run. ``--multi_gpu`` on a CPU host too: accelerate's
``--cpu`` path starts a single process unless MPI is set up; ``--multi_gpu`` is its torchrun path.

What each rank does (the ``_dist`` branches of training.py):

- loads a whole model copy on its own device (``device_map={"": local_rank}``; ``"auto"`` would
  split one model across the GPUs); the LoRA and head initial values are broadcast from rank 0;
- takes ``rows[rank::N]`` of global micro-batch ``k`` (``training.micro_batch_indices``, the
  micro-batch one process takes), so the global batch and step count are those of one process;
- scales its loss to its share of that micro-batch's loss (label tokens for the cross-entropy,
  rows for the price head), so the gradients summed over ranks are the one-process gradients;
- after the ``grad_accum`` micro-batches: one all-reduce (sum) of the trainable gradients (LoRA
  and head) and of the step's loss/token counts. That is what DDP does with ``no_sync`` over the
  accumulation steps; DDP's wrapper itself does not fit: the loss runs the decoder and lm_head
  (at the label positions only) outside the module's ``forward``, which DDP's reducer hooks on;
- clips and steps the optimizer on identical gradients, so the copies stay identical;
- rank 0 alone writes checkpoints (with every rank's RNG state), the adapter, head and manifest;
  on resume every rank loads the checkpoint rank 0 picked.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import artifacts, models, quant, training
from .settings.train import TrainConfig
from .errors import PricefitError
from .slices import SliceSpec

log = logging.getLogger("pricefit.distributed")

# NVLink multicast off in NCCL, PyTorch and NVSHMEM: on the shared H200 hosts a program that uses it can
# put the host's GPUs out of service (the device tool's KINDS.md); kept in the ranks' environment
NVLS_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
PROGRESS = "PRICEFIT_PROGRESS "
ERROR = "PRICEFIT_ERROR "
LAUNCHER = "accelerate launch"


# ----------------------------------------------------------------------------------------------
# the caller's side


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
    src = str(Path(__file__).resolve().parents[1])  # the directory holding this pricefit package
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
    """Run ``training.train`` in ``cfg.num_processes`` processes; wait; return rank 0's artifact."""
    plan = quant.resolve(cfg)
    check(cfg, plan)
    # the errors one process would give, here, before N processes start
    train_ds, _ = training._load_split(tokenized_dir, cfg)
    training.train_index(train_ds, cfg, slices)
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


# ----------------------------------------------------------------------------------------------
# the ranks' side


@dataclass(frozen=True)
class Dist:
    """This process's place in the run; the collectives training.py needs."""

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
    """One rank of a launched run: ``python -m pricefit.distributed SPEC`` under torchrun."""
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
        training.train(spec["tokenized"], spec["out"], cfg, progress=_print_progress if rank == 0 else None,
                       slices=slices, _dist=dist)
    except PricefitError as e:
        print(ERROR + json.dumps({"rank": rank, "message": e.message, "hint": e.hint}), flush=True)
        return 1  # torchrun stops the other ranks
    if td.is_initialized():
        td.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
