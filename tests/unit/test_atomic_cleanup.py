"""Leftovers of killed runs (issue 10, finding 9): temporary siblings are cleaned on the next write,
and reports about an artifact never make its manifest differ between identical runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pricefit import artifacts


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_atomic_dir_removes_temporary_dirs_of_dead_processes_only(tmp_path):
    final = tmp_path / "curated"
    dead, live = _dead_pid(), os.getppid()  # the parent (pytest's shell or runner) is alive
    stale_dir = tmp_path / f".tmp-curated-{dead}-0123abcd"
    stale_file = tmp_path / f".tmp-curated-{dead}-89abcdef"
    busy = tmp_path / f".tmp-curated-{live}-deadbeef"  # a live run may be writing it right now
    other = tmp_path / f".tmp-curated-v2-{dead}-0123abcd"  # another target's leftover: not ours to judge
    for d in (stale_dir, busy, other):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "x.parquet").write_bytes(b"half written")
    stale_file.write_bytes(b"half")

    with artifacts.atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("new")

    assert (final / "a.txt").read_text() == "new"
    assert not stale_dir.exists() and not stale_file.exists()
    assert busy.exists() and other.exists()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["curated", busy.name, other.name])


def test_atomic_path_removes_stale_temporary_files(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".tmp-manifest.json-{dead}-00000000"
    stale.write_text("{")
    artifacts.write_json_atomic(tmp_path / "manifest.json", {"a": 1})
    assert not stale.exists() and json.loads((tmp_path / "manifest.json").read_text()) == {"a": 1}


def test_manifest_files_leave_out_contract_reports_and_data_docs(tmp_path):
    (tmp_path / "train.parquet").write_bytes(b"data")
    for rel in ("contracts/curated.json", "data_docs/index.html", "raw/contracts/raw.json", "raw/data_docs/x/1.html"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("report written at 2026-12-01T10:00:00")
    (tmp_path / "raw" / "raw.parquet").write_bytes(b"raw")
    artifacts.write_manifest(tmp_path, {"kind": "curated"})
    files = json.loads((tmp_path / "manifest.json").read_text())["files"]
    assert sorted(files) == ["raw/raw.parquet", "train.parquet"]
