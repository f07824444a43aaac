"""`pricefit run` output helpers (no Prefect server)."""

from __future__ import annotations

from flows import commands as run_cmd


def test_human_summary_lists_steps_comparison_report_and_ui(tmp_path):
    comparison = tmp_path / "comparison.md"
    comparison.write_text("| model | mae |\n|---|---|\n| fine-tuned | 12.00 |\n")
    out = {
        "ok": True, "flow_run_id": "abc", "state": "Completed", "states": {"ingest": "Cached", "train": "Completed"},
        "comparison": str(comparison), "promoted": True, "promotion_reason": "no champion yet",
        "report": "/w/report.md", "ui": "http://127.0.0.1:4200/runs/flow-run/abc",
    }
    text = run_cmd._human_run(out)
    assert "  ingest               Cached" in text and "  train                Completed" in text
    assert "model       mae\nfine-tuned  12.00" in text and "|" not in text.split("steps:")[1]  # a table, not Markdown
    assert "promotion: promoted to champion (no champion yet)" in text
    assert "report: /w/report.md" in text and text.endswith("UI: http://127.0.0.1:4200/runs/flow-run/abc")


def test_human_summary_of_a_failed_run_says_how_to_resume():
    out = {"ok": False, "flow_run_id": "abc", "state": "Failed", "states": {"evaluate": "Failed"},
           "error": "boom", "hint": "fix it", "ui": "u"}
    text = run_cmd._human_run(out)
    assert "error: boom" in text and "  hint: fix it" in text and "come back Cached" in text


def test_ui_location(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(run_cmd, "_server_answers", lambda url: False)
    # unset in Prefect's settings too (an earlier flow in this process may have set it for its temporary server)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert run_cmd.ui_location("x") == (
            "PREFECT_API_URL is not set and no Prefect server answers at http://127.0.0.1:4200: the run used a temporary "
            "Prefect API and is recorded in the local Prefect database; `prefect server start` shows it at http://127.0.0.1:4200")
        # a server is running, but this run did not use it: say why, and how to
        monkeypatch.setattr(run_cmd, "_server_answers", lambda url: url == "http://127.0.0.1:4200")
        assert run_cmd.ui_location("x") == (
            "PREFECT_API_URL is not set, so this run used a temporary Prefect API, not the server running at "
            "http://127.0.0.1:4200: export PREFECT_API_URL=http://127.0.0.1:4200/api to see runs there")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.delenv("PREFECT_UI_URL", raising=False)
    assert run_cmd.ui_location("r1") == "http://127.0.0.1:4200/runs/flow-run/r1"


def test_bad_refresh_step_fails_before_prefect_starts():
    from typer.testing import CliRunner

    from pricefit.cli import app

    result = CliRunner().invoke(app, ["run", "--profile", "demo", "--refresh", "bogus", "--json"])
    assert result.exit_code == 2
    assert "'bogus' is not a step" in result.output
