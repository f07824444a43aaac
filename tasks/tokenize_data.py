"""(Named tokenize_data, not tokenize: a module called tokenize would shadow the standard library's.)"""

from __future__ import annotations

from prefect import task

from pricefit import tokenization
from pricefit.artifacts import ArtifactRef
from pricefit.settings.tokenize import TokenizeConfig

from . import cache


@task(name="tokenize", task_run_name="tokenize for {cfg.base_model}", timeout_seconds=3 * 3600)
def tokenize(curated: ArtifactRef, cfg: TokenizeConfig, workdir: str) -> ArtifactRef:
    """Prompt + completion per item, tokenized for the base model (loss only on the price tokens)."""
    out = cache.out_dir(workdir, "tokenize", cache.current_key("tokenize", dict(curated=curated, cfg=cfg, workdir=workdir)))
    return tokenization.tokenize(curated.path, out, cfg)
