"""Ingest: read a listings source into the raw artifact (raw.parquet, quarantine.jsonl, manifest).

A source (:mod:`pricefit.sources`) yields records and :mod:`pricefit.records` turns each one into a
raw row or a quarantine row; nothing here stops on a bad line. :func:`ingest` streams the rows to
raw.parquet, never more than INGEST_CHUNK of them in memory; :func:`read_source` holds them all (for
scoring a few listings). :mod:`pricefit.curation` curates the result.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import polars as pl

from . import artifacts
from .contract_hook import ContractHook, check_before_commit
from .errors import ContractError, PricefitError
from .records import row_or_quarantine
from .settings.curate import CurateConfig
from .sources import Quarantined, resolve

# the curation stage's one logger: run logs and their tests look for its records under this name
log = logging.getLogger("pricefit.curation")

SCHEMA_VERSION = 1  # of the raw artifact, and of the curated one (pricefit.curation writes it too)
INGEST_CHUNK = 20_000  # rows per in-memory chunk while reading a source
RAW_ROW_GROUP = INGEST_CHUNK  # raw.parquet row groups: curate's chunked read decodes little beyond a chunk
#: raw.parquet: one row per parsed line, as :func:`pricefit.records.normalize_record` builds it
RAW_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String,
    "source_file": pl.String,
    "source_line": pl.Int64,
    "category": pl.String,
    "title": pl.String,
    "description": pl.String,
    "features": pl.String,
    "details": pl.String,
    "price_raw": pl.String,
    "price": pl.Float64,
    "price_issue": pl.String,
}


def row_progress(total: int | None, desc: str):
    """A tqdm bar over rows on a terminal; nothing elsewhere (``disable=None``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=" rows", file=sys.stderr, mininterval=0.5, disable=None)


def _csv_options(cfg: CurateConfig) -> dict[str, Any]:
    return {"csv_columns": cfg.csv_columns, "csv_categories": cfg.csv_categories}


def _raw_chunks(src: Any, source: str, quarantine: list[dict[str, Any]]) -> Iterator[pl.DataFrame]:
    """The parsed rows of ``src`` as frames of at most INGEST_CHUNK rows (quarantined lines go to
    ``quarantine``); sets ``src.synthetic`` when a record says it is synthetic."""
    cols: dict[str, list[Any]] = {k: [] for k in RAW_SCHEMA}
    synthetic = src.synthetic
    with row_progress(src.size_hint, f"reading {source}") as bar:
        for item in src:
            bar.update(1)
            if isinstance(item, Quarantined):
                quarantine.append(
                    {"source_file": item.source_file, "source_line": item.source_line, "reason": item.reason, "excerpt": item.excerpt}
                )
                continue
            row = row_or_quarantine(item, src.id_keys.get(item.source_file))
            if "reason" in row:  # a record no listing can be made of (too deeply nested, lone surrogates)
                quarantine.append(row)
                continue
            if item.data.get("synthetic") is True:  # e.g. a saved demo catalog: stays labelled synthetic
                synthetic = True
            for k, v in row.items():
                cols[k].append(v)
            if len(cols["item_id"]) >= INGEST_CHUNK:
                src.synthetic = synthetic
                yield pl.DataFrame(cols, schema=RAW_SCHEMA)
                cols = {k: [] for k in RAW_SCHEMA}
    src.synthetic = synthetic
    if cols["item_id"]:
        yield pl.DataFrame(cols, schema=RAW_SCHEMA)


def read_source(source: str, cfg: CurateConfig) -> tuple[pl.DataFrame, list[dict[str, Any]], Any]:
    """Read a source spec into (raw frame, quarantine rows, resolved Source). Never stops on a bad row.

    Holds every row in memory (for scoring a few listings); :func:`ingest` streams instead.
    """
    src = resolve(source, **_csv_options(cfg))
    quarantine: list[dict[str, Any]] = []
    chunks = list(_raw_chunks(src, source, quarantine)) or [pl.DataFrame(schema=RAW_SCHEMA)]
    frame = pl.concat(chunks, rechunk=True) if len(chunks) > 1 else chunks[0]
    return frame, quarantine, src


def _stream_raw(source: str, cfg: CurateConfig, path: Path) -> tuple[int, list[dict[str, Any]], Any]:
    """Parse ``source`` into raw.parquet at ``path`` one chunk at a time (a part file each, then one
    streaming sink), so no more than INGEST_CHUNK rows are ever in memory. Returns (parsed rows,
    quarantine rows, resolved Source)."""
    src = resolve(source, **_csv_options(cfg))
    quarantine: list[dict[str, Any]] = []
    parts_dir = path.parent / f".{path.name}.parts"
    parts_dir.mkdir()
    parsed = 0
    try:
        parts = []
        for i, chunk in enumerate(_raw_chunks(src, source, quarantine)):
            part = parts_dir / f"{i:06d}.parquet"
            chunk.write_parquet(part, compression="lz4", statistics=False)
            parts.append(part)
            parsed += chunk.height
        if parsed:
            with artifacts.atomic_path(path) as tmp:
                pl.scan_parquet(parts, schema=RAW_SCHEMA).sink_parquet(
                    tmp, compression="zstd", statistics=True, row_group_size=RAW_ROW_GROUP, engine="streaming")
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
    return parsed, quarantine, src


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    with artifacts.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _counts(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def ingest(source: str, out_dir: str | Path, cfg: CurateConfig, contract: ContractHook | None = None) -> artifacts.ArtifactRef:
    """Read ``source`` into a raw artifact: raw.parquet (one row per parsed line), quarantine.jsonl, manifest.

    Raises PricefitError when the source holds no row at all (empty files) or nothing parseable.
    ``contract``: the raw data contract, run before the rename (see :func:`~pricefit.contract_hook.check_before_commit`).
    """
    with artifacts.atomic_dir(out_dir, commit_on=(ContractError,)) as tmp:  # any other error leaves nothing behind
        parsed, quarantine, src = _stream_raw(source, cfg, tmp / "raw.parquet")
        rows_read = parsed + len(quarantine)
        files = ", ".join(src.files)
        if rows_read == 0:
            raise PricefitError(
                f"source {source!r} is empty: no listing in {files}",
                hint="check that the files hold one JSON object a line (or CSV rows), or pick another --source",
            )
        if parsed == 0:
            reasons = sorted({q["reason"] for q in quarantine})
            raise PricefitError(
                f"source {source!r} has no usable row: all {rows_read} rows of {files} were quarantined ({', '.join(reasons)})",
                hint="the files are not Amazon item metadata (one JSON object a line in UTF-8); see the first bad line: "
                f"{quarantine[0]['source_file']}:{quarantine[0]['source_line']}",
            )
        _write_jsonl(tmp / "quarantine.jsonl", quarantine)
        artifacts.write_manifest(
            tmp,
            {
                "kind": "raw",
                "schema_version": SCHEMA_VERSION,
                "source": source,
                "source_files": src.files,
                "rows_read": rows_read,
                "parsed": parsed,
                "quarantined": len(quarantine),
                "quarantine_reasons": _counts(q["reason"] for q in quarantine),
                "synthetic": src.synthetic,
            },
        )
        manifest = check_before_commit(tmp, out_dir, contract)
    log.log(logging.DEBUG if Path(out_dir).parent.name.startswith(".tmp-") else logging.INFO,  # staged by `pricefit curate`
            "ingest: %d rows read, %d parsed, %d quarantined -> %s", rows_read, manifest["parsed"], manifest["quarantined"], out_dir)
    return artifacts.ref_for(out_dir, "raw", rows=manifest["parsed"])
