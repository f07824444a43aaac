"""Run a contract's great-expectations suites and turn the results into one readable report.

A contract module (raw.py, curated.py, tokenized.py) describes WHAT to check: it reads the stage
directory, converts each table to pandas at the boundary (GX has no polars engine) and returns
:class:`Batch` objects, each a frame plus the expectations that must hold on it. Checks that are
awkward as per-row expectations (manifest accounting, overlap between splits, split proportions)
are expressed as small derived frames (one row per split, one row per item, ...) so that they
too run through GX, appear in the Data Docs, and are reported in the same format.

This module does the HOW: one ephemeral GX context (nothing on disk but the Data Docs), one
validation per batch, results flattened into ``DIR/contracts/<stage>.json``, Data Docs HTML in
``DIR/data_docs/``, and a :class:`pricefit.errors.ContractError` with a multi-line message when an
expectation fails.

Row-level and systemic checks. An expectation marked ``row_level`` judges each row on its own (a
price out of range, a null key): it runs with GX's ``mostly = 1 - max_bad_row_fraction``, so a
few bad rows do not fail it; the rows it flags are collected in ``Plan.row_failures`` (batch ->
{row position: reason}) for the stage to quarantine or drop, the reason being the expectation's
name and column, e.g. ``expect_column_values_to_be_between(price)``. A batch whose flagged rows
together exceed the fraction fails the ``bad_row_fraction`` check. Every other expectation (schema,
row counts, accounting, uniqueness, overlap) is systemic: one failure stops the stage.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pricefit import artifacts
from pricefit.errors import ContractError

log = logging.getLogger("pricefit.contracts")

REPORT_DIR = "contracts"
DOCS_DIR = "data_docs"
MAX_EXAMPLES = 5
ROW = "_row"  # positional row id added to frames with row-level expectations (never in examples)


@dataclass(frozen=True)
class Expect:
    """One expectation, named by its GX class (``ExpectColumnValuesToNotBeNull``) and kwargs.

    ``guards`` says which failure the expectation stops; it is stored in the expectation's meta
    (so it shows in the Data Docs) and in the report.
    """

    gx_class: str
    guards: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    row_level: bool = False

    @property
    def column(self) -> str | None:
        kw = self.kwargs
        if "column" in kw:
            return kw["column"]
        if "column_A" in kw:
            return f"{kw['column_A']},{kw['column_B']}"
        if "column_list" in kw:
            return ",".join(kw["column_list"])
        return None


def expect(gx_class: str, guards: str, *, row_level: bool = False, **kwargs: Any) -> Expect:
    return Expect(gx_class, guards, dict(kwargs), row_level=row_level)


def snake(gx_class: str) -> str:
    """``ExpectColumnValuesToBeBetween`` -> ``expect_column_values_to_be_between`` (GX's type name)."""
    import re

    return re.sub(r"(?<!^)(?=[A-Z])", "_", gx_class).lower()


def row_reason(spec: Expect) -> str:
    """The drop/quarantine reason of a row flagged by ``spec``: its expectation name and column."""
    return f"{snake(spec.gx_class)}({spec.column})" if spec.column else snake(spec.gx_class)


@dataclass
class Batch:
    """A pandas frame and the expectations that must hold on it."""

    name: str
    frame: Any  # pandas.DataFrame
    expectations: list[Expect]
    id_columns: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """What a contract module hands the runner."""

    batches: list[Batch]
    # checks decided before GX runs (a missing file, a check skipped because the data is too small)
    prechecked: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    # filled by the runner: batch -> {row position in batch.frame: reason of its first failing
    # row-level expectation}
    row_failures: dict[str, dict[int, str]] = field(default_factory=dict)


def failed_check(name: str, batch: str, guards: str, examples: list[Any], column: str | None = None) -> dict[str, Any]:
    """A check that failed before GX could run (e.g. a split file is missing)."""
    return {
        "name": name,
        "batch": batch,
        "column": column,
        "success": False,
        "unexpected_count": len(examples) or 1,
        "element_count": None,
        "examples": examples[:MAX_EXAMPLES],
        "guards": guards,
        "engine": "python",
    }


def skipped_check(name: str, batch: str, guards: str, reason: str, column: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "batch": batch,
        "column": column,
        "success": True,
        "skipped": reason,
        "unexpected_count": 0,
        "element_count": None,
        "examples": [],
        "guards": guards,
        "engine": "python",
    }


# ----------------------------------------------------------------------------------------------
# JSON-safe values (GX hands back numpy scalars, NaN, tuples)


def jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else float(value)  # np.float64 -> float
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalar
    if callable(item):
        try:
            return jsonable(item())
        except (ValueError, TypeError):
            pass
    tolist = getattr(value, "tolist", None)  # numpy array
    if callable(tolist):
        return jsonable(tolist())
    return str(value)


def _shorten(value: Any, limit: int = 160) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[: limit - 3] + "..."
    if isinstance(value, dict):
        return {k: _shorten(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v, limit) for v in value]
    return value


# ----------------------------------------------------------------------------------------------
# GX


def _quiet_gx_env() -> None:
    # no usage statistics / analytics calls, ever (must be set before great_expectations is imported)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("GE_USAGE_STATS", "FALSE")
    # GX logs its decorator registration at INFO; the CLI's root logger is at INFO
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def _context(docs_dir: Path | None):
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # in-memory stores: nothing on disk but the Data Docs site, which lives beside the manifest
    # (GX's default ephemeral site would be a fresh temp dir per context)
    sites = {}
    if docs_dir is not None:
        sites["pricefit"] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        data_docs_sites=sites,
        analytics_enabled=False,
        # GX draws a tqdm bar per validation; ours is the only progress a user should see
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _entry_from_result(stage: str, batch: Batch, res: Any) -> dict[str, Any]:
    cfg = res.expectation_config
    meta = dict(cfg.meta or {})
    kwargs = {k: v for k, v in (cfg.kwargs or {}).items() if k not in ("batch_id", "mostly")}
    result = res.result or {}
    exc = res.exception_info or {}
    # exception_info is either one record or a map of metric id -> record
    if exc and "raised_exception" not in exc:
        records = [v for v in exc.values() if isinstance(v, dict)]
    else:
        records = [exc] if exc else []
    errors = [r.get("exception_message") for r in records if r.get("raised_exception")]

    examples: list[Any] = []
    indexed = result.get("partial_unexpected_index_list") or []
    if indexed and all(isinstance(x, dict) for x in indexed):
        examples = [{k: v for k, v in x.items() if k != ROW} for x in indexed]  # id columns + the offending value(s)
    elif result.get("partial_unexpected_list"):
        examples = list(result["partial_unexpected_list"])
        if "column_A" in kwargs:  # (a, b) tuples -> {column_A: a, column_B: b}
            examples = [
                {kwargs["column_A"]: x[0], kwargs["column_B"]: x[1]} if isinstance(x, (tuple, list)) else x
                for x in examples
            ]
    elif not res.success and "observed_value" in result:
        examples = [{"observed_value": result["observed_value"]}]
    unexpected = result.get("unexpected_count")
    if unexpected is None and not res.success:
        unexpected = 1  # a table-level expectation (schema) failed as a whole

    column = kwargs.get("column")
    if column is None and "column_A" in kwargs:
        column = f"{kwargs['column_A']},{kwargs['column_B']}"
    if column is None and "column_list" in kwargs:
        column = ",".join(kwargs["column_list"])
    entry = {
        "name": cfg.type,
        "batch": batch.name,
        "column": column,
        "kwargs": jsonable(kwargs),
        "success": bool(res.success),
        "unexpected_count": jsonable(unexpected or 0),
        "element_count": jsonable(result.get("element_count")),
        "examples": _shorten(jsonable(examples[:MAX_EXAMPLES])),
        "guards": meta.get("guards"),
        "engine": "great_expectations",
    }
    if "mostly" in (cfg.kwargs or {}):
        entry["mostly"] = jsonable(cfg.kwargs["mostly"])
    if errors:
        entry["error"] = "; ".join(str(e) for e in errors if e)
    return entry


def _flagged_rows(res: Any) -> list[int]:
    rows = []
    for x in (res.result or {}).get("unexpected_index_list") or []:
        if isinstance(x, dict) and ROW in x:
            rows.append(int(x[ROW]))
    return rows


def _bad_row_entry(batch: Batch, flagged: dict[int, str], n: int, max_fraction: float) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for reason in flagged.values():
        counts[reason] = counts.get(reason, 0) + 1
    fraction = len(flagged) / n if n else 0.0
    return {
        "name": "bad_row_fraction",
        "batch": batch.name,
        "column": None,
        "success": fraction <= max_fraction,
        "unexpected_count": len(flagged),
        "element_count": n,
        "observed_fraction": round(fraction, 6),
        "max_bad_row_fraction": max_fraction,
        "reasons": dict(sorted(counts.items())),
        "examples": [{"reason": r, "rows": c} for r, c in sorted(counts.items())][:MAX_EXAMPLES],
        "guards": "a systemic defect (a broken reader, a changed format) passed off as a few bad rows; "
        "below the fraction the flagged rows are quarantined or dropped and the run goes on",
        "engine": "python",
    }


def _run_gx(
    stage: str, plan: Plan, docs_dir: Path | None, max_bad_row_fraction: float = 0.0
) -> tuple[list[dict[str, Any]], str | None]:
    _quiet_gx_env()
    # GX must never write to stdout: `pricefit validate --json` promises one JSON object there
    with contextlib.redirect_stdout(sys.stderr):
        t0 = time.perf_counter()
        import great_expectations as gx

        log.debug("great_expectations imported in %.1fs", time.perf_counter() - t0)
        ctx = _context(docs_dir)
        source = ctx.data_sources.add_pandas(f"pricefit_{stage}")
        entries: list[dict[str, Any]] = []
        for batch in plan.batches:
            if not batch.expectations:
                continue
            asset = source.add_dataframe_asset(batch.name)
            definition = asset.add_batch_definition_whole_dataframe(batch.name)
            suite = ctx.suites.add(gx.ExpectationSuite(name=f"{stage}.{batch.name}"))
            row_level = any(spec.row_level for spec in batch.expectations)
            for spec in batch.expectations:
                cls = getattr(gx.expectations, spec.gx_class)
                kwargs = dict(spec.kwargs)
                if spec.row_level:
                    kwargs.setdefault("mostly", 1.0 - max_bad_row_fraction)
                suite.add_expectation(cls(**kwargs, meta={"guards": spec.guards, "reason": row_reason(spec), "row_level": spec.row_level}))
            vd = ctx.validation_definitions.add(
                gx.ValidationDefinition(name=f"{stage}.{batch.name}", data=definition, suite=suite)
            )
            frame = batch.frame
            # row-level batches: COMPLETE results, with the row position as id, to know which rows failed
            result_format: dict[str, Any] = {
                "result_format": "COMPLETE" if row_level else "SUMMARY",
                "partial_unexpected_count": MAX_EXAMPLES,
                "return_unexpected_index_query": False,
            }
            ids = [c for c in batch.id_columns if c in frame.columns]
            if row_level:
                frame = frame.assign(**{ROW: range(len(frame))})
                ids = [*ids, ROW]
            if ids:
                result_format["unexpected_index_column_names"] = ids
            res = vd.run(batch_parameters={"dataframe": frame}, result_format=result_format)
            flagged: dict[int, str] = {}
            row_check_failed = False
            for r in res.results:
                entries.append(_entry_from_result(stage, batch, r))
                meta = r.expectation_config.meta or {}
                if meta.get("row_level"):
                    row_check_failed |= not r.success
                    for row in _flagged_rows(r):
                        flagged.setdefault(row, meta["reason"])
            if flagged:
                plan.row_failures[batch.name] = dict(sorted(flagged.items()))
                # each row-level check passed within its fraction: do the rows they flag, together, too?
                # (when one already failed on its own, it says so; no second line for the same rows)
                if not row_check_failed:
                    entries.append(_bad_row_entry(batch, flagged, len(frame), max_bad_row_fraction))
        index = None
        if docs_dir is not None:
            urls = ctx.build_data_docs(site_names=["pricefit"])
            index = urls.get("pricefit")
            from .offline_docs import make_offline

            make_offline(docs_dir)  # no CDN: styled and listed without a network
    return entries, index


# ----------------------------------------------------------------------------------------------
# report


def _describe(entry: dict[str, Any]) -> str:
    what = entry["name"] + (f"({entry['column']})" if entry.get("column") else "")
    n = entry.get("unexpected_count")
    of = entry.get("element_count")
    count = f"{n} of {of} rows" if of is not None else f"{n} failing"
    if entry.get("mostly") is not None and entry["mostly"] < 1:
        count += f" (at most {1 - entry['mostly']:.2%} may fail: curate.max_bad_row_fraction)"
    elif entry.get("max_bad_row_fraction") is not None:
        count += f" (at most {entry['max_bad_row_fraction']:.2%} may fail: curate.max_bad_row_fraction)"
    lines = [f"  - [{entry['batch']}] {what}: {count}"]
    if entry.get("error"):
        lines.append(f"      error: {entry['error']}")
    if entry.get("examples"):
        shown = ", ".join(str(e) for e in entry["examples"][:3])
        lines.append(f"      e.g. {shown}")
    if entry.get("guards"):
        lines.append(f"      guards: {entry['guards']}")
    return "\n".join(lines)


def _reason_counts(rows: dict[int, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in rows.values():
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def format_failures(report: dict[str, Any]) -> str:
    failed = [e for e in report["expectations"] if not e["success"]]
    head = (
        f"{report['stage']} contract failed: {len(failed)} of {len(report['expectations'])} "
        f"checks failed on {report['directory']}"
    )
    tail = [f"  report: {report['report_path']}"]
    if report.get("data_docs"):
        tail.append(f"  data docs: {report['data_docs']}")
    if report.get("quarantine"):
        tail.append(f"  quarantine: {report['quarantine']}")
    return "\n".join([head, *(_describe(e) for e in failed), *tail])


def run_plan(
    stage: str,
    directory: str | os.PathLike,
    plan: Plan,
    data_docs: bool = True,
    max_bad_row_fraction: float = 0.0,
    shown_as: str | os.PathLike | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate every batch, write the report and Data Docs, raise ContractError on failure.

    ``shown_as``: the path the report and the message name (the final place of a directory that
    is validated before it is moved there); files are written under ``directory``.
    """
    d = Path(directory).resolve()
    shown = Path(shown_as).resolve() if shown_as is not None else d
    t0 = time.perf_counter()
    docs_final = d / DOCS_DIR
    plan.row_failures.clear()
    if data_docs:
        # built under a temporary name and swapped in: an old page never mixes with a new run
        with artifacts.atomic_dir(docs_final) as tmp_docs:
            entries, _ = _run_gx(stage, plan, tmp_docs, max_bad_row_fraction)
    else:
        entries, _ = _run_gx(stage, plan, None, max_bad_row_fraction)
    entries = plan.prechecked + entries
    success = all(e["success"] for e in entries)
    report_path = shown / REPORT_DIR / f"{stage}.json"
    report: dict[str, Any] = {
        "stage": stage,
        "directory": str(shown),
        "success": success,
        "checked": len(entries),
        "failed": sum(not e["success"] for e in entries),
        "skipped": sum(bool(e.get("skipped")) for e in entries),
        "batches": {b.name: int(len(b.frame)) for b in plan.batches},
        "expectations": entries,
        "report_path": str(report_path),
        "data_docs": str(shown / DOCS_DIR / "index.html") if data_docs else None,
        "max_bad_row_fraction": max_bad_row_fraction,
        "row_failures": {b: _reason_counts(rows) for b, rows in plan.row_failures.items()},
        "elapsed_s": round(time.perf_counter() - t0, 3),
        "checked_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **plan.info,
        **(extra or {}),
    }
    report = jsonable(report)
    artifacts.write_json_atomic(d / REPORT_DIR / f"{stage}.json", report)
    if not success:
        raise ContractError(
            format_failures(report),
            report=report,
            hint="fix the data or the stage that produced it, then rerun; the report file lists every check "
            "(rows failing a row-level check are quarantined while they stay within curate.max_bad_row_fraction)",
        )
    return report
