"""`pricefit evaluate` (held-out metrics, plots, report) and `pricefit predict` (price new listings)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ..cli import JSON_OPTION_HELP, PROFILE_OPTION_HELP, app, check_config, check_input, check_source, command, emit
from ..errors import PricefitError

_ADAPTER_HELP = "Output directory of `pricefit train` (or its adapter/ folder). Leave out to score the base model alone."
_BASE_HELP = "Base model: built-in name (smollm2-135m, tiny-random), local directory or hub id. Default: the one the adapter was trained on."


def _eval_cfg(config: Optional[Path], set_: Optional[list[str]], **explicit: Any):
    from ..config import EvaluateConfig, load_stage_config  # deferred: keeps `pricefit --help` fast (loads pydantic, yaml)

    overrides: list = list(set_ or [])  # "evaluate." prefix optional
    overrides += [(f"{k}={v}", f"--{k.replace('_', '-')} {v}") for k, v in explicit.items() if v is not None]
    return load_stage_config(EvaluateConfig, str(config) if config else None, "evaluate", overrides)


def _curate_cfg(config: Optional[Path]):
    """The --config file's curate rules; None without one (the adapter's recorded rules then apply)."""
    from ..config import CurateConfig, load_stage_config  # deferred: keeps `pricefit --help` fast (loads pydantic, yaml)

    return load_stage_config(CurateConfig, str(config), "curate") if config else None


def _human_eval(r: dict[str, Any]) -> str:
    hit = r["hit_rate"] * 100
    model = r.get("model") or {}
    alone = "".join(f"  {c['name']} alone: MAE ${c['metrics']['mae']:,.2f}\n"
                    for c in model.get("components", []) if c.get("metrics"))
    return (
        f"evaluated {r['n']} items -> {r['out']}\n"
        + (f"  model   {model['label']}\n" if model.get("label") else "") + alone
        + f"  MAE     ${r['mae']:,.2f}\n  RMSLE   {r['rmsle']:.3f}\n  hit     {hit:.1f}%\n"
        f"  MdAPE   {r['mdape']:.1f}%\n  unparsed {r['n_unparsed']} (scored as $0)\n"
        + "".join(
            f"  slice {name}: n={m['n']}" + (f" MAE ${m['mae']:,.2f} hit {m['hit_rate'] * 100:.1f}%" if m.get("n") else "") + "\n"
            for name, m in (r.get("slices") or {}).items()
        )
        + f"  report  {r['report']}"
    )


@app.command("evaluate")
@command
def evaluate_cmd(
    adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help=_ADAPTER_HELP),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="A curated or tokenized artifact; its --split is scored."),
    source: Optional[str] = typer.Option(
        None, "--source", "-s", help="Instead of --data: any listings source `pricefit curate` reads (texts built by the same rules, no sampling)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (evaluation artifact)."),
    base_model: Optional[str] = typer.Option(None, "--base-model", "-m", help=_BASE_HELP),
    split: Optional[str] = typer.Option(None, "--split", help="test (default) or validation."),
    max_items: Optional[int] = typer.Option(None, "--max-items", "-n", help="Score at most N items."),
    mode: Optional[str] = typer.Option(None, "--mode", help="greedy (parse the generated text) or expected (mean over the price distribution)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Prompts per batch (default 16 on CPU, 128 on CUDA)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda."),
    config: Optional[str] = typer.Option(None, "--profile", "--config", "-p", "-c", help=PROFILE_OPTION_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override an evaluate setting, e.g. --set beam=16 (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Score a fine-tuned adapter (or a base model) on held-out items: MAE, RMSLE, hit rate, MdAPE, by category and
    price band, a scatter plot, an error histogram and a Markdown/JSON report.

    Examples:

      pricefit evaluate --adapter runs/demo/train --data runs/demo/curated --out runs/demo/eval

      pricefit evaluate --adapter runs/demo/train --source new_listings.jsonl.gz --out runs/new/eval
    """
    if (data is None) == (source is None):
        raise PricefitError("give exactly one of --data and --source", hint="--data <curated or tokenized dir> or --source <listings>")
    if adapter is None and base_model is None:
        raise PricefitError("nothing to evaluate: no --adapter and no --base-model", hint="pass --adapter DIR, or --base-model NAME to score a base model")
    check_input(adapter, "--adapter", ("adapter",))
    check_input(data, "--data", ("curated", "tokenized"))
    check_source(source, "--source")
    config = check_config(config)
    from .. import evaluation  # deferred: keeps `pricefit --help` fast (loads polars, pydantic, yaml)
    from .. import tracking  # deferred: keeps `pricefit --help` fast (loads pydantic)

    cfg = _eval_cfg(config, set_, split=split, max_items=max_items, mode=mode, batch_size=batch_size, device=device)
    from ..config import load_slices  # deferred: keeps `pricefit --help` fast (loads pydantic, yaml)

    slices = load_slices(config)  # a run profile's slices: metrics per slice beside the overall ones
    tracking.check(tracking.target())  # MLFLOW_TRACKING_URI set: fail now, not after scoring
    if data is not None:
        ref = evaluation.evaluate(data, out, cfg, base_model, adapter, slices=slices)
    else:
        ref = evaluation.evaluate_source(source, out, cfg, base_model, adapter, curate_cfg=_curate_cfg(config), slices=slices)
    tracking.log_evaluation(ref.path)
    metrics = json.loads((ref.dir / "metrics.json").read_text())
    manifest = ref.manifest()
    emit(
        {
            "ok": True,
            "out": str(ref.dir),
            "sha256": ref.sha256,
            "report": str(ref.dir / "report.md"),
            **{k: metrics[k] for k in ("n", "n_unparsed", "mae", "rmsle", "hit_rate", "mdape")},
            "mode": manifest.get("mode", cfg.mode),  # the mode it ran in (auto resolved)
            "model": metrics.get("model"),  # what the model is (pricefit.composition)
            "split": cfg.split if data is not None else None,
            "items_per_s": manifest.get("items_per_s"),
            "skipped": manifest["rows"]["skipped"],
            "slices": {name: {k: m.get(k) for k in ("n", "mae", "rmsle", "hit_rate")} for name, m in (metrics.get("slices") or {}).items()},
        },
        as_json,
        _human_eval,
    )


