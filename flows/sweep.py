"""Hyperparameter sweep: one subflow per trial (train -> evaluate), sharing the cached data steps.

    pricefit sweep --profile demo --grid flows/grids/demo-lr.yaml [--concurrency N] [--trials-per-gpu K]

The data steps run once, in the sweep's flow; then every trial is a ``sweep-trial`` task submitted
to a Prefect task runner, which runs its train -> evaluate subflow. Sequential (one at a time, the
default on CPU): a ThreadPoolTaskRunner of one worker, in this process. Concurrent: one
ProcessPoolTaskRunner per GPU with ``trials_per_gpu`` workers, each worker process pinned to its
GPU (tasks.gpu.pin_worker); processes, not threads, because a small model's step is bound by
Python work (threads would queue on the GIL) and training seeds the global RNG (threads would
share it, and a trial's numbers would depend on its neighbours). Each trial's steps occupy
1/``trials_per_gpu`` of their GPU's Prefect concurrency limit (tasks/gpu.py), so a solo training
elsewhere waits for them and they for it. A failed trial is a row with its error; the others
keep their results (and the rerun repeats only the failed one: failures are never cached).

Grid file (YAML), either lists per key (the full cross product) or an explicit list of trials:

    grid:                          trials:
      train.learning_rate: [1e-4, 3e-4]   - {train.lora_r: 8,  train.lora_alpha: 16}
      train.lora_r: [8, 16]               - {train.lora_r: 32, train.lora_alpha: 64}

Only ``train.*`` keys: every trial is scored on the same held-out items as the others.
"""

# no `from __future__ import annotations`: a trial runs in a worker process, where Prefect builds the
# subflow's parameter model from the annotations of a function cloudpickle sent by value
import contextlib
import itertools
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from flows.common import RetrainParams, Steps, resolve_config, run_name
from pricefit.artifacts import ArtifactRef
from pricefit.config import RunConfig, TrainConfig, apply_overrides, validate_model
from pricefit.errors import PricefitError


class SweepParams(RetrainParams):
    trials: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"train.learning_rate": 1e-4}, {"train.learning_rate": 3e-4}],
        description="One dict of train.* overrides per trial (expand a grid file with flows.sweep.load_grid).",
    )
    concurrency: int | None = Field(
        None, ge=1,
        description="Trials at once in all; empty: 1 on CPU, on CUDA trials_per_gpu on every visible GPU.",
    )
    trials_per_gpu: int | None = Field(
        None, ge=1, le=64,
        description="Trials sharing one GPU at once; empty: as many as fit in 80% of its memory by the memory model (at most 8).",
    )


