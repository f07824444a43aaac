"""Contract for the raw listings (ingest output): raw.parquet + quarantine.jsonl + manifest.json.

Raw data is allowed to be messy (missing titles, unparsed prices): curation sorts that out with
named drop reasons. What must hold is the bookkeeping that lets curation account for every line,
and that whatever price *was* parsed is a plausible price.
"""

from __future__ import annotations

from pathlib import Path

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
        expect("ExpectColumnValuesToNotBeNull", "a row that cannot be traced to an item", column="item_id"),
        expect("ExpectColumnValuesToNotBeNull", "a row that cannot be traced to its file", column="source_file"),
        expect("ExpectColumnValuesToNotBeNull", "a row that cannot be traced to its line", column="source_line"),
        # line numbers are 1-based; 0 or negative means an off-by-one or a counter that wrapped
        expect("ExpectColumnValuesToBeBetween", "off-by-one or unset line numbers", column="source_line", min_value=1),
        # one input line -> at most one row; a repeat means a file was read twice or lines were mis-numbered
        expect(
            "ExpectCompoundColumnsToBeUnique",
            "a file read twice or line numbers reused, which double-counts rows in the accounting",
            column_list=["source_file", "source_line"],
        ),
        # text fields are "" when absent (never null) so that text building need not special-case them
        expect("ExpectColumnValuesToNotBeNull", "null text fields that crash text building", column="description"),
        expect("ExpectColumnValuesToNotBeNull", "null text fields that crash text building", column="features"),
        expect("ExpectColumnValuesToNotBeNull", "details that are not a JSON object text", column="details"),
        expect(
            "ExpectColumnValuesToMatchRegex",
            "details stored as a Python repr or a list instead of JSON object text",
            column="details",
            regex=r"^\s*\{",
        ),
        # a parsed price must be positive and plausible; nulls are allowed (curation drops them with a reason)
        expect(
            "ExpectColumnValuesToBeBetween",
            "a sign lost or gained in parsing, or a number that is not a price (phone, model number)",
            column="price",
            min_value=0,
            strict_min=True,
            max_value=RAW_MAX_PRICE,
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
