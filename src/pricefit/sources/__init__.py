"""Listing sources: every kind yields records in the Amazon Reviews 2023 item-metadata layout.

A source spec names where listings come from:

- ``demo`` / ``demo:N``                  built-in synthetic catalog (:mod:`.demo`), N items (default 600)
- ``path.jsonl[.gz]``, ``path.parquet``   local item-metadata files; several comma-separated, or a glob
- ``hf:Appliances,Electronics``          McAuley-Lab/Amazon-Reviews-2023 ``raw/meta_categories`` on the hub
- ``csv:products.csv[.gz]`` (or a path ending .csv/.csv.gz)  a CSV catalog with a column mapping

Listings without ``parent_asin``/``asin`` get the fallback id ``<file key>:<line>``. The file key
(:attr:`Source.id_keys`) is unique among the files of one spec and stable across reruns: a file found
by a glob is named by its path relative to the glob's literal folder (``data/*/listings.jsonl`` gives
``a/listings.jsonl``, ``b/listings.jsonl``; files that appear later do not change the others' keys),
a file named outright by its file name; distinct files whose keys would still collide (same-named
files in a comma list) are named relative to their common folder instead.

Iteration never stops on a bad line: it yields a :class:`Quarantined` item (malformed JSON, invalid
UTF-8, not a JSON object, a CSV row with the wrong number of fields) and goes on. A UTF-8 byte-order
mark (at the start of a JSONL line, or of a CSV file, gzipped or not) is dropped, not quarantined. A file that
cannot be opened or read at all raises :class:`pricefit.errors.PricefitError` naming the file, and so does
a source that is not a regular file (a FIFO named ``*.jsonl`` would block forever).
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..errors import PricefitError

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
    # source_file -> the key of fallback item ids (``<key>:<line>``); files not in it use their file name
    id_keys: dict[str, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Record | Quarantined]:
        return self._iter()


def excerpt_of(raw: bytes | str, limit: int = 200) -> str:
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _glob_base(pattern: str) -> str:
    """The literal folder a glob starts from: its path components up to the first one with magic."""
    parts = Path(pattern).parts
    literal: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        literal.append(part)
    return str(Path(*literal)) if literal else "."


def _unique_keys(entries: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Distinct files sharing a key get their path relative to those files' common folder."""
    by_key: dict[str, set[str]] = {}
    for p, key in entries:
        by_key.setdefault(key, set()).add(os.path.realpath(p))
    renamed: dict[str, str] = {}
    for key, files in by_key.items():
        if len(files) > 1:
            root = os.path.commonpath(sorted(files))
            renamed.update({f: Path(os.path.relpath(f, root)).as_posix() for f in files})
    return [(p, renamed.get(os.path.realpath(p), key)) for p, key in entries]


def _check_regular(p: Path) -> None:
    """A source must be a regular file: a FIFO, socket or device named ``*.jsonl`` would block the
    read (and the cache key) forever or never end."""
    try:
        mode = os.stat(p).st_mode
    except OSError as e:
        raise PricefitError(f"cannot read source file {p}: {e.strerror or e}", hint="check the path and its permissions") from None
    if not stat.S_ISREG(mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise PricefitError(
            f"source {p} is {kind}, not a regular file",
            hint="give a regular .jsonl, .jsonl.gz, .parquet or .csv file (write the stream to a file first)",
        )


def expand_spec(spec: str) -> list[tuple[Path, str]]:
    """Comma-separated paths and globs -> (existing file, fallback-id key), in order; errors name what is missing."""
    entries: list[tuple[Path, str]] = []
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
            base = _glob_base(part)
            entries.extend(
                (Path(m), Path(os.path.relpath(m, base)).as_posix()) for m in matches if Path(m).is_file()
            )
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
            _check_regular(p)
            entries.append((p, p.name))
    if not entries:
        raise PricefitError(f"source {spec!r} names no file", hint="give at least one file, a glob, or 'demo'")
    return _unique_keys(entries)


def expand_paths(spec: str) -> list[Path]:
    """Comma-separated paths and globs -> existing files, in order; errors name what is missing."""
    return [p for p, _ in expand_spec(spec)]


def _is_csv(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".csv") or name.endswith(".csv.gz")


def resolve(spec: str, *, csv_columns: Mapping[str, Any] | None = None, csv_categories: str | None = None) -> Source:
    """Turn a source spec into a :class:`Source` (checks that files exist; reads nothing yet)."""
    spec = (spec or "").strip()
    if not spec:
        raise PricefitError("empty source", hint="give --source demo, a file, a glob, hf:<Category>, or csv:<file>")
    if spec == "demo" or spec.startswith("demo:"):
        from . import demo  # deferred: the reader imports Record/Source from this package, so it loads after it

        return demo.source(spec)
    if spec.startswith("hf:"):
        from . import hub  # deferred: the reader imports Record/Source from this package, so it loads after it

        return hub.source(spec)
    entries = expand_spec(spec[4:] if spec.startswith("csv:") else spec)
    paths = [p for p, _ in entries]
    if spec.startswith("csv:") or all(_is_csv(p) for p in paths):
        from . import csv_catalog  # deferred: the reader imports Record/Source from this package, so it loads after it

        src = csv_catalog.source(paths, spec, columns=csv_columns, categories=csv_categories)
    elif any(_is_csv(p) for p in paths):
        raise PricefitError(
            f"source {spec!r} mixes CSV and JSONL/parquet files",
            hint="curate the CSV catalog and the item-metadata files separately",
        )
    else:
        from . import amazon_meta  # deferred: the reader imports Record/Source from this package, so it loads after it

        src = amazon_meta.source(paths, spec)
    src.id_keys = {str(p): key for p, key in entries}
    return src


def iter_records(spec: str, **options: Any) -> Iterator[Record | Quarantined]:
    """Records (and quarantined rows) of a source spec, in file and line order."""
    return iter(resolve(spec, **options))
