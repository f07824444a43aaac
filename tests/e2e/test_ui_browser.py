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
    if not served.toy:
        _artifacts_in_order_with_data_docs_and_pictures(page, prefect_server, prefect_api, flow_run_id)


# the run's flow-level artifacts, keyed by their step's place in tasks/steps.py
ARTIFACT_KEYS = ["01-ingest-manifest", "02-contract-raw", "03-curate-manifest", "04-contract-curated",
                 "06-contract-tokenized", "07-train-loss-curve", "08-evaluate-report", "08-evaluate-scatter-plot",
                 "11-compare-table", "12-report"]


def _artifacts_in_order_with_data_docs_and_pictures(page, prefect_server, prefect_api, flow_run_id):
    arts = {a["key"]: a for a in prefect_api.artifacts(flow_run_id) if a.get("key")}
    assert set(ARTIFACT_KEYS) <= set(arts), sorted(arts)
    # the Artifacts tab lists them (in an order of its own): each key, so they read in pipeline order
    page.get_by_text("Artifacts", exact=True).first.click()  # the run page's tab (a button-like element, no tab role)
    page.get_by_text("12-report", exact=True).first.wait_for()
    body = page.inner_text("body")
    page.screenshot(path=str(page.shots / "artifacts.png"), full_page=True)
    assert [k for k in ARTIFACT_KEYS if k not in body] == [], f"keys missing on the Artifacts tab; see {page.shots}"

    # the contract artifact: its results table, and a Data Docs link that opens in the browser
    page.goto(f"{prefect_server.url}/artifacts/artifact/{arts['04-contract-curated']['id']}", wait_until="domcontentloaded")
    link = page.get_by_role("link", name="Open the Data Docs")
    link.wait_for()
    page.get_by_role("cell", name="expect_column_values_to_not_be_null").first.wait_for()
    href = link.get_attribute("href")
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/data-docs/.+/data_docs/index\.html", href or ""), href
    page.screenshot(path=str(page.shots / "contract.png"), full_page=True)
    # offline: nothing may be fetched from outside the machine; the page still lists its results
    outside: list[str] = []

    def local_only(route):
        if re.match(r"https?://(127\.0\.0\.1|localhost)[:/]", route.request.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", local_only)
    page.goto(href, wait_until="load")
    assert page.title() == "Data Docs created by Great Expectations", page.url
    results = page.locator("#section-1-content-block-2-1-body-table tbody tr")
    assets = {row.split("\t")[3] for row in results.all_inner_texts()}  # Status, Run Time, Run Name, Asset Name, ...
    assert assets == {"schema", "train", "validation", "test", "all_splits", "manifest", "kept", "dropped"}, page.inner_text("body")[:2000]
    assert results.filter(has_text="Success").count() == results.count() == 8
    page.screenshot(path=str(page.shots / "data-docs.png"))
    assert outside == [], outside
    # a result page opens from its row, offline too
    results.first.get_by_role("link", name="open").click()
    page.wait_for_load_state("load")
    result_page = page.inner_text("body")
    assert "/validations/curated/" in page.url and "Expectation Validation Result" in result_page, page.url
    assert "Status: Succeeded" in " ".join(result_page.split()), result_page[:2000]
    page.unroute("**/*")

    # the comparison names what the fine-tuned model is (a blend, with its weights) and shows the head alone
    page.goto(f"{prefect_server.url}/artifacts/artifact/{arts['11-compare-table']['id']}", wait_until="domcontentloaded")
    page.get_by_text("Model comparison").first.wait_for()
    table = page.inner_text("body")
    page.screenshot(path=str(page.shots / "comparison.png"), full_page=True)
    assert re.search(r"fine_tuned\s*\(fine-tuned head x \d\.\d\d \+ tfidf x \d\.\d\d\)", table), table[:3000]
    assert "fine_tuned: head alone" in table and "fine_tuned: tfidf alone" in table, table[:3000]

    # the run report shows its pictures: loss curve, scatter plot, errors (decoded by the browser)
    page.goto(f"{prefect_server.url}/artifacts/artifact/{arts['12-report']['id']}", wait_until="domcontentloaded")
    page.get_by_text("pricefit run report").first.wait_for()
    pictures = page.locator("img[src^='data:image/png']")
    pictures.first.wait_for()
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    widths = pictures.evaluate_all("els => els.map(e => e.naturalWidth)")
    page.screenshot(path=str(page.shots / "report.png"), full_page=True)
    assert len(widths) == 3 and all(w > 100 for w in widths), (widths, str(page.shots))


def _run_name_input(page):
    """The Run Name text box of the Custom run form."""
    by_label = page.get_by_label("Run Name", exact=True)
    if by_label.count():
        return by_label.first
    return page.locator(".p-label").filter(has=page.get_by_text("Run Name", exact=True)).locator("input").first


def test_custom_run_keeps_the_typed_name_through_a_retry(served, prefect_server, prefect_api, page):
    """A Custom run named in the form fails (test-only fault switch in compare, whose cached output
    the test removes so that it runs), is retried with the UI's Retry button and keeps its name.

    The UI retries only a run that did not complete (a Completed run with a persisted result
    refuses to leave that state), hence the failure first."""
    typed = "my-ui-run"
    page.goto(f"{prefect_server.url}/deployments", wait_until="domcontentloaded")
    page.get_by_role("link", name="retrain-manual", exact=True).first.click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    # the optional fields of the form are text boxes, not 'Property is type "None"'
    page.get_by_text("Source (Optional)", exact=True).first.wait_for()
    body = page.inner_text("body")
    page.screenshot(path=str(page.shots / "custom-run.png"), full_page=True)
    assert "Workdir (Optional)" in body and "Property is type" not in body, f"see {page.shots}"
    if not served.toy:
        for label in ("Source (Optional)", "Workdir (Optional)"):
            field = page.locator(".schema-form-property").filter(has=page.get_by_text(label, exact=True)).last
            assert field.locator("input[type='text'], input:not([type]), textarea").count() == 1, (label, str(page.shots))
    step = "report" if served.toy else "compare"
    # the step must run, not come back Cached from an earlier run of the same inputs (other tests'
    # runs, in any order): its outputs removed, the cache rebuilds it instead of serving it
    for out in list(served.workdir.rglob(f"artifacts/{step}")):
        shutil.rmtree(out)
    served.fault_file.write_text(f"{step}\n")
    try:
        _run_name_input(page).fill(typed)
        page.get_by_role("button", name="Submit", exact=True).click()
        deadline = time.monotonic() + 60
        runs = prefect_api.flow_runs_named(typed)
        while not runs and time.monotonic() < deadline:
            time.sleep(1.0)
            runs = prefect_api.flow_runs_named(typed)
        assert len(runs) == 1, f"no run named {typed!r}; see {page.shots}"
        fr = prefect_api.wait_terminal(runs[0]["id"], served.proc, RUN_TIMEOUT_S)
        assert fr["state"]["type"] == "FAILED", prefect_api.logs(fr["id"])
        assert fr["name"] == typed  # not renamed to retrain-<profile>-<time> when it started
    finally:
        served.fault_file.unlink(missing_ok=True)  # the fix

    # Retry in the UI: the same run runs again and keeps its name
    page.goto(f"{prefect_server.url}/runs/flow-run/{fr['id']}", wait_until="domcontentloaded")
    page.get_by_role("button", name="Retry", exact=True).first.click()
    page.get_by_text(f"This will retry flow run {typed}").wait_for()
    page.get_by_role("button", name="Retry", exact=True).last.click()
    again = prefect_api.wait_terminal(fr["id"], served.proc, RUN_TIMEOUT_S, after=fr["state"]["id"])
    assert again["state"]["type"] == "COMPLETED", prefect_api.logs(fr["id"])
    assert again["run_count"] == 2 and again["name"] == typed
    page.reload(wait_until="domcontentloaded")
    page.get_by_text(typed, exact=True).first.wait_for()


def test_a_run_waiting_for_the_training_slot_says_so_in_its_logs(served, prefect_server, prefect_api, page):
    """Issue 22 #2: a UI-triggered run showed train Running for 18 minutes with no log line while
    another run held the cpu-train slot. Here every slot is taken (as by a run elsewhere on this
    server); the waiting run's page shows who holds it within seconds, and it finishes once freed."""
    from tasks.gpu import CAPACITY

    if served.toy:
        pytest.skip("the toy flow trains nothing")
    r = prefect_api.http.get("v2/concurrency_limits/cpu-train")
    if r.status_code == 404:
        prefect_api._json("POST", "v2/concurrency_limits/", json={"name": "cpu-train", "limit": CAPACITY})
    prefect_api._json("POST", "v2/concurrency_limits/increment", json={"names": ["cpu-train"], "slots": CAPACITY})
    taken = True
    try:
        # train must run (not come back Cached from an earlier test's run): its outputs removed
        for out in list(served.workdir.rglob("artifacts/train")):
            shutil.rmtree(out)
        dep = prefect_api.deployment("retrain", "retrain-manual")
        fr = prefect_api.create_flow_run(dep["id"], name="waits-for-the-slot")
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while "waiting for the cpu-train slot" not in prefect_api.logs(fr["id"]) and time.monotonic() < deadline:
            assert served.proc.alive(), served.proc.log_tail()
            time.sleep(2.0)
        logs = prefect_api.logs(fr["id"])
        assert "waiting for the cpu-train slot (one CPU training at a time), held by" in logs, logs
        # and the run's page in the UI shows the line
        page.goto(f"{prefect_server.url}/runs/flow-run/{fr['id']}", wait_until="domcontentloaded")
        line = page.get_by_text(re.compile("waiting for the cpu-train slot")).first
        try:
            line.wait_for(timeout=60_000)
        finally:
            page.screenshot(path=str(page.shots / "waiting-for-slot.png"), full_page=True)
        assert prefect_api.flow_run(fr["id"])["state"]["type"] == "RUNNING"
        prefect_api._json("POST", "v2/concurrency_limits/decrement", json={"names": ["cpu-train"], "slots": CAPACITY})
        taken = False
        done = prefect_api.wait_terminal(fr["id"], served.proc, RUN_TIMEOUT_S)
        assert done["state"]["type"] == "COMPLETED", prefect_api.logs(fr["id"])
    finally:
        if taken:
            prefect_api._json("POST", "v2/concurrency_limits/decrement", json={"names": ["cpu-train"], "slots": CAPACITY})
