"""`pricefit curate`: read a listings source, curate it into train/validation/test, check the data contracts.

Layout of ``--out DIR``: the curated artifact (train/validation/test.parquet, dropped.parquet,
quarantine.jsonl, manifest.json) with the raw artifact it came from in ``DIR/raw/``; contract
reports in ``DIR/contracts/`` and ``DIR/raw/contracts/``, Data Docs HTML in ``data_docs/`` beside them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer

from ..cli import JSON_OPTION_HELP, PROFILE_OPTION_HELP, app, check_config, check_input, command, emit
from ..errors import ContractError


def _skipped(building: Path, final: Path) -> dict[str, Any]:
    return {"success": None, "skipped": "--no-contracts"}


def _shown_at(hook, shown: Path):
    """A contract hook that names ``shown`` (where a failed raw artifact ends up) in its messages."""
    return lambda building, final: hook(building, shown)


def _human(r: dict[str, Any]) -> str:
    synthetic = " (synthetic)" if r["synthetic"] else ""
    lines = [f"curated {r['source']}{synthetic} -> {r['out']}", f"  {'rows read':<24}{r['rows_read']:>10,}"]
    for split in ("train", "validation", "test"):
        n = r["kept"].get(split, 0)
        lines.append(f"  {'kept: ' + split:<24}{n:>10,}")
    for reason, n in r["dropped"].items():
        lines.append(f"  {'dropped: ' + reason:<24}{n:>10,}")
    where = f"  -> {Path(r['out']) / 'quarantine.jsonl'} (file, line, reason)" if r["quarantined"] else ""
    lines.append(f"  {'quarantined':<24}{r['quarantined']:>10,}{where}")
    lines.append(f"  contracts: {r['contracts']}   sha256: {r['sha256'][:16]}")
    return "\n".join(lines)


@app.command("curate")
@command
def curate_cmd(
    source: str = typer.Option(
        ...,
        "--source",
        "-s",
        help="Listings: demo[:N] (synthetic), file(s)/glob of .jsonl/.jsonl.gz/.parquet, hf:Cat1,Cat2, or csv:products.csv[.gz].",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (curated artifact; the raw artifact goes to OUT/raw)."),
    config: Optional[str] = typer.Option(None, "--profile", "--config", "-p", "-c", help=PROFILE_OPTION_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a curate setting, e.g. --set min_chars=200 (repeatable)."),
    no_contracts: bool = typer.Option(False, "--no-contracts", help="Skip the data contracts (debugging only)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Ingest listings, apply the curation rules, write the splits, and check the raw and curated contracts.

    Every input row ends in one place: a split, a named drop reason, or quarantine.

    Example:  pricefit curate --source demo --out runs/demo/curated
    """
    config = check_config(config)
    from .. import artifacts, curation  # deferred: keeps `pricefit --help` fast (loads polars, numpy, pydantic, yaml)
    from ..config import CurateConfig, load_stage_config  # deferred: keeps `pricefit --help` fast (loads pydantic, yaml)

    cfg = load_stage_config(CurateConfig, str(config) if config else None, "curate", set_)  # "curate." prefix optional
    out = Path(out)
    if no_contracts:
        contracts = "skipped (--no-contracts)"
        raw_check = curated_check = _skipped
    else:
        import data_contracts  # deferred: keeps `pricefit --help` fast (a module pricefit --help does not load)

        contracts = "raw, curated passed"
        raw_check = _shown_at(data_contracts.stage_contract("raw", cfg.max_bad_row_fraction), out / "raw")
        curated_check = data_contracts.stage_contract("curated", cfg.max_bad_row_fraction)
    # the raw artifact is built beside OUT (stale scratch dirs of killed runs are removed first),
    # then copied into OUT/raw by curate
    with artifacts.scratch_dir(out.parent / f"raw-{out.name}") as scratch:
        staging = scratch / "raw"
        try:
            curation.ingest(source, staging, cfg, contract=raw_check)
        except ContractError:
            # the failed raw artifact (report, Data Docs, quarantine) goes where the message says: OUT/raw;
            # OUT holds no curated manifest, so no later stage takes it for curated data
            with artifacts.atomic_dir(out) as tmp:
                os.replace(staging, tmp / "raw")
            raise
        ref = curation.curate(staging, out, cfg, embed_raw=True, contract=curated_check)
    m = ref.manifest()
    emit(
        {
            "ok": True,
            "source": source,
            "out": str(ref.dir),
            "sha256": ref.sha256,
            "rows_read": m["rows_read"],
            "kept": m["kept"],
            "dropped": m["dropped"],
            "quarantined": m["quarantined"],
            "synthetic": m["synthetic"],
            "tokenizer": m["tokenizer"],
            "contracts": contracts,
        },
        as_json,
        _human,
    )
