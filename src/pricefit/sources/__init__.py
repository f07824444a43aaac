"""Listing sources: every kind yields records in the Amazon Reviews 2023 item-metadata layout.

A source spec names where listings come from:

- ``demo`` / ``demo:N``                  built-in synthetic catalog (:mod:`.demo`), N items (default 600)
- ``path.jsonl[.gz]``, ``path.parquet``   local item-metadata files; several comma-separated, or a glob
- ``hf:Appliances,Electronics``          McAuley-Lab/Amazon-Reviews-2023 ``raw/meta_categories`` on the hub
- ``csv:products.csv[.gz]`` (or a path ending .csv/.csv.gz)  a CSV catalog with a column mapping

Iteration never stops on a bad line: it yields a :class:`Quarantined` item (malformed JSON, invalid
UTF-8, not a JSON object, a CSV row with the wrong number of fields) and goes on. A file that
cannot be opened or read at all raises :class:`pricefit.errors.PricefitError` naming the file.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..errors import PricefitError

QUARANTINE_REASONS = ("invalid_json", "invalid_utf8", "not_an_object", "csv_bad_row")


@dataclass(slots=True)
class Record:
    """One parsed listing: ``data`` in the item-metadata layout, with where it came from."""

    source_file: str
    source_line: int  # 1-based line (JSONL, CSV) or row number (parquet, hub, demo)
    data: dict[str, Any]


@dataclass(slots=True)
class Quarantined:
    """One input row that could not be parsed into a listing."""

    source_file: str
    source_line: int
    reason: str
    excerpt: str


@dataclass
class Source:
    """A resolved source: what it reads, whether it is synthetic, and how to iterate it."""

    spec: str
    files: list[str]
    synthetic: bool
    _iter: Callable[[], Iterator[Record | Quarantined]] = field(repr=False)
    size_hint: int | None = None  # rows, when known up front (for progress bars)

    def __iter__(self) -> Iterator[Record | Quarantined]:
        return self._iter()


def excerpt_of(raw: bytes | str, limit: int = 200) -> str:
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"


def expand_paths(spec: str) -> list[Path]:
    """Comma-separated paths and globs -> existing files, in order; errors name what is missing."""
    paths: list[Path] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        part = os.path.expanduser(part)
        if glob.has_magic(part):
            matches = sorted(glob.glob(part, recursive=True))
            if not matches:
                raise PricefitError(
                    f"no file matches {part!r}",
                    hint="check the glob pattern, or give the files as a comma-separated list",
                )
            paths.extend(Path(m) for m in matches if Path(m).is_file())
        else:
            p = Path(part)
            if not p.exists():
                raise PricefitError(
                    f"source file {p} does not exist",
                    hint="give an existing .jsonl, .jsonl.gz, .parquet or .csv file, a glob, or 'demo'",
                )
            if p.is_dir():
                raise PricefitError(
                    f"source {p} is a directory",
                    hint=f"name the files inside it, e.g. '{p}/*.jsonl.gz'",
                )
            paths.append(p)
    if not paths:
        raise PricefitError(f"source {spec!r} names no file", hint="give at least one file, a glob, or 'demo'")
    return paths


def _is_csv(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".csv") or name.endswith(".csv.gz")


def resolve(spec: str, *, csv_columns: Mapping[str, Any] | None = None, csv_categories: str | None = None) -> Source:
    """Turn a source spec into a :class:`Source` (checks that files exist; reads nothing yet)."""
    spec = (spec or "").strip()
    if not spec:
        raise PricefitError("empty source", hint="give --source demo, a file, a glob, hf:<Category>, or csv:<file>")
    if spec == "demo" or spec.startswith("demo:"):
        from . import demo

        return demo.source(spec)
    if spec.startswith("hf:"):
        from . import hub

        return hub.source(spec)
    if spec.startswith("csv:"):
        from . import csv_catalog

        return csv_catalog.source(expand_paths(spec[4:]), spec, columns=csv_columns, categories=csv_categories)
    paths = expand_paths(spec)
    if all(_is_csv(p) for p in paths):
        from . import csv_catalog

        return csv_catalog.source(paths, spec, columns=csv_columns, categories=csv_categories)
    if any(_is_csv(p) for p in paths):
        raise PricefitError(
            f"source {spec!r} mixes CSV and JSONL/parquet files",
            hint="curate the CSV catalog and the item-metadata files separately",
        )
    from . import amazon_meta

    return amazon_meta.source(paths, spec)


def iter_records(spec: str, **options: Any) -> Iterator[Record | Quarantined]:
    """Records (and quarantined rows) of a source spec, in file and line order."""
    return iter(resolve(spec, **options))
