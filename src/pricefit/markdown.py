"""Markdown tables: the one renderer every report, comparison and UI artifact uses.

A module of its own, so that what imports it (tasks/ui.py, which the train step imports for its
progress artifact) does not depend on pricefit.report: the cache keys follow the imports.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence


def _cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> list[str]:
    """The lines of one Markdown table; ``align`` holds ``l`` or ``r`` per column (default: the first
    left, the rest right); cells are escaped (``|``, newlines)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines
