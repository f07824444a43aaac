"""CSV product catalogs, mapped onto the item-metadata layout by a column mapping.

A mapping names, for each item-metadata field, the CSV column that fills it::

    {"parent_asin": "sku", "title": "name", "price": "price", "main_category": "dept",
     "description": "blurb", "features": ["bullet1", "bullet2"], "details": ["brand", "color"],
     "store": "brand"}

``description``/``features`` take one column or a list (each non-empty value becomes one entry);
``details`` takes a list of columns that become ``{column: value}``. Only ``title`` and ``price`` are
required. A ``category_id`` entry maps a column of ids through a categories file (id,category_name)
into ``main_category``.

Built in: the Amazon Products 2023 layout (products.csv + categories.csv beside it). It is chosen
when no mapping is given and the header has asin, title, price and category_id. Its listPrice and
sales columns are left out of the text on purpose: they leak the price.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import PricefitError
from . import Quarantined, Record, Source, excerpt_of

AMAZON_PRODUCTS_2023: dict[str, Any] = {
    "parent_asin": "asin",
    "title": "title",
    "price": "price",
    "category_id": "category_id",
}
_FIELDS = {"parent_asin", "title", "price", "main_category", "category_id", "description", "features", "details", "store"}


def _open_text(path: Path):
    raw = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
    # utf-8-sig drops a byte-order mark at the start (Excel writes one) so the first header name is
    # "asin", not "\ufeffasin"; surrogateescape keeps going past invalid UTF-8 (such rows are quarantined)
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _show_header(header: list[str]) -> str:
    """Header names for a message; a name with invisible characters or edge spaces is quoted and escaped."""
    return ", ".join(c if c and c.isprintable() and c == c.strip() else repr(c) for c in header)


def _read_header(path: Path) -> list[str]:
    try:
        with _open_text(path) as f:
            return next(csv.reader(f), [])
    except (OSError, EOFError) as e:
        raise PricefitError(f"cannot read {path}: {e}", hint="check the path, its permissions and that it is a CSV file") from None


def _categories_file(products: Path, categories: str | None) -> Path | None:
    if categories:
        p = Path(categories)
        if not p.exists():
            raise PricefitError(f"categories file {p} does not exist", hint="fix csv_categories in the curate config")
        return p
    for name in ("categories.csv", "categories.csv.gz"):
        p = products.with_name(name)
        if p.exists():
            return p
    return None


def load_categories(path: Path) -> dict[str, str]:
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"id", "category_name"} <= set(reader.fieldnames):
            raise PricefitError(
                f"categories file {path} must have the columns id,category_name (has {reader.fieldnames})",
                hint="give a categories file with id,category_name or map main_category to a column instead",
            )
        return {row["id"].strip(): row["category_name"].strip() for row in reader if row.get("id")}


def check_mapping(mapping: Mapping[str, Any], header: list[str], path: Path) -> None:
    unknown = set(mapping) - _FIELDS
    if unknown:
        raise PricefitError(
            f"csv column mapping has unknown field(s): {', '.join(sorted(unknown))}",
            hint=f"map these item-metadata fields only: {', '.join(sorted(_FIELDS))}",
        )
    for req in ("title", "price"):
        if req not in mapping:
            raise PricefitError(f"csv column mapping must map {req!r}", hint=f"add {req}: <column> to csv_columns")
    missing = []
    for value in mapping.values():
        for col in [value] if isinstance(value, str) else list(value):
            if col not in header:
                missing.append(col)
    if missing:
        raise PricefitError(
            f"{path} has no column(s) {', '.join(missing)} (header: {_show_header(header)})",
            hint="fix csv_columns in the curate config so each names a column of the file",
        )


def source(paths: list[Path], spec: str, columns: Mapping[str, Any] | None = None, categories: str | None = None) -> Source:
    plans = []
    for p in paths:
        header = _read_header(p)
        if not header:
            raise PricefitError(f"{p} is empty: no CSV header", hint="give a CSV file with a header row")
        mapping = dict(columns) if columns else None
        if mapping is None:
            if set(AMAZON_PRODUCTS_2023.values()) <= set(header):
                mapping = dict(AMAZON_PRODUCTS_2023)
            else:
                raise PricefitError(
                    f"{p} is not in the Amazon Products 2023 layout and no column mapping was given "
                    f"(header: {_show_header(header)})",
                    hint="set curate.csv_columns, e.g. --set 'curate.csv_columns={title: name, price: cost}'",
                )
        check_mapping(mapping, header, p)
        cat_names: dict[str, str] = {}
        if "category_id" in mapping:
            cat_file = _categories_file(p, categories)
            if cat_file is None:
                raise PricefitError(
                    f"no categories.csv beside {p} to resolve category_id",
                    hint="put categories.csv[.gz] beside the products file or set curate.csv_categories",
                )
            cat_names = load_categories(cat_file)
        plans.append((p, mapping, cat_names))
    return Source(spec=spec, files=[str(p) for p in paths], synthetic=False, _iter=lambda: _iter_all(plans))


def _iter_all(plans) -> Iterator[Record | Quarantined]:
    for p, mapping, cat_names in plans:
        yield from iter_csv(p, mapping, cat_names)


def _values(row: dict[str, str], cols: Any) -> list[str]:
    cols = [cols] if isinstance(cols, str) else list(cols)
    return [row[c].strip() for c in cols if row.get(c) and row[c].strip()]


def _has_surrogates(values) -> bool:
    for v in values:
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


class _Lines:
    """The physical lines of a CSV text file, numbered (1-based), that csv.reader pulls one at a time.

    ``taken`` holds the lines of the record being read; :meth:`push_back` puts lines in front again
    (after a record that an unclosed quote merged, its lines are read once more as rows). An iterator
    class, not a generator: it can yield again after it once reported the end of the file."""

    def __init__(self, f):
        self._file = iter(f)
        self._no = 0
        self._pending: list[tuple[int, str]] = []
        self.taken: list[tuple[int, str]] = []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self._pending:
            item = self._pending.pop()
        else:
            text = next(self._file)  # StopIteration at the end of the file
            self._no += 1
            item = (self._no, text)
        self.taken.append(item)
        return item[1]

    def push_back(self, lines: list[tuple[int, str]]) -> None:
        self._pending.extend(reversed(lines))


def _whole_rows(lines: list[tuple[int, str]], width: int, price_col: int | None) -> list[int]:
    """The lines among ``lines`` that are, on their own, a complete row: balanced quotes, ``width``
    fields and (when the price column is known) a parseable price. A quoted field that legitimately
    spans lines ends in a line with one closing quote, and prose rarely has the header's exact field
    count with a number in the price column: such lines inside one record mean a quote was never
    closed and the rows after it were read as one field."""
    from ..prices import parse_price  # deferred: only a multi-line record needs it

    found = []
    for no, text in lines:
        if text.count('"') % 2:
            continue
        fields = next(csv.reader([text]), [])
        if len(fields) == width and (price_col is None or parse_price(fields[price_col])[0] is not None):
            found.append(no)
    return found


def iter_csv(path: Path, mapping: Mapping[str, Any], cat_names: Mapping[str, str]) -> Iterator[Record | Quarantined]:
    """Rows of a CSV catalog; ``source_line`` is the physical line a row starts on.

    A row with the wrong field count or invalid UTF-8 is quarantined. A record that spans several
    lines among which are complete rows of their own (:func:`_whole_rows`) is an unclosed quote: its
    first line is quarantined (``csv_unclosed_quote``, naming the lines it swallowed) and the lines
    after it are read again as rows, so one stray quote costs one row, not the rest of the file."""
    name = str(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a 5 MB description must not stop the run
    try:
        f = _open_text(path)
    except OSError as e:
        raise PricefitError(f"cannot open {path}: {e}", hint="check the path and its permissions") from None
    line = 1
    try:
        with f:
            lines = _Lines(f)
            reader = csv.reader(lines)
            header = next(reader, [])
            width = len(header)
            price = mapping.get("price")
            price_col = header.index(price) if isinstance(price, str) and price in header else None
            lines.taken.clear()
            for fields in reader:
                taken, lines.taken = lines.taken, []
                if not taken:
                    continue
                line = taken[0][0]
                if not fields:
                    continue
                if len(taken) > 1:
                    merged = _whole_rows(taken[1:], width, price_col)
                    if merged:
                        yield Quarantined(
                            name, line, "csv_unclosed_quote",
                            f"a quote opened on line {line} runs on to line {taken[-1][0]}: lines "
                            f"{taken[1][0]}-{taken[-1][0]} ({len(merged)} of them complete rows) were read into "
                            f"this one row; they are read again as rows: {excerpt_of(taken[0][1].encode('utf-8', 'surrogateescape'))}",
                        )
                        lines.push_back(taken[1:])
                        continue
                if _has_surrogates(fields):
                    text = ",".join(fields).encode("utf-8", "surrogateescape")
                    yield Quarantined(name, line, "invalid_utf8", excerpt_of(text))
                    continue
                if len(fields) != width:
                    yield Quarantined(
                        name, line, "csv_bad_row", f"{len(fields)} fields, header has {width}: {excerpt_of(','.join(fields))}"
                    )
                    continue
                row = dict(zip(header, fields))
                yield Record(name, line, _to_meta(row, mapping, cat_names))
    except (OSError, EOFError, csv.Error) as e:
        raise PricefitError(f"cannot read {path} near line {line}: {e}", hint="the CSV file is corrupt or truncated") from None


def _to_meta(row: dict[str, str], mapping: Mapping[str, Any], cat_names: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"description": [], "features": [], "details": {}}
    for fld, cols in mapping.items():
        if fld in ("description", "features"):
            out[fld] = _values(row, cols)
        elif fld == "details":
            out["details"] = {c: row[c].strip() for c in ([cols] if isinstance(cols, str) else cols) if row.get(c, "").strip()}
        elif fld == "category_id":
            cid = row.get(cols, "").strip()
            out["main_category"] = cat_names.get(cid)
        else:
            value = row.get(cols)
            out[fld] = value.strip() if isinstance(value, str) and value.strip() else None
    return out
