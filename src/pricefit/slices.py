"""Named slices of held-out items: every metric is reported overall and per slice.

A slice is declared once, in a profile's top-level ``slices:`` list, and is a conjunction of
whichever filters it sets::

    slices:
      - name: reference                 # the reference product pricer's own test distribution
        ids_file: ${PRICEFIT_SHARED_DATA}/amazon_meta/provenance.csv
        id_column: parent_asin          # the file's column holding item ids
        match_column: source            # keep the file's rows whose source matches...
        pattern: "^course full test set" # ...this regular expression
      - name: dear
        price_min: 100                  # true price in [price_min, price_max)
      - name: tools
        column: category
        equals: [Tools_and_Home_Improvement]
      - name: picked
        ids: [B000123, B000456]

Evaluate, baselines and compare report each slice's metrics; ``promote.slice`` takes the champion
decision on one of them; ``train.oversample`` repeats a slice's training items.
"""

from __future__ import annotations

import csv
import functools
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import PricefitError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class SliceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Slice name (letters, digits, _ . -).")
    column: str | None = Field(None, description="Filter on this column of the items (e.g. category).")
    equals: list[str] | None = Field(None, description="With column: keep rows whose value is one of these.")
    regex: str | None = Field(None, description="With column: keep rows whose value matches this regular expression.")
    ids: list[str] | None = Field(None, description="Keep these item ids.")
    ids_file: str | None = Field(None, description="CSV (or one id a line) of item ids; ${VAR} is expanded.")
    id_column: str = Field("item_id", description="ids_file: the column that holds item ids.")
    match_column: str | None = Field(None, description="ids_file: keep only rows whose match_column matches pattern.")
    pattern: str | None = Field(None, description="ids_file: regular expression for match_column.")
    price_min: float | None = Field(None, description="True price >= this.")
    price_max: float | None = Field(None, description="True price < this.")

    @model_validator(mode="after")
    def _check(self) -> "SliceSpec":
        if (self.equals is not None or self.regex is not None) and self.column is None:
            raise ValueError(f"slice {self.name!r}: equals/regex need a column")
        if self.column is not None and self.equals is None and self.regex is None:
            raise ValueError(f"slice {self.name!r}: column {self.column!r} needs equals or regex")
        if (self.match_column is None) != (self.pattern is None):
            raise ValueError(f"slice {self.name!r}: match_column and pattern go together")
        if self.match_column is not None and self.ids_file is None:
            raise ValueError(f"slice {self.name!r}: match_column/pattern filter an ids_file")
        for rx in (self.regex, self.pattern):
            if rx is not None:
                try:
                    re.compile(rx)
                except re.error as e:
                    raise ValueError(f"slice {self.name!r}: bad regular expression {rx!r}: {e}") from None
        filters = (self.column, self.ids, self.ids_file, self.price_min, self.price_max)
        if all(f is None for f in filters):
            raise ValueError(f"slice {self.name!r} sets no filter (column, ids, ids_file, price_min, price_max)")
        return self


def check_unique(slices: Sequence[SliceSpec]) -> None:
    names = [s.name for s in slices]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PricefitError(f"slice names must be unique; repeated: {', '.join(dup)}")


def expand(path: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in os.environ:
            raise PricefitError(
                f"the slice file {path!r} needs the environment variable {m.group(1)}, which is not set",
                hint="export it (the Makefile sets PRICEFIT_SHARED_DATA to ../shared/data)",
            )
        return os.environ[m.group(1)]

    return _ENV_REF.sub(sub, path)


@functools.lru_cache(maxsize=32)
def _file_ids(path: str, mtime: float, id_column: str, match_column: str | None, pattern: str | None) -> frozenset[str]:
    p = Path(path)
    with open(p, newline="", encoding="utf-8-sig") as f:
        if p.suffix.lower() not in (".csv", ".tsv"):
            return frozenset(line.strip() for line in f if line.strip())
        reader = csv.DictReader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
        cols = reader.fieldnames or []
        for c in (id_column, match_column):
            if c is not None and c not in cols:
                raise PricefitError(f"slice file {p} has no column {c!r} (has {', '.join(cols)})",
                                    hint="set the slice's id_column / match_column to one of those")
        rx = re.compile(pattern) if pattern else None
        return frozenset(
            str(row[id_column]).strip() for row in reader if rx is None or rx.search(str(row.get(match_column) or ""))
        )


def slice_ids(spec: SliceSpec) -> frozenset[str] | None:
    """The item ids a slice's ``ids``/``ids_file`` admit (None: no id filter)."""
    out: set[str] | None = None
    if spec.ids is not None:
        out = {str(i) for i in spec.ids}
    if spec.ids_file is not None:
        path = expand(spec.ids_file)
        if not Path(path).is_file():
            raise PricefitError(f"slice {spec.name!r}: ids_file {path} does not exist",
                                hint="fix the path in the profile's slices: section")
        ids = _file_ids(path, Path(path).stat().st_mtime, spec.id_column, spec.match_column, spec.pattern)
        out = set(ids) if out is None else out & ids
    return None if out is None else frozenset(out)


def slice_mask(spec: SliceSpec, rows: Mapping[str, Sequence[Any]]) -> list[bool]:
    """Which rows belong to the slice. ``rows`` maps column -> values (item_id and price at least)."""
    n = len(rows["item_id"])
    keep = [True] * n
    ids = slice_ids(spec)
    if ids is not None:
        keep = [k and str(i) in ids for k, i in zip(keep, rows["item_id"])]
    if spec.column is not None:
        if spec.column not in rows:
            raise PricefitError(f"slice {spec.name!r}: the items have no column {spec.column!r}",
                                hint=f"use one of {', '.join(sorted(rows))}")
        values = rows[spec.column]
        if spec.equals is not None:
            allowed = set(spec.equals)
            keep = [k and v is not None and str(v) in allowed for k, v in zip(keep, values)]
        if spec.regex is not None:
            rx = re.compile(spec.regex)
            keep = [k and v is not None and rx.search(str(v)) is not None for k, v in zip(keep, values)]
    if spec.price_min is not None or spec.price_max is not None:
        lo = -float("inf") if spec.price_min is None else spec.price_min
        hi = float("inf") if spec.price_max is None else spec.price_max
        keep = [k and lo <= float(p) < hi for k, p in zip(keep, rows["price"])]
    return keep


def slice_masks(slices: Iterable[SliceSpec], rows: Mapping[str, Sequence[Any]]) -> dict[str, list[bool]]:
    slices = list(slices)
    check_unique(slices)
    return {s.name: slice_mask(s, rows) for s in slices}


def find(slices: Sequence[SliceSpec], name: str) -> SliceSpec:
    for s in slices:
        if s.name == name:
            return s
    raise PricefitError(f"no slice named {name!r}", hint=f"declared slices: {', '.join(s.name for s in slices) or '(none)'}")
