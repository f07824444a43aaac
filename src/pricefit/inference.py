"""Price prediction with a causal LM (+ optional PEFT adapter): batched, KV-cached, left-padded.

Two decoding modes:

``greedy`` (default)
    Batched greedy ``generate`` with LEFT padding (so every row's next token sits in the last
    column) and a handful of new tokens, then :func:`pricefit.parsing.parse_price_output`. Prompts
    are sorted by length before batching, so a batch pads to nearly its own length, and put back in
    order afterwards. ``generate`` keeps a KV cache, so each new token costs one small forward
    step; logits are computed only at the last position. :func:`reference_predict` is the
    reference loop (one ``generate`` per item, no padding) that the batched path must match.

``expected``
    The expected price under the model's own distribution of *complete* prices, not the greedy
    string. A tokenizer that writes digits one per token (SmolLM2) carries only the leading digit
    at the first position (an expectation over it alone would price $450 and $4 alike), so we run
    a small beam over *digit tokens* (tokens that decode to ASCII digits only), with the KV cache:

    - a live hypothesis is a digit string with its probability;
    - at each step its mass splits into: "the number ends here" (any non-digit next token; the
      completion continues with ``.00``) -> a finished price ``int(prefix)``; "a longer number than
      the clip range allows" -> a finished price at the upper clip; and one extension per digit
      token, of which the ``beam`` most probable per item survive;
    - at the first position, non-digit mass is "no number", left out (normalised over finished prices).

    With ``beam >= 10 ** max_digits`` this is the exact expectation over all prices up to the clip
    (tested against brute-force enumeration); a small beam approximates it and reports the covered
    probability mass in ``raw``. Cost: one prompt forward plus ``max_digits + 1`` steps over ``N x beam`` rows.

Nothing here imports Prefect; torch/transformers/peft are imported inside the functions.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from .adapters import base_model_of, find_adapter, lineage_of
from .settings.tokenize import DEFAULT_PROMPT_TEMPLATE
from .devices import resolve_device
from .errors import PricefitError
from .parsing import DEFAULT_MAX_PRICE, DEFAULT_MIN_PRICE, number_is_final, parse_price_output

log = logging.getLogger(__name__)

Mode = Literal["auto", "greedy", "expected", "head"]
# prompts per batch when none is given (on a GPU a decoding step costs about the same for 1 row as for 128)
DEFAULT_BATCH, HEAD_BATCH = {"cpu": 16, "cuda": 128}, {"cpu": 16, "cuda": 512}  # a head: one forward pass, no KV cache


@dataclass(frozen=True)
class Prediction:
    """One item's prediction: ``value`` (None when no number could be read), the model's ``raw`` text,
    each component's price for a blend (``parts``, pricefit.composition)."""

    value: float | None
    raw: str
    parsed: bool
    parts: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "parts" or v is not None}


# ----------------------------------------------------------------------------------------------
# loading


def _resolve(base_model: str) -> tuple[str, Any]:
    """(path or hub id for from_pretrained, tokenizer) via pricefit.models when it knows the name."""
    try:
        from . import models
    except ImportError:  # pragma: no cover - models.py is part of the package
        models = None
    if models is not None and hasattr(models, "resolve_model") and hasattr(models, "load_tokenizer"):
        path = models.resolve_model(base_model)
        return str(getattr(path, "path", path)), models.load_tokenizer(base_model)
    from transformers import AutoTokenizer

    return base_model, AutoTokenizer.from_pretrained(base_model)


