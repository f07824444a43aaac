"""Pieces the contract modules share: reading stage files, schema and overlap frames.

Everything here returns plain pandas frames (the GX boundary) or pre-checked report entries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .runner import Batch, expect, failed_check

SPLITS = ("train", "validation", "test")


def manifest_of(directory: Path) -> dict[str, Any]:
    from pricefit.artifacts import read_manifest

    return read_manifest(directory)


def count_lines(path: Path) -> int:
    """Non-empty lines of a JSONL file (0 when the file is absent)."""
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def read_parquet(path: Path):
    """(polars frame, None) or (None, failed-check entry) when the file is missing or unreadable."""
    import polars as pl

    name = path.name
    if not path.exists():
        return None, failed_check(
            "file_present", name, f"{name} is part of the stage layout; without it nothing below can be checked",
            [{"missing": str(path)}],
        )
    try:
        return pl.read_parquet(path), None
    except Exception as e:  # noqa: BLE001 - any reader error means the artifact is unusable
        return None, failed_check(
            "file_readable", name, f"{name} must be a readable parquet file", [{"error": str(e)[:300]}]
        )


def polars_family(dtype: Any) -> str:
    """'str', 'int', 'float', 'bool', 'null' or the dtype's name."""
    import polars as pl

    if dtype in (pl.String, pl.Utf8, pl.Categorical) or isinstance(dtype, (pl.Categorical, pl.Enum)):
        return "str"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype == pl.Boolean:
        return "bool"
    if dtype == pl.Null:
        return "null"
    return str(dtype)


def schema_rows(batch: str, actual: dict[str, str], spec: dict[str, tuple[str, bool]]) -> list[dict[str, Any]]:
    """One row per expected column: expected type family vs the one found.

    ``spec`` maps column -> (family, nullable). An all-null column (polars dtype Null) is accepted
    for a nullable column: a clean batch may simply have no value there.
    """
    rows = []
    for col, (family, nullable) in spec.items():
        found = actual.get(col, "missing")
        if found == "null" and nullable:
            found = family
        rows.append({"batch": batch, "column": col, "expected_type": family, "actual_type": found})
    return rows


def schema_batch(rows: list[dict[str, Any]]) -> Batch:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["batch", "column", "expected_type", "actual_type"])
    return Batch(
        name="schema",
        frame=frame,
        id_columns=["batch", "column"],
        expectations=[
            expect(
                "ExpectColumnPairValuesToBeEqual",
                "a column missing, renamed or of another type (a price read as text, a line number as float) "
                "breaks every stage downstream that reads it by name",
                column_A="expected_type",
                column_B="actual_type",
            )
        ],
    )


def overlap_batch(ids_by_split: dict[str, list[Any]]) -> Batch:
    """One row per (split, item): how many splits hold that item_id. Must be exactly one."""
    import pandas as pd

    parts = [pd.DataFrame({"split": name, "item_id": list(ids)}) for name, ids in ids_by_split.items()]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"split": [], "item_id": []})
    frame["splits_with_item"] = frame.groupby("item_id", dropna=False)["split"].transform("nunique").astype("int64")
    return Batch(
        name="all_splits",
        frame=frame,
        id_columns=["item_id", "split"],
        expectations=[
            expect(
                "ExpectColumnValuesToBeBetween",
                "an item in two splits leaks training data into validation/test and flatters every metric",
                column="splits_with_item",
                min_value=1,
                max_value=1,
            )
        ],
    )


def one_row(name: str, values: dict[str, Any], checks: list, id_columns: list[str] | None = None) -> Batch:
    import pandas as pd

    return Batch(name=name, frame=pd.DataFrame([values]), expectations=checks, id_columns=id_columns or [])
