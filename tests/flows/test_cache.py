"""The cache key and its helpers, without a Prefect server (fast)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pricefit.artifacts import ArtifactRef, atomic_dir, ref_for, sha256_dir, write_manifest
from pricefit.config import BaselinesConfig, CurateConfig
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
    before = cache.code_hash(["pf_fake_lib.step"])
    assert cache.code_hash(["pf_fake_lib.step"]) == before
    (pkg / "step.py").write_text(textwrap.dedent("def run():\n    return 2\n"))
    assert cache.code_hash(["pf_fake_lib.step"]) != before
    assert "pf_fake_lib" not in sys.modules  # hashed from the file, never imported
    assert cache.code_hash(["pf_no_such_module"]) != cache.code_hash(["pf_other_missing"])


def test_the_import_walk_follows_every_kind_of_import_and_stays_in_the_project(tmp_path, monkeypatch):
    lib = tmp_path / "pf_walk"
    (lib / "sub").mkdir(parents=True)
    (lib / "plugins").mkdir()
    files = {
        "__init__.py": "",
        "entry.py": "import json\nfrom . import helper\n\ndef run():\n    from .sub.deep import f  # heavy: imported late\n    return f()\n",
        "helper.py": "import pf_walk.sub\n",
        "sub/__init__.py": "",
        "sub/deep.py": "from ..plugins import loader\ndef f():\n    return 1\n",
        "plugins/__init__.py": "",
        "plugins/loader.py": "import importlib\ndef load(n):\n    return importlib.import_module(f'{__name__}.{n}')\n",
        "plugins/a.py": "",
        "plugins/b.py": "",
        "unused.py": "",
    }
    for rel, text in files.items():
        (lib / rel).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cache, "PROJECT_PACKAGES", ("pf_walk",))
    assert cache.dependency_closure(["pf_walk.entry"]) == (
        "pf_walk",
        "pf_walk.entry",
        "pf_walk.helper",  # from . import helper
        "pf_walk.plugins",
        "pf_walk.plugins.a",  # importlib.import_module with a computed name: the whole package
        "pf_walk.plugins.b",
        "pf_walk.plugins.loader",  # from ..plugins import loader (relative, two levels)
        "pf_walk.sub",  # import pf_walk.sub
        "pf_walk.sub.deep",  # the function-local import
    )  # json (not the project's) and unused.py (imported by nobody) are not in it
    assert "pf_walk" not in sys.modules


def test_every_step_hashes_its_wrapper_its_library_and_their_imports():
    from prefect import Task

    for step in cache.STEPS:
        mods = cache.step_code_modules(step)
        entry = cache.STEP_ENTRY[step]
        assert set(entry) <= set(mods) and "tasks.cache" in mods or step.startswith("contract_")
        task_module = importlib.import_module(entry[0])
        names = {t.name for t in vars(task_module).values() if isinstance(t, Task)}
        assert ("contract" if step.startswith("contract_") else step) in names, (step, names)
    assert {"pricefit.report", "pricefit.evaluation", "pricefit.inference", "tasks.evaluation"} <= set(
        cache.step_code_modules("evaluate")
    )
    assert "pricefit.baselines.frontier" in cache.step_code_modules("baselines")
    assert "pricefit.training" not in cache.step_code_modules("curate")
    assert not any(m.startswith(("pricefit.commands", "pricefit.cli", "flows")) for s in cache.STEPS for m in cache.step_code_modules(s))


def test_a_task_bound_to_the_wrong_step_is_refused(tmp_path):
    from tasks.curate import curate

    with pytest.raises(PricefitError, match="step 'ingest' runs a task from tasks.curate"):
        cache.configured(curate, "ingest", tmp_path)
    assert cache.configured(curate, "curate", tmp_path).name == "curate"


PROJECT_DIRS = ("src/pricefit", "tasks", "flows", "data_contracts")

_KEYS_SCRIPT = """
import json, sys
import pricefit
from pricefit.config import BaselinesConfig
from tasks import cache

workdir = "/nonexistent/work"
for _ in sys.stdin:  # one line in: every step's key out, computed from the files as they are now
    keys = {}
    for step in cache.STEPS:
        inputs = {"workdir": workdir, "cfg": BaselinesConfig(include=["constant"]) if step == "baselines" else {"x": 1}}
        if step == "ingest":
            inputs = {"source": "demo:10", "options": {}, "workdir": workdir}
        keys[step] = cache.policy_for(step, sys.argv[1]).compute_key(None, inputs, {})  # the call Prefect makes
    print(json.dumps({"files": [pricefit.__file__, cache.__file__], "keys": keys}), flush=True)
