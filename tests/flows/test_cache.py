"""The cache key and its helpers, without a Prefect server (fast)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from pricefit.artifacts import ArtifactRef, atomic_dir, ref_for, write_manifest
from pricefit.config import CurateConfig
from pricefit.errors import PricefitError
from tasks import cache


def _artifact(tmp_path, name: str, text: str) -> ArtifactRef:
    out = tmp_path / name
    with atomic_dir(out) as tmp:
        (tmp / "data.txt").write_text(text)
        write_manifest(tmp, {"kind": "raw"})
    return ref_for(out, "raw", rows=1)


def test_key_is_stable_and_covers_config_refs_and_code(tmp_path, monkeypatch):
    ref = _artifact(tmp_path, "a", "x")
    inputs = {"raw": ref, "cfg": CurateConfig(), "workdir": str(tmp_path)}
    key = cache.step_key("curate", inputs)
    assert key == cache.step_key("curate", dict(inputs)) and len(key) == 64
    # a changed stage parameter
    assert cache.step_key("curate", inputs | {"cfg": CurateConfig(min_chars=10)}) != key
    # a changed upstream artifact (same path, other content)
    other = _artifact(tmp_path, "a", "y")
    assert other.path == ref.path and other.sha256 != ref.sha256
    assert cache.step_key("curate", inputs | {"raw": other}) != key
    # a changed library source
    real = cache.code_hash
    monkeypatch.setattr(cache, "code_hash", lambda mods: real(mods) + "-edited")
    assert cache.step_key("curate", inputs) != key


def test_code_hash_follows_the_module_source(tmp_path, monkeypatch):
    pkg = tmp_path / "pf_fake_lib"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "step.py").write_text("def run():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = cache.code_hash(["pf_fake_lib"])
    assert cache.code_hash(["pf_fake_lib"]) == before
    (pkg / "step.py").write_text(textwrap.dedent("def run():\n    return 2\n"))
    assert cache.code_hash(["pf_fake_lib"]) != before
    assert "pf_fake_lib" not in sys.modules  # hashed from the file, never imported
    assert cache.code_hash(["pf_no_such_module"]) != cache.code_hash(["pf_other_missing"])


def test_each_step_hashes_the_library_it_calls():
    assert "pricefit.training" in cache.step_code_modules("train")
    assert "pricefit.evaluation" in cache.step_code_modules("evaluate")
    assert cache.step_code_modules("contract_raw") == ("data_contracts",)
    assert set(cache.STEP_CODE) >= {s for s in cache.STEPS if not s.startswith("contract_")}


def test_key_ignores_nothing_but_refuses_payloads(tmp_path):
    import polars as pl

    with pytest.raises(TypeError, match="cannot fingerprint a DataFrame"):
        cache.step_key("curate", {"frame": pl.DataFrame({"a": [1]})})


def test_ingest_key_sees_a_changed_source_file(tmp_path):
    src = tmp_path / "listings.jsonl"
    src.write_text('{"title": "a"}\n')
    inputs = {"source": str(src), "options": {}, "workdir": str(tmp_path)}
    key = cache.step_key("ingest", inputs)
    src.write_text('{"title": "a"}\n{"title": "b"}\n')
    assert cache.step_key("ingest", inputs) != key
    # a demo source has no file: its key depends on the spec alone
    assert cache.step_key("ingest", inputs | {"source": "demo:50"}) == cache.step_key("ingest", inputs | {"source": "demo:50"})


def test_out_dir_is_content_addressed(tmp_path):
    key = "ab" * 32
    assert cache.out_dir(tmp_path, "train", key) == tmp_path.resolve() / "artifacts" / "train" / ("ab" * 8)


def test_refresh_covers_the_step_and_what_follows():
    assert cache.refresh_set("train") == {"train", "evaluate", "champion", "baselines", "compare", "report"}
    assert cache.refresh_set("curate") == set(cache.STEPS[2:])
    assert cache.refresh_set(None) == set() and cache.refresh_set("none") == set()
    with pytest.raises(PricefitError, match="'contract_raw' is not a step"):
        cache.refresh_set("contract_raw")


def _record(records_dir, key, ref: ArtifactRef):
    # the layout Prefect's JSON serializer writes (see .prefect-results in a run)
    payload = {"__class__": "pricefit.artifacts.ArtifactRef", "data": ref.model_dump(mode="json")}
    (records_dir / key).write_text(json.dumps({"metadata": {}, "result": json.dumps(payload)}))


def test_a_record_whose_artifact_is_gone_is_dropped(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    ref = _artifact(tmp_path, "art", "x")
    _record(records, "k1", ref)
    cache._drop_stale_record(str(records), "k1")
    assert (records / "k1").exists()  # intact: kept
    (ref.dir / "data.txt").unlink()
    cache._drop_stale_record(str(records), "k1")
    assert not (records / "k1").exists()  # a listed file is gone: recompute


def test_a_record_whose_artifact_was_rebuilt_differently_is_dropped(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    ref = _artifact(tmp_path, "art", "x")
    _record(records, "k1", ref)
    _artifact(tmp_path, "art", "changed")  # same directory, other manifest
    cache._drop_stale_record(str(records), "k1")
    assert not (records / "k1").exists()


def test_refs_in_finds_nested_refs(tmp_path):
    ref = _artifact(tmp_path, "art", "x")
    nested = {"comparison": {"__class__": "x", "data": ref.model_dump(mode="json")}, "decision": {"promoted": True}}
    assert cache.refs_in(nested) == [ref]
    assert cache.refs_in({"promoted": True, "reason": "r"}) == []


def test_a_lock_left_by_a_dead_process_is_cleared(tmp_path):
    import subprocess

    locks = cache.lock_manager(tmp_path)
    assert locks.acquire_lock("k", holder="me")
    info = json.loads((tmp_path / ".prefect-locks" / "k.lock").read_text())
    assert info["holder"] == "me" and info["pid"] == __import__("os").getpid()
    assert locks.is_locked("k")  # our own process is alive: still locked
    dead = subprocess.Popen(["true"])
    dead.wait()
    info["pid"] = dead.pid
    (tmp_path / ".prefect-locks" / "k.lock").write_text(json.dumps(info))
    fresh = cache.lock_manager(tmp_path)  # another run, which never held it
    assert not fresh.is_locked("k") and not (tmp_path / ".prefect-locks" / "k.lock").exists()
    assert fresh.acquire_lock("k", holder="next")
