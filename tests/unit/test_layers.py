"""The library sits below the orchestration: src/pricefit imports no Prefect, flows or tasks, and the
orchestration commands join the `pricefit` app through the "pricefit.commands" entry point."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ORCHESTRATION_IMPORT = re.compile(r"^\s*(from|import) (prefect|flows|tasks)\b", re.M)
COMMANDS = {"baselines", "compare", "promote", "curate", "evaluate", "predict", "version", "profiles", "run", "sweep",
            "serve", "tokenize", "model", "train", "plan-memory", "validate"}


def test_library_imports_no_orchestration():
    found = [f"{p.relative_to(ROOT)}:{src[:m.start()].count(chr(10)) + 1}"
             for p in sorted((ROOT / "src" / "pricefit").rglob("*.py"))
             for src in [p.read_text()] for m in ORCHESTRATION_IMPORT.finditer(src)]
    assert found == []


def test_pyproject_names_the_orchestration_commands():
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["pricefit.commands"]
    assert eps == {"orchestration": "flows.commands"}


def test_app_has_every_command():
    from pricefit.cli import app

    assert {c.name for c in app.registered_commands} == COMMANDS


def test_the_installed_package_exposes_the_entry_point(tmp_path):
    """The installed distribution (make's `pip install -e .`) finds run/sweep/serve through its entry
    points, with no PRICEFIT_COMMANDS fallback. (No install here: a second install of the same
    package from this interpreter would remove the one the other tests run.)"""
    env = {k: v for k, v in os.environ.items() if k not in ("PRICEFIT_COMMANDS", "PYTHONPATH")}
    code = ("from importlib.metadata import entry_points; import pricefit.cli as c; "
            "print(sorted(e.value for e in entry_points(group='pricefit.commands'))); print(c.plugin_modules()); "
            "print(' '.join(sorted(x.name for x in c.app.registered_commands)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    declared, plugins, names = out.stdout.splitlines()
    assert declared == "['flows.commands']" and plugins == "['flows.commands']"
    assert set(names.split()) == COMMANDS


def test_json_errors_follow_the_command_line_given_not_sys_argv(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pricefit.cli import app

    monkeypatch.setattr(sys, "argv", ["pricefit", "train", "--json"])  # the host process's argv is not the command's
    r = CliRunner().invoke(app, ["train", "--tokenized", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and '"ok": false' not in r.output
    r = CliRunner().invoke(app, ["train", "--tokenized", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 2 and '"ok": false' in r.output