"""


class _KeysOf:
    """A fresh interpreter that runs ``project``'s code and reports every step's key on request."""

    def __init__(self, project, workdir):
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
        env["PYTHONPATH"] = f"{project / 'src'}{os.pathsep}{project}"
        self.project = project
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _KEYS_SCRIPT, str(workdir)],
            env=env, cwd=project, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def __call__(self) -> dict[str, str]:
        self.proc.stdin.write("keys\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the key process died (exit {self.proc.poll()})"
        result = json.loads(line)
        assert all(Path(f).resolve().is_relative_to(self.project.resolve()) for f in result["files"]), result["files"]
        return result["keys"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _edit(path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_editing_a_real_source_file_changes_exactly_the_dependent_steps_keys(tmp_path):
    """Issue 10 finding 4: an edit of pricefit/report.py was served Cached, and so was one of
    tasks/curate.py. A copy of the project, a real edit, the keys of every step before and after."""
    repo = Path(__file__).resolve().parents[2]
    project = tmp_path / "project"
    for rel in PROJECT_DIRS:
        shutil.copytree(repo / rel, project / rel, ignore=shutil.ignore_patterns("__pycache__"))
    keys = _KeysOf(project, tmp_path / "work")
    try:
        before = keys()
        assert keys() == before and set(before) == set(cache.STEPS)

        def changed() -> set[str]:
            nonlocal before
            after = keys()
            out = {s for s in cache.STEPS if after[s] != before[s]}
            before = after
            return out

        report = project / "src/pricefit/report.py"
        text = report.read_text()
        report.write_text(text.replace('title: str = "Evaluation"', 'title: str = "Held-out evaluation"'))  # the heading
        assert report.read_text() != text
        # evaluation writes the report (for the challenger and the re-scored champion); compare formats
        # its table with report.fmt; baselines imports evaluation (load_heldout), whose function-local
        # import of report counts; report renders the run report
        assert changed() == {"evaluate", "champion", "baselines", "compare", "report"}

        _edit(project / "tasks/curate.py", "\n# a change to the task wrapper\n")
        assert changed() == {"curate"}

        # issue 23: every step hashed config.py, so a help string of one stage's settings reran them all;
        # a stage's settings now live in their own module, in the keys of the steps whose code reads them
        _edit(project / "src/pricefit/settings/train.py", "\n# a new train setting\n")
        assert changed() == {"train"}
        _edit(project / "src/pricefit/settings/promote.py", "\n# a new promotion setting\n")
        assert changed() == {"compare"}
        _edit(project / "src/pricefit/config.py", "\n# a new profile rule\n")
        assert changed() == set()  # RunConfig and profile loading: no step's code

        _edit(project / "data_contracts/raw.py", "\n# a stricter raw contract\n")
        # data_contracts.check imports its stage module by a computed name: every contract step, and
        # ingest and curate, which run their contract before the rename
        assert changed() == {"ingest", "curate", "contract_raw", "contract_curated", "contract_tokenized"}

        _edit(project / "src/pricefit/cli.py", "\n# no step runs the CLI\n")
        _edit(project / "flows/retrain.py", "\n# nor the flow module\n")
        assert changed() == set()
    finally:
        keys.close()


def _baselines_key(monkeypatch, **env) -> str:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return cache.step_key("baselines", {"curated": None, "cfg": BaselinesConfig(include=["constant", "frontier"]), "workdir": "/w"})


def test_baselines_key_covers_the_endpoint_the_model_and_whether_a_key_is_set(monkeypatch):
    secret = "sk-live-0123456789abcdef"
    none = _baselines_key(monkeypatch)
    with_key = _baselines_key(monkeypatch, OPENAI_API_KEY=secret)
    assert with_key != none  # a result with the frontier "skipped: no API key" is not served once a key is set
    assert _baselines_key(monkeypatch, OPENAI_API_KEY="sk-other-value") == with_key  # the key's value is not in it
    other_endpoint = _baselines_key(monkeypatch, OPENAI_API_KEY=secret, OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    assert other_endpoint not in (with_key, none)
    inputs = {"cfg": BaselinesConfig(include=["frontier"], frontier={"model": "gpt-4o-mini", "base_url": "https://u:pw@h.example/v1?api-key=k1&v=2"})}
    outside = cache.outside_inputs("baselines", inputs)
    assert outside == {"frontier": {"endpoint": "https://h.example/v1?v=2", "model": "gpt-4o-mini", "api_key_set": True}}
    assert secret[:8] not in json.dumps(outside)
    # without the frontier model, neither the key nor the endpoint matters
    monkeypatch.delenv("OPENAI_API_KEY")
    plain = {"cfg": BaselinesConfig(include=["constant"]), "workdir": "/w"}
    k = cache.step_key("baselines", plain)
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    assert cache.step_key("baselines", plain) == k and cache.outside_inputs("baselines", plain) == {}


def test_settings_that_change_only_speed_are_not_in_the_key_and_the_rest_are(tmp_path):
    """Issue 21 #6: train.loss_sync_steps (and save/logging cadence, frontier concurrency) must not retrain."""
    from pricefit.config import TrainConfig

    ref = ArtifactRef(kind="tokenized", path=str(tmp_path / "tok"), sha256="0" * 64)

    def key(**train):
        return cache.step_key("train", {"tokenized": ref, "cfg": TrainConfig(**train), "workdir": "/w"})

    base = key()
    for speed_only in ({"loss_sync_steps": 7}, {"loss_sync_steps": 1}, {"save_steps": 3}, {"logging_steps": 10}):
        assert key(**speed_only) == base, speed_only  # was: a new key, so a full retrain
    for result_changing in ({"learning_rate": 2e-4}, {"seed": 1}, {"pad_to": "max"}, {"device_data": False},
                            {"compile": False}, {"merge": True}, {"batch_size": 8}):
        assert key(**result_changing) != base, result_changing
    assert set(cache.fingerprint(TrainConfig())) == set(TrainConfig.model_fields) - {"loss_sync_steps", "save_steps", "logging_steps"}

    def bkey(**frontier):
        return cache.step_key("baselines", {"cfg": BaselinesConfig(include=["constant"], frontier=frontier), "workdir": "/w"})

    assert bkey(concurrency=16) == bkey() != bkey(model="gpt-4o-mini")  # nested: the frontier's concurrency too


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