def _read_listings(json_listing: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if json_listing == "-" else Path(json_listing).read_text() if Path(json_listing).exists() else None
    if text is None:
        raise PricefitError(f"--json-listing {json_listing}: no such file", hint="give a JSON file, or - to read stdin")
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise PricefitError(f"--json-listing is not valid JSON: {e}", hint='e.g. {"title": "...", "description": "..."}') from None
    return obj if isinstance(obj, list) else [obj]


@app.command("predict")
@command
def predict_cmd(
    adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help=_ADAPTER_HELP),
    base_model: Optional[str] = typer.Option(None, "--base-model", "-m", help=_BASE_HELP),
    json_listing: Optional[str] = typer.Option(
        None, "--json-listing", "-j", help="A JSON file (or - for stdin) holding one listing object (title, description, features, details) or a list of them."
    ),
    title: Optional[str] = typer.Option(None, "--title", "-t", help="Title of one listing."),
    description: Optional[str] = typer.Option(None, "--description", help="Description of that listing."),
    file: Optional[str] = typer.Option(None, "--file", "-f", help="A file of listings: any source `pricefit curate` reads."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write all predictions to this JSONL file."),
    mode: Optional[str] = typer.Option(None, "--mode", help="greedy or expected."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Prompts per batch (default 16 on CPU, 128 on CUDA)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda."),
    config: Optional[str] = typer.Option(None, "--profile", "--config", "-p", "-c", help=PROFILE_OPTION_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Price one listing (JSON, or --title/--description) or a file of listings with an adapter or a base model.

    The listing's text is built by the curation rules (cleaned, cut to the token budget), then prompted as in training.

    Examples:

      pricefit predict --adapter runs/demo/train --title "Cordless drill" --description "18 V, two batteries"

      echo '{"title": "Kettle", "description": ["1.7 L", "steel"]}' | pricefit predict --adapter runs/demo/train --json-listing -
    """
    given = [x is not None for x in (json_listing, title, file)]
    if sum(given) != 1:
        raise PricefitError("give exactly one of --json-listing, --title (with --description) and --file")
    if description is not None and title is None:
        raise PricefitError("--description needs --title", hint='pricefit predict --title "..." --description "..."')
    if adapter is None and base_model is None:
        raise PricefitError("no --adapter and no --base-model", hint="pass --adapter DIR, or --base-model NAME")
    check_input(adapter, "--adapter", ("adapter",))
    config = check_config(config)
    if json_listing not in (None, "-"):
        check_input(json_listing, "--json-listing", file=True)
    check_source(file, "--file")
    from .. import evaluation  # deferred: keeps `pricefit --help` fast (loads polars, pydantic, yaml)

    cfg = _eval_cfg(config, None, mode=mode, batch_size=batch_size, device=device)
    if file is not None:
        listings: Any = file
    elif title is not None:
        listings = [{"title": title, "description": description or ""}]
    else:
        listings = _read_listings(json_listing)
    predictor = evaluation.make_predictor(cfg, base_model, adapter)
    rows = evaluation.predict_listings(listings, predictor, cfg, _curate_cfg(config))
    if out is not None:
        from ..artifacts import write_text_atomic  # deferred: keeps `pricefit --help` fast (loads pydantic)

        write_text_atomic(out, "".join(json.dumps(r, default=str) + "\n" for r in rows))
    public = [{k: r.get(k) for k in ("item_id", "title", "prediction", "raw", "parsed", "parts", "skipped")} for r in rows]
    result: dict[str, Any] = {"ok": True, "n": len(rows), "n_priced": sum(r["parsed"] for r in rows), "mode": cfg.mode}
    if len(rows) == 1:
        result.update({"price": public[0]["prediction"], **public[0]})
    else:
        result["predictions"] = public
    if out is not None:
        result["out"] = str(out)

    def human(r: dict[str, Any]) -> str:
        lines = []
        for p in public:
            price = "no price" if p["prediction"] is None else f"${p['prediction']:,.2f}"
            note = f"  [{p['skipped']}]" if p["skipped"] else f"  (model wrote {p['raw']!r})" if not p["parsed"] else ""
            if p.get("parts"):  # a blend: what each component said
                note += "  (" + ", ".join(f"{k} ${v:,.2f}" for k, v in p["parts"].items()) + ")"
            lines.append(f"{price:>12}  {(p['title'] or '(no title)')[:70]}{note}")
        return "\n".join(lines)

    emit(result, as_json, human)
