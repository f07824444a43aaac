"""What a new user meets first (issue 11): `python -m pricefit`, errors that point at the fix,
quiet output by default, progress lines when stderr is not a terminal."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pricefit.cli import app
from pricefit.config import load_run_config, load_stage_config
from pricefit.errors import PricefitError

REPO = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def _run(args: list[str]):
    return CliRunner().invoke(app, args, catch_exceptions=False)


def _commands(help_text: str) -> set[str]:
    """Command names from the Commands box of a typer --help."""
    box = help_text.split("Commands")[1]
    return set(re.findall(r"^│ ([a-z][a-z-]*)\s{2,}", box, flags=re.M))


# ------------------------------------------------------------------------------------------------
# item 5: python -m pricefit


def test_python_m_pricefit_lists_the_same_commands_as_the_entry_point():
    registered = {c.name for c in app.registered_commands}
    assert {"curate", "tokenize", "train", "evaluate", "predict", "run", "serve"} <= registered
    as_module = subprocess.run([sys.executable, "-m", "pricefit", "--help"], capture_output=True, text=True, env=_env(), cwd=REPO)
    assert as_module.returncode == 0, as_module.stderr
    entry = Path(sys.executable).with_name("pricefit")
    if entry.exists():
        via_entry = subprocess.run([str(entry), "--help"], capture_output=True, text=True, env=_env(), cwd=REPO)
        assert via_entry.returncode == 0, via_entry.stderr
        assert _commands(via_entry.stdout) == registered
    assert _commands(as_module.stdout) == registered
    assert "Usage: pricefit " in as_module.stdout


# ------------------------------------------------------------------------------------------------
# item 4a: configuration errors name what the user typed and suggest the nearest key


def test_a_mistyped_set_names_the_set_not_the_profile_and_suggests_the_field():
    r = _run(["run", "--profile", "demo", "--set", "train.learnig_rate=2e-4"])
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == (
        "error: invalid configuration: --set train.learnig_rate=2e-4: train.learnig_rate is not a setting; "
        "did you mean train.learning_rate?"
    )
    assert "hint: write --set train.learning_rate=2e-4" in r.stderr
    assert "demo.yaml" not in r.stderr


def test_a_mistyped_section_and_a_bad_value_name_their_own_set():
    with pytest.raises(PricefitError) as e:
        load_run_config("demo", overrides=["trian.learning_rate=2e-4", "train.lora_r=0"])
    assert e.value.message.splitlines() == [
        "invalid configuration:",
        "  --set trian.learning_rate=2e-4: trian is not a section; did you mean train?",
        "  --set train.lora_r=0: train.lora_r: Input should be greater than or equal to 1",
    ]
    assert e.value.hint == "write --set train.learning_rate=2e-4"


def test_a_mistyped_key_in_a_profile_file_names_the_file(tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text("train:\n  lora_r: 8\n  learnig_rate: 0.001\n")
    with pytest.raises(PricefitError) as e:
        load_run_config(str(profile), overrides=["train.lora_r=16"])
    assert e.value.message == (
        f"invalid configuration in {profile}: train.learnig_rate is not a setting; did you mean train.learning_rate?"
    )
    assert e.value.hint == f"rename train.learnig_rate to train.learning_rate in {profile}"


def test_stage_commands_name_the_set_or_option_as_typed(tmp_path):
    from pricefit.config import EvaluateConfig, TrainConfig

    with pytest.raises(PricefitError) as e:
        load_stage_config(TrainConfig, None, "train", ["train.lora_rr=3", "learnig_rate=1"])
    assert e.value.message.splitlines()[1:] == [
        "  --set train.lora_rr=3: train.lora_rr is not a setting; did you mean train.lora_r?",
        "  --set learnig_rate=1: train.learnig_rate is not a setting; did you mean train.learning_rate?",
    ]
    assert e.value.hint == "write --set train.lora_r=3; write --set learning_rate=1"
    with pytest.raises(PricefitError) as e:
        load_stage_config(EvaluateConfig, None, "evaluate", [("mode=gredy", "--mode gredy")])
    assert e.value.message == "invalid configuration: --mode gredy: evaluate.mode: Input should be 'auto', 'greedy', 'expected' or 'head'"
    # a section given in a profile file: the file is named, keys are shown with their section
    profile = tmp_path / "p.yaml"
    profile.write_text("train:\n  max_step: 3\n")
    with pytest.raises(PricefitError) as e:
        load_stage_config(TrainConfig, str(profile), "train")
    assert e.value.message == f"invalid configuration in {profile}: train.max_step is not a setting; did you mean train.max_steps?"


def test_an_override_below_a_setting_says_so():
    with pytest.raises(PricefitError) as e:
        load_run_config("demo", overrides=["train.lora_r.x=1"])  # the demo profile sets train.lora_r
    assert (e.value.message, e.value.hint) == (
        "--set train.lora_r.x=1: train.lora_r is a setting, not a section", "write --set train.lora_r=VALUE"
    )


# ------------------------------------------------------------------------------------------------
# item 4b/4c: input paths checked at once; the wrong kind of artifact named as what it is

MISSING_CASES = [
    (["train", "--tokenized", "{nope}", "--out", "{o}"], "--tokenized {nope}: no such file or directory"),
    (["tokenize", "--curated", "{nope}", "--out", "{o}"], "--curated {nope}: no such file or directory"),
    (["evaluate", "--adapter", "{nope}", "--data", "{nope}", "--out", "{o}"], "--adapter {nope}: no such file or directory"),
    (["evaluate", "--base-model", "tiny-random", "--data", "{nope}", "--out", "{o}"], "--data {nope}: no such file or directory"),
    (["predict", "--adapter", "{nope}", "--title", "x"], "--adapter {nope}: no such file or directory"),
    (["baselines", "--data", "{nope}", "--out", "{o}"], "--data {nope}: no such file or directory"),
    (["compare", "-e", "{nope}", "-b", "{nope}", "-o", "{o}"], "--evaluation {nope}: no such file or directory"),
    (["promote", "-e", "{nope}", "-w", "{o}"], "--evaluation {nope}: no such file or directory"),
    (["validate", "curated", "{nope}"], "DIR {nope}: no such file or directory"),
    (["train", "--tokenized", "{tok}", "--out", "{o}", "--config", "{nope}.yaml"], "--config {nope}.yaml: no such file"),
    (["sweep", "--grid", "{nope}.yaml"], "--grid {nope}.yaml: no such file"),
    (["predict", "--base-model", "tiny-random", "--file", "{nope}.jsonl"], "--file {nope}.jsonl: source file {nope}.jsonl does not exist"),
    (["evaluate", "--base-model", "tiny-random", "--source", "{nope}.jsonl", "--out", "{o}"],
     "--source {nope}.jsonl: source file {nope}.jsonl does not exist"),
]


def _artifact(path: Path, kind: str) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"kind": kind}))
    return path


def test_missing_input_paths_fail_at_once_before_torch_is_imported(tmp_path):
    """One fresh interpreter runs every case: none may import torch (the 14.6 s of the issue)."""
    tok = _artifact(tmp_path / "tok", "tokenized")
    fill = {"nope": str(tmp_path / "runs" / "nope"), "o": str(tmp_path / "out"), "tok": str(tok)}
    cases = [[a.format(**fill) for a in args] for args, _ in MISSING_CASES]
    script = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from pricefit.cli import app\n"
        "out = []\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    r = CliRunner().invoke(app, args)\n"
        "    out.append([r.exit_code, r.stderr])\n"
        "print(json.dumps({'results': out, 'torch': 'torch' in sys.modules}))\n"
    )
    p = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True, env=_env(), cwd=REPO)
    assert p.returncode == 0, p.stderr
    body = json.loads(p.stdout.strip().splitlines()[-1])
    for (args, expected), (code, stderr) in zip(MISSING_CASES, body["results"]):
        assert (code, stderr.splitlines()[0]) == (2, "error: " + expected.format(**fill)), args
    assert body["torch"] is False
    assert not (tmp_path / "out").exists()


def test_a_near_miss_path_is_suggested(tmp_path):
    _artifact(tmp_path / "tokenized", "tokenized")
    r = _run(["train", "--tokenized", str(tmp_path / "tokenzed"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert f"hint: did you mean --tokenized {tmp_path / 'tokenized'}?" in r.stderr


def test_an_artifact_of_the_wrong_kind_is_named_as_what_it_is(tmp_path):
    curated = _artifact(tmp_path / "curated", "curated")
    evaluation = _artifact(tmp_path / "evaluation", "evaluation")
    tokenized = _artifact(tmp_path / "tokenized", "tokenized")
    o = str(tmp_path / "o")
    cases = [
        (["evaluate", "--adapter", str(curated), "--data", str(curated), "--out", o],
         f"--adapter {curated} is a curated artifact (the output of `pricefit curate`); "
         "--adapter expects an adapter artifact (the output of `pricefit train`)"),
        (["train", "--tokenized", str(curated), "--out", o],
         f"--tokenized {curated} is a curated artifact (the output of `pricefit curate`); "
         "--tokenized expects a tokenized artifact (the output of `pricefit tokenize`)"),
        (["compare", "-e", str(evaluation), "-b", str(evaluation), "-o", o],
         f"--baselines {evaluation} is an evaluation artifact (the output of `pricefit evaluate`); "
         "--baselines expects a baselines artifact (the output of `pricefit baselines`)"),
        (["baselines", "--data", str(tokenized), "--out", o],
         f"--data {tokenized} is a tokenized artifact (the output of `pricefit tokenize`); "
         "--data expects a curated artifact (the output of `pricefit curate`)"),
        (["tokenize", "--curated", str(tmp_path), "--out", o],
         f"--curated {tmp_path} has no manifest.json: it is not a finished pricefit artifact; "
         "--curated expects a curated artifact (the output of `pricefit curate`)"),
    ]
    for args, expected in cases:
        r = _run(args)
        assert (r.exit_code, r.stderr.splitlines()[0]) == (2, "error: " + expected), args
    # a bare PEFT folder (the adapter/ inside a train output) is a valid --adapter
    from pricefit.cli import check_input

    peft = tmp_path / "train" / "adapter"
    peft.mkdir(parents=True)
    (peft / "adapter_config.json").write_text("{}")
    assert check_input(peft, "--adapter", ("adapter",)) == peft
    assert check_input(peft.parent, "--adapter", ("adapter",)) == peft.parent
    # so is an evaluation folder written by other code (metrics.json + predictions.parquet, no manifest)
    bare = tmp_path / "bare-eval"
    bare.mkdir()
    (bare / "metrics.json").write_text("{}")
    (bare / "predictions.parquet").write_bytes(b"")
    assert check_input(bare, "--evaluation", ("evaluation",)) == bare


# ------------------------------------------------------------------------------------------------
# item 6: quiet by default, -v for more

NOISE_SCRIPT = """
import logging, sys, warnings
from pricefit.cli import setup_logging
setup_logging(int(sys.argv[1]))
logging.getLogger("httpx").info("HTTP Request: GET http://127.0.0.1:4200/api/health 200 OK")
logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
    "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'.")
