"""`pricefit baselines`, `pricefit compare`, `pricefit promote`: the verdict on a fine-tuned adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..cli import JSON_OPTION_HELP, PROFILE_OPTION_HELP, app, check_config, check_input, command, emit
from ..errors import PricefitError

BASELINE_NAMES = ("constant", "linear", "tfidf", "base_model", "frontier")


def _money(v: Any) -> str:
    return "—" if v is None else f"${v:,.2f}"


def _human_baselines(r: dict[str, Any]) -> str:
    lines = [f"baselines on {r['n']} {r['split']} items -> {r['out']}"]
    for name, s in r["baselines"].items():
        if s["status"] != "ok":
            lines.append(f"  {name:<12} {s['status']}")
            continue
        extra = ""
        if "requests" in s:
            extra = f"  ({s['requests']} requests, {s['cached_items']} cached, ~${s['estimated_cost_usd']:.4f})"
        lines.append(
            f"  {name:<12} MAE {_money(s['mae']):>10}  RMSLE {s['rmsle']:.3f}  hit {100 * s['hit_rate']:5.1f}%"
            f"  unparsed {s['n_unparsed']}{extra}"
        )
    return "\n".join(lines)


@app.command("baselines")
@command
def baselines_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Curated directory (output of `pricefit curate`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: <name>/predictions.parquet + metrics.json per baseline."),
    include: Optional[str] = typer.Option(
        None, "--include", help=f"Comma-separated subset of {','.join(BASELINE_NAMES)} (default: all)."
    ),
    base_model: Optional[str] = typer.Option(
        None, "--base-model", help="Model scored before fine-tuning (hub id, local dir, smollm2-135m, tiny-random)."
    ),
    split: Optional[str] = typer.Option(None, "--split", help="Held-out split: test or validation (match `pricefit evaluate`)."),
    max_items: Optional[int] = typer.Option(None, "--max-items", help="Score the first N held-out items (match `pricefit evaluate`)."),
    config: Optional[str] = typer.Option(None, "--profile", "--config", "-p", "-c", help=PROFILE_OPTION_HELP),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="Override a setting, e.g. --set frontier.model=gpt-4o-mini --set frontier.concurrency=8."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Score the baselines on the same held-out items as the fine-tuned model.

    constant (training mean), linear (text-length/digit/category features), tfidf (TF-IDF + ridge on
    log price), base_model (the model before fine-tuning) and frontier (an OpenAI-compatible chat
    endpoint: key from OPENAI_API_KEY, endpoint from OPENAI_BASE_URL or frontier.base_url; skipped
    with a note when there is no key; replies cached on disk so a rerun costs nothing).

    Example:  pricefit baselines --data runs/demo/curated --out runs/demo/baselines --include constant,linear,tfidf
    """
    check_input(data, "--data", ("curated",))
    config = check_config(config)
    from ..baselines import read_summary, run_baselines  # deferred: keeps `pricefit --help` fast (loads polars, numpy, pydantic, yaml, tenacity)
    from ..config import BaselinesConfig, load_stage_config  # deferred: keeps `pricefit --help` fast (loads pydantic, yaml)

    overrides: list = list(set_ or [])  # "baselines." prefix optional
    if include:
        names = [x.strip() for x in include.split(",") if x.strip()]
        unknown = [x for x in names if x not in BASELINE_NAMES]
        if unknown:
            raise PricefitError(f"unknown baseline(s): {', '.join(unknown)}", hint=f"choose from {','.join(BASELINE_NAMES)}")
        overrides.append(("include", names, f"--include {include}"))
    if base_model:
        overrides.append(("base_model", base_model, f"--base-model {base_model}"))
    if split:
        overrides.append(("split", split, f"--split {split}"))
    if max_items is not None:
        overrides.append(("max_items", max_items, f"--max-items {max_items}"))
    cfg = load_stage_config(BaselinesConfig, str(config) if config else None, "baselines", overrides)
    from ..config import load_slices  # deferred: keeps `pricefit --help` fast (loads pydantic, yaml)

    ref = run_baselines(data, out, cfg, slices=load_slices(config))
    summary = read_summary(ref.path)
    emit(
        {"ok": True, "out": ref.path, "sha256": ref.sha256, "split": summary["split"], "n": summary["n"],
         "items_sha256": summary["items_sha256"], "baselines": summary["baselines"]},
        as_json,
        _human_baselines,
    )


