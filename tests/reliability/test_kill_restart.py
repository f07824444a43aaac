"""Kill every stage with SIGKILL at chosen points, restart it, and compare with an uninterrupted run.

For each stage command (``pricefit curate | tokenize | train | evaluate | baselines | compare |
promote``, on the built-in demo listings and the tiny-random model; together they run every step
of the registry, tasks/steps.py):

1. an uninterrupted run writes the stage's output and traces the kill points it passes
   (tests/faultinject/killpoints.py: every atomic write, rename, checkpoint fsync, training
   micro-batch, checkpoint removal);
2. for each chosen kill point (seeded per stage, one of each kind by default, more with ``slow``)
   the same command, from a clean work directory, SIGKILLs itself there;
3. what the killed run left is checked: either no output, or one that no downstream stage accepts,
   or the finished output itself (identical to the uninterrupted one);
4. the same command again, without a kill, must succeed and leave output identical to the
   uninterrupted run: every file hashed and compared, and no ``.tmp-*`` (nor a checkpoint folder)
   left anywhere under the work directory.

"Identical" is byte for byte, except for values that describe the run rather than its result,
listed in :data:`RUN_DESCRIBING` (times, speeds, peak memory, whether it resumed): the JSON,
CSV and Markdown files holding them are compared with those values taken out, and each
manifest's ``files`` map is compared without their hashes. Contract reports and GX Data Docs
(``contracts/``, ``data_docs/``: timestamps by design, kept out of manifests) are compared by
verdict and by file names with the timestamp taken out.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import killpoints

pytestmark = pytest.mark.timeout(900)

RUN_DESCRIBING = {"runtime_s", "tokens_per_s", "items_per_s", "peak_mem_gib", "seconds", "resumed",
                  "time", "promoted_at", "elapsed_s"}
_MD_RUN_LINE = re.compile(r"runtime_s|items_per_s|tokens/s|tokens_per_s|peak memory|peak_mem")
_TS = re.compile(r"\d{8}T\d{6}\.\d+Z")
REPORT_DIRS = ("contracts", "data_docs")


# --------------------------------------------------------------------------------------------
# comparing outputs


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in RUN_DESCRIBING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _normalised(path: Path, rel: str) -> bytes | None:
    """The comparable content of a file whose bytes carry run-describing values; None: compare bytes."""
    name = path.name
    if name.endswith(".json") and name != "manifest.json":
        body = json.loads(path.read_bytes())
        stripped = _strip(body)
        return None if stripped == body else json.dumps(stripped, sort_keys=True).encode()
    if name.endswith(".jsonl"):
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        stripped = [_strip(x) for x in lines]
        return None if stripped == lines else json.dumps(stripped, sort_keys=True).encode()
    if name == "loss.csv":
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        return json.dumps([{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]).encode()
    if name.endswith(".md"):
        text = path.read_text()
        kept = "\n".join(line for line in text.splitlines() if not _MD_RUN_LINE.search(line))
        return None if kept == text else kept.encode()
    return None


def fingerprint(root: Path) -> dict[str, str]:
    """``relative path -> digest`` of every file under ``root`` (see the module docstring)."""
    out: dict[str, str] = {}
    normalised: set[str] = set()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        rel = p.relative_to(root).as_posix()
        parts = p.relative_to(root).parts
        if any(part in REPORT_DIRS for part in parts[:-1]):
            key = _TS.sub("<time>", rel)
            if parts[-2] == "contracts" and p.suffix == ".json":
                out[key] = f"success={json.loads(p.read_text()).get('success')}"
            else:
                out[key] = "report"
            continue
        if p.name == "manifest.json":
            continue  # below, once the normalised files are known
        norm = _normalised(p, rel)
        if norm is not None:
            normalised.add(rel)
        out[rel] = "sha256:" + hashlib.sha256(norm if norm is not None else p.read_bytes()).hexdigest()
    for p in files:
        if p.name != "manifest.json" or any(part in REPORT_DIRS for part in p.relative_to(root).parts[:-1]):
            continue
        rel = p.relative_to(root).as_posix()
        base = p.parent.relative_to(root).as_posix()
        m = json.loads(p.read_text())
        prefix = "" if base == "." else base + "/"
        m["files"] = {k: v for k, v in (m.get("files") or {}).items() if prefix + k not in normalised}
        out[rel] = "sha256:" + hashlib.sha256(json.dumps(_strip(m), sort_keys=True).encode()).hexdigest()
    return out


def differing(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def leftovers(root: Path) -> list[str]:
    """What a finished run must not leave: temporary names, checkpoint folders, damaged checkpoints."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.name.startswith(".tmp-") or p.name.endswith(".ckpt") or p.name.startswith("damaged-"))


