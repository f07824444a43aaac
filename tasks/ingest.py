from __future__ import annotations

from typing import Any

from prefect import task

import data_contracts
from pricefit import curation
from pricefit.artifacts import ArtifactRef
from pricefit.settings.curate import CurateConfig
from pricefit.curation import _csv_options

from . import cache


@task(
    name="ingest",
    task_run_name="ingest {source}",
    retries=3,
    retry_delay_seconds=[10, 60, 300],  # hub downloads: back off before giving up
    retry_jitter_factor=0.5,
    timeout_seconds=3 * 3600,
)
def ingest(source: str, options: dict[str, Any], workdir: str) -> ArtifactRef:
    """Read the listings source into the raw artifact (options: the CSV mapping from CurateConfig)."""
    out = cache.out_dir(workdir, "ingest", cache.current_key("ingest", dict(source=source, options=options, workdir=workdir)))
    cfg = CurateConfig(**options)
    # the raw contract runs on the directory before it is moved into place (bad rows quarantined)
    return curation.ingest(source, out, cfg, contract=data_contracts.stage_contract("raw", cfg.max_bad_row_fraction))


def ingest_options(cfg: Any) -> dict[str, Any]:
    """The part of CurateConfig that ingest reads (so a curation rule change does not re-ingest)."""
    return {**_csv_options(cfg), "max_bad_row_fraction": cfg.max_bad_row_fraction}
