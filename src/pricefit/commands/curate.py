"""`pricefit curate`: read a listings source, curate it into train/validation/test, check the data contracts.

Layout of ``--out DIR``: the curated artifact (train/validation/test.parquet, dropped.parquet,
quarantine.jsonl, manifest.json) with the raw artifact it came from in ``DIR/raw/``; contract
reports in ``DIR/contracts/`` and ``DIR/raw/contracts/``, Data Docs HTML in ``data_docs/`` beside them.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Optional

import typer

from ..cli import JSON_OPTION_HELP, app, check_input, command, emit


def _human(r: dict[str, Any]) -> str:
    synthetic = " (synthetic)" if r["synthetic"] else ""
    lines = [f"curated {r['source']}{synthetic} -> {r['out']}", f"  {'rows read':<24}{r['rows_read']:>10,}"]
    for split in ("train", "validation", "test"):
        n = r["kept"].get(split, 0)
        lines.append(f"  {'kept: ' + split:<24}{n:>10,}")
    for reason, n in r["dropped"].items():
        lines.append(f"  {'dropped: ' + reason:<24}{n:>10,}")
    lines.append(f"  {'quarantined':<24}{r['quarantined']:>10,}")
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
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file: a curate mapping or a run profile with a curate: section."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a curate setting, e.g. --set min_chars=200 (repeatable)."),
    no_contracts: bool = typer.Option(False, "--no-contracts", help="Skip the data contracts (debugging only)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Ingest listings, apply the curation rules, write the splits, and check the raw and curated contracts.

    Every input row ends in one place: a split, a named drop reason, or quarantine.

    Example:  pricefit curate --source demo --out runs/demo/curated
    """
    check_input(config, "--config", file=True)
    from .. import curation
    from ..config import CurateConfig, load_stage_config

    cfg = load_stage_config(CurateConfig, str(config) if config else None, "curate", set_)  # "curate." prefix optional
    out = Path(out)
    staging = out.parent / f".tmp-raw-{out.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    contracts = "skipped (--no-contracts)"
    try:
        curation.ingest(source, staging, cfg)
        if not no_contracts:
            import data_contracts

            data_contracts.check("raw", staging)
        ref = curation.curate(staging, out, cfg, embed_raw=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not no_contracts:
        import data_contracts

        data_contracts.check("curated", out)
        contracts = "raw, curated passed"
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
