"""Contract for the tokenized dataset: dataset/ (datasets.DatasetDict.save_to_disk) + manifest.json.

Mistakes here do not crash training, they silently teach the wrong thing: a sequence longer than
the budget is cut by the collator (and loses the price), labels left unmasked train the model to
write the product description, a label shifted by one token trains it on the wrong digit. So
every row is reduced to a few numbers (length, padding, unmasked runs, token mismatches) and the
unmasked label tokens are decoded and compared with the row's ``completion`` text.

Decoding needs the tokenizer: pass one to ``check(..., tokenizer=tok)``, otherwise the one named
by the manifest's ``base_model`` is loaded with ``pricefit.models.load_tokenizer``. When neither is
available the decode comparison is reported as skipped (the structural checks still run).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .common import SPLITS, manifest_of, one_row, overlap_batch, schema_batch, schema_rows
from .runner import Batch, Plan, expect, failed_check, skipped_check

log = logging.getLogger("pricefit.contracts")

IGNORE_INDEX = -100

COLUMNS: dict[str, tuple[str, bool]] = {
    "item_id": ("str", False),
    "category": ("str", True),
    "price": ("float", False),
    "text": ("str", False),
    "prompt": ("str", False),
    "completion": ("str", False),
    "input_ids": ("list[int]", False),
    "attention_mask": ("list[int]", False),
    "labels": ("list[int]", False),
}


def feature_family(feature: Any) -> str:
    """Type family of a datasets feature: 'str', 'int', 'float', 'list[int]', ..."""
    inner = getattr(feature, "feature", None)
    if inner is not None:  # List / Sequence / LargeList
        return f"list[{feature_family(inner)}]"
    dtype = str(getattr(feature, "dtype", feature))
    if dtype in ("string", "large_string"):
        return "str"
    if dtype.startswith(("int", "uint")):
        return "int"
    if dtype.startswith("float"):
        return "float"
    if dtype == "null":
        return "null"
    return dtype


def row_profile(input_ids: list[int], attention_mask: list[int], labels: list[int]) -> dict[str, Any]:
    """The numbers the expectations read, for one sequence."""
    unmasked = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    runs = sum(1 for k, i in enumerate(unmasked) if k == 0 or unmasked[k - 1] != i - 1)
    mismatch = sum(1 for i in unmasked if i >= len(input_ids) or labels[i] != input_ids[i])
    return {
        "n_tokens": len(input_ids),
        "n_labels": len(labels),
        "n_attention": len(attention_mask),
        "attention_zeros": sum(1 for a in attention_mask if a != 1),
        "unmasked_tokens": len(unmasked),
        "unmasked_runs": runs,
        "label_token_mismatch": mismatch,
        "_unmasked_ids": [labels[i] for i in unmasked],
    }


def split_expectations(max_tokens: int | None, with_text: bool) -> list:
    checks = [
        expect("ExpectColumnValuesToNotBeNull", "rows that cannot be traced to a curated item", column="item_id"),
        expect("ExpectColumnValuesToBeUnique", "an item tokenized twice (weighted double in loss and metrics)", column="item_id"),
        # over budget: the collator or the model cuts the sequence, and the price at its end goes first
        expect(
            "ExpectColumnValuesToBeBetween",
            "sequences over the token budget (the price completion at the end is what gets cut)",
            column="n_tokens",
            min_value=1,
            max_value=max_tokens,
        ),
        # one label per input position (labels are not shifted in the dataset; the model shifts them)
        expect(
            "ExpectColumnPairValuesToBeEqual",
            "labels of another length than input_ids (a shift or a truncation applied to one only)",
            column_A="n_tokens",
            column_B="n_labels",
        ),
        expect(
            "ExpectColumnPairValuesToBeEqual",
            "an attention mask of another length than input_ids",
            column_A="n_tokens",
            column_B="n_attention",
        ),
        # sequences are stored unpadded; a 0 in the mask means padding was baked in (and maybe trained on)
        expect(
            "ExpectColumnValuesToBeInSet",
            "padding stored in the dataset (attention_mask not all ones)",
            column="attention_zeros",
            value_set=[0],
        ),
        # exactly one unmasked span, the completion: more means prompt tokens carry loss, none means no signal
        expect(
            "ExpectColumnValuesToBeInSet",
            "prompt tokens left unmasked, or a row with no label at all",
            column="unmasked_runs",
            value_set=[1],
        ),
        expect(
            "ExpectColumnValuesToBeInSet",
            "labels that are not the input tokens at their position (off-by-one shift, wrong ids)",
            column="label_token_mismatch",
            value_set=[0],
        ),
    ]
    if with_text:
        checks.append(
            expect(
                "ExpectColumnPairValuesToBeEqual",
                "the unmasked label tokens spelling something other than the price completion",
                column_A="completion",
                column_B="unmasked_label_text",
            )
        )
    return checks


def _tokenizer(manifest: dict[str, Any], tokenizer: Any) -> tuple[Any, str | None]:
    """The tokenizer that built the dataset, without touching the network: a contract check must
    not hang on an unreachable hub. Local directory -> load it; built-in name -> pricefit.models;
    hub id -> the local Hugging Face cache only."""
    if tokenizer is not None:
        return tokenizer, None
    name = manifest.get("base_model")
    if not name:
        return None, "the manifest names no base_model"
    try:
        from transformers import AutoTokenizer

        from pricefit.models import builtin_models, load_tokenizer

        local = Path(str(name)).expanduser()
        if local.is_dir():
            return AutoTokenizer.from_pretrained(str(local)), None
        if name in builtin_models():
            return load_tokenizer(name), None
        return AutoTokenizer.from_pretrained(name, local_files_only=True), None
    except Exception as e:  # noqa: BLE001 - any failure only downgrades this one check
        reason = f"tokenizer {name!r} could not be loaded offline: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
        log.warning("contract: %s; label decode check skipped", reason)
        return None, reason


def build(directory: Path, tokenizer: Any = None, **_: object) -> Plan:
    import pandas as pd

    manifest = manifest_of(directory)
    # the budget the data was built for is the tokenize config's max_length; manifests without a
    # config fall back to their max_tokens
    max_tokens = (manifest.get("config") or {}).get("max_length") or manifest.get("max_tokens")
    prechecked: list[dict[str, Any]] = []
    batches: list[Batch] = []
    ds_dir = directory / "dataset"
    try:
        import datasets

        dd = datasets.load_from_disk(str(ds_dir))
    except Exception as e:  # noqa: BLE001
        prechecked.append(
            failed_check(
                "dataset_loadable", "dataset", "dataset/ must be a DatasetDict written by save_to_disk",
                [{"path": str(ds_dir), "error": str(e)[:300]}],
            )
        )
        dd = {}
    tok, why_not = _tokenizer(manifest, tokenizer)
    decode_guard = "the unmasked label tokens spelling something other than the price completion"
    if tok is None:
        prechecked.append(skipped_check("labels_decode_to_completion", "dataset", decode_guard, why_not or "no tokenizer"))

    schema: list[dict[str, Any]] = []
    ids: dict[str, list[Any]] = {}
    rows: dict[str, int] = {}
    for split in SPLITS:
        if split not in dd:
            prechecked.append(
                failed_check("split_present", split, "a split missing from the dataset", [{"missing_split": split}])
            )
            continue
        ds = dd[split]
        rows[split] = ds.num_rows
        schema += schema_rows(split, {k: feature_family(v) for k, v in ds.features.items()}, COLUMNS)
        cols = [c for c in ("item_id", "completion", "input_ids", "attention_mask", "labels") if c in ds.column_names]
        data = ds.select_columns(cols).to_dict()
        n = ds.num_rows
        profiles = [
            row_profile(
                data.get("input_ids", [[]] * n)[i] or [],
                data.get("attention_mask", [[]] * n)[i] or [],
                data.get("labels", [[]] * n)[i] or [],
            )
            for i in range(n)
        ]
        frame = pd.DataFrame(profiles, columns=list(profiles[0]) if profiles else list(row_profile([], [], [])))
        frame.insert(0, "item_id", data.get("item_id", [None] * n))
        if tok is not None:
            decoded = tok.batch_decode(frame["_unmasked_ids"].tolist(), skip_special_tokens=True)
            frame["unmasked_label_text"] = [s.strip() for s in decoded]
            frame["completion"] = [str(c).strip() for c in data.get("completion", [""] * n)]
        frame = frame.drop(columns=["_unmasked_ids"])
        ids[split] = list(frame["item_id"])
        batches.append(Batch(split, frame, split_expectations(max_tokens, tok is not None), id_columns=["item_id"]))

    if schema:
        batches.insert(0, schema_batch(schema))
    if ids:
        batches.append(overlap_batch(ids))
    manifest_rows = manifest.get("rows") or {}
    batches.append(
        Batch(
            "rows",
            pd.DataFrame([{"split": s, "manifest_rows": manifest_rows.get(s), "dataset_rows": rows.get(s)} for s in SPLITS]),
            id_columns=["split"],
            expectations=[
                expect(
                    "ExpectColumnPairValuesToBeEqual",
                    "a manifest that does not describe the dataset beside it (stale or partial write)",
                    column_A="manifest_rows",
                    column_B="dataset_rows",
                )
            ],
        )
    )
    batches.append(
        one_row(
            "manifest",
            {"kind": manifest.get("kind"), "max_tokens": max_tokens},
            [
                expect(
                    "ExpectColumnValuesToBeInSet", "validating another stage's directory", column="kind", value_set=["tokenized"]
                ),
                expect(
                    "ExpectColumnValuesToNotBeNull",
                    "a manifest without the token budget the data was built for",
                    column="max_tokens",
                ),
            ],
        )
    )
    return Plan(batches=batches, prechecked=prechecked, info={"rows": rows, "max_tokens": max_tokens})