# --------------------------------------------------------------------------------------------
# the stages


@dataclass(frozen=True)
class Stage:
    name: str
    out: str  # the output under the work directory ("." : the work directory itself)
    kind: str | None  # the manifest kind a downstream stage checks (None: no artifact directory)
    steps: tuple[str, ...]  # the registry steps this command runs
    args: tuple[str, ...]  # {w}: the work directory, {u}: the upstream artifacts


TRAIN_SET = ("--set", "base_model=tiny-random", "--set", "max_steps=8", "--set", "save_steps=2",
             "--set", "head=regression", "--set", "batch_size=4")  # dropout 0.1: RNG state must survive

STAGES = {s.name: s for s in [
    Stage("curate", "curated", "curated", ("ingest", "contract_raw", "curate", "contract_curated"),
          ("curate", "--source", "demo:120", "--out", "{w}/curated", "--set", "curate.tokenizer=tiny-random")),
    Stage("tokenize", "tokenized", "tokenized", ("tokenize", "contract_tokenized"),
          ("tokenize", "--curated", "{u}/curated", "--out", "{w}/tokenized", "--base-model", "tiny-random")),
    Stage("train", "train", "adapter", ("train",),
          ("train", "--tokenized", "{u}/tokenized", "--out", "{w}/train", *TRAIN_SET)),
    # the champion step is this command on the champion's adapter
    Stage("evaluate", "eval", "evaluation", ("evaluate", "champion"),
          ("evaluate", "--adapter", "{u}/train", "--data", "{u}/tokenized", "--out", "{w}/eval", "--max-items", "8")),
    Stage("baselines", "baselines", "baselines", ("baselines",),
          ("baselines", "--data", "{u}/curated", "--out", "{w}/baselines", "--include", "constant,linear,tfidf,base_model",
           "--base-model", "tiny-random", "--max-items", "8")),
    Stage("compare", "compare", "comparison", ("compare",),
          ("compare", "--evaluation", "{u}/eval", "--baselines", "{u}/baselines", "--out", "{w}/compare")),
    Stage("promote", ".", None, ("compare",),
          ("promote", "--evaluation", "{u}/eval", "--baselines", "{u}/baselines", "--workdir", "{w}",
           "--no-baseline-guard")),
]}
#: registry steps no stage command runs on its own, and where they are covered instead
NOT_A_COMMAND = {"report": "the flow's report task (pricefit.report.render_run_report); no stage command"}


def _args(stage: Stage, work: Path, upstream: Path) -> list[str]:
    return [a.replace("{w}", str(work)).replace("{u}", str(upstream)) for a in stage.args]


@pytest.fixture(scope="session")
def upstream(forks, kill_env, tmp_path_factory) -> Path:
    """Every stage's output, built once by uninterrupted runs: the inputs of the stage under test."""
    u = tmp_path_factory.mktemp("upstream")
    for name in ("curate", "tokenize", "train", "evaluate", "baselines"):
        st = STAGES[name]
        r = forks.run(_args(st, u, u), kill_env, u, u / f"{name}.log")
        assert r.rc == 0, f"{name}: {r.log[-3000:]}"
    return u