@app.command("compare")
@command
def compare_cmd(
    evaluation: Path = typer.Option(..., "--evaluation", "-e", help="Evaluation directory of the fine-tuned adapter (`pricefit evaluate`)."),
    baselines: Path = typer.Option(..., "--baselines", "-b", help="Baselines directory (`pricefit baselines`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: comparison.md + comparison.json."),
    metric: str = typer.Option("mae", "--metric", help="Rank by mae, rmsle, mdape (lower is better) or hit_rate."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Put the fine-tuned model beside every baseline on the same items: rank and error ratios.

    Refuses when any model was scored on a different set of items.

    Example:  pricefit compare -e runs/demo/evaluation -b runs/demo/baselines -o runs/demo/comparison
    """
    check_input(evaluation, "--evaluation", ("evaluation",))
    check_input(baselines, "--baselines", ("baselines",))
    import json

    from ..compare import compare, to_markdown  # deferred: keeps `pricefit --help` fast (loads polars, numpy, pydantic, yaml, tenacity)

    ref = compare(evaluation, baselines, out, metric=metric)
    table = json.loads((Path(ref.path) / "comparison.json").read_text())
    from ..terminal import markdown_to_text  # deferred: keeps `pricefit --help` fast

    # a terminal gets aligned columns; comparison.md (and the UI) keep the Markdown
    emit({"ok": True, "out": ref.path, **table}, as_json,
         lambda r: markdown_to_text(to_markdown(table)) + f"\n-> {Path(ref.path) / 'comparison.md'}")


@app.command("promote")
@command
def promote_cmd(
    evaluation: Path = typer.Option(..., "--evaluation", "-e", help="Evaluation directory of the challenger adapter."),
    workdir: Path = typer.Option(..., "--workdir", "-w", help="Directory of champion.json and promotions.jsonl."),
    margin: float = typer.Option(0.02, "--margin", min=0.0, help="Relative improvement needed to replace the champion (0.02 = 2%)."),
    metric: str = typer.Option("mae", "--metric", help="mae or rmsle (lower is better)."),
    baselines: Optional[Path] = typer.Option(
        None, "--baselines", "-b", help="Baselines of the same items: the challenger must beat the best classical one (constant, linear, tfidf)."
    ),
    champion_evaluation: Optional[Path] = typer.Option(
        None, "--champion-evaluation", help="The current champion's adapter evaluated on the same items (`pricefit evaluate`)."
    ),
    slice_: Optional[str] = typer.Option(None, "--slice", help="Decide on this named slice of the evaluation's metrics."),
    no_guard: bool = typer.Option(False, "--no-baseline-guard", help="Promote even without beating the classical baselines."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Champion/challenger: make this adapter the champion only if it beats the best classical baseline
    (--baselines) and the current champion by --margin.

    The champion must have been scored on the same items: pass its re-scored evaluation with
    --champion-evaluation (the retrain flow does this every night), else a champion scored on other
    items is refused. The decision and its numbers are appended to WORKDIR/promotions.jsonl; a refusal exits 0.

    Example:  pricefit promote -e runs/x/eval -b runs/x/baselines -w runs/x --margin 0.02
    """
    check_input(evaluation, "--evaluation", ("evaluation",))
    check_input(baselines, "--baselines", ("baselines",))
    check_input(champion_evaluation, "--champion-evaluation", ("evaluation",))
    from .. import tracking  # deferred: keeps `pricefit --help` fast (loads pydantic)
    from ..promotion import promote  # deferred: keeps `pricefit --help` fast (loads polars, numpy, pydantic, yaml, tenacity)
    from ..config import PromoteConfig, validate_model  # deferred: keeps `pricefit --help` fast (loads pydantic, yaml)

    cfg = validate_model(
        PromoteConfig,
        {"margin": margin, "metric": metric, "slice": slice_, "require_beat_baselines": not no_guard},
        "command-line options",
    )
    tracking.check(tracking.target())
    import logging

    # the decision is this command's output: its log line (the flow's record of it) would say it twice
    quiet = logging.getLogger("pricefit.promotion")
    level = quiet.level
    if not logging.getLogger("pricefit").isEnabledFor(logging.DEBUG):
        quiet.setLevel(logging.WARNING)
    try:
        rec = promote(evaluation, workdir, cfg, champion_eval=champion_evaluation, baselines_dir=baselines)
    finally:
        quiet.setLevel(level)
    tracking.register_champion(rec)  # MLFLOW_TRACKING_URI set and promoted: a registered model version
    emit(
        {"ok": True, **rec},
        as_json,
        lambda r: f"{'PROMOTED' if r['promoted'] else 'not promoted'}: {r['reason']}",
    )
