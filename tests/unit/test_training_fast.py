"""The training loop's speed levers (docs/PERFORMANCE.md, "Levers"), checked on the CPU.

On CUDA they are on by default (loss read every N steps, static widths, data resident on the
device, torch.compile); here each is switched on explicitly on the built-in tiny-random model and
must give the loss history of the eager per-step loop: the same steps and learning rates, losses
equal to rounding, and a killed run that resumes ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

from test_training import ITEMS, _adapter_tensors, cfg, tokenized  # noqa: E402,F401 - shared fixture and config

from pricefit.config import TrainConfig  # noqa: E402

FAST = dict(loss_sync_steps=4, pad_to="buckets", pad_multiple=8, device_data=True)


def _history(out):
    return list(csv.DictReader(open(Path(out) / "loss.csv")))


def _same_history(a, b, rel=1e-5):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["lr"] for r in a] == [r["lr"] for r in b]
    for x, y in zip(a, b):
        assert float(x["loss"]) == pytest.approx(float(y["loss"]), rel=rel, abs=1e-6)


def test_levers_resolve_on_for_cuda_and_off_on_cpu():
    from pricefit.training import LOSS_SYNC_CUDA, FastPath, fast_path

    c = TrainConfig()
    cpu, cuda, cuda4 = (SimpleNamespace(device=d, quantization=q) for d, q in (("cpu", "none"), ("cuda", "none"), ("cuda", "4bit")))
    assert fast_path(c, cpu) == FastPath()
    assert not FastPath().on
    # CUDA graphs (reduce-overhead) by default only for an unquantized base in throughput mode
    assert fast_path(c, cuda) == FastPath(LOSS_SYNC_CUDA, "max", 32, True, True, "reduce-overhead")
    assert fast_path(c, cuda4) == FastPath(LOSS_SYNC_CUDA, "max", 32, True, True, "default")
    assert fast_path(TrainConfig(mode="memory"), cuda).compile_mode == "default"
    assert fast_path(TrainConfig(compile_mode="default"), cuda).compile_mode == "default"
    assert fast_path(c, cuda, distributed=True) == FastPath()  # DP keeps the per-step loop
    off = TrainConfig(loss_sync_steps=1, pad_to="longest", device_data=False, compile=False)
    assert fast_path(off, cuda) == FastPath()
    on = TrainConfig(loss_sync_steps=3, pad_to="buckets", pad_multiple=16, device_data=True, compile="true")
    assert fast_path(on, cpu) == FastPath(3, "buckets", 16, True, True, "default")
    with pytest.raises(ValueError):
        TrainConfig(loss_sync_steps=0)


def test_levers_are_not_in_the_checkpoint_key():
    from pricefit.training import checkpoint_key

    assert checkpoint_key("t", cfg()) == checkpoint_key("t", cfg(**FAST, compile=True, compile_mode="reduce-overhead"))


def test_device_data_takes_the_rows_of_micro_batch_indices(tokenized):
    from datasets import load_from_disk

    from pricefit.training import FastPath, make_schedule, micro_batch_indices
    from pricefit.training.fastpath import _FastData

    train = load_from_disk(str(tokenized / "dataset"))["train"]
    index = [i for i in range(len(train)) for _ in range(1 + i % 2)]  # repeats, as oversample makes them
    c = cfg(batch_size=5)
    sched = make_schedule(len(index), c)
    data = _FastData(train, index, sched, c, 0, None, SimpleNamespace(device="cpu"), FastPath(2, "buckets", 8, True))
    widths = set()
    for k in range(3 * sched.micro_per_epoch):  # three epochs, short last batches included
        mb = data.get(k)
        rows = micro_batch_indices(k, sched, c.seed, index)
        assert mb["rows"].tolist() == rows
        longest = max(len(train[r]["input_ids"]) for r in rows)
        assert mb["width"] % 8 == 0 and longest <= mb["width"] < longest + 8
        assert mb["tokens"] == sum(sum(train[r]["attention_mask"]) for r in rows)
        assert mb["n_labels"] == sum(sum(1 for t in train[r]["labels"][1:] if t != -100) for r in rows)
        for j, r in enumerate(rows):  # the gathered label positions are those of the row
            lab = train[r]["labels"]
            want = [(p, lab[p + 1]) for p in range(len(lab) - 1) if lab[p + 1] != -100]
            got = [(int(p), int(t)) for p, t in zip(mb["pos"][j], mb["tgt"][j]) if t != -100]
            assert got == want
            assert mb["ids"][j, :len(lab)].tolist() == train[r]["input_ids"]
        widths.add(mb["width"])
    assert data.mask_free and len(widths) >= 1


def test_fast_accumulate_reads_nothing_back_from_the_device(tokenized, tmp_path, monkeypatch):
    """The hot path of the fast loop makes no tensor -> host read (.item, bool(), int(), float(), tolist)."""
    import pricefit.training as tr
    from pricefit.training import fastpath, loop

    reads = {"fast": 0, "eager_loss": 0}
    where = []
    names = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")
    originals = {n: getattr(torch.Tensor, n) for n in names}

    def counting(name):
        orig = originals[name]

        def f(self, *a, **kw):
            if where:
                reads[where[-1]] += 1
            return orig(self, *a, **kw)
        return f

    for n in names:
        monkeypatch.setattr(torch.Tensor, n, counting(n))

    def inside(label, fn):
        def wrapped(*a, **kw):
            where.append(label)
            try:
                return fn(*a, **kw)
            finally:
                where.pop()
        return wrapped

    calls = {"fast": 0}
    real_fast = fastpath._fast_accumulate

    def fast_counted(*a, **kw):
        calls["fast"] += 1
        return inside("fast", real_fast)(*a, **kw)

    monkeypatch.setattr(fastpath, "_fast_accumulate", fast_counted)  # where FastStep looks it up
    monkeypatch.setattr(loop, "label_loss", inside("eager_loss", loop.label_loss))  # where the plain step does
    tr.train(tokenized, tmp_path / "fast", cfg(**FAST, max_steps=4, save_steps=10))
    assert calls["fast"] == 4 and reads["fast"] == 0
    tr.train(tokenized, tmp_path / "eager", cfg(max_steps=2, save_steps=10))
    assert reads["eager_loss"] >= 2 * 2  # the eager path reads the label count back every micro-batch


@pytest.mark.slow
def test_fast_levers_give_the_eager_loss_history_and_resume_exactly(tokenized, tmp_path):
    from pricefit.training import checkpoint_root, train

    # reading the loss every 4 steps alone: the loss history of the per-step loop, to float32 rounding
    # (bit-equal under earlier package versions; with transformers 5.25 / peft 0.21.2 step 2 read
    # 6.699855 against 6.699856, a relative 1.5e-7, at 9aeb3f2 too)
    eager = train(tokenized, tmp_path / "eager", cfg())
    lazy = train(tokenized, tmp_path / "lazy", cfg(loss_sync_steps=4))
    _same_history(_history(lazy.path), _history(eager.path), rel=1e-6)
    # wider micro-batches draw LoRA dropout masks of another shape: compare without dropout
    eager = train(tokenized, tmp_path / "eager0", cfg(lora_dropout=0.0))
    fast = train(tokenized, tmp_path / "fast", cfg(**FAST, lora_dropout=0.0))
    _same_history(_history(fast.path), _history(eager.path))
    import json

    summary = json.loads((Path(fast.path) / "train_summary.json").read_text())
    assert summary["fast_path"] == {"loss_sync_steps": 4, "pad_to": "buckets", "pad_multiple": 8, "device_data": True,
                                    "compile": False}
    assert json.loads((Path(eager.path) / "train_summary.json").read_text())["fast_path"] is None
    ea, fa = _adapter_tensors(Path(eager.path)), _adapter_tensors(Path(fast.path))
    for k in ea:
        assert torch.allclose(ea[k], fa[k], rtol=1e-4, atol=1e-6), k
    # a fast run killed after step 3: progress for steps 1-4 comes after the window's read at step 4
    # (its checkpoint written first), so the rerun resumes from step 4 and ends as the uninterrupted run
    seen = []

    def kill_after_3(step, total, loss, tps):
        seen.append(step)
        if step == 3:
            raise KeyboardInterrupt

    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(tokenized, out, cfg(**FAST, lora_dropout=0.0), progress=kill_after_3)
    assert seen == [1, 2, 3]
    assert any(checkpoint_root(out).rglob("step-0000004"))
    resumed = train(tokenized, out, cfg(**FAST, lora_dropout=0.0))
    same = lambda h: [(r["step"], r["loss"], r["lr"]) for r in h]  # noqa: E731 - tokens/s is a timing
    assert same(_history(resumed.path)) == same(_history(fast.path))
    ra = _adapter_tensors(Path(resumed.path))
    assert all(torch.equal(ra[k], fa[k]) for k in fa)
    shutil.rmtree(tmp_path, ignore_errors=True)


def _have_inductor_cpu() -> str | None:
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "no C++ compiler: torch.compile's inductor backend cannot build CPU kernels here"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_have_inductor_cpu() is not None, reason=_have_inductor_cpu() or "")
@pytest.mark.parametrize("head,scope", [("generate", "layers"), ("regression", "layers"), ("generate", "model")])
def test_compiled_step_matches_eager(tokenized, tmp_path, caplog, head, scope):
    """train.compile: the compiled decoder + loss trains to the eager losses (quantization none, peft LoRA)."""
    import json

    from pricefit.training import train

    base = dict(quantization="none", lora_dropout=0.0, max_steps=4, grad_accum=1, head=head, pad_to="max")
    eager = train(tokenized, tmp_path / "eager", cfg(**base, compile=False))
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # graphs cached by an earlier test would be reused without a new capture
    counters.clear()
    with caplog.at_level(logging.WARNING, logger="pricefit.training"):
        comp = train(tokenized, tmp_path / "comp", cfg(**base, compile=True, compile_scope=scope))
    assert "torch.compile failed" not in caplog.text
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did capture graphs (not an eager run)
    assert json.loads((Path(comp.path) / "train_summary.json").read_text())["fast_path"]["compile"] == f"default/{scope}"
    _same_history(_history(comp.path), _history(eager.path), rel=1e-4)
    ca, ea = _adapter_tensors(Path(comp.path)), _adapter_tensors(Path(eager.path))
    assert set(ca) == set(ea)  # in-place layer compilation leaves the adapter's keys as they were


def test_a_compile_failure_falls_back_to_eager_with_a_warning(tokenized, tmp_path, caplog, monkeypatch):
    """If torch.compile's graph fails, the step is redone eagerly (same RNG draws) and training goes on."""
    from pricefit.training import train

    class BackendCompilerFailed(RuntimeError):
        pass

    BackendCompilerFailed.__module__ = "torch._dynamo.exc"  # where torch's compile errors live

    def broken_compile(fn, **kw):
        def run(*a, **k):
            raise BackendCompilerFailed("inductor: no working C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    eager = train(tokenized, tmp_path / "eager", cfg(**FAST))
    with caplog.at_level(logging.WARNING, logger="pricefit.training"):
        fell = train(tokenized, tmp_path / "fell", cfg(**FAST, compile=True))
    # the warning names the error (not "exactly once" in the capture: in the full suite, after the
    # in-process Prefect runs of earlier tests, the same line was captured twice)
    assert any("torch.compile failed (BackendCompilerFailed: inductor: no working C++ compiler)" in r.getMessage()
               for r in caplog.records)
    summary = (Path(fell.path) / "train_summary.json").read_text()
    assert '"compile_fell_back": "BackendCompilerFailed: inductor: no working C++ compiler"' in summary
    assert "train.compile: false" in caplog.text
    same = lambda h: [(r["step"], r["loss"], r["lr"]) for r in h]  # noqa: E731
    assert same(_history(fell.path)) == same(_history(eager.path))  # dropout included: the retry redraws the same masks


def test_an_error_that_is_not_compilation_is_not_swallowed(tokenized, tmp_path, monkeypatch):
    from pricefit.training import train

    def compile_then_fail(fn, **kw):
        def run(*a, **k):
            raise ValueError("a bug in the loss")
        return run

    monkeypatch.setattr(torch, "compile", compile_then_fail)
    with pytest.raises(ValueError, match="a bug in the loss"):
        train(tokenized, tmp_path / "bug", cfg(**FAST, compile=True))


class _GraphOwnedGrad(torch.autograd.Function):
    """loss = sum(w * x), its gradient handed back in memory the "graph" owns and reuses.

    A CUDA-graph replay writes its outputs into the same static memory every time: the backward
    returns a new tensor over one static buffer (autograd keeps it as ``.grad`` without copying)
    and the next forward "replays" by overwriting that buffer, as cudagraph trees do.
    """

    static = None

    @staticmethod
    def forward(ctx, w, x):
        _GraphOwnedGrad.static.fill_(1e6)  # the next replay reuses the graph's memory
        ctx.save_for_backward(x)
        return (w * x).sum()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        buf = _GraphOwnedGrad.static
        buf.copy_(g * x)
        return torch.empty(0).set_(buf.untyped_storage(), 0, buf.shape, buf.stride()), None


@pytest.mark.parametrize("copy", [True, False])
def test_grad_accum_with_cuda_graphs_copies_each_gradient_out_of_the_graph_memory(copy):
    """On an H200, grad_accum 2 under CUDA graphs raised "accessing tensor output of CUDAGraphs that
    has been overwritten": the first micro-batch's gradient lived in graph memory that the second
    replay reused. _fast_accumulate copies it out; without the copy (``copy=False``, the parameters
    not handed in) the accumulated gradient here is the overwritten buffer plus the second one."""
    from pricefit.training.fastpath import _fast_accumulate

    w = torch.zeros(3, requires_grad=True)
    _GraphOwnedGrad.static = torch.zeros(3)
    xs = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])]
    data = SimpleNamespace(get=lambda k: {"tokens": 3, "width": 3, "n_labels": 1, "ids": xs[k], "mask": None,
                                          "pos": None, "tgt": None})
    fn = type("Graphed", (), {"cudagraphs": True, "__call__": lambda self, ids, *_: _GraphOwnedGrad.apply(w, ids)})()
    losses, tokens, counted, width = _fast_accumulate(data, 0, SimpleNamespace(grad_accum=2), fn, None, None,
                                                      [w] if copy else None)
    assert (counted, tokens, width) == (2, 6, 3)
    assert [float(x) for x in losses] == [0.0, 0.0]
    expected = torch.tensor([5.5, 11.0, 16.5])  # (x1 + x2) / 2
    if copy:
        assert torch.equal(w.grad, expected)
    else:
        assert not torch.equal(w.grad, expected)
