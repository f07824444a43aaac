"""parse_price: a value where the price is clear, else a named reason."""

from __future__ import annotations

import math

import pytest

from pricefit.prices import DROP_REASON, parse_price


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("$1,299.99", 1299.99),
        ("1,000", 1000.0),
        ("139.99", 139.99),
        (139.99, 139.99),
        (45, 45.0),
        ("from 12.99", 12.99),
        ("Starting at $7.50", 7.5),
        ("USD 45", 45.0),
        ("  $ 12 ", 12.0),
        (".99", 0.99),
    ],
)
def test_clear_prices_parse_to_their_value(raw, expected):
    value, reason = parse_price(raw)
    assert reason is None
    assert value == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (None, "price_missing"),
        ("None", "price_missing"),
        ("", "price_missing"),
        ("   ", "price_missing"),
        ("null", "price_missing"),
        ("N/A", "price_missing"),
        (float("nan"), "price_missing"),
        ("nan", "price_missing"),
        (0, "price_missing"),  # a $0 catalog price is a placeholder
        ("$0.00", "price_missing"),
        ("10.99 - 15.99", "price_range"),
        ("$5 to $9", "price_range"),
        ("$10.99 – $15.99", "price_range"),
        ("-5", "price_negative"),
        ("$-5.00", "price_negative"),
        (-1.0, "price_negative"),
        ("12,99", "price_unparseable"),  # decimal comma: ambiguous with a thousands separator
        ("call for price", "price_unparseable"),
        ("inf", "price_unparseable"),
        (math.inf, "price_unparseable"),
        (True, "price_unparseable"),
        ([12.99], "price_unparseable"),
        ({"amount": 12.99}, "price_unparseable"),
    ],
)
def test_unclear_prices_get_a_named_reason(raw, reason):
    assert parse_price(raw) == (None, reason)


def test_every_parse_reason_maps_to_a_documented_drop_reason():
    documented = {"price_missing", "price_unparseable", "price_out_of_range"}
    assert set(DROP_REASON.values()) <= documented
    assert DROP_REASON["price_range"] == "price_unparseable"
    assert DROP_REASON["price_negative"] == "price_out_of_range"
