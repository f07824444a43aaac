#!/usr/bin/env bash
# Curation at scale: the pipeline's ingest + curate on the shared listings at 1x, 5x and 20x (replicated
# with fresh ids, see curation_bench.py), each run twice in its own process under /usr/bin/time -v
# (peak RSS = the whole process: Python, polars, the tokenizer). One JSON + one time log per run.
#   PRICEFIT_SHARED_DATA=../shared/data bench/curation_scale.sh [OUTDIR] [TOKENIZER]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-/tmp/curation-scale}
tok=${2:-word}
py=${PYTHON:-python}
src=${PRICEFIT_SHARED_DATA:?set PRICEFIT_SHARED_DATA}/amazon_meta/listings.jsonl.gz
mkdir -p "$out"
for n in 5 20; do
  [ -f "$out/x$n.jsonl.gz" ] || "$py" "$here/curation_bench.py" --make-replica "$n" --to "$out/x$n.jsonl.gz"
done
for run in 1 2; do
  for n in 1 5 20; do
    input=$src; [ "$n" = 1 ] || input=$out/x$n.jsonl.gz
    /usr/bin/time -v -o "$out/x$n-run$run.time" "$py" "$here/curation_bench.py" --input "$input" --replicate 0 \
      --polars-only --tokenizer "$tok" --out "$out/x$n-run$run.json" > /dev/null
    wall=$(grep -o '"wall_s": [0-9.]*' "$out/x$n-run$run.json" | head -1)
    rss=$(grep 'Maximum resident' "$out/x$n-run$run.time" | awk '{print $NF}')
    echo "x$n run$run: $wall, peak RSS $((rss / 1024)) MiB, loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
  done
done