def test_refresh_covers_the_step_and_what_depends_on_it_nothing_else():
    """Issue 23: `--refresh train` reran the baselines, which do not depend on training (list order)."""
    assert cache.refresh_set("train") == {"train", "evaluate", "champion", "compare", "report"}
    assert cache.refresh_set("baselines") == {"baselines", "compare", "report"}
    assert cache.refresh_set("curate") == set(cache.STEPS[2:])  # everything after ingest and its contract
    assert cache.refresh_set("compare") == {"compare", "report"}
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


def _same_stat_edit(path: Path, old: bytes, new: bytes) -> None:
    """Rewrite ``path`` in place with bytes of the same length and put its mtime back."""
    st = path.stat()
    data = path.read_bytes()
    assert len(old) == len(new) and old in data
    path.write_bytes(data.replace(old, new))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("form", ["comma", "recursive_glob", "home", "csv_prefix", "envvar", "plain"])
def test_ingest_key_sees_every_source_form_grow_and_change_in_place(tmp_path, monkeypatch, form):
    """Issue 21 #4: comma lists, ``**`` globs and ``~/`` paths were never fingerprinted, and an
    in-place edit that kept size and mtime was served stale."""
    data = tmp_path / "data" / "a"
    data.mkdir(parents=True)
    one, two = data / "one.jsonl", data / "two.jsonl"
    one.write_text('{"title": "a", "price": 1}\n')
    two.write_text('{"title": "b", "price": 2}\n')
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LISTINGS_DIR", str(data))
    spec = {
        "comma": f"{one},{two}",
        "recursive_glob": f"{tmp_path}/data/**/*.jsonl",
        "home": "~/data/a/one.jsonl,~/data/a/two.jsonl",
        "csv_prefix": f"csv:{one},{two}",
        "envvar": "${LISTINGS_DIR}/one.jsonl,${LISTINGS_DIR}/two.jsonl",
        "plain": str(two),
    }[form]
    inputs = {"source": spec, "options": {}, "workdir": str(tmp_path)}
    key = cache.step_key("ingest", inputs)
    assert cache.step_key("ingest", inputs) == key  # stable
    _same_stat_edit(two, b'"price": 2', b'"price": 9')  # an edit that keeps size and mtime
    edited = cache.step_key("ingest", inputs)
    assert edited != key
    two.write_text('{"title": "b", "price": 9}\n{"title": "c", "price": 3}\n')  # listings added
    assert cache.step_key("ingest", inputs) not in (key, edited)
    if form == "recursive_glob":  # a file that appears deeper in the glob
        grown = cache.step_key("ingest", inputs)
        (data / "deeper").mkdir()
        (data / "deeper" / "three.jsonl").write_text('{"title": "d", "price": 4}\n')
        assert cache.step_key("ingest", inputs) != grown


