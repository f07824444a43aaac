"""Metrics on hand-made predictions, every number worked out by hand in the comments."""

import math

import pytest

from pricefit.metrics import PRICE_BANDS, color_for, colors, compute_metrics, price_band

# item: truth, pred, category -> abs error, relative error, colour
#   1:  10,   20,   A     -> 10,  1.00,  green (< $40)
#   2: 100,  130,   A     -> 30,  0.30,  green (< $40)
#   3: 200, None,   B     -> 200 (unparsed scored as $0), 1.00, red
#   4: 600,  540,   None  -> 60,  0.10,  green (< 20%)
#   5:  30,   95,   B     -> 65,  2.17,  orange (< $80)
TRUTH = [10.0, 100.0, 200.0, 600.0, 30.0]
PRED = [20.0, 130.0, None, 540.0, 95.0]
CATS = ["A", "A", "B", None, "B"]


def test_headline_metrics_exact():
    m = compute_metrics(TRUTH, PRED, CATS)
    assert m["n"] == 5
    assert m["n_unparsed"] == 1
    assert m["n_parsed"] == 4
    assert m["unparsed_scored_as"] == 0.0
    assert m["mae"] == pytest.approx((10 + 30 + 200 + 60 + 65) / 5)  # 73.0
    assert m["mae_parsed"] == pytest.approx((10 + 30 + 60 + 65) / 4)  # 41.25
    assert m["hit_rate"] == pytest.approx(3 / 5)
    # relative errors sorted: 0.1, 0.3, 1.0, 1.0, 2.1667 -> median 1.0 -> 100 %
    assert m["mdape"] == pytest.approx(100.0)
    logs = [math.log(21 / 11), math.log(131 / 101), math.log(1 / 201), math.log(541 / 601), math.log(96 / 31)]
    assert m["rmsle"] == pytest.approx(math.sqrt(sum(x * x for x in logs) / 5))
    assert (m["green"], m["orange"], m["red"]) == (3, 1, 1)


def test_by_category_and_band_exact():
    m = compute_metrics(TRUTH, PRED, CATS)
    assert set(m["by_category"]) == {"A", "B", "(none)"}
    a, b, none = m["by_category"]["A"], m["by_category"]["B"], m["by_category"]["(none)"]
    assert (a["n"], a["mae"], a["hit_rate"], a["n_unparsed"]) == (2, 20.0, 1.0, 0)
    assert (b["n"], b["mae"], b["hit_rate"], b["n_unparsed"]) == (2, 132.5, 0.0, 1)
    assert (none["n"], none["mae"], none["hit_rate"]) == (1, 60.0, 1.0)
    # bands of the true price: 10 -> <$25, 30 -> $25-50, 100 and 200 -> $100-250, 600 -> $500+
    assert list(m["by_band"]) == ["<$25", "$25-50", "$100-250", "$500+"]
    mid = m["by_band"]["$100-250"]
    assert (mid["n"], mid["mae"], mid["hit_rate"], mid["n_unparsed"]) == (2, 115.0, 0.5, 1)
    assert sum(v["n"] for v in m["by_band"].values()) == 5


def test_perfect_predictions():
    m = compute_metrics([5.0, 50.0, 500.0], [5.0, 50.0, 500.0])
    assert (m["mae"], m["rmsle"], m["hit_rate"], m["mdape"]) == (0.0, 0.0, 1.0, 0.0)
    assert m["by_category"] == {}


def test_hit_rule_boundaries_are_strict():
    # error exactly $40 on a $300 item (13%) is a hit by the 20% rule; exactly $40 and 20% is not
    assert compute_metrics([300.0], [340.0])["hit_rate"] == 1.0
    assert compute_metrics([200.0], [240.0])["hit_rate"] == 0.0
    assert color_for(200.0, 240.0) == "orange"
    assert color_for(200.0, 280.0) == "red"  # $80 and 40% exactly: red
    assert color_for(1000.0, 1300.0) == "orange"  # $300 but 30%


def test_nan_counts_as_unparsed_and_length_mismatch_fails():
    m = compute_metrics([10.0, 20.0], [float("nan"), 20.0])
    assert m["n_unparsed"] == 1 and m["mae"] == 5.0
    with pytest.raises(ValueError, match="truth has 2 items but pred has 1"):
        compute_metrics([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no items"):
        compute_metrics([], [])


def test_bands_cover_every_price():
    assert [price_band(x) for x in [0.0, 24.99, 25.0, 99.99, 250.0, 499.99, 500.0, 99999.0]] == [
        "<$25", "<$25", "$25-50", "$50-100", "$250-500", "$250-500", "$500+", "$500+"]
    assert len(PRICE_BANDS) == 6
    assert colors(TRUTH, PRED) == ["green", "green", "red", "green", "orange"]
