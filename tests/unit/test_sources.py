"""Sources: every kind yields item-metadata records with file and line, or quarantine; never stops on a bad line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pricefit.errors import PricefitError
from pricefit.sources import Quarantined, Record, iter_records, resolve

GOOD_A = {"title": "Kettle", "price": 20.5, "parent_asin": "A1", "main_category": "Appliances"}
GOOD_B = {"title": "Toaster", "price": "$35.00", "parent_asin": "B2"}


def broken_jsonl_bytes() -> bytes:
    return b"\n".join(
        [
            json.dumps(GOOD_A).encode(),  # 1
            b'{"title": "cut off", "price": ',  # 2 malformed JSON
            b'{"title": "caf\xe9"}',  # 3 invalid UTF-8 (latin-1 byte)
            b"[1, 2, 3]",  # 4 valid JSON, not an object
            b"   ",  # 5 blank: no row
            json.dumps(GOOD_B).encode(),  # 6
        ]
    ) + b"\n"


def split(items):
    recs = [i for i in items if isinstance(i, Record)]
    quar = [i for i in items if isinstance(i, Quarantined)]
    return recs, quar


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl_bad_lines_are_quarantined_with_line_numbers(tmp_path, gz):
    path = tmp_path / ("broken.jsonl.gz" if gz else "broken.jsonl")
    data = broken_jsonl_bytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    recs, quar = split(list(iter_records(str(path))))
    assert [(r.source_line, r.data["parent_asin"]) for r in recs] == [(1, "A1"), (6, "B2")]
    assert [(q.source_line, q.reason) for q in quar] == [(2, "invalid_json"), (3, "invalid_utf8"), (4, "not_an_object")]
    assert all(q.source_file == str(path) for q in quar)
    assert "cut off" in quar[0].excerpt and quar[2].excerpt == "[1, 2, 3]"


def test_parquet_rows_are_records_numbered_from_one(tmp_path):
    import polars as pl

    path = tmp_path / "meta.parquet"
    pl.DataFrame(
        {"title": ["x", "y"], "price": [1.5, None], "description": [["d1", "d2"], []], "parent_asin": ["P1", "P2"]}
    ).write_parquet(path)
    recs = list(iter_records(str(path)))
    assert [(r.source_line, r.data["parent_asin"], r.data["description"]) for r in recs] == [
        (1, "P1", ["d1", "d2"]),
        (2, "P2", []),
    ]


def test_glob_and_comma_list_read_files_in_order(tmp_path):
    for name, obj in (("b.jsonl", GOOD_B), ("a.jsonl", GOOD_A)):
        (tmp_path / name).write_text(json.dumps(obj) + "\n")
    by_glob = resolve(str(tmp_path / "*.jsonl"))
    assert by_glob.files == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    assert [r.data["parent_asin"] for r in by_glob] == ["A1", "B2"]
    by_list = resolve(f"{tmp_path / 'b.jsonl'},{tmp_path / 'a.jsonl'}")
    assert [r.data["parent_asin"] for r in by_list] == ["B2", "A1"]


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda d: str(d / "nope.jsonl"), "does not exist"),
        (lambda d: str(d / "*.jsonl"), "no file matches"),
        (lambda d: str(d), "is a directory"),
        (lambda d: (d / "x.txt").write_text("{}") and str(d / "x.txt"), "cannot tell the format"),
        (lambda d: "", "empty source"),
    ],
)
def test_unusable_source_specs_fail_with_a_hint(tmp_path, make, needle):
    spec = make(tmp_path)
    with pytest.raises(PricefitError) as err:
        list(iter_records(spec))
    assert needle in err.value.message
    assert err.value.hint


def test_corrupt_gzip_stops_naming_the_file(tmp_path):
    path = tmp_path / "trunc.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps(GOOD_A) + "\n").encode() * 2000)[:200])
    with pytest.raises(PricefitError) as err:
        list(iter_records(str(path)))
    assert str(path) in err.value.message and "corrupt or truncated" in err.value.hint


# ---------------------------------------------------------------------------------------------- hub


def test_hub_offline_mode_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PricefitError) as err:
        resolve("hf:Appliances,Electronics")
    assert "hub is unreachable" in err.value.message and "HF_HUB_OFFLINE" in err.value.message
    assert "--source" in err.value.hint and "meta_Appliances.jsonl" in err.value.hint


def test_hub_without_connection_fails_within_the_connect_timeout(monkeypatch):
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(PricefitError) as err:
        resolve("hf:Appliances")
    assert f"no connection to 127.0.0.1:{port}" in err.value.message
    assert "--source" in err.value.hint


@pytest.mark.parametrize("spec, needle", [("hf:", "names no category"), ("hf:App/../x", "invalid hub category")])
def test_hub_bad_category_names(spec, needle):
    with pytest.raises(PricefitError) as err:
        resolve(spec)
    assert needle in err.value.message


# ---------------------------------------------------------------------------------------------- demo


def test_demo_is_seeded_synthetic_and_sized():
    a = [r.data for r in iter_records("demo:50")]
    b = [r.data for r in iter_records("demo:50")]
    assert a == b and len(a) == 50
    src = resolve("demo")
    assert src.synthetic is True and src.files == ["demo:600"] and src.size_hint == 600
    assert all(d["synthetic"] is True for d in a)
    assert len({d["main_category"] for d in a}) >= 4
    assert len({d["parent_asin"] for d in a}) == 50
    for d in a:
        assert d["title"] and len(d["description"]) >= 1 and len(d["features"]) >= 3 and d["details"]["Brand"]


def test_demo_prices_follow_the_brand_tier():
    from pricefit.sources.demo import TIERS

    tier_of = {brand: name for name, _, brands, _ in TIERS for brand in brands}
    by_tier: dict[str, list[float]] = {}
    for r in iter_records("demo:600"):
        by_tier.setdefault(tier_of[r.data["store"]], []).append(r.data["price"])
    mean = {t: sum(v) / len(v) for t, v in by_tier.items()}
    # multipliers 0.7 / 1.0 / 1.6: the attribute signal must survive the noise
    assert mean["budget"] < mean["standard"] < mean["premium"]


@pytest.mark.parametrize("spec", ["demo:0", "demo:abc", "demo:-3"])
def test_demo_bad_sizes(spec):
    with pytest.raises(PricefitError):
        resolve(spec)


# ---------------------------------------------------------------------------------------------- csv


def write_amazon_products(d: Path, gz: bool = True) -> Path:
    products = (
        "asin,title,imgUrl,productURL,stars,reviews,price,listPrice,category_id,isBestSeller,boughtInLastMonth\n"
        'B01,"Suitcase, Large 29-Inch",u,u,4.5,0,139.99,0.0,104,False,2000\n'
        "B02,Pen Set,u,u,4.1,3,0.0,0.0,7,False,0\n"
        "B03,short row,u\n"
        'B04,"Two-line\ntitle",u,u,4.0,1,12.50,15.0,999,False,0\n'
    )
    cats = "id,category_name\n104,Luggage\n7,Office Products\n"
    p = d / ("products.csv.gz" if gz else "products.csv")
    if gz:
        p.write_bytes(gzip.compress(products.encode()))
        (d / "categories.csv.gz").write_bytes(gzip.compress(cats.encode()))
    else:
        p.write_text(products)
        (d / "categories.csv").write_text(cats)
    return p


@pytest.mark.parametrize("gz", [True, False])
def test_csv_amazon_products_layout_builtin_mapping(tmp_path, gz):
    p = write_amazon_products(tmp_path, gz)
    recs, quar = split(list(iter_records(f"csv:{p}")))
    assert [(r.source_line, r.data["parent_asin"], r.data["main_category"], r.data["price"]) for r in recs] == [
        (2, "B01", "Luggage", "139.99"),
        (3, "B02", "Office Products", "0.0"),
        (5, "B04", None, "12.50"),  # unknown category id -> no category
    ]
    assert recs[0].data["title"] == "Suitcase, Large 29-Inch" and recs[2].data["title"] == "Two-line\ntitle"
    assert "listPrice" not in json.dumps(recs[0].data)  # would leak the price into the text
    assert [(q.source_line, q.reason) for q in quar] == [(4, "csv_bad_row")]


def test_csv_custom_mapping_and_invalid_utf8(tmp_path):
    p = tmp_path / "shop.csv"
    p.write_bytes(
        b"sku,name,cost,dept,blurb,brand\n"
        b"S1,Desk Lamp,19.99,Home,Bright LED lamp,Lumo\n"
        b"S2,Caf\xe9 Mug,5.00,Kitchen,Mug,Mugs\n"
    )
    mapping = {"parent_asin": "sku", "title": "name", "price": "cost", "main_category": "dept", "description": "blurb", "details": ["brand"]}
    recs, quar = split(list(iter_records(str(p), csv_columns=mapping)))
    assert len(recs) == 1 and recs[0].data == {
        "parent_asin": "S1",
        "title": "Desk Lamp",
        "price": "19.99",
        "main_category": "Home",
        "description": ["Bright LED lamp"],
        "features": [],
        "details": {"brand": "Lumo"},
    }
    assert [(q.source_line, q.reason) for q in quar] == [(3, "invalid_utf8")]


def test_csv_mapping_errors_name_the_columns(tmp_path):
    p = tmp_path / "shop.csv"
    p.write_text("sku,name,cost\nS1,Lamp,3\n")
    with pytest.raises(PricefitError) as err:
        resolve(str(p))
    assert "not in the Amazon Products 2023 layout" in err.value.message and "csv_columns" in err.value.hint
    with pytest.raises(PricefitError) as err:
        resolve(str(p), csv_columns={"title": "name", "price": "price_usd"})
    assert "no column(s) price_usd" in err.value.message


# ---------------------------------------------------------------------------------------------- UTF-8 BOM (issue 10, finding 8)

BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl_first_line_with_a_bom_is_read(tmp_path, gz):
    path = tmp_path / ("bom.jsonl.gz" if gz else "bom.jsonl")
    data = BOM + json.dumps(GOOD_A).encode() + b"\n" + json.dumps(GOOD_B).encode() + b"\n"
    path.write_bytes(gzip.compress(data) if gz else data)
    recs, quar = split(list(iter_records(str(path))))
    assert quar == []
    assert [(r.source_line, r.data) for r in recs] == [(1, GOOD_A), (2, GOOD_B)]


def test_hub_lines_with_a_bom_parse_like_local_ones():
    from pricefit.sources.amazon_meta import parse_line

    rec = parse_line(BOM + json.dumps(GOOD_A).encode(), "hf://x/meta_A.jsonl", 1)
    assert isinstance(rec, Record) and rec.data == GOOD_A


@pytest.mark.parametrize("gz", [False, True])
def test_csv_header_with_a_bom_is_recognised(tmp_path, gz):
    p = write_amazon_products(tmp_path, gz)
    for f in (p, tmp_path / ("categories.csv.gz" if gz else "categories.csv")):
        body = gzip.decompress(f.read_bytes()) if gz else f.read_bytes()
        f.write_bytes(gzip.compress(BOM + body) if gz else BOM + body)
    recs, quar = split(list(iter_records(f"csv:{p}")))
    assert [(r.source_line, r.data["parent_asin"], r.data["main_category"]) for r in recs] == [
        (2, "B01", "Luggage"), (3, "B02", "Office Products"), (5, "B04", None)
    ]
    assert [(q.source_line, q.reason) for q in quar] == [(4, "csv_bad_row")]
    shop = tmp_path / "shop.csv"
    shop.write_bytes(BOM + b"sku,name,cost\nS1,Lamp,3.50\n")
    recs, _ = split(list(iter_records(str(shop), csv_columns={"parent_asin": "sku", "title": "name", "price": "cost"})))
    assert [(r.data["parent_asin"], r.data["title"], r.data["price"]) for r in recs] == [("S1", "Lamp", "3.50")]


def test_csv_header_messages_show_invisible_characters(tmp_path):
    p = tmp_path / "shop.csv"
    p.write_text("\u200bsku,name ,cost\nS1,Lamp,3\n", encoding="utf-8")
    with pytest.raises(PricefitError) as err:
        resolve(str(p), csv_columns={"parent_asin": "sku", "title": "name", "price": "cost"})
    assert "no column(s) sku, name (header: '\\u200bsku', 'name ', cost)" in err.value.message
