"""Curate the raw artifact into train/validation/test splits (polars); the module the pipeline calls.

:func:`curate` applies the rules to every raw row, then writes the curated artifact: the three split
parquet files, dropped.parquet (each dropped row with its one reason), quarantine.jsonl (copied from
raw) and a manifest whose counts add up to the rows read. :func:`read_split` is the one reader of
that artifact for the stages after it. The parts live in:

- :mod:`pricefit.ingestion`: a source -> the raw artifact (:func:`ingest`, :func:`read_source`, ``RAW_SCHEMA``);
- :mod:`pricefit.listing_text`: a listing's cleaned, token-cut text (:func:`text_expr`, :func:`build_text`);
- :mod:`pricefit.curation_rules`: the drop rules in order, balanced sampling, and the split of an item id;
- :mod:`pricefit.contract_hook`: the data contract run on an artifact before it is moved into place.

The names callers use are imported here too, so ``from pricefit.curation import ...`` is all they need:
:func:`ingest`, :func:`curate`, :func:`prepare_items` (same rules, no dedupe/sampling: for scoring
new listings), :func:`build_text` (one listing), :func:`split_of` (the split of an item id), :func:`read_splits`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import polars as pl

from . import artifacts
from .contract_hook import ContractHook, check_before_commit
from .curation_rules import (  # noqa: F401 (re-exported)
    DROP_REASONS,
    SPLITS,
    UNKNOWN_CATEGORY,
    apply_filters,
    balance_mask,
    select_items,
    split_items,
    split_of,
    split_point,
)
from .errors import ContractError, PricefitError
# not INGEST_CHUNK: ingestion reads it, so a test patching curation.INGEST_CHUNK would silently change nothing
from .ingestion import (  # noqa: F401 (re-exported; tasks.ingest uses _csv_options)
    RAW_SCHEMA,
    SCHEMA_VERSION,
    _csv_options,
    ingest,
    read_source,
)
from .listing_text import (  # noqa: F401 (re-exported)
    CEILING_CHARS_PER_TOKEN,
    build_text,
    resolve_tokenizer,
    text_expr,
    tokenizer_name,
    truncate_to_tokens,
)
from .records import normalize_record  # noqa: F401 (re-exported)
from .settings.curate import CurateConfig

log = logging.getLogger("pricefit.curation")

# the columns every curated split carries (and the stages after curate rely on)
CURATED_COLUMNS = ("item_id", "category", "title", "text", "price")
SPLIT_COLUMNS = ["item_id", "category", "title", "text", "price", "source_file", "source_line"]
DROPPED_COLUMNS = ["item_id", "source_file", "source_line", "reason", "title", "price"]
#: what rules 5-7 and the outputs need of apply_filters' frame: the wide raw columns (description,
#: features, details) are gone once the text is built
FILTERED_COLUMNS = ["_row", "item_id", "category", "title", "text", "price", "source_file", "source_line", "reason"]
#: raw rows above which curate reads raw.parquet in chunks (PRICEFIT_CURATE_STREAM_ROWS overrides)
STREAM_ROWS = 100_000
CURATE_CHUNK = 50_000  # rows per chunk on that path


def _write_parquet(path: Path, frame: pl.DataFrame) -> None:
    with artifacts.atomic_path(path) as tmp:  # one chunk: the bytes do not depend on how the frame was built
        frame.rechunk().write_parquet(tmp, compression="zstd", statistics=True)


def _raw_manifest(raw_dir: str | Path) -> dict[str, Any]:
    raw_dir = Path(raw_dir)
    manifest = artifacts.read_manifest(raw_dir)
    if manifest.get("kind") != "raw":
        raise PricefitError(f"{raw_dir} is a {manifest.get('kind')!r} artifact, not 'raw'", hint="point at the output of ingest")
    return manifest


def _read_raw(raw_dir: str | Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    manifest = _raw_manifest(raw_dir)
    return pl.read_parquet(Path(raw_dir) / "raw.parquet"), manifest


def curate_chunk_rows(n_rows: int) -> int | None:
    """Rows per chunk for a raw artifact of ``n_rows`` rows (None: all at once, in memory)."""
    limit = int(os.environ.get("PRICEFIT_CURATE_STREAM_ROWS", STREAM_ROWS))
    return CURATE_CHUNK if n_rows > limit else None


def filtered_rows(raw_path: Path, cfg: CurateConfig, tokenizer: Any, chunk_rows: int | None) -> pl.DataFrame:
    """Rules 1-4 over raw.parquet (:func:`apply_filters`), narrowed to FILTERED_COLUMNS.

    ``chunk_rows`` None: the whole file at once. Else it is scanned lazily ``chunk_rows`` rows at a time
    (slice pushdown reads only those row groups); only the narrow columns of every chunk stay. Every
    rule 1-4 is a function of its own row (the token cut too: batching does not change a text's
    tokens), and ``_row`` is the global row number, so the frame is the same either way.
    """
    if chunk_rows is None:
        return apply_filters(pl.read_parquet(raw_path).with_row_index("_row"), cfg, tokenizer).select(FILTERED_COLUMNS)
    lf = pl.scan_parquet(raw_path).with_row_index("_row")
    total = lf.select(pl.len()).collect().item()
    parts = [
        apply_filters(lf.slice(start, chunk_rows).collect(), cfg, tokenizer).select(FILTERED_COLUMNS)
        for start in range(0, total, chunk_rows)
    ]
    return pl.concat(parts, rechunk=True) if parts else apply_filters(lf.collect(), cfg, tokenizer).select(FILTERED_COLUMNS)


def curate(
    raw_dir: str | Path,
    out_dir: str | Path,
    cfg: CurateConfig,
    tokenizer: Any = None,
    embed_raw: bool = False,
    contract: ContractHook | None = None,
    chunk_rows: int | None | str = "auto",
) -> artifacts.ArtifactRef:
    """Raw artifact -> curated artifact (train/validation/test parquet, dropped.parquet, quarantine.jsonl, manifest).

    ``tokenizer``: a fast tokenizer object (default: ``models.load_tokenizer(cfg.tokenizer)``).
    ``embed_raw``: copy the raw artifact into ``out_dir/raw`` (the ``pricefit curate`` layout).
    ``contract``: the curated data contract, run before the rename (see
    :func:`~pricefit.contract_hook.check_before_commit`).
    ``chunk_rows``: "auto" (in memory up to STREAM_ROWS raw rows, else in chunks of CURATE_CHUNK),
    None (in memory) or a number of rows a chunk (see :func:`filtered_rows`); the artifact's bytes
    are the same whichever is used.
    """
    raw_dir = Path(raw_dir)
    raw_manifest = _raw_manifest(raw_dir)
    tok = resolve_tokenizer(cfg, tokenizer)
    if chunk_rows == "auto":
        chunk_rows = curate_chunk_rows(int(raw_manifest.get("parsed", 0)))
    df = filtered_rows(raw_dir / "raw.parquet", cfg, tok, chunk_rows)
    df = select_items(df, cfg)

    kept = df.filter(pl.col("reason").is_null())
    splits = split_items(kept.select(SPLIT_COLUMNS), cfg)
    dropped = df.filter(pl.col("reason").is_not_null()).select(DROPPED_COLUMNS)
    dropped_counts = {r: n for r, n in sorted(dropped["reason"].value_counts().iter_rows())}
    quarantined = int(raw_manifest.get("quarantined", 0))
    rows_read = int(raw_manifest["rows_read"])
    kept_counts = {s: splits[s].height for s in SPLITS}
    total = sum(kept_counts.values()) + sum(dropped_counts.values()) + quarantined
    if total != rows_read:  # an internal bug, never the user's input: refuse to write a lying artifact
        raise RuntimeError(f"row accounting broken: {total} accounted for, {rows_read} read")
    if kept.height == 0:
        raise PricefitError(
            f"no usable rows: all {rows_read} rows of {raw_manifest.get('source')} were dropped or quarantined "
            f"(dropped: {dropped_counts}, quarantined: {quarantined})",
            hint="check the source (prices and text present?) or relax the rules, e.g. --set min_chars=100",
        )

    with artifacts.atomic_dir(out_dir, commit_on=(ContractError,)) as tmp:
        for name in SPLITS:
            _write_parquet(tmp / f"{name}.parquet", splits[name])
        _write_parquet(tmp / "dropped.parquet", dropped)
        shutil.copyfile(raw_dir / "quarantine.jsonl", tmp / "quarantine.jsonl")
        if embed_raw:
            shutil.copytree(raw_dir, tmp / "raw")
        artifacts.write_manifest(
            tmp,
            {
                "kind": "curated",
                "schema_version": SCHEMA_VERSION,
                "source": raw_manifest.get("source"),
                "raw_sha256": artifacts.sha256_file(raw_dir / artifacts.MANIFEST),
                "config": cfg.model_dump(mode="json"),
                "rows_read": rows_read,
                "kept": kept_counts,
                "dropped": dropped_counts,
                "quarantined": quarantined,
                "synthetic": bool(raw_manifest.get("synthetic", False)),
                "tokenizer": tokenizer_name(cfg, tok),
            },
        )
        manifest = check_before_commit(tmp, out_dir, contract)
    kept_counts, dropped_counts = manifest["kept"], manifest["dropped"]
    log.info("curate: kept %s; dropped %s; quarantined %d -> %s", ", ".join(f"{v} {k}" for k, v in kept_counts.items()),
             ", ".join(f"{v} {k}" for k, v in dropped_counts.items()) or "0", quarantined, out_dir)
    return artifacts.ref_for(out_dir, "curated", rows=sum(kept_counts.values()))


def prepare_items(
    source_or_raw_dir: str | Path | pl.DataFrame, cfg: CurateConfig, sample: bool = False, tokenizer: Any = None
) -> pl.DataFrame:
    """Listings -> frame with ``item_id, category, title, text, price, source_file, source_line, reason``.

    Same rules as :func:`curate` (``reason`` null = usable). With ``sample=False`` (scoring new listings)
    no dedupe, balancing or max_items applies: only rules 1-4. The input is a raw artifact directory,
    a source spec, or a frame in the raw.parquet schema. Quarantined lines are not in the frame.
    """
    if isinstance(source_or_raw_dir, pl.DataFrame):
        raw = source_or_raw_dir
    elif Path(str(source_or_raw_dir), artifacts.MANIFEST).exists():
        raw, _ = _read_raw(source_or_raw_dir)
    else:
        raw, _, _ = read_source(str(source_or_raw_dir), cfg)
    tok = resolve_tokenizer(cfg, tokenizer)
    df = apply_filters(raw.with_row_index("_row"), cfg, tok)
    if sample:
        df = select_items(df, cfg)
    return df.select(SPLIT_COLUMNS + ["reason"])


def read_split(curated_dir: str | Path, split: str, columns: Iterable[str] = CURATED_COLUMNS) -> pl.DataFrame:
    """One split of a finished curated artifact, checked before anyone uses it.

    The one reader for every stage that consumes curated data (tokenize, baselines, evaluate): the
    directory must hold a ``curated`` manifest and ``<split>.parquet``, the frame must have
    ``columns``, and item_id, text and price (where asked for) must have no nulls.
    """
    d = Path(curated_dir)
    manifest = artifacts.read_manifest(d)
    kind = manifest.get("kind")
    if kind != "curated":
        raise PricefitError(f"{d} holds a {kind!r} artifact, not a curated one",
                            hint="point at the output directory of `pricefit curate`")
    # the contract verdict recorded before the artifact was moved into place; absent: built without a
    # contract hook (library use, hand-made test data); {"skipped": ...}: `curate --no-contracts`
    verdict = manifest.get("contract")
    if isinstance(verdict, dict) and verdict.get("success") is not True and not verdict.get("skipped"):
        raise PricefitError(f"{d}: its curated data contract did not pass ({verdict.get('failed', '?')} check(s) "
                            f"failed; report: {d / 'contracts' / 'curated.json'})",
                            hint="fix the data or the curate settings the report names, then re-run `pricefit curate`")
    path = d / f"{split}.parquet"
    if not path.exists():
        raise PricefitError(f"{path} does not exist",
                            hint="point at the output directory of a finished `pricefit curate` "
                                 "(it holds train.parquet, validation.parquet and test.parquet)")
    df = pl.read_parquet(path)
    columns = tuple(columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PricefitError(f"{path} lacks column(s) {', '.join(missing)} (has {', '.join(df.columns)})",
                            hint=f"rerun `pricefit curate`: curated splits carry {', '.join(CURATED_COLUMNS)}")
    for col in ("item_id", "text", "price"):
        nulls = df[col].null_count() if col in columns else 0
        if nulls:
            raise PricefitError(f"{path}: {nulls} row(s) with a null {col}",
                                hint="the curated contract should have caught this; rerun `pricefit curate`")
    return df


def read_splits(curated_dir: str | Path) -> dict[str, pl.DataFrame]:
    """The three split frames of a curated artifact, each checked by :func:`read_split`."""
    return {s: read_split(curated_dir, s) for s in SPLITS}
