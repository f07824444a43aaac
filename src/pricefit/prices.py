"""Parse the price field of a listing into a number, or a named reason why not.

Amazon metadata writes prices in many shapes: ``139.99``, ``"$1,299.99"``, ``"None"``, ``""``,
``null``, ``"from 12.99"``, ``"$10.99 - $15.99"``. A price is kept only where its value is clear;
everything else gets one of these reasons (they become curation drop reasons):

- ``price_missing``: null, NaN, empty, or a placeholder such as "None", "null", "N/A", "-";
- ``price_range``: two prices ("10.99 - 15.99", "$5 to $9"): which one the item costs is ambiguous,
  so the item is dropped rather than guessed (the reference recipe dropped these too: float() fails);
- ``price_negative``: a number below zero (a data error, never a price);
- ``price_unparseable``: anything else that is not a single number (text, "12,99", infinity).

A leading "from" / "starting at" / "as low as" is a lower bound that Amazon shows for the cheapest
variant: the number is taken as the price. A price of exactly 0 is a placeholder for "no price"
(the Amazon Products 2023 catalog writes 0 for unknown prices): ``price_missing``.

Curation drop reasons (docs/ARCHITECTURE.md) are coarser than these: :data:`DROP_REASON` maps
``price_range`` to ``price_unparseable`` (no single value) and ``price_negative`` to
``price_out_of_range``; the precise reason stays in the raw artifact's ``price_issue`` column.
"""

from __future__ import annotations

import math
import re

PRICE_MISSING = "price_missing"
PRICE_UNPARSEABLE = "price_unparseable"
PRICE_RANGE = "price_range"
PRICE_NEGATIVE = "price_negative"
# parse reason -> curation drop reason (the documented set in docs/ARCHITECTURE.md)
DROP_REASON = {
    PRICE_MISSING: "price_missing",
    PRICE_UNPARSEABLE: "price_unparseable",
    PRICE_RANGE: "price_unparseable",
    PRICE_NEGATIVE: "price_out_of_range",
}

_MISSING_WORDS = {"", "none", "null", "nan", "n/a", "na", "-", "--", "—", "unavailable", "not available"}
_PREFIX = re.compile(r"^(?:from|starting\s+(?:at|from)|as\s+low\s+as|only|price:?|now)\s+", re.I)
_CURRENCY = re.compile(r"(?:us\s*\$|usd|\$|us\b)", re.I)
# one number: optional sign, digits with optional US thousands separators, optional decimals
_NUMBER = re.compile(r"^([+-]?)\s*(\d{1,3}(?:,\d{3})+|\d+)?(\.\d+)?$")
_RANGE = re.compile(r"\d\s*(?:-|–|—|to)\s*\$?\s*\d", re.I)


def parse_price(raw: object) -> tuple[float | None, str | None]:
    """``raw`` (any JSON value) -> ``(price, None)`` or ``(None, reason)``; never raises."""
    if raw is None:
        return None, PRICE_MISSING
    if isinstance(raw, bool):  # bool is an int in Python; True is not a price
        return None, PRICE_UNPARSEABLE
    if isinstance(raw, (int, float)):
        value = float(raw)
        if math.isnan(value):
            return None, PRICE_MISSING
        if math.isinf(value):
            return None, PRICE_UNPARSEABLE
        if value < 0:
            return None, PRICE_NEGATIVE
        if value == 0:
            return None, PRICE_MISSING
        return value, None
    if not isinstance(raw, str):
        return None, PRICE_UNPARSEABLE
    text = raw.strip()
    if text.lower() in _MISSING_WORDS:
        return None, PRICE_MISSING
    text = _PREFIX.sub("", text)
    text = _CURRENCY.sub("", text).strip()
    if _RANGE.search(text):
        return None, PRICE_RANGE
    m = _NUMBER.match(text)
    if not m or (m.group(2) is None and m.group(3) is None):
        return None, PRICE_UNPARSEABLE
    sign, whole, frac = m.groups()
    value = float((whole or "0").replace(",", "") + (frac or ""))
    if value == 0:
        return None, PRICE_MISSING
    if sign == "-":
        return None, PRICE_NEGATIVE
    return value, None
