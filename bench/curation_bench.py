"""Curation throughput: the polars stage functions vs a straightforward per-row Python version of the same rules.

    python bench/curation_bench.py [--input FILE] [--replicate 20] [--tokenizer smollm2-135m] [--polars-only] [--out result.json]
    python bench/curation_bench.py --make-replica 20 --to /tmp/x20.jsonl.gz     # the replicated input, once
    bench/curation_scale.sh                                                     # 1x / 5x / 20x, twice each


Both implementations run in this process, on the same input, with the same tokenizer object (loaded
once, outside the timings) and must agree on every count (rows read, kept by split, dropped by
reason); a disagreement stops the benchmark. The polars side is ``curation.ingest`` + ``curation.curate``
exactly as the pipeline runs them (parquet and manifest writes included); the per-row side reads the
same file line by line and writes nothing (that favours it). Peak memory: resident set size sampled
every 10 ms by a thread while each side runs (absolute peak and rise over the start).

The replicated input is made in a temporary directory at run time: copy k of each listing gets
``parent_asin`` ``<asin>-k`` and `` (k)`` after its title, so copies are distinct items (no dedupe
shortcut) and crowded dollar values reach the balancing cap. Input defaults to
``$PRICEFIT_SHARED_DATA/amazon_meta/listings.jsonl.gz``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from pricefit.config import CurateConfig, shared_data_dir
from pricefit.curation import CEILING_CHARS_PER_TOKEN, UNKNOWN_CATEGORY, curate, ingest, normalize_record
from pricefit.prices import DROP_REASON


# ---------------------------------------------------------------------------------------------- memory


class PeakRSS:
    """Peak resident set size (bytes) while the block runs, sampled from /proc/self/statm."""

    def __init__(self, interval_s: float = 0.01):
        self.interval_s = interval_s
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval_s)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


# ---------------------------------------------------------------------------------------------- per-row reference


_SEP = re.compile(r'[:\[\]"{}【】\s]+')


def scrub(text: str, min_len: int) -> str:
    text = _SEP.sub(" ", text).strip()
    text = text.replace(" ,", ",").replace(",,,", ",").replace(",,", ",")
    return " ".join(w for w in text.split(" ") if len(w) < min_len or not any(c.isdigit() for c in w))


def row_text(row: dict, cfg: CurateConfig) -> str:
    ceiling = cfg.max_text_tokens * CEILING_CHARS_PER_TOKEN
    details = json.loads(row["details"])
    drop = set(cfg.drop_detail_keys)
    details_text = json.dumps({k: v for k, v in details.items() if k not in drop}, ensure_ascii=False)
    details_text = re.sub(r"\\(.)", r"\1", re.sub(r"\\[nrt]", " ", details_text))[:ceiling]
    contents = "\n".join([row["description"][:ceiling], row["features"][:ceiling], details_text])[:ceiling]
    title = scrub((row["title"] or "")[:ceiling], cfg.part_number_min_len)
    return f"{title}\n{scrub(contents, cfg.part_number_min_len)}".strip()


def per_row_curate(path: Path, cfg: CurateConfig, tokenizer) -> dict:
    """The same rules, one row at a time, in plain Python (the way the reference recipe is written)."""
    rows_read = quarantined = 0
    dropped: Counter = Counter()
    candidates = []
    seen_text, seen_id = set(), set()
    with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            rows_read += 1
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                quarantined += 1
                continue
            if not isinstance(obj, dict):
                quarantined += 1
                continue
            row = normalize_record(obj, str(path), line_no)
            if row["price_issue"] is not None:
                dropped[DROP_REASON[row["price_issue"]]] += 1
                continue
            if row["title"] is None or not row["title"].strip():
                dropped["title_missing"] += 1
                continue
            if not cfg.min_price <= row["price"] <= cfg.max_price:
                dropped["price_out_of_range"] += 1
                continue
            text = row_text(row, cfg)
            if len(text) < cfg.min_chars:
                dropped["text_too_short"] += 1
                continue
            enc = tokenizer(text, add_special_tokens=False, truncation=True, max_length=cfg.max_text_tokens, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
            if len(offsets) >= cfg.max_text_tokens and offsets[-1][1] < len(text.rstrip()):
                text = text[: offsets[-1][1]].rstrip()
            if len(text) < cfg.min_chars:
                dropped["text_too_short"] += 1
                continue
            key = (row["title"], text)
            if key in seen_text or row["item_id"] in seen_id:
                dropped["duplicate"] += 1
                continue
            seen_text.add(key)
            seen_id.add(row["item_id"])
            candidates.append((row["item_id"], row["category"] or UNKNOWN_CATEGORY, row["price"]))
    # balanced sampling over whole-dollar slots (reference loop)
    slots = defaultdict(list)
    for item in candidates:
        slots[math.floor(item[2] + 0.5)].append(item)
    rng = np.random.default_rng(cfg.seed)
    kept = []
    for dollar, slot in sorted(slots.items()):
        if not cfg.balance or dollar >= cfg.balance_keep_all_above or len(slot) <= cfg.balance_cap_per_dollar:
            kept.extend(slot)
            continue
        w = np.array([cfg.category_weights.get(c, cfg.default_category_weight) for _, c, _ in slot])
        pick = rng.choice(len(slot), size=cfg.balance_cap_per_dollar, replace=False, p=w / w.sum())
        kept.extend(slot[i] for i in pick)
        dropped["sampled_out"] += len(slot) - cfg.balance_cap_per_dollar
    random.Random(cfg.seed).shuffle(kept)
    n = len(kept)
    n_test, n_val = int(round(n * cfg.test_fraction)), int(round(n * cfg.validation_fraction))
    return {
        "rows_read": rows_read,
        "kept": {"train": n - n_test - n_val, "validation": n_val, "test": n_test},
        "dropped": dict(sorted(dropped.items())),
        "quarantined": quarantined,
    }


# ---------------------------------------------------------------------------------------------- runs


def word_tokenizer():
    """One token per word or punctuation run (WordLevel + Whitespace): nearly free, so the rules dominate."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]")


