"""The one task for a step whose registry entry names no task of its own (tasks/steps.py ``library_step``).

It calls the step's library function as ``fn(*inputs, out_dir, cfg)`` (``fn(*inputs, out_dir)``
when the step reads no config section), ArtifactRef inputs passed as their paths, and the output
directory content-addressed by the step's cache key like every other step's (tasks/cache.py).
``Step.load_task`` gives it the step's name, so the UI and ``pricefit run`` show the step.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from pricefit.artifacts import ArtifactRef

from . import cache, steps


@task(name="step", timeout_seconds=6 * 3600)
def step_task(step: str, inputs: list[Any], cfg: Any, workdir: str) -> Any:
    entry = steps.BY_NAME[step]
    out = cache.out_dir(workdir, step, cache.current_key(step, dict(step=step, inputs=inputs, cfg=cfg, workdir=workdir)))
    args = [r.path if isinstance(r, ArtifactRef) else r for r in inputs]
    fn = entry.load_library()
    return fn(*args, out, cfg) if entry.config else fn(*args, out)
