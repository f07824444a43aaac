"""The cache policy inside real Prefect runs (test harness), on two toy steps of our own."""

from __future__ import annotations

import shutil

import pytest
from prefect import flow, task

from pricefit.artifacts import ArtifactRef, atomic_dir, ref_for, write_manifest
from tasks import cache

pytestmark = pytest.mark.usefixtures("prefect_harness")
CALLS: list[str] = []


@pytest.fixture(autouse=True)
def _toy_code(monkeypatch):
    # the toy steps call no library code: key them on a fixed code hash, so that edits to
    # pricefit/ made while the test runs cannot change their keys
    monkeypatch.setattr(cache, "code_hash", lambda modules: "toy-code")


@task
def make(n: int, workdir: str) -> ArtifactRef:
    CALLS.append("make")
    out = cache.out_dir(workdir, "ingest", cache.current_key("ingest", dict(n=n, workdir=workdir)))
    with atomic_dir(out) as tmp:
        (tmp / "n.txt").write_text(str(n))
        write_manifest(tmp, {"kind": "raw"})
    return ref_for(out, "raw", rows=n)


@task
def double(ref: ArtifactRef, workdir: str) -> ArtifactRef:
    CALLS.append("double")
    out = cache.out_dir(workdir, "curate", cache.current_key("curate", dict(ref=ref, workdir=workdir)))
    with atomic_dir(out) as tmp:
        (tmp / "n.txt").write_text(str(2 * ref.rows))
        write_manifest(tmp, {"kind": "curated"})
    return ref_for(out, "curated", rows=2 * ref.rows)


@flow
def toy(n: int, workdir: str, refresh_first: bool = False) -> list:
    a = cache.configured(make, "ingest", workdir, refresh=refresh_first)(n, workdir, return_state=True)
    b = cache.configured(double, "curate", workdir)(a.result(), workdir, return_state=True)
    return [a.name, b.name, b.result()]


def test_second_run_is_cached_and_results_are_json_refs(tmp_path):
    CALLS.clear()
    first = toy(3, str(tmp_path))
    assert first[:2] == ["Completed", "Completed"] and first[2].rows == 6
    second = toy(3, str(tmp_path))
    assert second[:2] == ["Cached", "Cached"] and second[2] == first[2]
    assert CALLS == ["make", "double"]
    # persisted as small JSON records, one per step key
    records = sorted((tmp_path / ".prefect-results").iterdir())
    assert len(records) == 2 and all(r.stat().st_size < 4000 for r in records)
    assert all("pricefit.artifacts.ArtifactRef" in r.read_text() for r in records)


def test_a_changed_input_reruns_that_step_and_what_follows(tmp_path):
    toy(3, str(tmp_path))
    CALLS.clear()
    names = toy(4, str(tmp_path))[:2]
    assert names == ["Completed", "Completed"] and CALLS == ["make", "double"]


def test_a_deleted_artifact_is_rebuilt_not_served(tmp_path):
    first = toy(5, str(tmp_path))
    shutil.rmtree(first[2].dir)
    CALLS.clear()
    again = toy(5, str(tmp_path))
    assert again[:2] == ["Cached", "Completed"] and CALLS == ["double"]
    assert (again[2].dir / "n.txt").read_text() == "10" and cache.intact(again[2])


def test_refresh_recomputes_even_a_byte_identical_step(tmp_path):
    toy(6, str(tmp_path))
    CALLS.clear()
    names = toy(6, str(tmp_path), refresh_first=True)[:2]
    # same output bytes -> same ref -> the next step's key is unchanged: that is why
    # `--refresh STEP` also refreshes every step after STEP (tasks.cache.refresh_set)
    assert names == ["Completed", "Cached"] and CALLS == ["make"]


def test_training_slot_limit_is_created_with_one_slot():
    from prefect.client.orchestration import get_client

    from tasks import gpu

    @flow
    def hold() -> str:
        with gpu.slot("cpu") as name:
            return name

    assert hold() == "cpu-train"
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("cpu-train")
    assert (limit.limit, limit.active, limit.active_slots) == (1, True, 0)
