"""Amazon Reviews 2023 item metadata from local files: .jsonl, .jsonl.gz (one object a line) or .parquet."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import PricefitError
from . import Quarantined, Record, Source, excerpt_of

_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")


def source(paths: list[Path], spec: str) -> Source:
    for p in paths:
        name = p.name.lower()
        if not (name.endswith(_JSONL_SUFFIXES) or name.endswith(".parquet")):
            raise PricefitError(
                f"cannot tell the format of {p}",
                hint="item-metadata files must end in .jsonl, .jsonl.gz or .parquet; CSV catalogs take csv:<file>",
            )
    return Source(spec=spec, files=[str(p) for p in paths], synthetic=False, _iter=lambda: _iter_files(paths))


def _iter_files(paths: Iterable[Path]) -> Iterator[Record | Quarantined]:
    for p in paths:
        if p.name.lower().endswith(".parquet"):
            yield from iter_parquet(p)
        else:
            yield from iter_jsonl(p)


_BOM = b"\xef\xbb\xbf"


def parse_line(raw: bytes, source_file: str, line_no: int) -> Record | Quarantined | None:
    """One JSONL line -> Record, Quarantined, or None for a blank line.

    A leading UTF-8 byte-order mark is dropped (editors write one at the start of a file; ``cat``
    of such files puts one mid-file): it is never part of a JSON line.
    """
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Quarantined(source_file, line_no, "invalid_utf8", f"{e.reason} at byte {e.start}: {excerpt_of(raw)}")
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        return Quarantined(source_file, line_no, "invalid_json", f"{getattr(e, 'msg', e)}: {excerpt_of(text)}")
    if not isinstance(obj, dict):
        return Quarantined(source_file, line_no, "not_an_object", excerpt_of(text))
    return Record(source_file, line_no, obj)


def iter_jsonl(path: Path) -> Iterator[Record | Quarantined]:
    """Lines of a (gzipped) JSONL file; blank lines are skipped (they hold no row)."""
    name = str(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        f = opener(path, "rb")
    except OSError as e:
        raise PricefitError(f"cannot open {path}: {e.strerror or e}", hint="check the path and its permissions") from None
    line_no = 0
    try:
        with f:
            for line_no, raw in enumerate(f, start=1):
                item = parse_line(raw, name, line_no)
                if item is not None:
                    yield item
    except (OSError, EOFError, zlib.error) as e:
        raise PricefitError(
            f"cannot read {path} after line {line_no}: {e}",
            hint="the file is corrupt or truncated (a broken .gz?); re-download it or leave it out of --source",
        ) from None


def iter_parquet(path: Path, batch_rows: int = 4096) -> Iterator[Record | Quarantined]:
    """Rows of a parquet file in the item-metadata layout; source_line is the 1-based row number."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        raise PricefitError(f"cannot read parquet file {path}: {e}", hint="check that it is a parquet file") from None
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_rows):
            for obj in batch.to_pylist():
                row += 1
                yield Record(str(path), row, obj)
    except Exception as e:
        raise PricefitError(f"cannot read {path} after row {row}: {e}", hint="the parquet file is corrupt") from None
