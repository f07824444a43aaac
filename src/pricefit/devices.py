"""Which device a ``device:`` setting means on this machine: the one place that asks torch."""

from __future__ import annotations

from .errors import PricefitError


def cuda_available() -> bool:
    import torch  # deferred: heavy, and only a run that places a model needs it

    return torch.cuda.is_available()


def resolve_device(device: str = "auto", *, setting: str = "device", check: bool = True,
                   has_cuda: bool | None = None) -> str:
    """``auto`` -> ``cuda`` when torch sees a CUDA GPU, else ``cpu``; ``cpu``/``cuda`` as given.

    ``cuda`` with no GPU visible raises (naming ``setting``), unless ``check=False`` (the GPU
    scheduler, which only names a slot; the step itself then refuses). ``has_cuda``: what to assume
    instead of asking torch (tests).
    """
    if device not in ("auto", "cpu", "cuda"):
        raise PricefitError(f"{setting}: unknown device {device!r}", hint="use auto, cpu or cuda")
    if device == "cpu" or (device == "cuda" and not check):
        return device
    has_cuda = cuda_available() if has_cuda is None else has_cuda
    if device == "cuda" and not has_cuda:
        raise PricefitError(f"{setting}: cuda was requested but torch sees no CUDA GPU",
                            hint=f"set {setting}=auto (or cpu), or run on a machine with a CUDA build of torch")
    return "cuda" if has_cuda else "cpu"
