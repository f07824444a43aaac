from __future__ import annotations

from prefect import task

from pricefit.artifacts import ArtifactRef
from pricefit.config import TrainConfig

from . import cache, gpu, ui
from .faults import maybe_fail


@task(
    name="train",
    task_run_name="train {cfg.base_model} r={cfg.lora_r} lr={cfg.learning_rate} bs={cfg.batch_size}",
    timeout_seconds=24 * 3600,
)
def train(tokenized: ArtifactRef, cfg: TrainConfig, workdir: str) -> ArtifactRef:
    """QLoRA fine-tune, holding the accelerator's concurrency slot; a progress artifact moves with the steps."""
    from pricefit import training

    maybe_fail("train")
    out = cache.out_dir(workdir, "train", cache.current_key("train", dict(tokenized=tokenized, cfg=cfg, workdir=workdir)))
    progress = ui.Progress("training-progress", f"training {cfg.base_model}")
    with gpu.slot(cfg.device):
        ref = training.train(tokenized.path, out, cfg, progress=progress)
    progress.done()
    return ref
