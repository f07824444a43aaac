"""What the Prefect UI shows: the run form's schema, the artifacts' keys and order, links and pictures."""

from __future__ import annotations

from pathlib import Path

import pytest


def _no_null_types(schema, where="") -> list[str]:
    """Paths in a JSON schema where a value may be null (the UI form shows 'Property is type "None"')."""
    found = []
    if isinstance(schema, dict):
        if schema.get("type") == "null" or schema.get("default", 0) is None:
            found.append(where)
        for k, v in schema.items():
            found += _no_null_types(v, f"{where}/{k}")
    elif isinstance(schema, list):
        for i, v in enumerate(schema):
            found += _no_null_types(v, f"{where}/{i}")
    return found


@pytest.mark.parametrize(
    "entry, model",
    [
        ("flows.retrain:retrain", "RetrainParams"),
        ("flows.curate_only:curate_only", "RetrainParams"),
        ("flows.frontier_baseline:frontier_baseline", "RetrainParams"),
        ("flows.evaluate_only:evaluate_only", "EvaluateParams"),
    ],
)
def test_optional_fields_of_the_run_form_are_plain_optional_text(entry, model):
    import importlib

    from prefect.utilities.callables import parameter_schema

    module, name = entry.split(":")
    schema = parameter_schema(getattr(importlib.import_module(module), name).fn).model_dump()
    props = schema["definitions"][model]["properties"]
    optional = ["source", "workdir"] + (["adapter"] if model == "EvaluateParams" else [])
    for field in optional:
        p = props[field]
        assert (p["type"], p["default"], p["title"]) == ("string", "", field.capitalize()), p
        assert "anyOf" not in p and p["description"]
    assert not set(optional) & set(schema["definitions"][model].get("required", []))
    assert _no_null_types(schema) == []
    assert {k: schema["properties"]["params"]["default"][k] for k in optional} == dict.fromkeys(optional, "")


def test_none_from_the_command_line_reads_as_not_given():
    from flows.common import RetrainParams, resolve_config

    p = RetrainParams(profile="demo", source=None, workdir=None)
    assert (p.source, p.workdir) == ("", "")
    cfg = resolve_config(p)
    assert cfg.source.startswith("demo:")  # the profile's


# ------------------------------------------------------------------------------------------------
# artifacts: keys in DAG order, contract results and a Data Docs link a browser opens, pictures

