"""GX Data Docs that read without a network.

Great Expectations' pages load Bootstrap, jQuery, bootstrap-table and Font Awesome from CDNs, and
the index page's lists (validation results, expectation suites) are filled in by JavaScript from
data embedded in the page. Offline, the index is unstyled and its lists are empty. After GX has
built the site, :func:`make_offline` rewrites every page in place:

- the CDN ``<link>``/``<script src>``/``<img src>`` tags are removed (nothing is fetched from outside) and a
  small inline stylesheet is added (readable tables, Batch Spec tooltips hidden);
- each JavaScript-filled table of the index gets its rows as plain HTML, with the same columns, a
  "Success"/"Failed" text for the status icon and a link to each validation result page.

The pages keep their names and links; the contract verdict does not depend on any of this.
"""

from __future__ import annotations

import ast
import html
import re
from pathlib import Path

_REMOTE_LINK = re.compile(r'<link\b[^>]*\bhref="https?://[^"]*"[^>]*>[ \t]*\n?', re.I)
_REMOTE_SCRIPT = re.compile(r'<script\b[^>]*\bsrc="https?://[^"]*"[^>]*>\s*</script>[ \t]*\n?', re.I)
_REMOTE_IMG = re.compile(r'<img\b[^>]*\bsrc="https?://[^"]*"[^>]*>', re.I)
_TABLE_CALL = re.compile(r"\$\('#([\w-]+)'\)\.bootstrapTable\(")
_MARK = "<!-- pricefit: offline Data Docs -->"
STYLE = _MARK + """
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; color: #222; }
  table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
  th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
  th { background: #f3f3f3; }
  .cooltip .top, .d-none, .sr-only, button { display: none; }
  .text-success { color: #1a7f37; } .text-danger { color: #cf222e; }
  nav ul, .nav { list-style: none; padding-left: 0; }
</style>
"""


def _literal_after(text: str, key: str, start: int, end: int):
    """The Python-literal list that follows ``key:`` on one line between ``start`` and ``end``."""
    m = re.compile(rf"^\s*{key}: (\[.*\]),?\s*$", re.M).search(text, start, end)
    return None if m is None else ast.literal_eval(m.group(1))


def _cell(row: dict, field: str) -> str:
    if field == "validation_success" and "_validation_success_text" in row:
        ok = row["_validation_success_text"] == "Success"
        return f'<span class="{"text-success" if ok else "text-danger"}">{html.escape(row["_validation_success_text"])}</span>'
    return str(row.get(field, ""))  # GX's own HTML for the cell, as its script would insert it


def _rows_html(columns: list[dict], data: list[dict]) -> str:
    link = any("_table_row_link_path" in r for r in data)
    head = "".join(f"<th>{html.escape(str(c.get('title', c['field'])))}</th>" for c in columns) + ("<th>Details</th>" if link else "")
    body = []
    for r in data:
        cells = "".join(f"<td>{_cell(r, c['field'])}</td>" for c in columns)
        if link:
            path = html.escape(str(r.get("_table_row_link_path", "")), quote=True)
            cells += f'<td><a href="{path}">open</a></td>'
        body.append(f"<tr>{cells}</tr>")
    return f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"


def _fill_tables(text: str) -> str:
    for m in list(_TABLE_CALL.finditer(text)):
        table_id = m.group(1)
        end = text.find("</script>", m.end())
        end = len(text) if end < 0 else end
        columns, data = _literal_after(text, "columns", m.end(), end), _literal_after(text, "data", m.end(), end)
        if columns is None or data is None:
            continue
        t = re.search(rf'<table\b[^>]*\bid="{re.escape(table_id)}"[^>]*>(.*?)</table>', text, re.S)
        if t is None:
            continue
        text = text[:t.start(1)] + _rows_html(columns, data) + text[t.end(1):]
    return text


def offline_page(text: str) -> str:
    """One page without CDN tags, with inline styles and its tables filled in (idempotent)."""
    if _MARK in text:
        return text
    text = _REMOTE_IMG.sub("", _REMOTE_SCRIPT.sub("", _REMOTE_LINK.sub("", text)))
    text = _fill_tables(text)
    return text.replace("</head>", STYLE + "</head>", 1) if "</head>" in text else STYLE + text


def make_offline(docs_dir: str | Path) -> int:
    """Rewrite every page of a Data Docs site in place; the number of pages rewritten."""
    n = 0
    for page in sorted(Path(docs_dir).rglob("*.html")):
        before = page.read_text(encoding="utf-8")
        after = offline_page(before)
        if after != before:
            page.write_text(after, encoding="utf-8")
            n += 1
    return n
