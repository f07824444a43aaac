"""A stand-in for flows/retrain.py with the same step names, for developing the server/browser tests.

Seconds instead of minutes: each step is a cached task (inputs key, persisted result), evaluate
honours the same PRICEFIT_FAULT_FILE switch as tests/faultinject/pricefit_faults.py, and the UI gets a table and a
Markdown artifact. Used only when PRICEFIT_E2E_TOY=1.
"""

import os
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS

CACHED = dict(cache_policy=INPUTS, persist_result=True)


@task(name="ingest", **CACHED)
def ingest(n: int) -> dict:
    return {"rows": n}


@task(name="curate", **CACHED)
def curate(raw: dict) -> dict:
    create_table_artifact(key="data-manifest", table=[{"split": "train", "rows": raw["rows"]}])
    return raw


@task(name="tokenize", **CACHED)
def tokenize(curated: dict) -> dict:
    return {**curated, "tokens": 3}


@task(name="train", **CACHED)
def train(tokenized: dict) -> dict:
    return {**tokenized, "adapter": "toy"}


@task(name="evaluate", **CACHED)
def evaluate(adapter: dict, items: int) -> dict:
    fault = os.environ.get("PRICEFIT_FAULT_FILE")
    if fault and Path(fault).exists() and "evaluate" in Path(fault).read_text().split():
        raise RuntimeError("injected fault in step 'evaluate'")
    return {"mae": 1.0, "items": items}


@task(name="report", **CACHED)
def report(metrics: dict) -> dict:
    create_markdown_artifact(key="evaluation-report", markdown=f"# MAE {metrics['mae']}")
    return metrics


@flow(name="retrain")
def retrain(profile: str = "demo", eval_items: int = 5) -> dict:
    adapter = train(tokenize(curate(ingest(10))))
    return report(evaluate(adapter, eval_items))
