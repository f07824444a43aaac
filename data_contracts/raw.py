"""Contract for the raw listings (ingest output): raw.parquet + quarantine.jsonl + manifest.json.

Raw data is allowed to be messy (missing titles, unparsed prices): curation sorts that out with
named drop reasons. What must hold is the bookkeeping that lets curation account for every line,
and that whatever price *was* parsed is a plausible price.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import count_lines, manifest_of, one_row, polars_family, read_parquet, schema_batch, schema_rows
from .runner import Batch, Plan, expect

# a parsed price above this came from a phone number, a model number or two prices run together
RAW_MAX_PRICE = 1_000_000.0

COLUMNS: dict[str, tuple[str, bool]] = {
    # column: (type family, nullable)
    "item_id": ("str", False),
    "source_file": ("str", False),
    "source_line": ("int", False),
    "category": ("str", True),
    "title": ("str", True),
    "description": ("str", False),
    "features": ("str", False),
    "details": ("str", False),
    "price_raw": ("str", True),
    "price": ("float", True),
    "price_issue": ("str", True),
}


def listing_expectations() -> list:
    return [
        # an empty parse means the source reader is broken; curation would fail far from the cause
        expect("ExpectTableRowCountToBeBetween", "a source that yielded no rows at all", min_value=1),
        # the keys that let every downstream row be traced back to its input line
        # (row_level: a few such rows are quarantined with the check's name; more stop the run)
        expect("ExpectColumnValuesToNotBeNull", "a row that cannot be traced to an item", column="item_id", row_level=True),
        expect("ExpectColumnValuesToNotBeNull", "a row that cannot be traced to its file", column="source_file", row_level=True),
        expect("ExpectColumnValuesToNotBeNull", "a row that cannot be traced to its line", column="source_line", row_level=True),
        # line numbers are 1-based; 0 or negative means an off-by-one or a counter that wrapped
        expect(
            "ExpectColumnValuesToBeBetween", "off-by-one or unset line numbers", column="source_line", min_value=1, row_level=True
        ),
        # one input line -> at most one row; a repeat means a file was read twice or lines were mis-numbered
        expect(
            "ExpectCompoundColumnsToBeUnique",
            "a file read twice or line numbers reused, which double-counts rows in the accounting",
            column_list=["source_file", "source_line"],
        ),
        # text fields are "" when absent (never null) so that text building need not special-case them
        expect("ExpectColumnValuesToNotBeNull", "null text fields that crash text building", column="description", row_level=True),
        expect("ExpectColumnValuesToNotBeNull", "null text fields that crash text building", column="features", row_level=True),
        expect("ExpectColumnValuesToNotBeNull", "details that are not a JSON object text", column="details", row_level=True),
        expect(
            "ExpectColumnValuesToMatchRegex",
            "details stored as a Python repr or a list instead of JSON object text",
            column="details",
            regex=r"^\s*\{",
            row_level=True,
        ),
        # a parsed price must be positive and plausible; nulls are allowed (curation drops them with a reason)
        expect(
            "ExpectColumnValuesToBeBetween",
            "a sign lost or gained in parsing, or a number that is not a price (phone, model number)",
            column="price",
            min_value=0,
            strict_min=True,
            max_value=RAW_MAX_PRICE,
            row_level=True,
        ),
    ]


def build(directory: Path, **_: object) -> Plan:
    manifest = manifest_of(directory)
    frame, missing = read_parquet(directory / "raw.parquet")
    prechecked = [missing] if missing else []
    batches: list[Batch] = []
    parquet_rows = None
    if frame is not None:
        parquet_rows = frame.height
        actual = {name: polars_family(dtype) for name, dtype in frame.schema.items()}
        batches.append(schema_batch(schema_rows("raw", actual, COLUMNS)))
        batches.append(
            Batch(
                name="raw",
                frame=frame.to_pandas(),
                expectations=listing_expectations(),
                id_columns=["item_id", "source_file", "source_line"],
            )
        )
    rows_read = manifest.get("rows_read")
    parsed = manifest.get("parsed")
    quarantined = manifest.get("quarantined")
    accounted = None if parsed is None or quarantined is None else parsed + quarantined
    batches.append(
        one_row(
            "manifest",
            {
                "kind": manifest.get("kind"),
                "rows_read": rows_read,
                "parsed_plus_quarantined": accounted,
                "parsed": parsed,
                "raw_parquet_rows": parquet_rows,
                "quarantined": quarantined,
                "quarantine_jsonl_lines": count_lines(directory / "quarantine.jsonl"),
            },
            [
                expect("ExpectColumnValuesToBeInSet", "validating another stage's directory", column="kind", value_set=["raw"]),
                # every line read is either parsed or quarantined: nothing silently lost
                expect(
                    "ExpectColumnPairValuesToBeEqual",
                    "input lines silently lost (or counted twice) between reading and parsing",
                    column_A="rows_read",
                    column_B="parsed_plus_quarantined",
                ),
                expect(
                    "ExpectColumnPairValuesToBeEqual",
                    "a manifest that does not describe the parquet beside it",
                    column_A="parsed",
                    column_B="raw_parquet_rows",
                ),
                expect(
                    "ExpectColumnPairValuesToBeEqual",
                    "quarantined lines counted but not kept (or kept but not counted)",
                    column_A="quarantined",
                    column_B="quarantine_jsonl_lines",
                ),
            ],
        )
    )
    return Plan(batches=batches, prechecked=prechecked, info={"rows": parquet_rows})


def remove_rows(directory: Path, row_failures: dict[str, dict[int, str]]) -> dict[str, int]:
    """Move the rows row-level checks flagged from raw.parquet to quarantine.jsonl (reason: the check).

    The manifest follows (parsed, quarantined, quarantine_reasons), so rows_read == parsed +
    quarantined still holds. Returns {reason: rows moved}.
    """
    import polars as pl

    from pricefit import artifacts

    flagged = row_failures.get("raw") or {}
    if not flagged:
        return {}
    frame = pl.read_parquet(directory / "raw.parquet")
    indexed = frame.with_row_index("_pos").with_columns(pl.col("_pos").cast(pl.Int64))
    is_bad = pl.col("_pos").is_in(sorted(flagged))
    moved = indexed.filter(is_bad)
    kept = indexed.filter(~is_bad).drop("_pos")
    lines = []
    counts: dict[str, int] = {}
    for row in moved.iter_rows(named=True):
        reason = flagged[row["_pos"]]
        counts[reason] = counts.get(reason, 0) + 1
        excerpt = json.dumps(
            {k: row.get(k) for k in ("item_id", "title", "price_raw", "price")}, ensure_ascii=False, default=str
        )[:200]
        lines.append(
            {"source_file": row["source_file"], "source_line": row["source_line"], "reason": reason, "excerpt": excerpt}
        )
    with artifacts.atomic_path(directory / "raw.parquet") as tmp:
        kept.write_parquet(tmp, compression="zstd", statistics=True)
    quarantine = directory / "quarantine.jsonl"
    old = quarantine.read_bytes() if quarantine.exists() else b""
    new = "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in lines).encode("utf-8")
    artifacts.write_bytes_atomic(quarantine, old + new)
    manifest: dict[str, Any] = {k: v for k, v in manifest_of(directory).items() if k != "files"}
    manifest["parsed"] = int(manifest.get("parsed", frame.height)) - len(lines)
    manifest["quarantined"] = int(manifest.get("quarantined", 0)) + len(lines)
    reasons = dict(manifest.get("quarantine_reasons") or {})
    for r, n in counts.items():
        reasons[r] = reasons.get(r, 0) + n
    manifest["quarantine_reasons"] = dict(sorted(reasons.items()))
    artifacts.write_manifest(directory, manifest)
    return dict(sorted(counts.items()))