def replicate(src: Path, times: int, out: Path) -> int:
    lines = gzip.open(src, "rb").read().splitlines() if src.name.endswith(".gz") else src.read_bytes().splitlines()
    n = 0
    with gzip.open(out, "wb", compresslevel=1) as f:
        for k in range(times):
            for raw in lines:
                obj = json.loads(raw)
                if k:
                    obj["parent_asin"] = f"{obj.get('parent_asin')}-{k}"
                    obj["title"] = f"{obj.get('title')} ({k})"
                f.write(json.dumps(obj).encode() + b"\n")
                n += 1
    return n


def measure(path: Path, cfg: CurateConfig, tokenizer, work: Path, skip_python: bool) -> dict:
    out: dict = {"input": str(path)}
    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        ingest(str(path), work / "raw", cfg)
        t1 = time.perf_counter()
        ref = curate(work / "raw", work / "cur", cfg, tokenizer=tokenizer)
        t2, c2 = time.perf_counter(), time.process_time()
    m = ref.manifest()
    polars_counts = {k: m[k] for k in ("rows_read", "kept", "dropped", "quarantined")}
    out["polars"] = {
        "wall_s": round(t2 - t0, 2), "cpu_s": round(c2 - c0, 2), "ingest_wall_s": round(t1 - t0, 2),
        "curate_wall_s": round(t2 - t1, 2), "rows_per_s": round(m["rows_read"] / (t2 - t0), 1),
        "rows_per_cpu_s": round(m["rows_read"] / (c2 - c0), 1),
        "peak_rss_mib": round(mem.peak / 2**20, 1), "rss_rise_mib": round((mem.peak - mem.start) / 2**20, 1),
        "counts": polars_counts,
    }
    print(json.dumps({"partial": out}), file=sys.stderr, flush=True)
    if skip_python:
        return out
    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        py_counts = per_row_curate(path, cfg, tokenizer)
        t2, c2 = time.perf_counter(), time.process_time()
    out["per_row_python"] = {
        "wall_s": round(t2 - t0, 2), "cpu_s": round(c2 - c0, 2), "rows_per_s": round(py_counts["rows_read"] / (t2 - t0), 1),
        "rows_per_cpu_s": round(py_counts["rows_read"] / (c2 - c0), 1),
        "peak_rss_mib": round(mem.peak / 2**20, 1), "rss_rise_mib": round((mem.peak - mem.start) / 2**20, 1),
    }
    print(json.dumps({"partial": out}), file=sys.stderr, flush=True)
    if py_counts != polars_counts:
        raise SystemExit(f"implementations disagree:\n polars {polars_counts}\n python {py_counts}")
    out["counts_agree"] = True
    out["speedup_wall"] = round(out["per_row_python"]["wall_s"] / out["polars"]["wall_s"], 2)
    out["speedup_cpu"] = round(out["per_row_python"]["cpu_s"] / out["polars"]["cpu_s"], 2)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", help="listings .jsonl[.gz] (default: $PRICEFIT_SHARED_DATA/amazon_meta/listings.jsonl.gz)")
    ap.add_argument("--replicate", type=int, default=20, help="also run on an N-times replicated copy (0: skip)")
    ap.add_argument(
        "--tokenizer",
        default="smollm2-135m",
        help="tokenizer name for models.load_tokenizer, or 'word' (one token per word: measures the rules without subword-tokenizer cost)",
    )
    ap.add_argument("--skip-python-replicated", action="store_true", help="run only the polars side on the replicated copy")
    ap.add_argument("--skip-x1", action="store_true", help="run only the replicated copy")
    ap.add_argument("--polars-only", action="store_true", help="run only the polars side (the pipeline's own functions)")
    ap.add_argument("--make-replica", type=int, metavar="N", help="only write an N-times replicated copy of the input to --to, then exit")
    ap.add_argument("--to", help="where --make-replica writes (.jsonl.gz)")
    ap.add_argument("--out", help="also write the JSON result here")
    args = ap.parse_args(argv)

    if args.input:
        src = Path(args.input)
    else:
        d = shared_data_dir()
        if d is None:
            raise SystemExit("set PRICEFIT_SHARED_DATA or pass --input")
        src = d / "amazon_meta" / "listings.jsonl.gz"
    if args.make_replica:
        rows = replicate(src, args.make_replica, Path(args.to))
        print(json.dumps({"replica": args.to, "times": args.make_replica, "rows": rows}))
        return
    tokenizer = word_tokenizer() if args.tokenizer == "word" else __import__("pricefit.models").models.load_tokenizer(args.tokenizer)
    cfg = CurateConfig(tokenizer=args.tokenizer)
    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg_start": os.getloadavg()},
        "tokenizer": args.tokenizer,
    }
    with tempfile.TemporaryDirectory(prefix="curation-bench-") as tmp:
        tmp = Path(tmp)
        if not args.skip_x1:
            (tmp / "x1").mkdir()
            result["x1"] = measure(src, cfg, tokenizer, tmp / "x1", skip_python=args.polars_only)
        if args.replicate > 1:
            big = tmp / f"listings_x{args.replicate}.jsonl.gz"
            rows = replicate(src, args.replicate, big)
            (tmp / "xN").mkdir()
            result[f"x{args.replicate}"] = measure(big, cfg, tokenizer, tmp / "xN", skip_python=args.skip_python_replicated or args.polars_only)
            result[f"x{args.replicate}"]["rows"] = rows
    result["machine"]["loadavg_end"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