def accepted_downstream(stage: Stage, out: Path) -> bool:
    """Would the next stage take ``out`` as its input? (the checks its command makes before loading)"""
    from pricefit.cli import check_input
    from pricefit.errors import PricefitError

    if stage.kind is None or not out.exists():
        return False
    try:
        check_input(out, "--in", (stage.kind,))
        if stage.kind == "curated":
            from pricefit.curation import read_split

            read_split(out, "train")
    except PricefitError:
        return False
    return True


class Trial:
    """The uninterrupted run of one stage, then killed-and-restarted runs from a clean work dir."""

    def __init__(self, stage: Stage, forks, env, upstream: Path, tmp: Path) -> None:
        self.stage, self.forks, self.env, self.upstream, self.tmp = stage, forks, env, upstream, tmp
        self.work = tmp / "work"  # always the same path: outputs may name it
        self.trace = tmp / "trace.txt"
        self._clean()
        r = forks.run(self.args, dict(env, **{killpoints.TRACE_ENV: str(self.trace)}), tmp, tmp / "reference.log")
        assert r.rc == 0, r.log[-3000:]
        self.reference = fingerprint(self.out)
        self.events = killpoints.read_trace(self.trace)
        assert self.events, "the uninterrupted run passed no kill point"
        self._clean()

    @property
    def args(self) -> list[str]:
        return _args(self.stage, self.work, self.upstream)

    @property
    def out(self) -> Path:
        return self.work / self.stage.out

    def _clean(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)

    def choose(self, seed: str, extra: int = 0) -> list[int]:
        """One event of each kind (and the last one), plus ``extra`` more: seeded, so a failure repeats."""
        rng = random.Random(f"{self.stage.name}:{seed}")
        kinds = sorted({k for _, k, _ in self.events})
        chosen = {rng.choice([n for n, k, _ in self.events if k == kind]) for kind in kinds} | {self.events[-1][0]}
        rest = [n for n, _, _ in self.events if n not in chosen]
        chosen |= set(rng.sample(rest, min(extra, len(rest))))
        return sorted(chosen)

    def kill_and_restart(self, n: int) -> list[str]:
        """Problems found killing at event ``n`` (empty: none)."""
        _, kind, name = self.events[n - 1]
        at = f"kill point {n}/{len(self.events)} ({kind} {name})"
        self._clean()
        r = self.forks.run(self.args, dict(self.env, **{killpoints.KILL_ENV: str(n)}), self.tmp, self.tmp / f"killed-{n}.log")
        if not r.killed:
            return [f"{at}: the run was not killed there (rc {r.rc}); the trace is not repeatable: {r.log[-1500:]}"]
        problems = []
        if accepted_downstream(self.stage, self.out):
            left = differing(self.reference, fingerprint(self.out))
            if left:
                problems.append(f"{at}: the killed run left {self.out.name}/ that the next stage accepts, "
                                f"but it differs from the uninterrupted output in {left}")
        r = self.forks.run(self.args, self.env, self.tmp, self.tmp / f"restart-{n}.log")
        if r.rc != 0:
            return problems + [f"{at}: the restart failed (rc {r.rc}): {r.log[-2000:]}"]
        diff = differing(self.reference, fingerprint(self.out))
        if diff:
            problems.append(f"{at}: after the restart these files differ from the uninterrupted run: {diff}")
        left = leftovers(self.work)
        if left:
            problems.append(f"{at}: the restarted run left {left}")
        return problems


def _trial(name, forks, kill_env, upstream, tmp_path) -> Trial:
    return Trial(STAGES[name], forks, kill_env, upstream, tmp_path)


@pytest.mark.parametrize("name", list(STAGES))
def test_killed_stage_restarts_to_identical_output(name, forks, kill_env, upstream, tmp_path):
    trial = _trial(name, forks, kill_env, upstream, tmp_path)
    points = trial.choose("default")
    problems = [p for n in points for p in trial.kill_and_restart(n)]
    assert problems == [], "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STAGES))  # promote: its slow points are before the append