for _ in range(3):
    logging.getLogger("somelib").warning("disk almost full")
warnings.warn_explicit("`is_gradient_checkpointing` is deprecated", FutureWarning, "modeling_utils.py", 3312,
                       module="transformers.modeling_utils")
logging.getLogger("pricefit.training").info("training tiny-random")
logging.getLogger("pricefit.training").debug("debug detail")
"""


def _noise(verbose: int) -> list[str]:
    p = subprocess.run([sys.executable, "-c", NOISE_SCRIPT, str(verbose)], capture_output=True, text=True, env=_env(), cwd=REPO)
    assert p.returncode == 0, p.stderr
    return [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in p.stderr.splitlines() if line.strip() and "warnings.warn" not in line]


def test_library_noise_is_quiet_by_default_and_shown_with_verbose():
    assert _noise(0) == ["WARNING somelib: disk almost full", "INFO pricefit.training: training tiny-random"]
    loud = _noise(1)
    assert "INFO httpx: HTTP Request: GET http://127.0.0.1:4200/api/health 200 OK" in loud
    assert any("gemm_4bit_forward" in line for line in loud)
    assert any("FutureWarning: `is_gradient_checkpointing` is deprecated" in line for line in loud)
    assert "DEBUG pricefit.training: debug detail" in loud


def test_verbose_is_a_global_option(monkeypatch):
    from pricefit import cli

    monkeypatch.setenv("PRICEFIT_VERBOSE", "0")  # -v sets it for child processes; monkeypatch undoes it

    r = _run(["-v", "version"])
    assert r.exit_code == 0 and cli._STATE["verbose"] == 1
    assert os.environ["PRICEFIT_VERBOSE"] == "1"  # `pricefit -v serve`: the served flow runs are verbose too
    monkeypatch.setenv("PRICEFIT_VERBOSE", "0")
    r = _run(["version"])
    assert r.exit_code == 0 and cli._STATE["verbose"] == 0


# ------------------------------------------------------------------------------------------------
# item 2: progress lines when stderr is not a terminal


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_progress_lines_at_start_every_interval_and_at_the_end():
    from pricefit.progress import LineProgress

    clock, lines = FakeClock(), []
    bar = LineProgress(100, "train", unit="step", interval_s=30, clock=clock, emit=lines.append)
    for step in range(1, 101):
        clock.t += 2.0  # 2 s per step
        bar.update(1)
        bar.set_postfix(loss=f"{10 / step:.4f}", tok_s="512")  # the training loop sets it after update
    bar.close()
    assert lines[0] == "train: starting, 0/100 steps (0%)"
    assert lines[1] == "train: 15/100 steps (15%), loss 0.6667, 512 tokens/s, 0.50 steps/s, elapsed 0:30, ETA 2:50"
    assert lines[2] == "train: 30/100 steps (30%), loss 0.3333, 512 tokens/s, 0.50 steps/s, elapsed 1:00, ETA 2:20"
    assert len(lines) == 1 + 6 + 1  # every 30 s (15 steps) up to 90/100, then the end line
    assert lines[-1] == "train: done, 100/100 steps (100%), loss 0.1000, 512 tokens/s, 0.50 steps/s, elapsed 3:20"


def test_progress_start_line_resume_and_a_stopped_run():
    import logging

    from pricefit.progress import LineProgress

    # a handler of its own on the progress logger: each record once, whatever handlers earlier tests
    # of the session attached to the loggers above it (Prefect's, in the flow tests)
    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = seen.append
    logger = logging.getLogger("pricefit.progress")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    clock = FakeClock()
    try:
        with pytest.raises(RuntimeError):
            with LineProgress(50, "predict (greedy)", unit="item", initial=10, interval_s=30, clock=clock) as bar:
                clock.t += 10
                bar.update(16)
                raise RuntimeError("out of memory")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert [r.getMessage() for r in seen] == [
        "predict (greedy): resuming at 10/50 items (20%)",
        "predict (greedy): stopped at 26/50 items (52%), 1.60 items/s, elapsed 0:10",
    ]


def test_a_terminal_gets_tqdm_and_disabled_progress_prints_nothing():
    from tqdm import tqdm

    from pricefit.progress import LineProgress, progress_bar

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = progress_bar(total=3, desc="train", unit="step", file=Tty())
    assert isinstance(bar, tqdm)
    bar.close()
    assert isinstance(progress_bar(total=3, desc="train", file=io.StringIO(), interval_s=30), LineProgress)
    quiet = io.StringIO()
    with progress_bar(total=3, desc="x", file=quiet, enabled=False) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


# ------------------------------------------------------------------------------------------------
# the real thing: train and predict on a tiny model, stderr a pipe (as under cron or a worker)


@pytest.fixture(scope="module")
def tiny_tokenized(tmp_path_factory):
    home = os.environ.get("PRICEFIT_HOME") or str(tmp_path_factory.mktemp("home"))
    d = tmp_path_factory.mktemp("real")
    env = _env(PRICEFIT_HOME=home)
    for args in (
        ["curate", "--source", "demo:80", "--out", str(d / "curated"), "--set", "tokenizer=tiny-random",
         "--set", "max_text_tokens=32", "--set", "min_chars=40", "--no-contracts"],
        ["tokenize", "--curated", str(d / "curated"), "--out", str(d / "tokenized"), "--base-model", "tiny-random",
         "--set", "max_length=64", "--no-contracts"],
    ):
        p = subprocess.run([sys.executable, "-m", "pricefit", *args], capture_output=True, text=True, env=env, cwd=REPO)
        assert p.returncode == 0, p.stderr
    return d, env


TRAIN_SETS = ["--set", "base_model=tiny-random", "--set", "max_steps=3", "--set", "device=cpu",
              "--set", "lora_r=4", "--set", "lora_alpha=8", "--set", "quantization=4bit"]


@pytest.mark.slow
def test_train_and_predict_print_only_pricefit_lines_and_progress_when_piped(tiny_tokenized):
    d, env = tiny_tokenized
    own = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|ERROR) pricefit(\.[a-z_.]+)?: ")
    p = subprocess.run([sys.executable, "-m", "pricefit", "train", "--tokenized", str(d / "tokenized"),
                        "--out", str(d / "train"), *TRAIN_SETS], capture_output=True, text=True, env=env, cwd=REPO)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert [line for line in lines if not own.match(line)] == []  # no FutureWarning, bitsandbytes or HF bar
    progress = [line.split("pricefit.progress: ", 1)[1] for line in lines if "pricefit.progress: " in line]
    assert progress[0] == "train: starting, 0/3 steps (0%)"
    assert progress[-1].startswith("train: done, 3/3 steps (100%), loss ")
    assert " tokens/s, " in progress[-1]
    p = subprocess.run([sys.executable, "-m", "pricefit", "predict", "--adapter", str(d / "train"), "--title", "Cordless drill",
                        "--device", "cpu"], capture_output=True, text=True, env=env, cwd=REPO)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert [line for line in lines if not own.match(line)] == []
    assert any(line.endswith("pricefit.progress: predict (greedy): starting, 0/1 items (0%)") for line in lines)
    # -v: the library messages are back
    p = subprocess.run([sys.executable, "-m", "pricefit", "-v", "predict", "--adapter", str(d / "train"), "--title", "x",
                        "--device", "cpu"], capture_output=True, text=True, env=env, cwd=REPO)
    assert p.returncode == 0, p.stderr
    # a library line the default run hides (which one depends on what is cached: the Hugging Face
    # "Loading weights" bar, or bitsandbytes' kernels warning when the 4-bit copy is read back)
    assert [line for line in p.stderr.splitlines() if not own.match(line) and line.strip()], p.stderr
