"""The Prefect UI in a real headless Chromium: find `retrain-manual`, Quick run it, see it Complete.

Debian's chromium (scripts/install-browser.sh, run by `make test`) driven by the Python playwright
package through ``executable_path``; playwright never downloads a browser here. The server and the
`pricefit serve` process are the session fixtures of conftest.py (test-sized profile, so the quick
run, which takes the deployment's default parameters, finishes in a few minutes on 2 cores).

On a failure the page's screenshot and text are saved next to the test's tmp dir and the path is in
the assertion message.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.slow]

CHROMIUM = os.environ.get("PRICEFIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 120_000  # the UI bundle loads slowly on a busy 2-core machine
RUN_TIMEOUT_S = float(os.environ.get("PRICEFIT_E2E_RUN_TIMEOUT", "420"))


def _chromium() -> str:
    exe = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not exe:
        pytest.skip(f"no chromium at {CHROMIUM} or on PATH: run `bash scripts/install-browser.sh` (needs root or sudo for apt-get)")
    return exe


@pytest.fixture()
def page(tmp_path: Path, request: pytest.FixtureRequest):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS, headless=True)
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        pg.set_default_timeout(UI_TIMEOUT_MS)
        pg.shots = tmp_path  # type: ignore[attr-defined]
        try:
            yield pg
        finally:
            rep = getattr(request.node, "rep_call", None)
            if rep is None or rep.failed:
                try:
                    pg.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                    (tmp_path / "failure.txt").write_text(pg.url + "\n\n" + pg.inner_text("body"))
                    print(f"\n[e2e] browser screenshot: {tmp_path / 'failure.png'}")
                except Exception as e:  # noqa: BLE001 - the browser may be gone
                    print(f"\n[e2e] no screenshot: {e}")
            browser.close()


def test_nightly_schedule_is_shown_in_the_ui(served, prefect_server, page):
    page.goto(f"{prefect_server.url}/deployments", wait_until="domcontentloaded")
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="retrain-nightly", exact=True))
    # the UI renders the served cron "0 2 * * *" (UTC) as words
    row.get_by_text(re.compile(r"At 0?2:00 AM every day")).wait_for()
    page.screenshot(path=str(page.shots / "deployments.png"))


def test_quick_run_from_the_ui_reaches_completed(served, prefect_server, prefect_api, page):
    page.goto(f"{prefect_server.url}/deployments", wait_until="domcontentloaded")
    page.get_by_role("link", name="retrain-manual", exact=True).first.click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Quick run", exact=True).click()
    # the toast (shown for 5 s): "<run name> scheduled to start now" with a View run button that
    # sits under the animating toast layer; the run is found by the name the toast shows
    name = page.locator(".toast-flow-run-create__message span").first
    name.wait_for()
    run_name = name.inner_text().strip()
    runs = prefect_api.flow_runs_named(run_name)
    assert len(runs) == 1, runs
    flow_run_id = runs[0]["id"]

    fr = prefect_api.wait_terminal(flow_run_id, served.proc, RUN_TIMEOUT_S)
    assert fr["deployment_id"] == prefect_api.deployment("retrain", "retrain-manual")["id"]
    assert fr["state"]["type"] == "COMPLETED", prefect_api.logs(flow_run_id)
    # and the run's page shows it
    page.goto(f"{prefect_server.url}/runs/flow-run/{flow_run_id}", wait_until="domcontentloaded")
    deadline = time.monotonic() + 90
    badge = page.get_by_text("Completed", exact=True).first
    while not badge.is_visible() and time.monotonic() < deadline:
        page.reload(wait_until="domcontentloaded")
        try:
            badge.wait_for(timeout=15_000)
        except Exception:  # noqa: BLE001 - playwright TimeoutError; loop until the deadline
            pass
    page.screenshot(path=str(page.shots / "completed.png"))
    assert badge.is_visible(), f"the run page never showed Completed; see {page.shots}"
    # the flow renames its run when it starts (retrain-<profile>-<time>); the page shows that name
    assert fr["name"] in page.inner_text("body")
