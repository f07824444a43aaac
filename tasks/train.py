from __future__ import annotations

from prefect import task

from pricefit import training
from pricefit.artifacts import ArtifactRef
from pricefit.settings.train import TrainConfig
from pricefit.slices import SliceSpec

from . import cache, gpu, ui


@task(
    name="train",
    task_run_name="train {cfg.base_model} r={cfg.lora_r} lr={cfg.learning_rate} bs={cfg.batch_size}",
    timeout_seconds=24 * 3600,
)
def train(tokenized: ArtifactRef, cfg: TrainConfig, workdir: str, slices: list[SliceSpec] | None = None) -> ArtifactRef:
    """QLoRA fine-tune, holding the accelerator's concurrency slot; a progress artifact moves with the steps."""
    key_inputs = dict(tokenized=tokenized, cfg=cfg, workdir=workdir)
    if slices:  # only the slices that train.oversample names reach train (the flow passes just those)
        key_inputs["slices"] = slices
    out = cache.out_dir(workdir, "train", cache.current_key("train", key_inputs))
    progress = ui.Progress(ui.artifact_key("train", "progress"), f"{ui.step_label('train')}: training {cfg.base_model}")
    with gpu.slot(cfg.device):
        ref = training.train(tokenized.path, out, cfg, progress=progress, slices=slices)
    progress.done()
    return ref
