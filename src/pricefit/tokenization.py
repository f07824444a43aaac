"""Tokenize curated splits into a training dataset whose loss falls on the price only.

One example is ``prompt + completion`` with the reference product-pricer wording::

    How much does this cost to the nearest dollar?\\n\\n{text}\\n\\nPrice is $   <- prompt (no loss)
    123.00                                                                    <- completion (loss)

Conventions (they decide what the model learns, so they are fixed here and tested):

- The joined string is tokenized with the tokenizer's own special tokens (``add_special_tokens=True``):
  a bos where the model adds one (Llama 3, tiny-random), none where it does not (SmolLM2). No eos
  is appended: the model learns to write the price, and generation is cut by ``max_new_tokens``
  and parsing, as in the reference.
- ``labels`` are -100 on every prompt token and equal ``input_ids`` on the completion tokens. The
  prompt tokens are found by tokenizing the prompt alone (exactly what inference feeds the model)
  and checking that the joined tokens start with them. If a template merges tokens across the
  prompt/completion boundary, that check fails with a clear error instead of silently training a
  token the model never sees at inference.
- The price in the completion is ``round(price)`` (Python's round, as the reference) in whole dollars.
- Sequences are capped at ``max_length`` by cutting the *text* (at a token boundary), never the
  template or the completion. ``text`` keeps the full curated text; ``prompt`` is what the model saw.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from .artifacts import ArtifactRef, atomic_dir, canonical_json, read_manifest, ref_for, sha256_file, write_manifest
from .settings.tokenize import TokenizeConfig
from .contract_hook import check_before_commit
from .curation import read_split
from .errors import ContractError, PricefitError
from .models import load_tokenizer, model_info

log = logging.getLogger("pricefit.tokenization")

IGNORE_INDEX = -100
SPLITS = ("train", "validation", "test")
INPUT_COLUMNS = ("item_id", "category", "text", "price")  # what tokenize reads of a curated split
OUTPUT_COLUMNS = ("item_id", "category", "price", "text", "prompt", "completion", "input_ids", "attention_mask", "labels")
SCHEMA_VERSION = 1


# ----------------------------------------------------------------------------------------------
# one example


def whole_dollars(price: float) -> int:
    return int(round(float(price)))


def build_prompt(text: str, cfg: TokenizeConfig) -> str:
    """The prompt the model reads (no price). ``str.replace``, so braces in listings are safe."""
    return cfg.prompt_template.replace("{text}", text)


def build_completion(price: float, cfg: TokenizeConfig) -> str:
    """What the model must write: the rounded whole-dollar price in the completion template."""
    return cfg.completion_template.replace("{price}", str(whole_dollars(price)))


def _boundary_error(item: Any, prompt_ids: list[int], full_ids: list[int], tokenizer) -> PricefitError:
    n = len(prompt_ids)
    return PricefitError(
        f"item {item}: the prompt's tokens are not a prefix of the prompt+completion tokens "
        f"(prompt ends {tokenizer.convert_ids_to_tokens(prompt_ids[-3:])}, joined has "
        f"{tokenizer.convert_ids_to_tokens(full_ids[max(0, n - 3):n + 2])}); a token spans the boundary, "
        "so the model would be trained on a token it never sees at inference",
        hint="end prompt_template with a character the tokenizer splits on (e.g. '$' or a space) or start "
        "completion_template with one",
    )


# the widest completion of a price in the curated range ($999.49 at most by default): the prompt is cut
# to leave room for it, so how much of an item's text the model reads never depends on its price,
# and inference (which does not know the price) cuts exactly as training did
WIDEST_PRICE = 999.0


def completion_budget(tokenizer, cfg: TokenizeConfig) -> int:
    """Tokens reserved for the completion (that of :data:`WIDEST_PRICE`)."""
    return len(tokenizer(build_completion(WIDEST_PRICE, cfg), add_special_tokens=False)["input_ids"])


def _encode_batch(tokenizer, texts: list[str], prices: list[float], cfg: TokenizeConfig, items: list[Any]) -> dict[str, list]:
    """Encode rows: truncate text to fit ``max_length``, mask everything but the completion.

    The text is cut until the prompt leaves room for the widest completion (:func:`completion_budget`)
    and the row's own completion fits as well.
    """
    completions = [build_completion(p, cfg) for p in prices]
    budget = completion_budget(tokenizer, cfg)
    texts = list(texts)
    truncated = [False] * len(texts)
    todo = list(range(len(texts)))
    out_full: list[list[int] | None] = [None] * len(texts)
    for _round in range(8):  # each round removes the measured excess; 1-2 rounds in practice
        if not todo:
            break
        prompts = [build_prompt(texts[i], cfg) for i in todo]
        full = tokenizer([p + completions[i] for p, i in zip(prompts, todo)], add_special_tokens=True)["input_ids"]
        plen = [len(x) for x in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        over = []
        for j, i in enumerate(todo):
            excess = max(len(full[j]) - cfg.max_length, plen[j] + budget - cfg.max_length)
            if excess <= 0:
                out_full[i] = full[j]
            else:
                over.append((i, excess))
        if over:
            enc = tokenizer([texts[i] for i, _ in over], add_special_tokens=False, return_offsets_mapping=True)
            for (i, excess), offsets in zip(over, enc["offset_mapping"]):
                keep = len(offsets) - excess
                if keep <= 0 or not texts[i]:
                    raise PricefitError(
                        f"item {items[i]}: the prompt template and the completion alone need more than "
                        f"max_length={cfg.max_length} tokens",
                        hint="raise tokenize.max_length or shorten prompt_template",
                    )
                # cut where the first dropped token starts: a character spread over several byte
                # tokens (an emoji) goes whole, and each round shortens the text by at least one char
                cut = min(offsets[keep][0], len(texts[i]) - 1)
                texts[i] = texts[i][:cut].rstrip()
                truncated[i] = True
        todo = [i for i, _ in over]
    if todo:
        raise PricefitError(f"could not fit item {items[todo[0]]} into max_length={cfg.max_length} tokens")

    prompts = [build_prompt(t, cfg) for t in texts]
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    labels = []
    for i, (p, f) in enumerate(zip(prompt_ids, out_full)):
        n = len(p)
        if f[:n] != p or len(f) <= n:
            raise _boundary_error(items[i], p, f, tokenizer)
        labels.append([IGNORE_INDEX] * n + f[n:])
    return {
        "prompt": prompts,
        "completion": completions,
        "input_ids": out_full,
        "attention_mask": [[1] * len(f) for f in out_full],
        "labels": labels,
        "truncated": truncated,
    }


def fit_prompts(tokenizer, texts: list[str], cfg: TokenizeConfig) -> list[str]:
    """The prompts training built for these texts (cut the same way, whatever the price)."""
    if not texts:
        return []
    return _encode_batch(tokenizer, list(texts), [WIDEST_PRICE] * len(texts), cfg, list(range(len(texts))))["prompt"]


def encode_example(tokenizer, text: str, price: float, cfg: TokenizeConfig) -> dict[str, Any]:
    """One training example: prompt, completion, input_ids, attention_mask, labels, truncated."""
    out = _encode_batch(tokenizer, [text], [price], cfg, ["(example)"])
    return {k: v[0] for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# the stage


def _features():
    from datasets import Features, List, Value

    return Features(
        {
            "item_id": Value("string"),
            "category": Value("string"),
            "price": Value("float64"),
            "text": Value("string"),
            "prompt": Value("string"),
            "completion": Value("string"),
            "input_ids": List(Value("int64")),
            "attention_mask": List(Value("int8")),
            "labels": List(Value("int64")),
            "truncated": Value("bool"),
        }
    )


def _read_split(curated_dir: Path, split: str):
    """A curated split as an Arrow table of INPUT_COLUMNS, checked by curation.read_split."""
    import polars as pl

    frame = read_split(curated_dir, split, columns=INPUT_COLUMNS).select(INPUT_COLUMNS)
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


def tokenize(curated_dir: str | Path, out_dir: str | Path, cfg: TokenizeConfig, contract=None) -> ArtifactRef:
    """Curated splits -> ``out_dir/dataset`` (DatasetDict.save_to_disk) + manifest; kind "tokenized".

    ``contract``: the tokenized data contract (``data_contracts.stage_contract("tokenized")``), run
    on the directory being built, before the rename; its verdict goes into the manifest, so a run
    killed at any point never leaves a tokenized artifact in place whose contract has not passed
    (a failed one is moved into place marked failed, for its report; training refuses it).
    """
    import datasets

    curated_dir = Path(curated_dir)
    tables = {split: _read_split(curated_dir, split) for split in SPLITS}  # bad input fails before any work
    manifest = read_manifest(curated_dir)
    curated_sha = sha256_file(curated_dir / "manifest.json")
    tokenizer = load_tokenizer(cfg.base_model)
    info = model_info(cfg.base_model)
    log.info("tokenizing %s with %s (max_length %d)", curated_dir, cfg.base_model, cfg.max_length)

    key = canonical_json({"curated": curated_sha, "tokenizer": info["tokenizer_sha256"], "cfg": cfg.model_dump(), "v": SCHEMA_VERSION})
    splits: dict[str, Any] = {}
    stats: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        table = tables[split]
        # deterministic fingerprint: the same inputs write byte-identical files
        fingerprint = hashlib.sha256(f"{key}|{split}".encode()).hexdigest()[:16]
        if table.num_rows == 0:  # map() on zero rows would not add the new columns
            ds = datasets.Dataset.from_dict({k: [] for k in _features()}, features=_features())
            ds = ds.map(lambda b: b, batched=True, new_fingerprint=fingerprint)
        else:
            ds = datasets.Dataset(table)  # in memory: no cache files under ~/.cache/huggingface

            def fn(batch):
                enc = _encode_batch(tokenizer, batch["text"], batch["price"], cfg, batch["item_id"])
                return {**batch, **enc}

            ds = ds.map(
                fn,
                batched=True,
                batch_size=cfg.batch_size,
                features=_features(),
                desc=f"tokenize {split}",
                new_fingerprint=fingerprint,
            )
        if ds.num_rows != table.num_rows:  # pragma: no cover - map never drops rows here
            raise PricefitError(f"{split}: {table.num_rows} rows in, {ds.num_rows} out")
        lengths = [len(x) for x in ds["input_ids"]]
        n_trunc = sum(ds["truncated"])
        stats[split] = {
            "rows": ds.num_rows,
            "max_tokens": max(lengths, default=0),
            "mean_tokens": round(sum(lengths) / len(lengths), 2) if lengths else 0.0,
            "truncated": n_trunc,
        }
        splits[split] = ds.remove_columns(["truncated"]).select_columns(list(OUTPUT_COLUMNS))

    all_rows = sum(s["rows"] for s in stats.values())
    body = {
        "kind": "tokenized",
        "schema_version": SCHEMA_VERSION,
        "base_model": cfg.base_model,
        "base_model_path": info["path"],
        "architecture": info["architecture"],
        "tokenizer_sha256": info["tokenizer_sha256"],
        "config": cfg.model_dump(),
        "curated_sha256": curated_sha,
        "rows": {s: stats[s]["rows"] for s in SPLITS},
        # the token budget every sequence fits in (what the tokenized contract checks against)
        "max_tokens": cfg.max_length,
        "tokens_max": max(s["max_tokens"] for s in stats.values()),
        "tokens_mean": round(sum(s["mean_tokens"] * s["rows"] for s in stats.values()) / all_rows, 2) if all_rows else 0.0,
        "truncated": sum(s["truncated"] for s in stats.values()),
        "splits": stats,
        "ignore_index": IGNORE_INDEX,
        "adds_bos": bool(tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]),
        "synthetic": manifest.get("synthetic"),
        # the curation rules that built the texts: evaluate --source / predict rebuild texts with them
        "curate_config": manifest.get("config"),
    }
    with atomic_dir(out_dir, commit_on=(ContractError,)) as tmp:
        datasets.DatasetDict(splits).save_to_disk(str(tmp / "dataset"))
        write_manifest(tmp, body)
        check_before_commit(tmp, out_dir, contract)
    return ref_for(out_dir, "tokenized", rows=all_rows)