def load_model(
    base_model: str,
    adapter_dir: str | Path | None = None,
    device: str = "auto",
    quantization: Literal["none", "8bit", "4bit"] = "none",
    compute_dtype: str = "auto",
    quant_type: str = "nf4",
    double_quant: bool = True,
) -> tuple[Any, Any, str]:
    """Load (model in eval mode, tokenizer, device) once; the adapter, when given, on top."""
    from types import SimpleNamespace

    from . import quant

    dev = resolve_device(device, setting="evaluate.device")
    if compute_dtype == "auto":
        compute_dtype = "bfloat16" if dev == "cuda" else "float32"
    path, tokenizer = _resolve(base_model)
    kwargs: dict[str, Any] = {"dtype": quant.torch_dtype(compute_dtype)}
    q = quant.bnb_config(SimpleNamespace(quant_type=quant_type, double_quant=double_quant),
                         quant.Plan(device=dev, compute_dtype=compute_dtype, quantization=quantization))
    if q is not None:
        kwargs["quantization_config"] = q
        kwargs["device_map"] = {"": dev}
    model = quant.from_pretrained(
        path, name=base_model,
        hint="use a built-in name (smollm2-135m, tiny-random), a local directory, or a hub id you can reach", **kwargs)
    if quantization == "none":
        model.to(dev)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(find_adapter(adapter_dir)))
    model.eval()
    return model, tokenizer, dev