PNG = bytes.fromhex(  # a 1x1 PNG
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def _ref(d, kind, manifest=None, files=None):
    from pricefit.artifacts import ref_for, write_manifest

    d.mkdir(parents=True)
    for name, data in (files or {}).items():
        (d / name).write_bytes(data) if isinstance(data, bytes) else (d / name).write_text(data)
    write_manifest(d, {"kind": kind, **(manifest or {})})
    return ref_for(d, kind)


def _contract(tmp_path, stage):
    import json

    d = tmp_path / stage
    (d / "contracts").mkdir(parents=True)
    (d / "data_docs").mkdir()
    (d / "data_docs" / "index.html").write_text("<title>Data Docs created by Great Expectations</title>")
    report = {
        "stage": stage, "success": True, "checked": 2, "failed": 0, "skipped": 1,
        "expectations": [
            {"name": "expect_column_values_to_not_be_null", "batch": "train", "column": "price", "success": True,
             "unexpected_count": 0, "element_count": 60},
            {"name": "split_proportions", "batch": "proportions", "column": None, "success": True,
             "skipped": "80 items < 100", "unexpected_count": 0, "element_count": None},
        ],
        "report_path": str(d / "contracts" / f"{stage}.json"), "data_docs": str(d / "data_docs" / "index.html"),
    }
    (d / "contracts" / f"{stage}.json").write_text(json.dumps(report))
    keep = ("stage", "success", "checked", "failed", "skipped", "report_path", "data_docs")
    return {k: report[k] for k in keep}


def _results(tmp_path):
    """One fake result per publishing step, shaped as the step tasks return them."""
    from pricefit.artifacts import ref_for, write_manifest

    acc = {"rows_read": 80, "kept": {"train": 60}, "dropped": {"too_short": 5}, "quarantined": 0, "source": "demo:80"}
    adapter = _ref(tmp_path / "adapter", "adapter", files={"loss.png": PNG, "train_summary.json": '{"steps": 2}'})
    evaluation = _ref(tmp_path / "evaluation", "evaluation", files={
        "report.md": "# Evaluation\n\n![scatter](scatter.png)\n\n![errors](errors.png)\n", "scatter.png": PNG, "errors.png": PNG})
    comparison = _ref(tmp_path / "comparison", "comparison", files={"comparison.md": "| model | MAE |\n|---|---:|\n| x | 1 |\n"})
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    (report_dir / "report.md").write_text("# pricefit run report\n")
    write_manifest(report_dir, {"kind": "report", "artifacts": {"adapter": adapter.path, "evaluation": evaluation.path}})
    return {
        "ingest": _ref(tmp_path / "raw", "raw", {"kind": "raw", "parsed": 80, **acc}),
        "contract_raw": _contract(tmp_path, "raw"),
        "curate": _ref(tmp_path / "curated", "curated", acc),
        "contract_curated": _contract(tmp_path, "curated"),
        "contract_tokenized": _contract(tmp_path, "tokenized"),
        "train": adapter,
        "evaluate": evaluation,
        "compare": {"comparison": comparison, "decision": {"promoted": True, "reason": "beats the baselines"}},
        "report": ref_for(report_dir, "report"),
    }


def test_artifact_keys_start_with_the_steps_place_in_the_registry():
    from tasks import steps, ui

    keys = [ui.artifact_key(s) for s in steps.NAMES]
    assert keys[:3] == ["01-ingest", "02-contract-raw", "03-curate"] and keys[-1] == "12-report"
    assert sorted(keys) == keys  # zero-padded: 10-12 sort after 09
    assert ui.artifact_key("evaluate", "scatter-plot") == "08-evaluate-scatter-plot"
    assert ui.step_label("contract_curated") == f"step 4/{len(steps.NAMES)} contract curated"


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_publishes_its_artifacts_in_pipeline_order_with_links_and_pictures(tmp_path, monkeypatch):
    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks import steps, ui

    monkeypatch.setenv(ui.DOCS_URL_ENV, "http://127.0.0.1:4210")
    results = _results(tmp_path)

    @flow
    def publish_all():
        from prefect.runtime import flow_run

        for step in steps.NAMES:  # in DAG order, as Steps.run publishes them
            if step in results:
                ui.publish(step, results[step])
        return flow_run.id

    run_id = publish_all()
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    by_key = {a.key: a for a in arts}
    assert sorted(by_key) == [
        "01-ingest-manifest", "02-contract-raw", "03-curate-manifest", "04-contract-curated", "06-contract-tokenized",
        "07-train-loss-curve", "08-evaluate-report", "08-evaluate-scatter-plot", "11-compare-table", "12-report",
    ]
    # read by key, they follow the registry; every description names its step's place
    assert [k.split("-", 1)[0] for k in sorted(by_key)] == sorted(k.split("-", 1)[0] for k in by_key)
    assert all(a.description.startswith(f"step {int(a.key[:2])}/{len(steps.NAMES)} ") for a in arts), [a.description for a in arts]

    contract = by_key["04-contract-curated"].data
    assert "| expect_column_values_to_not_be_null | train | price | passed | 0 | 60 |" in contract
    assert "| split_proportions | proportions |  | skipped | 0 |  |" in contract
    docs = tmp_path / "curated" / "data_docs" / "index.html"
    assert f"[Open the Data Docs](http://127.0.0.1:4210/data-docs{docs.resolve().as_posix()})" in contract
    assert "file://" not in contract and f"--directory {docs.parent}" in contract

    evaluation = by_key["08-evaluate-report"].data
    assert evaluation.count("](data:image/png;base64,") == 2 and "](scatter.png)" not in evaluation
    report = by_key["12-report"].data
    assert report.startswith("# pricefit run report") and report.count("](data:image/png;base64,") == 3
    for title in ("Training loss", "Predicted vs true price", "Errors"):
        assert f"#### {title}" in report


def test_without_a_docs_server_the_contract_says_how_to_open_the_docs(tmp_path, monkeypatch):
    from tasks import ui

    monkeypatch.delenv(ui.DOCS_URL_ENV, raising=False)
    md = ui.contract_markdown("contract_raw", _contract(tmp_path, "raw"))
    assert "Open the Data Docs" not in md and "file://" not in md
    assert f"`python -m http.server 8765 --bind 127.0.0.1 --directory {tmp_path / 'raw' / 'data_docs'}`" in md
    assert "http://127.0.0.1:8765/index.html" in md


def test_pictures_too_large_or_missing_are_named_not_embedded(tmp_path, monkeypatch):
    from tasks import ui

    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "big.png").write_bytes(PNG + b"\0" * 100)
    monkeypatch.setattr(ui, "MAX_EMBED_BYTES", 80)
    md = ui.embed_images("![a](a.png) ![b](big.png) ![c](gone.png) ![d](https://x.example/d.png)", tmp_path)
    assert md.startswith("![a](data:image/png;base64,")
    assert f"b: `{tmp_path / 'big.png'}`" in md and "*(c: gone.png not written)*" in md
    assert md.endswith("![d](https://x.example/d.png)")


