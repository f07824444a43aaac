"""Data contracts: great-expectations 1.x suites, as code, for each data stage.

    from data_contracts import check
    report = check("curated", "runs/demo/curated")   # raises ContractError when a check fails

``check`` writes ``DIR/contracts/<stage>.json`` (every check: name, batch, column, success,
unexpected_count, examples, what it guards against) and GX Data Docs in ``DIR/data_docs/``.
What each contract checks and why: data_contracts/README.md.

Importing this package is cheap: pandas, polars, datasets and great_expectations are imported
when a check runs.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from pricefit.errors import PricefitError

STAGES = ("raw", "curated", "tokenized")

log = logging.getLogger("pricefit.contracts")


def check(stage: str, directory: str | os.PathLike, *, data_docs: bool = True, tokenizer: Any = None) -> dict[str, Any]:
    """Validate the stage directory ``directory`` against the ``stage`` contract.

    Returns the report dict (also written to ``DIR/contracts/<stage>.json``). Raises
    :class:`pricefit.errors.ContractError` (``.report`` holds the dict) when any check fails, and
    :class:`pricefit.errors.PricefitError` when the directory is not a stage output at all.
    ``tokenizer`` (tokenized stage only) decodes the unmasked labels; by default the manifest's
    ``base_model`` tokenizer is loaded.
    """
    if stage not in STAGES:
        raise PricefitError(f"unknown contract stage {stage!r}", hint=f"use one of: {', '.join(STAGES)}")
    d = Path(directory).resolve()  # GX's Data Docs store refuses relative paths
    if not d.is_dir():
        raise PricefitError(f"{d} is not a directory", hint=f"point at the output directory of the {stage} stage")
    from .runner import run_plan

    t0 = time.perf_counter()
    module = importlib.import_module(f"{__name__}.{stage}")
    plan = module.build(d, tokenizer=tokenizer)
    report = run_plan(stage, d, plan, data_docs=data_docs)
    log.info(
        "%s contract passed: %d checks (%d skipped) in %.1fs", stage, report["checked"], report["skipped"],
        time.perf_counter() - t0,
    )
    return report


__all__ = ["STAGES", "check"]
