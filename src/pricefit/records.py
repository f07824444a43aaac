"""One source record -> one raw row (the raw.parquet schema of :mod:`pricefit.ingestion`).

:func:`normalize_record` flattens an item-metadata object; :func:`row_or_quarantine` does so for one
record of a source and turns a record no row can be made of into a quarantine row (with its file,
line and a named reason) instead of an error that would stop the whole ingest:

- ``too_deeply_nested``: a description, features or details value nests deeper than Python's
  recursion limit (``RecursionError``);
- ``invalid_unicode``: a text holds a lone surrogate such as ``\\ud800`` (valid JSON escape, not
  encodable as UTF-8: it would fail the parquet and JSONL writes);
- ``unreadable_record``: any other error flattening the record (the message names the exception).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping

from .prices import parse_price
from .sources import Record, excerpt_of

log = logging.getLogger("pricefit.curation")


def _join(value: Any) -> str:
    """description / features: list of strings (or a string, or null) -> one string, entries on lines."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "\n".join(_join(v) for v in value if v is not None)
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value)


def _detail_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_detail_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_detail_value(v) for v in value)
    return "" if value is None else str(value)


def _details(value: Any) -> str:
    """details (object, JSON text or null) -> JSON object text whose values are all strings."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return json.dumps({"details": value}, ensure_ascii=False)
    if not isinstance(value, Mapping):
        return "{}"
    return json.dumps({str(k): _detail_value(v) for k, v in value.items() if v is not None}, ensure_ascii=False)


def _text_or_none(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = _join(value) if not isinstance(value, str) else value
    return text if text.strip() else None


def normalize_record(
    data: Mapping[str, Any], source_file: str, source_line: int, id_key: str | None = None
) -> dict[str, Any]:
    """One item-metadata object -> one raw row (the raw.parquet schema).

    ``item_id`` is parent_asin (or asin); without one it is ``<id_key>:<line>``, where ``id_key`` names
    the file uniquely within its source (:attr:`pricefit.sources.Source.id_keys`; default: the file name).
    """
    raw_price = data.get("price")
    price, issue = parse_price(raw_price)
    asin = data.get("parent_asin") or data.get("asin")
    if asin is not None and str(asin).strip():
        item_id = str(asin).strip()
    else:
        item_id = f"{id_key or Path(source_file).name}:{source_line}"
    category = data.get("main_category")
    return {
        "item_id": item_id,
        "source_file": source_file,
        "source_line": source_line,
        "category": str(category) if category not in (None, "") else None,
        "title": _text_or_none(data.get("title")),
        "description": _join(data.get("description")),
        "features": _join(data.get("features")),
        "details": _details(data.get("details")),
        "price_raw": None if raw_price is None else (raw_price if isinstance(raw_price, str) else json.dumps(raw_price, default=str)),
        "price": price,
        "price_issue": issue,
    }


def _unencodable(row: Mapping[str, Any]) -> str | None:
    """The first field of ``row`` whose text cannot be written as UTF-8 (lone surrogates), or None."""
    for k, v in row.items():
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return k
    return None


def _safe_excerpt(value: Any) -> str:
    text = value if isinstance(value, str) else ""
    return excerpt_of(text.encode("utf-8", "backslashreplace").decode("ascii", "replace") if text else "")


def row_or_quarantine(item: Record, id_key: str | None = None) -> dict[str, Any]:
    """A raw row for ``item``, or a quarantine row ``{source_file, source_line, reason, excerpt}``."""
    title = item.data.get("title")
    try:
        row = normalize_record(item.data, item.source_file, item.source_line, id_key)
    except RecursionError:
        reason, detail = "too_deeply_nested", "a value nests deeper than Python's recursion limit"
    except Exception as e:  # one bad record never stops the others; the reason names what went wrong
        reason, detail = "unreadable_record", f"{type(e).__name__}: {e}"
    else:
        bad = _unencodable(row)
        if bad is None:
            return row
        reason, detail = "invalid_unicode", f"{bad} holds a lone surrogate (not encodable as UTF-8)"
    detail = _safe_excerpt(detail)
    log.warning("quarantined %s:%d (%s): %s", item.source_file, item.source_line, reason, detail)
    return {"source_file": item.source_file, "source_line": item.source_line, "reason": reason,
            "excerpt": f"{detail}; title: {_safe_excerpt(title)}" if isinstance(title, str) else detail}