def test_a_slice_ids_file_and_any_file_a_config_names_are_in_the_key_by_content(tmp_path, monkeypatch):
    """Issue 21 #4: editing a slice's ``ids_file`` served the old slice MAE."""
    from pricefit.config import EvaluateConfig
    from pricefit.slices import SliceSpec

    ids = tmp_path / "ids.csv"
    ids.write_text("item_id\nA1\nA2\n")
    monkeypatch.setenv("IDS_DIR", str(tmp_path))
    spec = SliceSpec(name="ref", ids_file="${IDS_DIR}/ids.csv")
    inputs = {"cfg": EvaluateConfig(), "slices": [spec], "workdir": str(tmp_path)}
    key = cache.step_key("evaluate", inputs)
    assert cache.outside_inputs("evaluate", inputs) == {"files": [[".slices[0].ids_file", [[str(ids), cache.outside.content_hash(str(ids))]]]]}
    _same_stat_edit(ids, b"A2", b"B7")
    assert cache.step_key("evaluate", inputs) != key
    # a CSV source's category file (curate.csv_categories) counts the same way
    cats = tmp_path / "cats.csv"
    cats.write_text("id,category_name\n1,Tools\n")
    cfg_inputs = {"source": "demo:10", "options": {"csv_categories": str(cats)}, "workdir": str(tmp_path)}
    k1 = cache.step_key("ingest", cfg_inputs)
    _same_stat_edit(cats, b"Tools", b"Pools")
    assert cache.step_key("ingest", cfg_inputs) != k1


@pytest.mark.parametrize("corruption", ["flip_bytes_same_size_and_mtime", "truncate", "append"])
def test_a_corrupt_artifact_is_never_served_nor_read(tmp_path, corruption):
    """Issue 21 #3: flipping floats in a cached adapter's price head left train Cached and evaluate
    scored from it (and cached that). Now the record is dropped at lookup (the producer recomputes)
    and a step refuses a damaged input before computing anything."""
    records = tmp_path / "records"
    records.mkdir()
    workdir = tmp_path / "wd"
    adapter_dir = workdir / "artifacts" / "train" / "0123456789abcdef"
    with atomic_dir(adapter_dir) as tmp:
        (tmp / "price_head.safetensors").write_bytes(bytes(range(64)))
        write_manifest(tmp, {"kind": "adapter"})
    ref = ref_for(adapter_dir, "adapter")
    promoted_sha = sha256_dir(adapter_dir)  # what champion.json records for a champion's adapter
    cache.check_inputs("champion", {"adapter_path": str(adapter_dir), "adapter_sha256": promoted_sha})  # intact
    _record(records, "k1", ref)
    cache._drop_stale_record(str(records), "k1")
    cache.check_inputs("evaluate", {"adapter": ref, "cfg": CurateConfig()})
    assert (records / "k1").exists()  # intact: served, read
    f = adapter_dir / "price_head.safetensors"
    st = f.stat()
    if corruption == "flip_bytes_same_size_and_mtime":
        f.write_bytes(bytes(reversed(range(64))))
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif corruption == "truncate":
        f.write_bytes(bytes(range(10)))
    else:
        with f.open("ab") as fh:
            fh.write(b"\0")
    with pytest.raises(PricefitError) as err:
        cache.check_inputs("evaluate", {"adapter": ref, "cfg": CurateConfig()})
    assert f"step evaluate: its input adapter artifact {adapter_dir} is damaged: {f} changed after it was written" in err.value.message
    assert "nothing was computed or cached" in err.value.message
    assert err.value.hint.startswith("run again: the train step sees the damage at its cache lookup and recomputes it")
    # the champion's adapter comes as a path + the sha256 of its whole directory (champion.json's)
    with pytest.raises(PricefitError, match="step champion: its input adapter artifact .* is damaged: its files no longer hash"):
        cache.check_inputs("champion", {"adapter_path": str(adapter_dir), "adapter_sha256": promoted_sha})
    cache._drop_stale_record(str(records), "k1")
    assert not (records / "k1").exists()  # the producer's record is dropped: it recomputes
