"""The curated text of a listing: cleaned by polars expressions, then cut to a token budget.

:func:`text_expr`: each part is capped at ``max_text_tokens x 7`` characters before any
regex runs (the reference's CEILING_CHARS: a 5 MB description costs nothing), details keys in
``drop_detail_keys`` are removed, then the reference ``scrub``: runs of ``: [ ] " { } 【 】`` and
whitespace become one space, ``" ,"``/``",,"`` collapse, and words of ``part_number_min_len``+ characters
that contain a digit (part numbers) are removed. ``text = scrub(title) + "\\n" + scrub(contents)``,
then cut to ``max_text_tokens`` tokens of the configured tokenizer (:func:`truncate_to_tokens`: batched,
fast tokenizer, cut at the character offset of the last kept token so the text stays exactly as written).

:func:`build_text` does both for one listing; :func:`pricefit.curation_rules.apply_filters` for a frame.
"""

from __future__ import annotations

import json
import re
from typing import Any

import polars as pl

from .ingestion import RAW_SCHEMA, row_progress
from .models import load_tokenizer
from .records import normalize_record
from .settings.curate import CurateConfig

CEILING_CHARS_PER_TOKEN = 7  # reference: CEILING_CHARS = MAX_TOKENS * 7


def _scrub(expr: pl.Expr, min_len: int) -> pl.Expr:
    """The reference ``scrub``: collapse separators to spaces, then drop part-number-like words."""
    e = (
        expr.str.replace_all(r'[:\[\]"{}【】\s]+', " ")
        .str.strip_chars()
        .str.replace_all(" ,", ",", literal=True)
        .str.replace_all(",,,", ",", literal=True)
        .str.replace_all(",,", ",", literal=True)
    )
    word = pl.element()
    keep = (word.str.len_chars() < min_len) | ~word.str.contains(r"\d")
    return e.str.split(" ").list.eval(word.filter(keep)).list.join(" ")


def _drop_keys_pattern(keys: list[str]) -> str | None:
    if not keys:
        return None
    # the details JSON is written by normalize_record: {"k": "v", ...} with string values only
    names = "|".join(re.escape(json.dumps(k, ensure_ascii=False)[1:-1]) for k in keys)
    return rf'"(?:{names})": "(?:[^"\\]|\\.)*"(?:, )?'


def text_expr(cfg: CurateConfig) -> pl.Expr:
    """Polars expression: the cleaned (untruncated) text from title/description/features/details."""
    ceiling = cfg.max_text_tokens * CEILING_CHARS_PER_TOKEN
    details = pl.col("details").fill_null("{}").str.slice(0, ceiling * 4)
    pattern = _drop_keys_pattern(cfg.drop_detail_keys)
    if pattern:
        details = details.str.replace_all(pattern, "").str.replace_all(r", \}$", "}")
    details = details.str.replace_all(r"\\[nrt]", " ").str.replace_all(r"\\(.)", "$1")
    contents = pl.concat_str(
        [
            pl.col("description").fill_null("").str.slice(0, ceiling),
            pl.col("features").fill_null("").str.slice(0, ceiling),
            details.str.slice(0, ceiling),
        ],
        separator="\n",
    ).str.slice(0, ceiling)
    title = _scrub(pl.col("title").fill_null("").str.slice(0, ceiling), cfg.part_number_min_len)
    body = _scrub(contents, cfg.part_number_min_len)
    return pl.concat_str([title, body], separator="\n").str.strip_chars()


def truncate_to_tokens(texts: list[str], tokenizer: Any, max_tokens: int, batch_size: int = 1024) -> tuple[list[str], int]:
    """Cut each text to its first ``max_tokens`` tokens (fast tokenizer, batched). Returns (texts, n_truncated)."""
    out: list[str] = []
    n_cut = 0
    with row_progress(len(texts), "token budget") as bar:
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            enc = tokenizer(
                batch, add_special_tokens=False, truncation=True, max_length=max_tokens, return_offsets_mapping=True
            )
            for text, offsets in zip(batch, enc["offset_mapping"]):
                end = offsets[-1][1] if offsets else 0
                if len(offsets) >= max_tokens and end < len(text.rstrip()):
                    out.append(text[:end].rstrip())
                    n_cut += 1
                else:
                    out.append(text)
            bar.update(len(batch))
    return out, n_cut


def resolve_tokenizer(cfg: CurateConfig, tokenizer: Any = None) -> Any:
    """``tokenizer`` when given, else the configured one (``cfg.tokenizer``) loaded."""
    if tokenizer is not None:
        return tokenizer

    return load_tokenizer(cfg.tokenizer)


def tokenizer_name(cfg: CurateConfig, tokenizer: Any) -> str:
    """The tokenizer a curated manifest records: its own name or path, else the configured one."""
    return getattr(tokenizer, "name_or_path", None) or cfg.tokenizer


def build_text(
    title: str | None,
    description: Any = None,
    features: Any = None,
    details: Any = None,
    cfg: CurateConfig | None = None,
    tokenizer: Any = None,
) -> str:
    """The curated text of one listing (same expression as :func:`pricefit.curation.curate`; with a
    tokenizer, also truncated).

    Does not apply the min_chars rule; :func:`pricefit.curation.prepare_items` does.
    """
    cfg = cfg or CurateConfig()
    row = normalize_record(
        {"title": title, "description": description, "features": features, "details": details}, "listing", 1
    )
    text = pl.DataFrame([row], schema=RAW_SCHEMA).select(text_expr(cfg))[0, 0]
    if tokenizer is not None:
        text = truncate_to_tokens([text], tokenizer, cfg.max_text_tokens)[0][0]
    return text
