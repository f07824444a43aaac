"""docs/ARCHITECTURE.md "Adding things": a classical baseline, a setting and a built-in base model,
each added for real in a copy of the project, touching the places the page names and no other.
(A step: tests/flows/test_step_registry.py adds one registry line.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COPY_DIRS = ("src/pricefit", "tasks", "flows", "data_contracts")


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    for rel in COPY_DIRS:
        shutil.copytree(ROOT / rel, project / rel, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "deployments/profiles", project / "deployments/profiles")
    return project


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: {old!r}"
    path.write_text(text.replace(old, new))


def _edited(tmp_path: Path, rel: str, old: str, new: str) -> Path:
    """A copy of the project with one edit, checked to be its only change."""
    project = _project(tmp_path)
    _replace(project / rel, old, new)
    assert _changed(project) == [rel]
    return project


def _run(project: Path, code: str, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env |= {"PYTHONPATH": f"{project / 'src'}{os.pathsep}{project}", "PRICEFIT_PROFILES": str(project / "deployments/profiles"),
            "PRICEFIT_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _changed(project: Path) -> list[str]:
    """The files of the copy that differ from (or are not in) the checkout."""
    out = []
    for p in sorted(project.rglob("*.py")):
        rel = p.relative_to(project)
        orig = ROOT / rel
        if not orig.exists() or orig.read_bytes() != p.read_bytes():
            out.append(rel.as_posix())
    return out


def test_a_classical_baseline_is_its_module_and_its_name(tmp_path):
    project = _project(tmp_path)
    (project / "src/pricefit/baselines/median.py").write_text(textwrap.dedent('''
        """The training median: a floor that ignores the mean's pull by dear items."""
        import statistics


        def baseline(train, test):
            median = statistics.median(float(p) for p in train["price"].to_list())
            return [median] * test.height, {"median": median}
    '''))
    _replace(project / "src/pricefit/settings/baselines.py", 'CLASSICAL_BASELINES = ("constant", "linear", "tfidf")',
             'CLASSICAL_BASELINES = ("constant", "linear", "tfidf", "median")')
    assert _changed(project) == ["src/pricefit/baselines/median.py", "src/pricefit/settings/baselines.py"]

    got = _run(project, '''
        import json
        from pathlib import Path
        import polars as pl
        from pricefit.baselines import run_baselines
        from pricefit.config import load_run_config
        from pricefit.promotion import baseline_guard
        from pricefit.config import PromoteConfig
        d = Path("curated"); d.mkdir()
        def frame(prices, prefix):
            n = len(prices)
            return pl.DataFrame({"item_id": [f"{prefix}{i}" for i in range(n)], "category": ["Tools"] * n,
                                 "title": ["t"] * n, "text": ["some text"] * n, "price": prices,
                                 "source_file": ["x"] * n, "source_line": list(range(1, n + 1))})
        frame([1.0, 2.0, 3.0, 100.0], "tr").write_parquet(d / "train.parquet")
        frame([2.0], "va").write_parquet(d / "validation.parquet")
        frame([2.0, 4.0], "te").write_parquet(d / "test.parquet")
        (d / "manifest.json").write_text(json.dumps({"kind": "curated"}))
        cfg = load_run_config("demo", overrides=["baselines.include=[median,constant]"]).baselines
        ref = run_baselines(d, Path("bl"), cfg, progress=False)
        whole = json.loads((Path(ref.path) / "summary.json").read_text())
        summary, items = whole["baselines"], whole["items_sha256"]
        # the promotion guard counts it: a challenger at $1.50 does not beat the median's $1.00
        guard = baseline_guard(1.5, ref.path, PromoteConfig(), items)
        print(json.dumps({"include": cfg.include, "median": summary["median"]["mae"], "constant": summary["constant"]["mae"],
                          "guard": guard}))
    ''', tmp_path)
    assert got["include"] == ["median", "constant"]
    assert got["median"] == 1.0  # median 2.5 against 2 and 4
    assert got["constant"] == 23.5  # mean 26.5: errors 24.5 and 22.5
    assert got["guard"] is not None and "median" in got["guard"]


def test_a_setting_is_its_field_and_the_code_that_reads_it(tmp_path):
    project = _edited(tmp_path, "src/pricefit/settings/promote.py", '    margin: float = Field(',
                      '    note: str = Field("", description="A word for the promotion log.")\n    margin: float = Field(')
    got = _run(project, '''
        import json
        from pricefit.config import load_run_config
        from pricefit.errors import PricefitError
        from tasks import cache
        cfg = load_run_config("demo", overrides=["promote.note=nightly"])
        try:
            load_run_config("demo", overrides=["promote.nte=nightly"])
            typo = None
        except PricefitError as e:
            typo = str(e)
        inputs = lambda note: {"cfg": cfg.promote.model_copy(update={"note": note}), "workdir": "/w"}
        print(json.dumps({"note": cfg.promote.note, "typo": typo,
                          "key_moves": cache.step_key("compare", inputs("a")) != cache.step_key("compare", inputs("b"))}))
    ''', tmp_path)
    assert got["note"] == "nightly" and got["key_moves"] is True
    assert "promote.nte" in got["typo"] and "note" in got["typo"]  # the typo named, with the nearest key


def test_a_built_in_base_model_is_its_builder_and_its_name(tmp_path):
    project = _edited(tmp_path, "src/pricefit/models.py", '    "tiny-random": _build_tiny_random,\n',
                      '    "tiny-random": _build_tiny_random,\n    "tiny-random-copy": _build_tiny_random,\n')
    got = _run(project, '''
        import json
        from pathlib import Path
        from pricefit.config import load_run_config
        from pricefit.models import builtin_models, resolve_model
        cfg = load_run_config("demo", overrides=["base_model=tiny-random-copy"])
        path = Path(resolve_model(cfg.train.base_model))
        print(json.dumps({"listed": "tiny-random-copy" in builtin_models(), "stages": [cfg.curate.tokenizer,
                          cfg.tokenize.base_model, cfg.train.base_model, cfg.baselines.base_model],
                          "built": (path / "config.json").is_file(), "name": path.name}))
    ''', tmp_path)
    assert got["listed"] is True and got["built"] is True and got["name"] == "tiny-random-copy"
    assert got["stages"] == ["tiny-random-copy"] * 4  # written once, every stage uses it
