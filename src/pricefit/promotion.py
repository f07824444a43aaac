"""Champion/challenger promotion: the one place that decides, and that knows where the champion is.

``promote(eval_dir, workdir, cfg, champion_eval=..., baselines_dir=...)`` makes an evaluated
adapter the champion (``<workdir>/champion.json``, written atomically; the adapter's files are
kept in ``<workdir>/champions/<sha256[:16]>``, apart from the step cache that may drop or recompute
the directory it was trained into) only when

1. it beats the best classical baseline (constant, linear, TF-IDF) on the decision metric and
   slice (``cfg.require_beat_baselines``; a model worse than TF-IDF is never promoted), and
2. it beats the current champion by ``cfg.margin`` (relative) on the same items: the flow
   re-scores the champion's adapter on today's held-out items (``champion_eval``); a champion
   record scored on other items and not re-scored is refused with that reason.

``cfg.slice`` takes the decision on a named slice's metrics instead of all items. Every decision
and its numbers is appended to ``<workdir>/promotions.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from .artifacts import (
    atomic_dir,
    read_manifest,
    sha256_dir,
    write_json_atomic,
)
from .baselines import read_summary
from .composition import adds_nothing
from .errors import PricefitError
from .items import item_set_sha256
from .report import fmt
from .settings.baselines import CLASSICAL_BASELINES
from .settings.promote import PromoteConfig

log = logging.getLogger("pricefit.promotion")

FINE_TUNED = "fine_tuned"
METRICS = ("mae", "rmsle", "hit_rate", "mdape")
LOWER_IS_BETTER = {"mae": True, "rmsle": True, "mdape": True, "hit_rate": False}
# a float at the margin boundary ("exactly 2% better") must count as meeting it
EPS = 1e-12


def read_item_ids(directory: Path) -> list[str]:
    import polars as pl

    path = directory / "predictions.parquet"
    if not path.exists():
        raise PricefitError(f"{path} does not exist", hint="point at a finished evaluation or baseline directory")
    return [str(x) for x in pl.read_parquet(path, columns=["item_id"])["item_id"].to_list()]


def read_metrics(directory: Path) -> dict[str, Any]:
    path = directory / "metrics.json"
    if not path.exists():
        raise PricefitError(f"{path} does not exist", hint="point at a finished evaluation or baseline directory")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------- table


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, default=str) + "\n"
    # one write of one line in append mode: a reader never sees half a record from a finished call
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _normal(value: Any) -> Any:
    """``value`` as it reads back from promotions.jsonl (the JSON the record was written as)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _unfinished_promotion(log_path: Path, challenger: dict[str, Any], champion: dict[str, Any] | None) -> dict[str, Any] | None:
    """The last record, when it promoted this very challenger over the champion still in place.

    That is the state a run killed after appending its record and before writing champion.json
    leaves behind; any later change of champion.json (another promotion) makes it not match.
    """
    if not log_path.is_file():
        return None
    lines = [ln for ln in log_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    try:
        last = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None
    if not isinstance(last, dict) or not last.get("promoted"):
        return None
    if last.get("challenger") != _normal(challenger) or last.get("champion_before") != _normal(champion):
        return None
    return last


def decide(
    challenger_value: float, champion_value: float | None, margin: float, lower_is_better: bool = True
) -> tuple[bool, float | None]:
    """(promote?, relative improvement). Improvement exactly equal to the margin promotes."""
    if champion_value is None:
        return True, None
    if champion_value == 0:  # no relative improvement is defined against a perfect (or zero) score
        if lower_is_better:
            return challenger_value <= 0 and margin == 0, None
        return challenger_value > 0, None
    if lower_is_better:
        improvement = (champion_value - challenger_value) / abs(champion_value)
    else:
        improvement = (challenger_value - champion_value) / abs(champion_value)
    return improvement + EPS >= margin, improvement


def current_champion(workdir: str | Path) -> dict[str, Any] | None:
    """The champion record of ``workdir`` when its adapter still exists (None: no champion to re-judge)."""
    path = Path(workdir) / "champion.json"
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    adapter = rec.get("adapter")
    if not adapter or not Path(adapter).exists() or not rec.get("adapter_sha256"):
        log.warning("the champion's adapter %s is gone: it cannot be re-scored on today's items", adapter)
        return None
    return rec


def champion_to_rescore(workdir: str | Path, challenger_adapter: str | Path) -> tuple[str, str] | None:
    """(adapter directory, its recorded sha256) of the champion to re-score beside a challenger on
    the challenger's items; None without one, or when the challenger is the champion."""
    champ = current_champion(workdir)
    if champ is None or champ.get("adapter_sha256") == sha256_dir(challenger_adapter):
        return None
    return str(champ["adapter"]), str(champ["adapter_sha256"])


def champion_sha256(workdir: str | Path) -> str | None:
    """The sha256 recorded for the champion's adapter, the one a re-scored evaluation must match."""
    champ = current_champion(workdir)
    return None if champ is None else champ.get("adapter_sha256")


def champion_adapter(workdir: str | Path) -> str:
    """The champion's adapter directory (the evaluate flow's default adapter); an error without one."""
    path = Path(workdir) / "champion.json"
    adapter = json.loads(path.read_text()).get("adapter") if path.exists() else None
    if not adapter:
        raise PricefitError(f"no adapter given and no champion in {path}", hint="pass adapter=<dir> or run the retrain flow first")
    return str(adapter)


def decision_value(metrics: Mapping[str, Any], metric: str, slice_name: str | None) -> tuple[float | None, int | None]:
    """(value, n) of ``metric`` overall or on a named slice (None when absent or the slice is empty)."""
    if slice_name is None:
        return (None if metrics.get(metric) is None else float(metrics[metric])), metrics.get("n")
    sl = (metrics.get("slices") or {}).get(slice_name)
    if not sl or not sl.get("n") or sl.get(metric) is None:
        return None, (sl or {}).get("n", 0)
    return float(sl[metric]), int(sl["n"])


def _where(cfg: PromoteConfig) -> str:
    return "all items" if cfg.slice is None else f"slice {cfg.slice!r}"


def fine_tune_guard(record: Mapping[str, Any] | None, cfg: PromoteConfig) -> str | None:
    """None unless the challenger's fine-tuned part carries (almost) no weight in its blend: then its
    score is its post-hoc components' work, and promoting it would credit the fine-tune for it."""
    if not adds_nothing(record):
        return None
    assert record is not None
    parts = []
    for c in record.get("components", []):
        v, _ = decision_value({**(c.get("metrics") or {}), "slices": (c.get("metrics") or {}).get("slices") or {}},
                              cfg.metric, cfg.slice)
        alone = "" if v is None else f", {cfg.metric} {fmt(cfg.metric, v)} alone"
        parts.append(f"{c['name']} (weight {c['weight']:.2f}{alone})")
    return (f"the fine-tune adds nothing: the challenger is {', '.join(parts)} on {_where(cfg)}; "
            "its score is the other components' work, so it is not promoted")


def baseline_guard(challenger_value: float, baselines_dir: str | Path | None, cfg: PromoteConfig, item_sha: str) -> str | None:
    """None when the challenger beats every classical baseline on the decision metric/slice, else why not."""
    if not cfg.require_beat_baselines:
        return None
    if baselines_dir is None:
        return ("no baselines were given to check the challenger against (pass --baselines, or promote without the guard: "
                "--no-baseline-guard, in a profile promote.require_beat_baselines: false)")
    bl = Path(baselines_dir)
    summary = read_summary(bl)
    if summary.get("items_sha256") not in (None, item_sha):
        return "the baselines were scored on other items than the challenger; rerun them on the same split"
    lower = LOWER_IS_BETTER[cfg.metric]
    scored: dict[str, float] = {}
    for name in CLASSICAL_BASELINES:
        if (summary.get("baselines", {}).get(name) or {}).get("status") != "ok":
            continue
        value, _ = decision_value(read_metrics(bl / name), cfg.metric, cfg.slice)
        if value is not None:
            scored[name] = value
    if not scored:
        return (f"no classical baseline ({', '.join(CLASSICAL_BASELINES)}) was scored on {_where(cfg)}: include one in "
                "baselines.include, or promote without the guard (--no-baseline-guard; in a profile "
                "promote.require_beat_baselines: false)")
    best = (min if lower else max)(scored, key=scored.__getitem__)
    beats = challenger_value < scored[best] - EPS if lower else challenger_value > scored[best] + EPS
    if beats:
        return None
    return (f"challenger {cfg.metric} {fmt(cfg.metric, challenger_value)} on {_where(cfg)} does not beat the best classical "
            f"baseline, {best} {fmt(cfg.metric, scored[best])}: a model no better than {best} is never promoted")


def promote(
    eval_dir: str | Path,
    workdir: str | Path,
    cfg: PromoteConfig | None = None,
    *,
    champion_eval: str | Path | None = None,
    baselines_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Champion/challenger: promote the adapter evaluated in ``eval_dir`` if it beats the baselines and the champion.

    ``champion_eval``: the current champion's adapter re-scored on the challenger's items (the
    flow does this); ``baselines_dir``: the baselines artifact of the same items (the guard).
    Returns the decision record (also appended to ``<workdir>/promotions.jsonl``).
    """
    cfg = cfg or PromoteConfig()
    ev = Path(eval_dir).resolve()
    wd = Path(workdir)
    metrics = read_metrics(ev)
    value, n_decided = decision_value(metrics, cfg.metric, cfg.slice)
    if value is None and cfg.slice is None:
        raise PricefitError(f"{ev}/metrics.json lacks {cfg.metric!r}", hint="rerun `pricefit evaluate`")
    ids = read_item_ids(ev)
    try:
        manifest = read_manifest(ev)
    except PricefitError:
        manifest = {}
    challenger = {
        "evaluation": str(ev),
        "adapter": manifest.get("adapter"),
        "adapter_sha256": manifest.get("adapter_sha256"),
        "metric": cfg.metric,
        "slice": cfg.slice,
        "value": value,
        "n_decided": n_decided,
        "items_sha256": item_set_sha256(ids),
        "n": len(ids),
        "metrics": {k: metrics.get(k) for k in ("n", "n_unparsed", *METRICS)},
        "slices": metrics.get("slices") or {},
    }
    rescored = None
    if champion_eval is not None:
        ce = Path(champion_eval).resolve()
        ce_ids = read_item_ids(ce)
        if item_set_sha256(ce_ids) != challenger["items_sha256"]:
            raise PricefitError(f"the re-scored champion {ce} covers other items than the challenger {ev}",
                                hint="score the champion's adapter on the challenger's split and max_items")
        ce_man = read_manifest(ce)
        ce_value, _ = decision_value(read_metrics(ce), cfg.metric, cfg.slice)
        rescored = {"evaluation": str(ce), "adapter_sha256": ce_man.get("adapter_sha256"), "value": ce_value}
    record = metrics.get("model")
    if record:
        challenger["model"] = {k: record.get(k) for k in ("label", "fine_tuned_weight")}
    guard = None if value is None else (
        fine_tune_guard(record, cfg) or baseline_guard(value, baselines_dir, cfg, challenger["items_sha256"]))
    wd.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    # two runs promoting at once must not both read the old champion and both win
    with FileLock(str(wd / ".champion.lock")):
        return _decide_and_record(wd, challenger, cfg, rescored, guard)


def _stale_rescore(rescored: dict[str, Any] | None, champion: dict[str, Any] | None) -> str | None:
    """Why the re-scored champion is not the champion in place now (read under the promotion lock),
    or None. The adapter's sha256 identifies it (every evaluation records it); a rescore or a
    champion without one cannot be checked and is taken as it is."""
    if rescored is None or champion is None:
        return None
    then, now = rescored.get("adapter_sha256"), champion.get("adapter_sha256")
    if then is None or now is None or then == now:
        return None
    return (f"the champion was replaced (now adapter {str(now)[:12]}) after this run re-scored the one before "
            f"({str(then)[:12]}): that score is not used, the decision is against the champion in place")


CHAMPIONS_DIR = "champions"


def _as_kept(wd: Path, challenger: dict[str, Any]) -> dict[str, Any]:
    """``challenger`` as the champion record names it: its adapter at ``<workdir>/champions/<sha256[:16]>``."""
    src, sha = challenger.get("adapter"), challenger.get("adapter_sha256")
    if not src or not sha:
        return challenger
    kept = wd.resolve() / CHAMPIONS_DIR / str(sha)[:16]
    if kept == Path(src).resolve():
        return challenger
    return {**challenger, "adapter": str(kept), "trained_adapter": str(src)}


def keep_adapter(wd: Path, challenger: dict[str, Any]) -> dict[str, Any]:
    """``challenger`` with its adapter copied to ``<workdir>/champions/<sha256[:16]>``.

    The champion must outlive the cache entry it was trained into: a cleared or recomputed train
    artifact (retraining is not bit-identical) would otherwise leave champion.json naming files
    that no longer hash to its ``adapter_sha256``, and no later run could re-score it. A copy
    already there with the right hash is reused (a run killed after copying). No adapter or
    sha256 recorded: unchanged.
    """
    kept_rec = _as_kept(wd, challenger)
    if kept_rec is challenger:
        return challenger
    src, sha, kept = challenger["adapter"], str(challenger["adapter_sha256"]), Path(kept_rec["adapter"])
    if kept.is_dir() and sha256_dir(kept) == sha:
        return kept_rec
    if not Path(src).is_dir():
        log.warning("the promoted adapter %s is not on this machine: champion.json names it, but no copy is kept", src)
        return challenger
    if sha256_dir(src) != sha:
        raise PricefitError(
            f"the adapter to promote, {src}, no longer hashes to the sha256 its evaluation recorded ({sha[:12]}…)",
            hint="it was retrained or changed after it was evaluated: run the flow again so it is evaluated as it is now")
    with atomic_dir(kept) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=lambda _d, names: [n for n in names if n.startswith(".tmp-")])
    if sha256_dir(kept) != sha:
        shutil.rmtree(kept, ignore_errors=True)
        raise PricefitError(f"the adapter {src} changed while it was copied to {kept}", hint="promote again")
    return kept_rec


def _decide_and_record(wd: Path, challenger: dict[str, Any], cfg: PromoteConfig, rescored: dict[str, Any] | None = None,
                       guard: str | None = None) -> dict[str, Any]:
    champ_path = wd / "champion.json"
    champion = json.loads(champ_path.read_text()) if champ_path.exists() else None
    pending = _unfinished_promotion(wd / "promotions.jsonl", _as_kept(wd, challenger), champion)
    if pending is not None:  # a run killed between its record and the pointer: finish that decision
        write_json_atomic(champ_path, {**keep_adapter(wd, challenger), "promoted_at": pending["time"]})
        log.info("promotion accepted (finishing the recorded decision of %s): %s", pending["time"], pending["reason"])
        return pending
    stale = _stale_rescore(rescored, champion)
    if stale is not None:  # another run replaced the champion after this one re-scored the old one
        log.warning("%s", stale)
        rescored = {**rescored, "stale": stale}
    lower = LOWER_IS_BETTER[cfg.metric]
    same_adapter = (
        champion is not None and challenger.get("adapter_sha256") is not None
        and champion.get("adapter_sha256") == challenger["adapter_sha256"]
    )

    if challenger["value"] is None:
        promoted, improvement = False, None
        reason = f"the decision slice {cfg.slice!r} has no items among the {challenger['n']} held-out items"
    elif same_adapter or (champion is not None and champion.get("evaluation") == challenger["evaluation"]
                          and champion.get("items_sha256") == challenger["items_sha256"]):
        promoted, improvement, reason = False, 0.0, "this adapter is already the champion"
    elif guard is not None:
        promoted, improvement, reason = False, None, guard
    elif champion is None:
        promoted, improvement, reason = True, None, "no champion yet; it beats the classical baselines" if cfg.require_beat_baselines else "no champion yet"
    elif rescored is not None and rescored["value"] is not None and "stale" not in rescored:
        promoted, improvement = decide(challenger["value"], rescored["value"], cfg.margin, lower)
        verb = "beats" if promoted else "does not beat"
        gain = "undefined" if improvement is None else f"{improvement:.2%}"
        reason = (
            f"challenger {cfg.metric} {fmt(cfg.metric, challenger['value'])} {verb} the champion re-scored on the same "
            f"{challenger['n']} items ({fmt(cfg.metric, rescored['value'])}) on {_where(cfg)} by the margin {cfg.margin:.2%} "
            f"(relative improvement {gain})"
        )
    elif champion.get("items_sha256") != challenger["items_sha256"]:
        promoted, improvement = False, None
        reason = (
            f"champion was evaluated on different items ({champion.get('n')} items, set "
            f"{str(champion.get('items_sha256'))[:12]}) than the challenger ({challenger['n']} items, set "
            f"{challenger['items_sha256'][:12]}) and was not re-scored; score the champion's adapter on the same "
            "items (the retrain flow does) and pass that evaluation"
        )
    elif decision_value({**(champion.get("metrics") or {}), "slices": champion.get("slices") or {}}, cfg.metric, cfg.slice)[0] is None:
        promoted, improvement = False, None
        reason = f"the champion's record has no {cfg.metric} on {_where(cfg)}; re-score the champion"
    else:
        # the champion's value of THIS metric (it may have been chosen on another one)
        champ_value, _ = decision_value({**champion["metrics"], "slices": champion.get("slices") or {}}, cfg.metric, cfg.slice)
        promoted, improvement = decide(challenger["value"], champ_value, cfg.margin, lower)
        verb = "beats" if promoted else "does not beat"
        gain = "undefined" if improvement is None else f"{improvement:.2%}"
        reason = (
            f"challenger {cfg.metric} {fmt(cfg.metric, challenger['value'])} {verb} champion {fmt(cfg.metric, champ_value)} "
            f"by the margin {cfg.margin:.2%} (relative improvement {gain})"
        )
    if stale is not None and not reason.startswith("this adapter"):
        reason = f"{stale}; {reason}"
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if promoted:  # copied before the record: a kill in between leaves a copy the rerun reuses
        challenger = keep_adapter(wd, challenger)
    record = {
        "time": now,
        "promoted": promoted,
        "reason": reason,
        "metric": cfg.metric,
        "margin": cfg.margin,
        "relative_improvement": improvement,
        "challenger": challenger,
        "champion_before": champion,
        "champion_rescored": rescored,
    }
    # the record first, then the pointer: a kill in between leaves a decision the rerun finishes
    # (_unfinished_promotion); the other order lost the record and logged "already the champion"
    _append_jsonl(wd / "promotions.jsonl", record)
    if promoted:
        write_json_atomic(champ_path, {**challenger, "promoted_at": now})
    log.info("promotion %s: %s", "accepted" if promoted else "refused", reason)
    return record
