"""`pricefit validate STAGE DIR`: run a data contract (great-expectations suites) on a stage directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..cli import JSON_OPTION_HELP, app, check_input, command, emit
from ..errors import PricefitError

STAGES = ("raw", "curated", "tokenized")


def _human(r: dict[str, Any]) -> str:
    lines = [f"{r['stage']} contract passed: {r['checked']} checks ({r['skipped']} skipped) on {r['directory']}"]
    for name, n in r.get("batches", {}).items():
        lines.append(f"  {name:<14} {n} rows")
    for e in r.get("expectations", []):
        if e.get("skipped"):
            lines.append(f"  skipped {e['name']}: {e['skipped']}")
    lines.append(f"  report: {r['report_path']}")
    if r.get("data_docs"):
        lines.append(f"  data docs: {r['data_docs']}")
    return "\n".join(lines)


@app.command("validate")
@command
def validate_cmd(
    stage: str = typer.Argument(..., help=f"Which contract: {', '.join(STAGES)}."),
    directory: Path = typer.Argument(..., help="The stage's output directory (holds manifest.json)."),
    docs: bool = typer.Option(True, "--docs/--no-docs", help="Build GX Data Docs HTML in DIR/data_docs/."),
    tokenizer: Optional[str] = typer.Option(
        None,
        "--tokenizer",
        help="tokenized only: model whose tokenizer decodes the labels (default: the manifest's base_model).",
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Check a stage directory against its data contract.

    Writes DIR/contracts/STAGE.json (every check: name, column, success, unexpected_count, examples)
    and GX Data Docs in DIR/data_docs/index.html. Exits 0 when every check passes, 3 when one fails
    (the failing checks, their counts and examples are printed), 2 on unusable input.

    Example:  pricefit validate curated runs/demo/curated
    """
    if stage not in STAGES:
        raise PricefitError(f"unknown stage {stage!r}", hint=f"use one of: {', '.join(STAGES)}")
    check_input(directory, "DIR", (stage,))
    tok = None
    if tokenizer:
        if stage != "tokenized":
            raise PricefitError("--tokenizer only applies to the tokenized contract")
        from ..models import load_tokenizer  # deferred: keeps `pricefit --help` fast (loads pydantic, yaml)

        tok = load_tokenizer(tokenizer)

    import data_contracts  # deferred: keeps `pricefit --help` fast (a module pricefit --help does not load)

    report = data_contracts.check(stage, directory, data_docs=docs, tokenizer=tok)
    emit({"ok": True, **report}, as_json, _human)
