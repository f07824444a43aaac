from __future__ import annotations

from prefect import task

import data_contracts
from pricefit import curation
from pricefit.artifacts import ArtifactRef
from pricefit.settings.curate import CurateConfig

from . import cache


@task(name="curate", task_run_name="curate {raw.rows} rows (tokenizer {cfg.tokenizer})", timeout_seconds=3 * 3600)
def curate(raw: ArtifactRef, cfg: CurateConfig, workdir: str) -> ArtifactRef:
    """Clean, filter, balance and split the raw listings (every row kept, dropped with a reason, or quarantined)."""
    out = cache.out_dir(workdir, "curate", cache.current_key("curate", dict(raw=raw, cfg=cfg, workdir=workdir)))
    # the curated contract runs before the rename and its verdict is in the manifest: a run killed
    # after the rename never leaves an unchecked artifact (curation.read_split refuses a failed one)
    return curation.curate(raw.path, out, cfg, contract=data_contracts.stage_contract("curated", cfg.max_bad_row_fraction))