def test_killed_stage_restarts_to_identical_output_at_many_points(name, forks, kill_env, upstream, tmp_path):
    trial = _trial(name, forks, kill_env, upstream, tmp_path)
    points = sorted(set(trial.choose("slow", extra=10)) - set(trial.choose("default")))
    problems = [p for n in points for p in trial.kill_and_restart(n)]
    assert problems == [], "\n".join(problems)


def test_the_stages_cover_every_registry_step():
    from tasks.steps import NAMES

    covered = {s for st in STAGES.values() for s in st.steps} | set(NOT_A_COMMAND)
    assert covered == set(NAMES)


def test_the_fingerprint_sees_a_changed_byte_and_ignores_only_run_describing_values(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, runtime, weight in ((a, 1.5, b"\x00\x01"), (b, 9.25, b"\x00\x02")):
        (d / "adapter").mkdir(parents=True)
        (d / "adapter" / "w.safetensors").write_bytes(weight)
        (d / "train_summary.json").write_text(json.dumps({"steps": 8, "runtime_s": runtime}))
        (d / "manifest.json").write_text(json.dumps({"kind": "adapter", "files": {
            "adapter/w.safetensors": hashlib.sha256(weight).hexdigest(), "train_summary.json": str(runtime)}}))
    assert differing(fingerprint(a), fingerprint(b)) == ["adapter/w.safetensors", "manifest.json"]
    (b / "adapter" / "w.safetensors").write_bytes(b"\x00\x01")
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["adapter/w.safetensors"] = hashlib.sha256(b"\x00\x01").hexdigest()
    (b / "manifest.json").write_text(json.dumps(m))
    assert differing(fingerprint(a), fingerprint(b)) == []  # runtime_s alone differs
    (b / "train_summary.json").write_text(json.dumps({"steps": 7, "runtime_s": 9.25}))
    assert differing(fingerprint(a), fingerprint(b)) == ["train_summary.json"]


def test_training_refuses_a_tokenized_artifact_whose_contract_failed(tmp_path):
    from pricefit import artifacts
    from pricefit.config import TrainConfig
    from pricefit.errors import PricefitError
    from pricefit.training import load_split

    d = tmp_path / "tokenized"
    (d / "dataset").mkdir(parents=True)
    artifacts.write_manifest(d, {"kind": "tokenized", "base_model": "tiny-random",
                                 "contract": {"stage": "tokenized", "success": False, "failed": 2}})
    with pytest.raises(PricefitError, match=r"its tokenized data contract did not pass \(2 check\(s\) failed"):
        load_split(d, TrainConfig(base_model="tiny-random"))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_real_pricefit_train_sigkilled_after_a_random_delay_resumes_to_the_same_adapter(seed, kill_env, upstream, tmp_path):
    """The installed entry point in a fresh interpreter, SIGKILLed from outside when the clock says."""
    import killrun

    st = Stage("train", "train", "adapter", ("train",),
               ("train", "--tokenized", "{u}/tokenized", "--out", "{w}/train", *TRAIN_SET, "--set", "max_steps=60",
                "--set", "save_steps=5"))
    work = tmp_path / "work"
    args = _args(st, work, upstream)
    r, full_s = killrun.wall(killrun.run_cli_killed_after, args, kill_env, tmp_path, tmp_path / "full.log", None)
    assert r.rc == 0, r.log[-3000:]
    reference = fingerprint(work / "train")
    shutil.rmtree(work)
    delay = random.Random(seed).uniform(0.3, 0.95) * full_s
    killed = killrun.run_cli_killed_after(args, kill_env, tmp_path, tmp_path / "killed.log", delay)
    if killed.killed and (work / "train").exists():  # killed after the final rename: the finished adapter
        assert differing(reference, fingerprint(work / "train")) == []
    r = killrun.run_cli_killed_after(args, kill_env, tmp_path, tmp_path / "restart.log", None)
    assert r.rc == 0, r.log[-3000:]
    assert differing(reference, fingerprint(work / "train")) == []
    assert leftovers(work) == []