def test_the_docs_server_serves_data_docs_and_nothing_else(tmp_path):
    import httpx

    from flows.serve import docs_file, start_docs_server
    from tasks import ui

    docs = _contract(tmp_path, "curated")["data_docs"]
    (tmp_path / "curated" / "secret.txt").write_text("not docs")
    server, base = start_docs_server("127.0.0.1", 0, roots=[tmp_path])
    try:
        url = ui.data_docs_url(docs, base)
        assert url == f"{base}/data-docs{Path(docs).resolve().as_posix()}"
        r = httpx.get(url)
        assert (r.status_code, r.headers["content-type"]) == (200, "text/html")
        assert "Data Docs created by Great Expectations" in r.text
        assert httpx.get(url.removesuffix("index.html")).text == r.text  # a folder serves its index.html
        folder = Path(docs).resolve().parent
        for path in (f"/data-docs{folder.parent}/secret.txt", f"/data-docs{folder}/../secret.txt", "/data-docs/etc/passwd", "/"):
            r = httpx.get(base + path)
            assert r.status_code == 404 and "only the runs' own data_docs/ folders are served" in r.text, path
    finally:
        server.shutdown()
        server.server_close()
    # what a client that does not normalise the path could ask: resolved before the check
    (folder / "link.txt").symlink_to(folder.parent / "secret.txt")
    assert docs_file(f"/data-docs{folder}/../secret.txt", [tmp_path]) is None
    assert docs_file(f"/data-docs{folder}/link.txt", [tmp_path]) is None
    assert docs_file(f"/data-docs{folder}/%69ndex.html", [tmp_path]) == folder / "index.html"


def test_the_docs_server_serves_only_the_runs_docs_roots_and_only_to_local_host_names(tmp_path, monkeypatch):
    """Issue 21 #6: a data_docs folder elsewhere on disk (/tmp/x/data_docs/id_rsa) is not served, nor
    anything to a request whose Host header is not loopback or the bound host (DNS rebinding)."""
    import httpx

    from flows.serve import DocsRoots, start_docs_server
    from tasks import ui

    workdir, elsewhere = tmp_path / "runs", tmp_path / "x"
    run_docs = Path(_contract(workdir, "curated")["data_docs"])
    linked_docs = Path(_contract(tmp_path / "other-workdir", "curated")["data_docs"])  # a run with its own workdir
    (elsewhere / "data_docs").mkdir(parents=True)
    (elsewhere / "data_docs" / "id_rsa").write_text("PRIVATE KEY")
    registry = tmp_path / "roots.txt"
    registry.touch()
    server, base = start_docs_server("127.0.0.1", 0, roots=DocsRoots([workdir], registry))
    port = server.server_address[1]
    try:
        assert httpx.get(ui.data_docs_url(run_docs, base)).status_code == 200
        secret = f"{base}/data-docs{(elsewhere / 'data_docs' / 'id_rsa').resolve().as_posix()}"
        assert httpx.get(secret).status_code == 404  # was 200: any data_docs folder on disk was served
        linked_url = f"{base}/data-docs{linked_docs.resolve().as_posix()}"
        assert httpx.get(linked_url).status_code == 404  # not linked by a run yet
        monkeypatch.setenv(ui.DOCS_ROOTS_ENV, str(registry))
        assert ui.data_docs_url(linked_docs, base) == linked_url  # a run links it: now it is served
        assert registry.read_text() == f"{linked_docs.resolve().parent.as_posix()}\n"
        assert httpx.get(linked_url).status_code == 200
        assert httpx.get(secret).status_code == 404

        page = ui.data_docs_url(run_docs, base)
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.:1"):
            r = httpx.get(page, headers={"Host": host})
            assert r.status_code == 403 and "wrong Host header" in r.text, host  # was 200
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
            assert httpx.get(page, headers={"Host": host}).status_code == 200, host
    finally:
        server.shutdown()
        server.server_close()


def test_a_busy_docs_port_falls_back_to_a_free_one(caplog):
    from flows.serve import start_docs_server

    first, base = start_docs_server("127.0.0.1", 0)
    port = first.server_address[1]
    try:
        second, other = start_docs_server("127.0.0.1", port)
        second.shutdown()
        second.server_close()
        assert other != base and f"port {port} for the Data Docs server is not free" in caplog.text
    finally:
        first.shutdown()
        first.server_close()


def test_an_unreadable_report_is_a_warning_not_a_failed_step(tmp_path, caplog):
    from tasks import ui

    result = _contract(tmp_path, "raw")
    Path(result["report_path"]).write_text("{not json")
    ui.publish("contract_raw", result)  # no Prefect run needed: it fails before creating the artifact
    assert "could not publish a Prefect artifact (publish_contract)" in caplog.text
