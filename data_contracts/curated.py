"""Contract for the curated splits: train/validation/test parquet + dropped.parquet + manifest.json.

This is the data the model learns from and is judged on, so the rules of the curation config
(price range, minimum text length) must hold on every row, no item may sit in two splits, the
splits must have the configured sizes, and the manifest's accounting must add up.

Split proportions are only checked when the splits together hold at least
``MIN_ROWS_FOR_PROPORTIONS`` items: below that a single item moves a split's share by more than a
percent and the check would only measure rounding. The tolerance on each split's share is
``max(PROPORTION_TOLERANCE, 3 * sqrt(f * (1 - f) / n))`` for configured fraction f and n items:
two points absolute on a large dataset, three binomial standard deviations on a small one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .common import SPLITS, count_lines, manifest_of, one_row, overlap_batch, polars_family, read_parquet
from .common import schema_batch, schema_rows
from .runner import Batch, Plan, expect, row_reason, skipped_check

MIN_ROWS_FOR_PROPORTIONS = 100
PROPORTION_TOLERANCE = 0.02

# exact strings from docs/ARCHITECTURE.md
DROP_REASONS = [
    "price_missing",
    "price_unparseable",
    "price_out_of_range",
    "title_missing",
    "text_too_short",
    "duplicate",
    "sampled_out",
    "over_max_items",
]

COLUMNS: dict[str, tuple[str, bool]] = {
    "item_id": ("str", False),
    "category": ("str", False),
    "title": ("str", False),
    "text": ("str", False),
    "price": ("float", False),
    "source_file": ("str", False),
    "source_line": ("int", False),
}


def _config(manifest: dict[str, Any]) -> dict[str, Any]:
    from pricefit.settings.curate import CurateConfig

    base = CurateConfig().model_dump()
    base.update(manifest.get("config") or {})
    return base


def contract_reasons(cfg: dict[str, Any]) -> list[str]:
    """Drop reasons of rows this contract removed (one per row-level split check)."""
    return sorted({row_reason(e) for e in split_expectations(cfg) if e.row_level})


def split_expectations(cfg: dict[str, Any]) -> list:
    # row_level: a few failing rows are dropped with the check's name as reason; more stop the run
    checks = [
        # every field the prompt and the metrics read must be there: a null title or text becomes the
        # string "None" in a prompt; a null price cannot be a label
        *(
            expect("ExpectColumnValuesToNotBeNull", f"a null {col} reaching training or evaluation", column=col, row_level=True)
            for col in COLUMNS
        ),
        # the curation price window: outside it the reference recipe saw mostly listing errors
        expect(
            "ExpectColumnValuesToBeBetween",
            "prices outside the configured window (listing errors, $0 placeholders) leaking into the labels",
            column="price",
            min_value=cfg["min_price"],
            max_value=cfg["max_price"],
            row_level=True,
        ),
        # too little text to price from: the model would learn the mean price
        expect(
            "ExpectColumnValueLengthsToBeBetween",
            "texts shorter than min_chars that carry too little information to price",
            column="text",
            min_value=cfg["min_chars"],
            row_level=True,
        ),
        expect(
            "ExpectColumnValueLengthsToBeBetween",
            "blank titles that passed the title_missing filter",
            column="title",
            min_value=1,
            row_level=True,
        ),
        # a repeated item is counted twice in the loss and in the metrics
        expect("ExpectColumnValuesToBeUnique", "the same item twice in one split", column="item_id"),
    ]
    return checks


def _proportions(cfg: dict[str, Any], kept: dict[str, int]) -> tuple[Batch | None, dict[str, Any] | None]:
    import pandas as pd

    guards = "a split built with other fractions than configured (swapped splits, a seed or rounding bug)"
    total = sum(kept.values())
    if total < MIN_ROWS_FOR_PROPORTIONS:
        reason = f"{total} items < {MIN_ROWS_FOR_PROPORTIONS}: too few for split shares to be meaningful"
        return None, skipped_check("split_proportions", "proportions", guards, reason)
    fractions = {
        "validation": float(cfg["validation_fraction"]),
        "test": float(cfg["test_fraction"]),
    }
    fractions["train"] = 1.0 - fractions["validation"] - fractions["test"]
    rows = []
    for split in SPLITS:
        f = fractions[split]
        share = kept.get(split, 0) / total
        rows.append(
            {
                "split": split,
                "rows": kept.get(split, 0),
                "share": share,
                "expected_share": f,
                "abs_deviation": abs(share - f),
                "tolerance": max(PROPORTION_TOLERANCE, 3 * math.sqrt(f * (1 - f) / total)),
            }
        )
    batch = Batch(
        name="proportions",
        frame=pd.DataFrame(rows),
        id_columns=["split", "rows", "share", "expected_share"],
        expectations=[
            expect(
                "ExpectColumnPairValuesAToBeGreaterThanB",
                guards,
                column_A="tolerance",
                column_B="abs_deviation",
                or_equal=True,
            )
        ],
    )
    return batch, None


def build(directory: Path, **_: object) -> Plan:
    import pandas as pd

    manifest = manifest_of(directory)
    cfg = _config(manifest)
    batches: list[Batch] = []
    prechecked: list[dict[str, Any]] = []
    schema: list[dict[str, Any]] = []
    ids: dict[str, list[Any]] = {}
    rows: dict[str, int] = {}

    for split in SPLITS:
        frame, problem = read_parquet(directory / f"{split}.parquet")
        if problem:
            prechecked.append(problem)
            continue
        rows[split] = frame.height
        actual = {name: polars_family(dtype) for name, dtype in frame.schema.items()}
        schema += schema_rows(split, actual, COLUMNS)
        if "item_id" in frame.columns:
            ids[split] = frame["item_id"].to_list()
        batches.append(Batch(split, frame.to_pandas(), split_expectations(cfg), id_columns=["item_id"]))

    if schema:
        batches.insert(0, schema_batch(schema))
    if ids:
        batches.append(overlap_batch(ids))

    # split sizes as written (the parquet files are the truth; the manifest must agree with them)
    proportions, skipped = _proportions(cfg, rows)
    if proportions is not None:
        batches.append(proportions)
    if skipped is not None:
        prechecked.append(skipped)

    # ---- accounting: rows_read == kept + dropped + quarantined, and each count matches its file
    kept = manifest.get("kept") or {}
    dropped = manifest.get("dropped") or {}
    quarantined = manifest.get("quarantined")
    parts = [sum(kept.values()) if kept else None, sum(dropped.values()), quarantined]
    accounted = None if any(p is None for p in parts) else sum(parts)
    batches.append(
        one_row(
            "manifest",
            {
                "kind": manifest.get("kind"),
                "rows_read": manifest.get("rows_read"),
                "kept_plus_dropped_plus_quarantined": accounted,
                "quarantined": quarantined,
                "quarantine_jsonl_lines": count_lines(directory / "quarantine.jsonl"),
            },
            [
                expect(
                    "ExpectColumnValuesToBeInSet", "validating another stage's directory", column="kind", value_set=["curated"]
                ),
                # the promise of the data stage: every input row ends in exactly one place
                expect(
                    "ExpectColumnPairValuesToBeEqual",
                    "rows silently lost or double-counted by curation",
                    column_A="rows_read",
                    column_B="kept_plus_dropped_plus_quarantined",
                ),
                expect(
                    "ExpectColumnPairValuesToBeEqual",
                    "quarantined lines counted but not kept beside the data",
                    column_A="quarantined",
                    column_B="quarantine_jsonl_lines",
                ),
            ],
        )
    )
    batches.append(
        Batch(
            "kept",
            pd.DataFrame(
                [{"split": s, "manifest_kept": kept.get(s), "parquet_rows": rows.get(s)} for s in SPLITS]
            ),
            id_columns=["split"],
            expectations=[
                expect(
                    "ExpectColumnPairValuesToBeEqual",
                    "a manifest that does not describe the split files beside it (stale or partial write)",
                    column_A="manifest_kept",
                    column_B="parquet_rows",
                )
            ],
        )
    )

    dropped_frame, problem = read_parquet(directory / "dropped.parquet")
    if problem:
        prechecked.append(problem)
    else:
        reasons = dropped_frame["reason"].to_list() if "reason" in dropped_frame.columns else []
        counts = pd.Series(reasons, dtype="object").value_counts().to_dict()
        names = sorted(set(dropped) | set(counts))
        batches.append(
            Batch(
                "dropped",
                pd.DataFrame(
                    [{"reason": r, "manifest_count": dropped.get(r, 0), "parquet_rows": int(counts.get(r, 0))} for r in names],
                    columns=["reason", "manifest_count", "parquet_rows"],
                ),
                id_columns=["reason"],
                expectations=[
                    # a new or misspelled reason breaks the drop-reason tables and dashboards
                    expect(
                        "ExpectColumnValuesToBeInSet",
                        "drop reasons outside the documented set (typos, ad-hoc reasons)",
                        column="reason",
                        value_set=DROP_REASONS + contract_reasons(cfg),
                    ),
                    # dropped rows are kept with their reason so a user can see what was thrown away
                    expect(
                        "ExpectColumnPairValuesToBeEqual",
                        "dropped rows counted in the manifest but missing from dropped.parquet (or the reverse)",
                        column_A="manifest_count",
                        column_B="parquet_rows",
                    ),
                ],
            )
        )
    info = {"rows": rows, "config": {k: cfg[k] for k in ("min_price", "max_price", "min_chars", "validation_fraction", "test_fraction")}}
    return Plan(batches=batches, prechecked=prechecked, info=info)


def remove_rows(directory: Path, row_failures: dict[str, dict[int, str]]) -> dict[str, int]:
    """Move split rows that row-level checks flagged to dropped.parquet (reason: the check).

    The manifest's ``kept`` and ``dropped`` follow, so rows_read == kept + dropped + quarantined
    still holds. Returns {reason: rows moved}.
    """
    import polars as pl

    from pricefit import artifacts

    counts: dict[str, int] = {}
    moved_frames = []
    manifest: dict[str, Any] = {k: v for k, v in manifest_of(directory).items() if k != "files"}
    kept = dict(manifest.get("kept") or {})
    dropped_path = directory / "dropped.parquet"
    dropped = pl.read_parquet(dropped_path)
    for split in SPLITS:
        flagged = row_failures.get(split) or {}
        if not flagged:
            continue
        path = directory / f"{split}.parquet"
        frame = pl.read_parquet(path)
        indexed = frame.with_row_index("_pos").with_columns(pl.col("_pos").cast(pl.Int64))
        is_bad = pl.col("_pos").is_in(sorted(flagged))
        bad = indexed.filter(is_bad)
        reasons = [flagged[i] for i in bad["_pos"].to_list()]
        for r in reasons:
            counts[r] = counts.get(r, 0) + 1
        moved_frames.append(
            bad.with_columns(pl.Series("reason", reasons, dtype=pl.String)).select(
                [pl.col(c).cast(dropped.schema[c]) for c in dropped.columns]
            )
        )
        with artifacts.atomic_path(path) as tmp:
            indexed.filter(~is_bad).drop("_pos").write_parquet(tmp, compression="zstd", statistics=True)
        kept[split] = int(kept.get(split, frame.height)) - bad.height
    if not moved_frames:
        return {}
    with artifacts.atomic_path(dropped_path) as tmp:
        pl.concat([dropped, *moved_frames]).write_parquet(tmp, compression="zstd", statistics=True)
    drop_counts = dict(manifest.get("dropped") or {})
    for r, n in counts.items():
        drop_counts[r] = drop_counts.get(r, 0) + n
    manifest["kept"] = kept
    manifest["dropped"] = dict(sorted(drop_counts.items()))
    artifacts.write_manifest(directory, manifest)
    return dict(sorted(counts.items()))
