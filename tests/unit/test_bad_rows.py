"""One bad row must not stop the ingest nor swallow other rows (issue 21 #5).

Each corruption below used to crash the ingest (a traceback, no JSON), fold many listings into one
quarantined row, turn bytes into the text "b'...'", or hang; each test names what it now does.
"""

from __future__ import annotations

import decimal
import errno
import gzip
import json
import os
import threading

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pricefit.config import CurateConfig
from pricefit.curation import ingest
from pricefit.errors import PricefitError

from test_curation import listing  # noqa: E402  (tests/unit is on sys.path: rootdir import mode)


def _quarantine(raw_dir) -> list[tuple[int, str]]:
    rows = [json.loads(x) for x in (raw_dir / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()]
    return [(r["source_line"], r["reason"]) for r in rows]


def _nested(depth: int):
    value: object = "a description buried deep"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("gz", [False, True])
def test_a_deeply_nested_or_lone_surrogate_record_is_quarantined_and_the_others_kept(tmp_path, gz):
    deep = listing(90, description=_nested(900))  # parses as JSON, but flattening it recurses too deep
    deep_details = listing(91, details={"a": _nested(900)})
    lines = [json.dumps(listing(0)), json.dumps(deep), json.dumps(listing(1)),
             # a lone surrogate is a valid JSON escape but no UTF-8 text: it used to fail the parquet write
             '{"parent_asin": "S1", "title": "\\ud800 Cordless drill", "price": 5.0, "description": ["long enough"]}',
             json.dumps(deep_details),
             '{"parent_asin": "S2", "title": "Saw", "price": 5.0, "features": ["ok", "\\udfff"]}',
             json.dumps(listing(2))]
    data = ("\n".join(lines) + "\n").encode()
    path = tmp_path / ("l.jsonl.gz" if gz else "l.jsonl")
    path.write_bytes(gzip.compress(data) if gz else data)

    m = ingest(str(path), tmp_path / "raw", CurateConfig()).manifest()

    assert (m["rows_read"], m["parsed"], m["quarantined"]) == (7, 3, 4)
    assert _quarantine(tmp_path / "raw") == [
        (2, "too_deeply_nested"), (4, "invalid_unicode"), (5, "too_deeply_nested"), (6, "invalid_unicode")]
    assert pl.read_parquet(tmp_path / "raw" / "raw.parquet")["item_id"].to_list() == ["ID0", "ID1", "ID2"]
    excerpt = json.loads((tmp_path / "raw" / "quarantine.jsonl").read_text().splitlines()[1])["excerpt"]
    assert "title holds a lone surrogate" in excerpt and "\\ud800 Cordless drill" in excerpt


@pytest.mark.parametrize("ending", ["\r", "\r\n", "mixed"])
def test_jsonl_lines_end_at_cr_crlf_or_lf_one_row_each(tmp_path, ending):
    records = [json.dumps(listing(i)) for i in range(100)]
    if ending == "mixed":
        text = "".join(r + ("\r", "\n", "\r\n")[i % 3] for i, r in enumerate(records))
    else:
        text = ending.join(records) + ending
    text = text.replace(records[50], "{broken", 1)  # line 51 is bad: it alone is quarantined
    (tmp_path / "cr.jsonl").write_bytes(text.encode())

    m = ingest(str(tmp_path / "cr.jsonl"), tmp_path / "raw", CurateConfig()).manifest()

    assert (m["rows_read"], m["parsed"]) == (100, 99)  # was 1 row (quarantined) for CR-only ends
    assert _quarantine(tmp_path / "raw") == [(51, "invalid_json")]
    raw = pl.read_parquet(tmp_path / "raw" / "raw.parquet")
    assert raw["source_line"].to_list() == [n for n in range(1, 101) if n != 51]


def _catalog(tmp_path, bad: str, n: int = 300, newline: str = "\n"):
    """sku,name,price,blurb with n rows; row 101 carries an unclosed quote in column ``bad``; row 50
    has a legitimate two-line quoted blurb (it must stay one good row)."""
    rows = ["sku,name,price,blurb"]
    for i in range(1, n + 1):
        name, blurb = f"Cordless drill {i}", "plain description text" if i % 2 else '"quoted, with a comma"'
        if i == 50:
            blurb = '"two-line\nblurb, fine"'
        if i == 101:
            name, blurb = (f'"Cordless drill {i}', blurb) if bad == "name" else (name, '"unclosed blurb')
        rows.append(f"S{i},{name},{i}.99,{blurb}")
    path = tmp_path / "c.csv"
    path.write_text(newline.join(rows) + newline)
    return path


@pytest.mark.parametrize("bad,newline", [("name", "\n"), ("blurb", "\n"), ("blurb", "\r\n")])
def test_an_unclosed_csv_quote_costs_its_own_row_not_the_rest_of_the_file(tmp_path, bad, newline):
    path = _catalog(tmp_path, bad, newline=newline)
    cfg = CurateConfig(csv_columns={"parent_asin": "sku", "title": "name", "price": "price", "description": "blurb"})

    m = ingest(f"csv:{path}", tmp_path / "raw", cfg).manifest()

    # the row of S101 starts on physical line 103 (header + the two-line row 50)
    assert (m["rows_read"], m["parsed"]) == (300, 299)  # was 101 rows read, 200 listings in one quarantined row
    assert _quarantine(tmp_path / "raw") == [(103, "csv_unclosed_quote")]
    q = json.loads((tmp_path / "raw" / "quarantine.jsonl").read_text())
    assert "a quote opened on line 103" in q["excerpt"] and "lines 104-" in q["excerpt"]
    raw = pl.read_parquet(tmp_path / "raw" / "raw.parquet")
    assert "S101" not in raw["item_id"].to_list() and raw["item_id"].n_unique() == 299
    assert raw.filter(pl.col("item_id") == "S50")["description"].item() == "two-line\nblurb, fine"
    assert raw.filter(pl.col("item_id") == "S300")["price"].item() == 300.99


def test_a_stray_quote_closed_by_a_later_one_returns_the_rows_between(tmp_path):
    path = _catalog(tmp_path, "name")  # row 101's quote runs to the end; row 110's stray one is closed on row 120
    text = path.read_text().replace('S102,Cordless drill 102,102.99,"quoted, with a comma"', "S102,Cordless drill 102,102.99,plain")
    text = text.replace('S110,Cordless drill 110,110.99,"quoted, with a comma"', 'S110,Cordless drill 110,110.99,"stray')
    path.write_text(text.replace("S120,Cordless drill 120,120.99,", 'S120,Cordless drill 120,120.99,end"'))
    cfg = CurateConfig(csv_columns={"parent_asin": "sku", "title": "name", "price": "price", "description": "blurb"})

    m = ingest(f"csv:{path}", tmp_path / "raw", cfg).manifest()

    # row i > 50 starts on line i + 2; row 120 is broken itself (its closing quote sits mid-field)
    assert (m["rows_read"], m["parsed"]) == (300, 297)
    assert _quarantine(tmp_path / "raw") == [(103, "csv_unclosed_quote"), (112, "csv_unclosed_quote"), (122, "csv_bad_row")]


def test_parquet_decimal_prices_and_binary_titles_are_read_as_numbers_and_text(tmp_path):
    table = pa.table({
        "parent_asin": ["P1", "P2", "P3"],
        "title": pa.array([b"Cordless drill", b"Saw \xff\xfe", b"Hammer"], pa.binary()),
        "price": pa.array([decimal.Decimal("19.99"), decimal.Decimal("5.00"), None], pa.decimal128(10, 2)),
        "description": pa.array([[b"long enough text"]] * 3, pa.list_(pa.binary())),
    })
    pq.write_table(table, tmp_path / "meta.parquet")

    m = ingest(str(tmp_path / "meta.parquet"), tmp_path / "raw", CurateConfig()).manifest()

    assert (m["rows_read"], m["parsed"]) == (3, 2)
    assert _quarantine(tmp_path / "raw") == [(2, "invalid_utf8")]  # not UTF-8: quarantined, not "b'Saw...'"
    raw = pl.read_parquet(tmp_path / "raw" / "raw.parquet")
    assert raw["title"].to_list() == ["Cordless drill", "Hammer"]
    assert raw["description"].to_list() == ["long enough text"] * 2
    assert raw["price"].to_list() == [19.99, None] and raw["price_issue"].to_list() == [None, "price_missing"]


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_misnamed_columns_are_a_schema_error_naming_the_expected_columns(tmp_path, kind):
    rows = [{"asin": f"A{i}", "name": f"Drill {i}", "cost": 10.0 + i} for i in range(300)]
    path = tmp_path / f"meta.{kind}"
    if kind == "parquet":
        pl.DataFrame(rows).write_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    with pytest.raises(PricefitError) as err:  # was: all 300 dropped as price_missing (exit 2)
        ingest(str(path), tmp_path / "raw", CurateConfig())

    assert "has no title and no price columns (it has: asin, name, cost)" in err.value.message
    assert "parent_asin, title, price" in err.value.message and "rename" in err.value.hint
    assert not (tmp_path / "raw").exists()


def test_a_fifo_named_jsonl_is_refused_not_read(tmp_path):
    fifo = tmp_path / "stream.jsonl"
    os.mkfifo(fifo)

    def feed():  # the old code read the pipe (and would wait forever for a writer): give it one listing
        try:
            with open(fifo, "w") as f:
                f.write(json.dumps(listing(0)) + "\n")
        except BrokenPipeError:  # the test's own read end below closed at once: nobody read it
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        with pytest.raises(PricefitError) as err:
            ingest(str(fifo), tmp_path / "raw", CurateConfig())
        assert err.value.message == f"source {fifo} is a named pipe (FIFO), not a regular file"
        assert "regular" in err.value.hint
    finally:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # lets the writer's open return
        writer.join()


@pytest.mark.parametrize("code,says", [(errno.ENOSPC, "no space left on the device to write"),
                                       (errno.EROFS, "cannot write"), (errno.EACCES, "cannot write")])
def test_cli_json_prints_one_error_object_when_the_output_cannot_be_written(tmp_path, monkeypatch, code, says):
    from typer.testing import CliRunner

    from pricefit import ingestion
    from pricefit.cli import app

    def full(path, rows):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(ingestion, "_write_jsonl", full)
    res = CliRunner().invoke(app, ["curate", "--source", "demo:30", "--out", str(tmp_path / "o"), "--no-contracts", "--json"])

    assert res.exit_code == 2, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1  # was: a traceback and nothing on stdout
    out = json.loads(lines[0])
    assert out["ok"] is False and out["error"].startswith(says) and "quarantine.jsonl" in out["error"]
    assert "--out" in out["hint"] and "Traceback" not in res.stderr


def test_cli_json_prints_one_error_object_even_for_an_unexpected_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pricefit import ingestion
    from pricefit.cli import app

    def boom(*a, **kw):
        raise KeyError("surprise")

    monkeypatch.setattr(ingestion, "_write_jsonl", boom)
    res = CliRunner().invoke(app, ["curate", "--source", "demo:30", "--out", str(tmp_path / "o"), "--no-contracts", "--json"])

    assert res.exit_code == 1
    out = json.loads(res.stdout.strip())
    assert out == {"ok": False, "error": "internal error: KeyError: 'surprise'",
                   "hint": "this is a bug in pricefit; the traceback is on stderr"}


@pytest.mark.parametrize("exit_kind", ["typer", "click"])
def test_a_commands_own_exit_code_is_not_an_internal_error(exit_kind, capsys):
    import click
    import typer

    from pricefit.cli import command

    @command
    def finishes_with_3(as_json: bool = True):
        raise typer.Exit(3) if exit_kind == "typer" else click.exceptions.Exit(3)

    with pytest.raises((typer.Exit, click.exceptions.Exit)) as e:
        finishes_with_3(as_json=True)
    assert e.value.exit_code == 3 and capsys.readouterr().out == ""  # no "internal error" object
