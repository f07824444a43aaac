"""Amazon Reviews 2023 item metadata from local files: .jsonl, .jsonl.gz (one object a line) or .parquet."""

from __future__ import annotations

import decimal
import gzip
import json
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

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


def _lines(raw: bytes) -> list[bytes]:
    """One ``\n``-ended chunk -> its lines under universal newlines (``\n``, ``\r\n`` or a lone ``\r``
    ends a line, as in an editor): a file with CR-only line ends is many lines, not one."""
    body = raw[:-1] if raw.endswith(b"\n") else raw
    if body.endswith(b"\r"):
        body = body[:-1]
    return body.split(b"\r") if b"\r" in body else [body]


#: the item-metadata fields a listing file must have somewhere (else its columns are misnamed)
REQUIRED_FIELDS = ("title", "price")
LAYOUT_FIELDS = ("parent_asin", "title", "price", "main_category", "description", "features", "details")


def _schema_error(path: Path, missing: list[str], found: Iterable[str]) -> PricefitError:
    shown = ", ".join(str(c) for c in found) or "none"
    return PricefitError(
        f"{path} has no {' and no '.join(missing)} {'column' if len(missing) == 1 else 'columns'} "
        f"(it has: {shown}); item-metadata files need {', '.join(REQUIRED_FIELDS)} "
        f"(the layout: {', '.join(LAYOUT_FIELDS)})",
        hint="rename the file's columns to the item-metadata names, or map them with a CSV catalog "
        "(csv:<file> and curate.csv_columns)",
    )


def iter_jsonl(path: Path) -> Iterator[Record | Quarantined]:
    """Lines of a (gzipped) JSONL file; blank lines are skipped (they hold no row).

    Lines end at ``\n``, ``\r\n`` or a lone ``\r``. A file none of whose objects has a ``title``
    (or a ``price``) key raises a schema error naming the expected keys after its last line (the
    ingest is atomic: nothing is written)."""
    name = str(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        f = opener(path, "rb")
    except OSError as e:
        raise PricefitError(f"cannot open {path}: {e.strerror or e}", hint="check the path and its permissions") from None
    line_no = 0
    seen: set[str] = set()
    first_keys: list[str] | None = None
    try:
        with f:
            for chunk in f:
                for raw in _lines(chunk):
                    line_no += 1
                    item = parse_line(raw, name, line_no)
                    if item is None:
                        continue
                    if isinstance(item, Record) and len(seen) < len(REQUIRED_FIELDS):
                        seen.update(k for k in REQUIRED_FIELDS if k in item.data)
                        if first_keys is None:
                            first_keys = list(item.data)[:20]
                    yield item
    except (OSError, EOFError, zlib.error) as e:
        raise PricefitError(
            f"cannot read {path} after line {line_no}: {e}",
            hint="the file is corrupt or truncated (a broken .gz?); re-download it or leave it out of --source",
        ) from None
    if first_keys is not None and len(seen) < len(REQUIRED_FIELDS):
        raise _schema_error(path, [k for k in REQUIRED_FIELDS if k not in seen], first_keys)


def _plain(value: Any) -> Any:
    """A parquet value -> what a JSON line would hold: decimals become floats, binary becomes
    UTF-8 text (UnicodeDecodeError when it is not), nested lists and structs likewise."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8")
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def iter_parquet(path: Path, batch_rows: int = 4096) -> Iterator[Record | Quarantined]:
    """Rows of a parquet file in the item-metadata layout; source_line is the 1-based row number.

    The file must have ``title`` and ``price`` columns (else a schema error naming the expected
    columns). Decimal columns are read as numbers, binary columns as UTF-8 text; a row whose binary
    value is not UTF-8 is quarantined (``invalid_utf8``)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        raise PricefitError(f"cannot read parquet file {path}: {e}", hint="check that it is a parquet file") from None
    names = pf.schema_arrow.names
    missing = [k for k in REQUIRED_FIELDS if k not in names]
    if missing:
        raise _schema_error(path, missing, names)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_rows):
            for obj in batch.to_pylist():
                row += 1
                try:
                    data = _plain(obj)
                except UnicodeDecodeError as e:
                    yield Quarantined(str(path), row, "invalid_utf8", f"a binary value is not UTF-8: {e.reason} at byte {e.start}")
                    continue
                yield Record(str(path), row, data)
    except Exception as e:
        raise PricefitError(f"cannot read {path} after row {row}: {e}", hint="the parquet file is corrupt") from None
