"""Data contracts: great-expectations 1.x suites, as code, for each data stage.

    from data_contracts import check
    report = check("curated", "runs/demo/curated")   # raises ContractError when a check fails

``check`` writes ``DIR/contracts/<stage>.json`` (every check: name, batch, column, success,
unexpected_count, examples, what it guards against) and GX Data Docs in ``DIR/data_docs/``.
What each contract checks and why: data_contracts/README.md.

A contract stops a stage only on a systemic failure (schema, accounting, no rows, more bad rows
than ``max_bad_row_fraction``). Rows that fail a row-level check below that fraction are reported,
and with ``remove_bad_rows=True`` (what the stages do, through :func:`stage_contract`, on the
directory they are building) quarantined (raw) or dropped (curated) with the expectation's name
as the reason, after which the contract runs again on what is left.

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


def default_max_bad_row_fraction(manifest: dict[str, Any] | None = None) -> float:
    """The fraction a directory was checked with (its manifest), else curation's setting, else its default."""
    m = manifest or {}
    recorded = (m.get("contract") or {}).get("max_bad_row_fraction") if isinstance(m.get("contract"), dict) else None
    if recorded is not None:
        return float(recorded)
    configured = (m.get("config") or {}).get("max_bad_row_fraction")
    if configured is not None:
        return float(configured)
    from pricefit.settings.curate import CurateConfig

    return float(CurateConfig().max_bad_row_fraction)


def check(
    stage: str,
    directory: str | os.PathLike,
    *,
    data_docs: bool = True,
    tokenizer: Any = None,
    max_bad_row_fraction: float | None = None,
    remove_bad_rows: bool = False,
    shown_as: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Validate the stage directory ``directory`` against the ``stage`` contract.

    Returns the report dict (also written to ``DIR/contracts/<stage>.json``). Raises
    :class:`pricefit.errors.ContractError` (``.report`` holds the dict) when a check fails, and
    :class:`pricefit.errors.PricefitError` when the directory is not a stage output at all.
    ``tokenizer`` (tokenized stage only) decodes the unmasked labels; by default the manifest's
    ``base_model`` tokenizer is loaded. ``max_bad_row_fraction``: how many rows a row-level check
    may flag before the stage stops (default: :func:`default_max_bad_row_fraction`).
    ``remove_bad_rows``: move the flagged rows out of the data (quarantine / dropped, reason = the
    expectation) and check again; only for a directory being built. ``shown_as``: the path the
    report and messages name (where the directory is about to be moved).
    """
    if stage not in STAGES:
        raise PricefitError(f"unknown contract stage {stage!r}", hint=f"use one of: {', '.join(STAGES)}")
    d = Path(directory).resolve()  # GX's Data Docs store refuses relative paths
    if not d.is_dir():
        raise PricefitError(f"{d} is not a directory", hint=f"point at the output directory of the {stage} stage")
    from .common import manifest_of
    from .runner import run_plan

    t0 = time.perf_counter()
    module = importlib.import_module(f"{__name__}.{stage}")
    shown = Path(shown_as).resolve() if shown_as is not None else d
    fraction = max_bad_row_fraction
    if fraction is None:
        fraction = default_max_bad_row_fraction(manifest_of(d))
    extra: dict[str, Any] = {}
    if (d / "quarantine.jsonl").exists():
        extra["quarantine"] = str(shown / "quarantine.jsonl")
    plan = module.build(d, tokenizer=tokenizer)
    report = run_plan(stage, d, plan, data_docs=data_docs, max_bad_row_fraction=fraction, shown_as=shown, extra=extra)
    flagged = report["row_failures"]
    if flagged:
        log.warning("%s contract: rows flagged by row-level checks (within %.2f%%): %s", stage, 100 * fraction, flagged)
    remover = getattr(module, "remove_rows", None)
    if remove_bad_rows and plan.row_failures and remover is not None:
        removed = remover(d, plan.row_failures)
        # the data changed: check what is left, so the report describes the files beside it
        plan = module.build(d, tokenizer=tokenizer)
        extra["removed_rows"] = removed
        report = run_plan(stage, d, plan, data_docs=data_docs, max_bad_row_fraction=fraction, shown_as=shown, extra=extra)
    log.info(
        "%s contract passed: %d checks (%d skipped) in %.1fs", stage, report["checked"], report["skipped"],
        time.perf_counter() - t0,
    )
    return report


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The deterministic part of a report, recorded in the stage's manifest (no times, no paths)."""
    keep = ("stage", "success", "checked", "failed", "skipped", "max_bad_row_fraction")
    return {k: report.get(k) for k in keep} | {"removed_rows": dict(report.get("removed_rows") or {})}


def stage_contract(stage: str, max_bad_row_fraction: float | None = None, **options: Any):
    """The hook a stage function (``curation.ingest``/``curate``) calls on the directory it is building.

    ``hook(building_dir, final_dir)`` checks ``building_dir`` with bad rows removed, names
    ``final_dir`` in the report and messages, and returns :func:`summary` for the manifest; a
    failure raises ContractError (the stage then moves the directory into place, marked failed).
    """

    from pricefit.errors import ContractError

    def hook(building: str | os.PathLike, final: str | os.PathLike) -> dict[str, Any]:
        try:
            report = check(
                stage, building, max_bad_row_fraction=max_bad_row_fraction, remove_bad_rows=True, shown_as=final, **options
            )
        except ContractError as e:
            e.summary = summary(e.report)  # what the stage records in its manifest
            raise
        return summary(report)

    return hook


__all__ = ["STAGES", "check", "default_max_bad_row_fraction", "stage_contract", "summary"]
