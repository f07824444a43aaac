"""Issue 10, finding 2: an item keeps its split for life when the catalog grows.

A split is a pure function of (seed, item_id): ``sha256(f"{seed}:{item_id}")`` mapped to [0, 1) and
compared with test_fraction / validation_fraction. Curating a subset and then a superset of the same
listings must leave every item that is kept in both runs in the same split, whatever balancing and
max_items do to the rest.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random

import polars as pl
import pytest

from pricefit.config import CurateConfig
from pricefit.curation import SPLITS, curate, ingest, split_items, split_of, split_point

from test_curation import listing  # noqa: E402  (tests/unit is on sys.path: rootdir import mode)


def _curate(source: str, tmp_path, name: str, tok, cfg: CurateConfig) -> dict[str, str]:
    """item_id -> split of one full ingest + curate run."""
    raw = ingest(source, tmp_path / f"raw-{name}", cfg)
    ref = curate(raw.dir, tmp_path / f"cur-{name}", cfg, tokenizer=tok)
    return {i: s for s in SPLITS for i in pl.read_parquet(ref.dir / f"{s}.parquet")["item_id"].to_list()}


def _moves(first: dict[str, str], second: dict[str, str]) -> dict[tuple[str, str | None], int]:
    """(split in the first run, split in the second run or None when not kept) -> count."""
    out: dict[tuple[str, str | None], int] = {}
    for item, s in first.items():
        key = (s, second.get(item))
        out[key] = out.get(key, 0) + 1
    return out


def _write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_split_point_is_the_documented_hash():
    digest = hashlib.sha256(b"42:B07XYZ").digest()
    assert split_point("B07XYZ", 42) == (int.from_bytes(digest[:8], "big") >> 11) / 2**53
    cfg = CurateConfig(seed=42, test_fraction=0.1, validation_fraction=0.2)
    u = split_point("B07XYZ", 42)
    assert split_of("B07XYZ", cfg) == ("test" if u < 0.1 else "validation" if u < 0.3 else "train")
    assert split_point("B07XYZ", 7) != u  # the seed is part of the key


def test_split_of_an_item_does_not_depend_on_the_other_items():
    ids = [f"item-{n}" for n in range(2000)]
    cfg = CurateConfig(validation_fraction=0.1, test_fraction=0.1)
    whole = {i: s for s, f in split_items(pl.DataFrame({"item_id": ids}), cfg).items() for i in f["item_id"]}
    part_ids = random.Random(3).sample(ids, 700)
    part = {i: s for s, f in split_items(pl.DataFrame({"item_id": part_ids}), cfg).items() for i in f["item_id"]}
    assert all(part[i] == whole[i] == split_of(i, cfg) for i in part_ids)
    sizes = {s: sum(1 for v in whole.values() if v == s) for s in SPLITS}
    assert sizes == {"train": 1611, "validation": 179, "test": 210}  # binomial around 1600/200/200 (sd 18/13/13)


def test_demo_catalog_that_grows_keeps_every_split(tmp_path, word_tokenizer):
    # demo:N is the first N items of demo:M (same seed): the catalog grows by 150 new listings
    cfg = CurateConfig()
    first = _curate("demo:450", tmp_path, "first", word_tokenizer, cfg)
    second = _curate("demo:600", tmp_path, "second", word_tokenizer, cfg)
    moves = _moves(first, second)
    assert {k: n for k, n in moves.items() if k[0] != k[1]} == {}  # nobody moved, nobody lost
    assert all(second[i] == split_of(i, cfg) for i in second)


def test_balancing_and_max_items_never_move_an_item_between_splits(tmp_path, word_tokenizer):
    # crowded dollars (cap 5 per dollar) and a max_items cut: which items are kept depends on the
    # catalog, but an item kept in both runs is in the same split in both
    rows = [listing(i, price=10.0 + (i % 7)) for i in range(400)]
    cfg = CurateConfig(balance_cap_per_dollar=40, max_items=200, validation_fraction=0.2, test_fraction=0.2)
    first = _curate(_write_jsonl(tmp_path / "first.jsonl", rows[:250]), tmp_path, "first", word_tokenizer, cfg)
    second = _curate(_write_jsonl(tmp_path / "second.jsonl", rows), tmp_path, "second", word_tokenizer, cfg)
    both = set(first) & set(second)
    assert len(first) == len(second) == 200 and len(both) > 100
    assert [i for i in both if first[i] != second[i]] == []
    assert all(s == split_of(i, cfg) for run in (first, second) for i, s in run.items())


@pytest.fixture(scope="module")
def real_catalog(shared_data, tmp_path_factory, word_tokenizer):
    """(the shared listings' lines, item_id -> split of curating all of them)."""
    src = shared_data / "amazon_meta" / "listings.jsonl.gz"
    if not src.exists():
        pytest.skip(f"{src} is missing")
    lines = gzip.decompress(src.read_bytes()).splitlines(keepends=True)
    return lines, _curate(str(src), tmp_path_factory.mktemp("full"), "all", word_tokenizer, CurateConfig())


@pytest.mark.shared_data
@pytest.mark.parametrize("subset", ["first_15000_lines", "random_15000_lines"])
def test_real_catalog_that_grows_keeps_test_and_validation_items(real_catalog, tmp_path, word_tokenizer, subset):
    lines, second = real_catalog
    keep = range(15_000) if subset == "first_15000_lines" else sorted(random.Random(11).sample(range(len(lines)), 15_000))
    small = tmp_path / "listings_15000.jsonl"
    small.write_bytes(b"".join(lines[n] for n in keep))
    first = _curate(str(small), tmp_path, "first", word_tokenizer, CurateConfig())
    moves = _moves(first, second)
    for split in ("test", "validation"):
        n = sum(v for (a, _), v in moves.items() if a == split)
        assert n > 1000 and moves.get((split, split), 0) >= 0.99 * n, moves
        assert moves.get((split, "train"), 0) == 0, moves
    # split sizes stay close to the configured 10% / 10%
    n_kept = len(second)
    for split in ("test", "validation"):
        assert abs(sum(1 for s in second.values() if s == split) - 0.1 * n_kept) < 0.01 * n_kept