def expand_grid(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """{'grid': {key: [values]}} or {'trials': [{key: value}]} -> list of override dicts."""
    if "trials" in spec:
        trials = spec["trials"]
        if not isinstance(trials, list) or not all(isinstance(t, dict) for t in trials):
            raise PricefitError("'trials' must be a list of mappings", hint="e.g. trials: [{train.lora_r: 8}]")
    elif "grid" in spec and isinstance(spec["grid"], dict):
        keys = list(spec["grid"])
        values = [v if isinstance(v, list) else [v] for v in spec["grid"].values()]
        trials = [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    else:
        raise PricefitError("a sweep file needs a 'grid' mapping (key: [values]) or a 'trials' list", hint="see flows/sweep.py")
    if not trials:
        raise PricefitError("the sweep has no trial")
    bad = sorted({k for t in trials for k in t if not str(k).startswith("train.")})
    if bad:
        raise PricefitError(f"sweep keys must be train.* settings, got {', '.join(bad)}", hint="e.g. train.learning_rate, train.lora_r")
    return trials


def load_grid(path: str) -> list[dict[str, Any]]:
    from pricefit.config import load_yaml

    return expand_grid(load_yaml(path))


def trial_config(cfg: RunConfig, overrides: dict[str, Any]) -> TrainConfig:
    data = apply_overrides({"train": cfg.train.model_dump()}, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    return validate_model(TrainConfig, data["train"], f"sweep trial {overrides}")


def trial_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return "trial-" + ",".join(f"{k.removeprefix('train.')}={v}" for k, v in (p.get("overrides") or {}).items())


@flow(name="sweep-trial", flow_run_name=trial_name)
def sweep_trial(params: RetrainParams, overrides: dict[str, Any], tokenized: ArtifactRef) -> dict[str, Any]:
    from prefect.runtime import flow_run

    from tasks import gpu

    cfg = resolve_config(params)
    steps = Steps(cfg.model_copy(update={"train": trial_config(cfg, overrides)}), params.refresh)

    out = steps.run_to("evaluate", given={"tokenize": tokenized})  # the sweep's data, checked once by the sweep
    adapter, evaluation = out["train"], out["evaluate"]

    metrics = json.loads((evaluation.dir / "metrics.json").read_text())
    held = [(start, end) for name, start, end in gpu.holds(flow_run.id)]
    window = [held[0][0], held[0][1]] if steps.states.get("train") != "Cached" and held else None
    return {"overrides": overrides, "states": dict(steps.states), "adapter": adapter.path, "evaluation": evaluation.path,
            "metrics": metrics, "train_window": window}


def trial_label(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items())


@task(name="sweep-trial", task_run_name="trial {label}", cache_policy=NO_CACHE, persist_result=False)
def run_trial(params: RetrainParams, overrides: dict[str, Any], tokenized: ArtifactRef, share: int, label: str) -> dict[str, Any]:
    """One trial (its train -> evaluate subflow), its steps sharing the accelerator with ``share - 1`` others."""
    from tasks import gpu

    with gpu.sharing(share):
        return sweep_trial(params, overrides, tokenized)


# -- placement: how many trials at once, on which GPU --------------------------------------------------

#: Most trials one GPU runs at once when ``trials_per_gpu`` is left empty.
MAX_AUTO_TRIALS_PER_GPU = 8
#: What a CUDA context and the allocator's slack cost each trial process beyond the estimate.
PROCESS_OVERHEAD_GIB = 1.0


@dataclass(frozen=True)
class Placement:
    """``pools`` worker pools of ``share`` trials each; pool ``i`` runs on GPU ``devices[i]`` (None: CPU or unpinned)."""

    devices: tuple[str | None, ...]
    share: int

    @property
    def concurrency(self) -> int:
        return len(self.devices) * self.share


def visible_gpus() -> list[str]:
    """Physical ids of the GPUs this process may use (CUDA_VISIBLE_DEVICES order)."""
    import torch

    n = torch.cuda.device_count()
    env = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return env[:n] if env else [str(i) for i in range(n)]


def auto_trials_per_gpu(cfg: RunConfig, trials: list[dict[str, Any]]) -> int:
    """As many trials as fit in 80% of one GPU's memory by the memory model's estimate (at most 8)."""
    import torch

    from pricefit import models, quant, training

    total_gib = torch.cuda.get_device_properties(0).total_memory / 1024**3
    base_path = models.resolve_model(cfg.train.base_model)
    worst = 0.0
    for overrides in trials:
        tc = trial_config(cfg, overrides)
        est = training.estimate_gib(tc, quant.resolve(tc), base_path, cfg.tokenize.max_length)
        if est is None:  # no estimate for this model: one at a time is the safe answer
            return 1
        worst = max(worst, est + PROCESS_OVERHEAD_GIB)
    return max(1, min(MAX_AUTO_TRIALS_PER_GPU, int(0.8 * total_gib // worst)))


def plan_placement(cfg: RunConfig, params: SweepParams, trials: list[dict[str, Any]]) -> Placement:
    """CPU: ``concurrency`` trials (default 1) on the one CPU. CUDA: ``trials_per_gpu`` on every visible GPU,
    or ``concurrency`` in all spread over the GPUs; never more at once than there are trials."""
    from tasks import gpu

    n = len(trials)
    if gpu.resolve_device(cfg.train.device) != "cuda":
        return Placement(devices=(None,), share=max(1, min(params.concurrency or 1, n)))
    gpus = visible_gpus()
    if params.concurrency:
        want = min(params.concurrency, n)
        cap = params.trials_per_gpu or math.ceil(want / len(gpus))
    else:
        cap = params.trials_per_gpu or auto_trials_per_gpu(cfg, trials)
        want = min(n, cap * len(gpus))
    pools = min(len(gpus), want)  # spread over the GPUs first: one GPU each where there are enough
    per = min(cap, math.ceil(want / pools))
    return Placement(devices=tuple(gpus[:pools]) if len(gpus) > 1 else (None,), share=per)


def _runners(placement: Placement) -> list[Any]:
    """One Prefect task runner per pool: in this process for a sequential sweep, else worker processes
    (their own interpreter, so no GIL contention and a global RNG each: the same numbers as alone)."""
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    from tasks import gpu

    if placement.concurrency == 1:
        return [ThreadPoolTaskRunner(max_workers=1)]
    return [ProcessPoolTaskRunner(max_workers=placement.share, initializer=gpu.pin_worker, initargs=(d,))
            for d in placement.devices]


@flow(name="sweep", flow_run_name=lambda: run_name("sweep"), description="Train and evaluate a grid of train settings on the same data.")
def sweep(params: SweepParams = SweepParams()) -> dict[str, Any]:
    from prefect import get_run_logger

    cfg = resolve_config(params)
    steps = Steps(cfg, params.refresh)
    trials = expand_grid({"trials": params.trials})
    for overrides in trials:  # a bad trial setting fails the sweep before any work, with its name
        trial_config(cfg, overrides)

    tokenized = steps.run_to("contract_tokenized")["tokenize"]
    base = RetrainParams(**params.model_dump(exclude={"trials", "concurrency", "trials_per_gpu"}))
    placement = plan_placement(cfg, params, trials)
    get_run_logger().info("sweep: %d trials, %d at once (%d per device on %s)", len(trials), placement.concurrency,
                          placement.share, ", ".join(f"GPU {d}" for d in placement.devices if d) or cfg.train.device)
    with contextlib.ExitStack() as stack:
        if placement.concurrency > 1:
            stack.enter_context(_share_ephemeral_server())
        runners = [stack.enter_context(r) for r in _runners(placement)]
        futures = [runners[i % len(runners)].submit(run_trial, {"params": base, "overrides": overrides, "tokenized": tokenized,
                                                                 "share": placement.share, "label": trial_label(overrides)})
                   for i, overrides in enumerate(trials)]
        results = [_trial_result(f, overrides) for f, overrides in zip(futures, trials)]

    failed = [trial_label(r["overrides"]) for r in results if r.get("error") is not None]
    out = publish_table(results, cfg.promote.metric)
    return out | {"failed": failed, "concurrency": placement.concurrency, "states": dict(steps.states)}


@contextlib.contextmanager
def _share_ephemeral_server():
    """Worker processes talk to this process's temporary Prefect server, not one each.

    With no PREFECT_API_URL, Prefect starts a temporary server in each process that needs one: a
    sweep's workers would each start their own (seconds apiece), their trial runs would be recorded
    there and lost with it, and the accelerator slots (tasks/gpu.py) would be counted per worker,
    not across them. The workers get Prefect's settings from the submitting context, so that
    context names the running server's URL.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    server = SubprocessASGIServer()  # this process's temporary server (started with the flow run), if any
    if get_current_settings().api.url or not server.running:
        yield
        return
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


def _trial_result(future: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """A finished trial's result, or a row that says it failed and why (the others' rows stay)."""
    try:
        future.wait()
        state = future.state
        if state.is_completed():
            return state.result()
        exc = state.result(raise_on_failure=False)
        name = state.name
        message = (getattr(exc, "message", None) or str(exc)) if isinstance(exc, BaseException) else (state.message or name)
    except Exception as e:  # e.g. the worker's exception could not be unpickled here: still only this trial's row
        name, message = "Failed", f"{type(e).__name__}: {e}"
    return {"overrides": overrides, "states": {}, "adapter": None, "evaluation": None, "metrics": {},
            "train_window": None, "error": message, "state": name}


def publish_table(results: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """One comparison table artifact over the trials, the best (lowest metric) marked."""
    from prefect.artifacts import create_table_artifact

    scored = [r for r in results if r["metrics"].get(metric) is not None]
    best = min(scored, key=lambda r: r["metrics"][metric]) if scored else None
    rows = [
        {
            "best": "*" if r is best else "",
            "trial": trial_label(r["overrides"]),
            metric: r["metrics"].get(metric),
            **{k: r["metrics"].get(k) for k in ("rmsle", "hit_rate", "n_unparsed") if k != metric},
            "train": r["states"].get("train"),
            "adapter": r["adapter"],
            "state": r.get("state", "Completed"),
            "error": r.get("error"),
            # when its training held the accelerator (None: cached or failed); trials at once overlap
            "train_started": _utc(r["train_window"][0]) if r.get("train_window") else None,
            "train_finished": _utc(r["train_window"][1]) if r.get("train_window") else None,
        }
        for r in results
    ]
    create_table_artifact(table=rows, key="sweep-comparison", description=f"sweep trials by {metric}; * marks the best")
    return {"metric": metric, "rows": rows, "best": best["overrides"] if best else None}


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


if __name__ == "__main__":
    sweep()