def _number_done(tokenizer: Any, prompt_len: int) -> Any:
    """Stopping criterion: a row is done once its first number is settled (``number_is_final``).

    "45.00\n" stops there instead of running to max_new_tokens; the parsed value is the one the
    full string would give, so greedy results do not change, and the reference loop uses the same rule.
    """
    import torch
    from transformers import StoppingCriteria

    class NumberDone(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            texts = tokenizer.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
            return torch.tensor([number_is_final(t) for t in texts], dtype=torch.bool, device=input_ids.device)

    return NumberDone()


# ----------------------------------------------------------------------------------------------
# the predictor


class PricePredictor:
    """Load a model (+ adapter) once; price many listings with :meth:`predict`.

    >>> p = PricePredictor("smollm2-135m", adapter_dir="runs/demo/train")   # doctest: +SKIP
    >>> p.predict(["Acme 12 V cordless drill ..."])                          # doctest: +SKIP
    [Prediction(value=89.0, raw='89.00', parsed=True)]
    """

    def __init__(
        self,
        base_model: str | None = None,
        adapter_dir: str | Path | None = None,
        device: str = "auto",
        quantization: Literal["none", "8bit", "4bit"] = "none",
        compute_dtype: str = "auto",
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        max_new_tokens: int = 6,
        low: float = DEFAULT_MIN_PRICE,
        high: float = DEFAULT_MAX_PRICE,
        beam: int = 8,
        stop_early: bool = True,
        *,
        model: Any = None,
        tokenizer: Any = None,
        head_fast: bool | str = "auto",
        compile: bool = False,
        merge: bool | str = "auto",
    ):
        if base_model is None and model is None:
            base_model = base_model_of(adapter_dir) if adapter_dir else None
            if base_model is None:
                raise PricefitError(
                    "no base model given and none recorded with the adapter",
                    hint="pass --base-model (e.g. smollm2-135m)",
                )
        if "{text}" not in prompt_template:
            raise PricefitError("prompt_template must contain {text}")
        if max_new_tokens < 1:
            raise PricefitError("max_new_tokens must be >= 1")
        if beam < 1:
            raise PricefitError("beam must be >= 1")
        self.base_model = base_model
        self.adapter_dir = str(adapter_dir) if adapter_dir else None
        loaded_here = model is None
        if model is None:
            model, tokenizer, self.device = load_model(base_model, adapter_dir, device, quantization, compute_dtype)
        else:
            if tokenizer is None:
                raise PricefitError("a preloaded model needs its tokenizer")
            self.device = str(next(model.parameters()).device.type)
            model.eval()
        self.model, self.tokenizer = model, tokenizer
        if self.tokenizer.pad_token_id is None:  # Llama tokenizers ship without one
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.prompt_template = prompt_template
        self.max_new_tokens = max_new_tokens
        self.low, self.high = float(low), float(high)
        self.beam = beam
        self.stop_early = stop_early
        self._digit_cache: tuple[Any, list[str]] | None = None
        # a regression price head saved beside the adapter (train.head: regression)
        self.head = self.head_spec = self.blend = None
        if adapter_dir is not None:
            from .heads import has_price_head, load_price_head

            if has_price_head(adapter_dir):
                from .blend import load_blend
                self.head, self.head_spec = load_price_head(adapter_dir, self.model.device)
                self.blend = load_blend(adapter_dir)
        self.lineage = lineage_of(adapter_dir) if adapter_dir else {}
        # head mode's fast path (auto: CUDA): see _predict_head_fast
        self.head_fast = self.device == "cuda" if head_fast == "auto" else bool(head_fast)
        self.compile = bool(compile)
        self._hidden_fn = None
        self.merged = self._merge(merge, quantization, loaded_here)
        # transformers 5.24 renamed forward(past_key_values=) to forward(cache=); support both
        import inspect

        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self._cache_kwarg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    def _merge(self, merge: bool | str, quantization: str, loaded_here: bool) -> bool:
        """Fold the LoRA update into the base weights (``W + scale * B @ A``) for inference.

        auto: on CUDA, for an unquantized base this predictor loaded itself (a model handed in
        is not changed under its owner). Each LoRA layer then runs one matmul instead of three
        plus the add; the sums are rounded to the base's dtype (bf16 on CUDA), as autocast already
        rounds the unmerged LoRA matmuls. A 4-bit or 8-bit base is never merged: that would
        requantize it.
        """
        if not hasattr(self.model, "merge_adapter"):
            return False  # no adapter
        want = (self.device == "cuda" and quantization == "none" and loaded_here) if merge == "auto" else bool(merge)
        if not want:
            return False
        if quantization != "none":
            raise PricefitError(f"merging the adapter into a {quantization} base would requantize it",
                                hint="set evaluate.merge_lora: false (or auto), or evaluate with quantization: none")
        self.model.merge_adapter()
        return True

    # -- prompts ---------------------------------------------------------------------------------

    def prompt(self, text: str) -> str:
        # str.replace, not format: listings contain braces ("{Brand: Acme}")
        return self.prompt_template.replace("{text}", text)

    def _encode(self, prompts: Sequence[str]) -> Any:
        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(list(prompts), return_tensors="pt", padding=True)
        finally:
            tok.padding_side = side
        return {k: v.to(self.model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def _lengths(self, prompts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(prompts))["input_ids"]]

    def resolve_mode(self, mode: str) -> str:
        """``auto`` -> ``head`` for an adapter with a price head, else ``greedy``; checks ``head``."""
        if mode == "auto":
            return "head" if self.head is not None else "greedy"
        if mode == "head" and self.head is None:
            raise PricefitError("mode 'head' needs an adapter trained with train.head: regression",
                                hint="use --mode greedy or expected, or an adapter with price_head.json")
        return mode

    def build_prompts(self, texts: Sequence[str]) -> list[str]:
        """Prompts for item texts, cut as training cut them when the adapter records how."""
        tcfg = self.lineage.get("tokenize_config")
        if tcfg:
            from .settings.tokenize import TokenizeConfig
            from .tokenization import fit_prompts

            return fit_prompts(self.tokenizer, list(texts), TokenizeConfig.model_validate(tcfg))
        return [self.prompt(t) for t in texts]

    # -- public API ------------------------------------------------------------------------------

    def predict(
        self,
        texts: Sequence[str],
        batch_size: int | None = None,
        mode: Mode = "greedy",
        progress: bool = True,
        prompts: bool = False,
    ) -> list[Prediction]:
        """Price each text (item text, or full prompts with ``prompts=True``), in input order.

        ``batch_size`` None: :data:`DEFAULT_BATCH` for the device (16 on CPU, 128 on CUDA).
        """
        if mode not in ("auto", "greedy", "expected", "head"):
            raise PricefitError(f"unknown mode {mode!r}", hint="use auto, greedy, expected or head")
        mode = self.resolve_mode(mode)
        if batch_size is None:
            batch_size = (HEAD_BATCH if mode == "head" else DEFAULT_BATCH).get(self.device, 16)
        if batch_size < 1:
            raise PricefitError("batch_size must be >= 1")
        full = list(texts) if prompts else [self.prompt(t) for t in texts]
        if not full:
            return []
        if mode == "head" and self.head_fast:
            return self._predict_head_fast(full, batch_size, progress)
        # longest first: similar lengths share a batch (little padding), and an out-of-memory
        # failure shows up on the first batch rather than the last
        lengths = self._lengths(full)
        order = sorted(range(len(full)), key=lambda i: (-lengths[i], i))
        step = {"greedy": self._greedy_batch, "expected": self._expected_batch, "head": self._head_batch}[mode]
        out: list[Prediction | None] = [None] * len(full)
        from .progress import progress_bar  # tqdm on a terminal, a line every 30 s elsewhere

        with progress_bar(total=len(full), desc=f"predict ({mode})", unit="item", file=sys.stderr, enabled=progress) as bar:
            for start in range(0, len(full), batch_size):
                idx = order[start : start + batch_size]
                for i, pred in zip(idx, step([full[i] for i in idx])):
                    out[i] = pred
                bar.update(len(idx))
        return out  # type: ignore[return-value]

    def _to_prediction(self, raw: str) -> Prediction:
        value = parse_price_output(raw, self.low, self.high)
        return Prediction(value=value, raw=raw, parsed=value is not None)

    # -- greedy ----------------------------------------------------------------------------------

    def _generate(self, enc: dict[str, Any]) -> list[str]:
        import torch

        extra = {}
        if self.stop_early:
            from transformers import StoppingCriteriaList

            extra["stopping_criteria"] = StoppingCriteriaList([_number_done(self.tokenizer, enc["input_ids"].shape[1])])
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                **extra,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                num_beams=1,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def _greedy_batch(self, prompts: list[str]) -> list[Prediction]:
        return [self._to_prediction(raw) for raw in self._generate(self._encode(prompts))]

    # -- regression head -------------------------------------------------------------------------

    def _head_batch(self, prompts: list[str]) -> list[Prediction]:
        """One forward pass of the prompt; the head reads the pooled final hidden state."""
        from .heads import head_prices

        enc = self._encode(prompts)
        prices = head_prices(self.model, self.head, self.head_spec, enc["input_ids"], enc["attention_mask"],
                             return_pooled=self._wants_pooled)
        pooled = None
        if self._wants_pooled:
            prices, pooled = prices
            pooled = pooled.float().cpu().numpy()
        return self._head_predictions(prompts, prices.clamp(self.low, self.high).tolist(), pooled)

    @property
    def _wants_pooled(self) -> bool:
        """Whether the blend has a retrieval part (it compares the pooled states)."""
        return self.blend is not None and "knn" in self.blend.parts

    def _head_predictions(self, prompts: list[str], prices: list[float], pooled: Any = None) -> list[Prediction]:
        if self.blend is None:
            return [Prediction(value=float(v), raw=f"head {v:.2f}", parsed=True) for v in prices]
        return [Prediction(value=v, raw=raw, parsed=True, parts=parts)
                for v, raw, parts in self.blend.explain(prices, prompts, pooled, self.low, self.high)]

    def _head_hidden_fn(self):
        """decoder(input_ids) -> last hidden state, no mask, under inference mode and (CUDA) autocast."""
        if self._hidden_fn is None:
            import contextlib

            import torch

            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            decoder = getattr(base, "model", None) or base.get_decoder()
            dtype = next(base.parameters()).dtype
            amp = self.device == "cuda" and dtype in (torch.bfloat16, torch.float16)

            def hidden(ids):
                ctx = torch.autocast("cuda", dtype=dtype) if amp else contextlib.nullcontext()
                with ctx:
                    return decoder(input_ids=ids, use_cache=False).last_hidden_state

            if self.compile:  # as training's compile_scope "layers": one graph per width
                from .heads import compile_layers

                compile_layers(getattr(decoder, "layers", None) or [])
            self._hidden_fn = hidden
        return self._hidden_fn

    def _predict_head_fast(self, prompts: list[str], batch_size: int, progress: bool) -> list[Prediction]:
        """head mode, fast: tokenize once, length-sorted right-padded batches with no attention mask
        (heads.causal_attention), bf16 autocast on CUDA, and one device read at the end.

        The same prices as the left-padded path up to rounding (positions start at 0 in every row,
        as in training). With ``compile``, widths are padded to multiples of 32 (few shapes).
        """
        import numpy as np
        import torch

        from .heads import causal_attention, head_prices_right
        from .progress import progress_bar

        ids = self.tokenizer(list(prompts))["input_ids"]  # the tokens _encode gives, without the padding
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")  # longest first, ties in input order
        pad = self.tokenizer.pad_token_id
        dev = self.model.device
        fn = self._head_hidden_fn()
        outs, states = [], []
        with torch.inference_mode(), causal_attention(self.model), \
                progress_bar(total=len(ids), desc="predict (head)", unit="item", file=sys.stderr, enabled=progress) as bar:
            for start in range(0, len(ids), batch_size):
                idx = order[start:start + batch_size]
                lens = lengths[idx]
                width = int(lens[0])
                if self.compile:
                    width = -(-width // 32) * 32
                batch = np.full((len(idx), width), pad, dtype=np.int64)
                for j, i in enumerate(idx):
                    batch[j, :lens[j]] = ids[i]
                t = torch.from_numpy(batch).to(dev, non_blocking=True)
                lt = torch.from_numpy(lens).to(dev, non_blocking=True)
                out = head_prices_right(fn, self.head, self.head_spec, t, lt, return_pooled=self._wants_pooled)
                if self._wants_pooled:
                    out, st = out
                    states.append(st)
                outs.append(out)
                bar.update(len(idx))
            prices = torch.cat(outs).clamp(self.low, self.high).cpu().numpy()  # the one device read
            pooled_sorted = torch.cat(states).float().cpu().numpy() if states else None
        values = np.empty(len(ids), dtype=np.float64)
        values[order] = prices
        pooled = None
        if pooled_sorted is not None:
            pooled = np.empty_like(pooled_sorted)
            pooled[order] = pooled_sorted
        return self._head_predictions(list(prompts), values.tolist(), pooled)

    # -- expected value over complete prices -----------------------------------------------------

    def _digit_tokens(self) -> tuple[Any, list[str]]:
        """Ids (tensor) and strings of every token that decodes to ASCII digits only."""
        if self._digit_cache is None:
            import torch

            tok = self.tokenizer
            ids, strs = [], []
            for i, t in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
                if t and t.isascii() and t.isdigit() and tok.decode([i]) == t:
                    ids.append(i)
                    strs.append(t)
            if not ids:
                raise PricefitError(
                    "mode 'expected' needs digit tokens, and this tokenizer has none",
                    hint="use --mode greedy",
                )
            self._digit_cache = (torch.tensor(ids, dtype=torch.long, device=self.model.device), strs)
        return self._digit_cache

    def _expected_batch(self, prompts: list[str]) -> list[Prediction]:
        import torch

        digit_ids, digit_strs = self._digit_tokens()
        dlen = torch.tensor([len(s) for s in digit_strs], device=digit_ids.device)
        max_digits = len(str(int(self.high)))
        n, beam = len(prompts), self.beam
        k = len(digit_strs)

        enc = self._encode(prompts)
        mask = enc["attention_mask"]
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self.model(**enc, position_ids=pos, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        logp = torch.log_softmax(out.logits[:, -1, :].double(), dim=-1)

        # rows: one per (item, hypothesis); before the first step, one row per item
        mass = torch.ones(n, dtype=torch.float64, device=logp.device)
        prefix: list[str] = [""] * n
        rows_per_item = 1
        finished_v = [[] for _ in range(n)]  # values
        finished_p = [[] for _ in range(n)]  # their probabilities
        step = 0
        while True:
            p_dig = logp[:, digit_ids].exp()  # (R, K)
            cur = torch.tensor([len(s) for s in prefix], device=p_dig.device)
            allowed = (cur[:, None] + dlen[None, :]) <= max_digits
            p_end = mass * (1.0 - p_dig.sum(1)).clamp(min=0)  # any non-digit token ends the number
            p_over = mass * (p_dig * ~allowed).sum(1)  # longer than the clip range allows
            # one device->host copy per step (not one per row: that would sync the GPU 1000s of times)
            for r, (pe, po) in enumerate(zip(p_end.tolist(), p_over.tolist())):
                item = r // rows_per_item
                if prefix[r] and pe > 0:
                    finished_v[item].append(float(int(prefix[r])))
                    finished_p[item].append(pe)
                if po > 0:
                    finished_v[item].append(self.high)
                    finished_p[item].append(po)
            cand = (mass[:, None] * p_dig * allowed).reshape(n, rows_per_item * k)
            width = min(beam, rows_per_item * k)
            top_p, top_i = cand.topk(width, dim=1)
            if not torch.any(top_p > 0) or step > max_digits:
                break
            parent = (torch.arange(n, device=top_i.device)[:, None] * rows_per_item + top_i // k).reshape(-1)
            tok_idx = (top_i % k).reshape(-1)
            mass = top_p.reshape(-1)
            prefix = [prefix[p] + digit_strs[t] for p, t in zip(parent.tolist(), tok_idx.tolist())]
            rows_per_item = width
            # one KV-cached step for every surviving hypothesis
            cache.reorder_cache(parent)
            mask = torch.cat([mask[parent], torch.ones_like(mask[:1, :1]).expand(len(prefix), 1)], dim=1)
            next_ids = digit_ids[tok_idx][:, None]
            with torch.inference_mode():
                out = self.model(
                    input_ids=next_ids,
                    attention_mask=mask,
                    position_ids=(mask.long().sum(1, keepdim=True) - 1),
                    use_cache=True,
                    **{self._cache_kwarg: cache},
                )
            cache = out.past_key_values
            logp = torch.log_softmax(out.logits[:, -1, :].double(), dim=-1)
            step += 1

        preds = []
        for vs, ps in zip(finished_v, finished_p):
            total = sum(ps)
            if total <= 0:
                preds.append(Prediction(value=None, raw="expected: no digit tokens", parsed=False))
                continue
            ev = sum(v * p for v, p in zip(vs, ps)) / total
            ev = min(max(ev, self.low), self.high)
            best = vs[max(range(len(ps)), key=ps.__getitem__)]
            raw = f"expected {ev:.2f} (mode {best:.0f}, covered mass {total:.3f})"
            preds.append(Prediction(value=ev, raw=raw, parsed=True))
        return preds


# ----------------------------------------------------------------------------------------------
# the reference loop


def reference_predict(predictor: PricePredictor, texts: Iterable[str], progress: bool = False, prompts: bool = False) -> list[Prediction]:
    """One ``generate`` call per item, no padding: the loop the batched path is measured against."""
    from tqdm.auto import tqdm

    out = []
    for t in tqdm(list(texts), desc="predict (reference)", file=sys.stderr, disable=not progress):
        enc = predictor.tokenizer(t if prompts else predictor.prompt(t), return_tensors="pt")
        enc = {k: v.to(predictor.model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        out.append(predictor._to_prediction(predictor._generate(enc)[0]))
    return out
