"""Markdown reports as plain text for a terminal: tables aligned in columns, no ``**``/backticks."""

from __future__ import annotations

import re

_SEPARATOR = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+$")


def _plain(s: str) -> str:
    return s.replace("**", "").replace("`", "").replace("\\|", "|")


def _cells(line: str) -> list[str]:
    return [_plain(c.strip()) for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def markdown_to_text(md: str) -> str:
    """``md`` for a terminal: each table's columns padded to one width (numbers right-aligned as the
    table's alignment row says), headings without ``#``, emphasis and code marks removed."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|") and i + 1 < len(lines) and _SEPARATOR.match(lines[i + 1].strip()):
            right = [c.strip().endswith(":") for c in lines[i + 1].strip()[1:-1].split("|")]
            rows = [_cells(line)]
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            widths = [max(len(r[k]) if k < len(r) else 0 for r in rows) for k in range(len(rows[0]))]
            for r in rows:
                out.append("  ".join((c.rjust(w) if k < len(right) and right[k] else c.ljust(w))
                                     for k, (c, w) in enumerate(zip(r, widths))).rstrip())
            continue
        out.append(_plain(re.sub(r"^#+\s*", "", line)))
        i += 1
    return "\n".join(out)
