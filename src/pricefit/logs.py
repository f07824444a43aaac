"""Where pricefit's log lines go, and the library noise kept out of them.

:func:`setup` is called by the CLI (every command) and by the flows (flows/common.py): pricefit's
own records at INFO (DEBUG with ``-v``), every other library at WARNING (INFO with ``-v``), and the
chatter that tells a user nothing kept out unless ``-v`` asks for it:

- bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" (an optional faster
  CPU kernel; the fallback works) and the deprecation FutureWarnings that transformers/peft raise
  about each other's internals;
- Hugging Face "Loading weights" / "Writing model shards" progress bars;
- httpx's one line per HTTP request (``pricefit serve`` polls the server every 10 s).

A warning from a library that gets through is shown once per process, not once per call.
Nothing here imports a heavy library.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

PRICEFIT = "pricefit"

# logger -> level used when not verbose
QUIET_LOGGERS = {
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "matplotlib": logging.WARNING,
    "urllib3": logging.WARNING,
    "filelock": logging.WARNING,
    "PIL": logging.WARNING,
}
# (logger, message start) of warnings that say nothing a user can act on
DROPPED_LIBRARY_WARNINGS = (("bitsandbytes", "Failed to load CPU gemm_4bit_forward from kernels-community"),)
# modules whose FutureWarnings / DeprecationWarnings are about library internals, not user code
QUIET_WARNING_MODULES = r"(transformers|peft|accelerate|bitsandbytes|torch|huggingface_hub|datasets)(\.|$)"

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_state = {"verbose": int(os.environ.get("PRICEFIT_VERBOSE") or 0)}  # children of `pricefit -v serve` inherit it


class _Format(logging.Formatter):
    """Prefect's records of a task or flow run name that run, as Prefect's own console does
    ("Task run 'train tiny-random': Finished in state Completed()", not a bare "Finished in state")."""

    def format(self, record: logging.LogRecord) -> str:
        task, flow = getattr(record, "task_run_name", None), getattr(record, "flow_run_name", None)
        if (task or flow) and record.name.startswith("prefect"):
            who = f"Task run {task!r}" if task else f"Flow run {flow!r}"
            record = logging.makeLogRecord({**record.__dict__, "name": who})
        return super().format(record)


class _LibraryNoise(logging.Filter):
    """Drop known no-action library warnings; show any other library warning once per process."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == PRICEFIT or record.name.startswith(PRICEFIT + "."):
            return True
        msg = record.getMessage()
        for name, start in DROPPED_LIBRARY_WARNINGS:
            if (record.name == name or record.name.startswith(name + ".")) and msg.startswith(start):
                return _state["verbose"] > 0
        if record.levelno >= logging.WARNING and _state["verbose"] == 0:
            key = (record.name, msg)
            if key in self.seen:
                return False
            self.seen.add(key)
        return True


def verbosity() -> int:
    return _state["verbose"]


def setup(verbose: int = 0, stream=None) -> None:
    """Configure logging for a pricefit process (idempotent; a later call changes the verbosity)."""
    _state["verbose"] = int(verbose or 0)
    if verbose:
        os.environ["PRICEFIT_VERBOSE"] = str(int(verbose))
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_pricefit", False)), None)
    if handler is None and not root.handlers:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(_Format(_FORMAT, datefmt="%H:%M:%S"))
        handler._pricefit = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for h in root.handlers:
        if not any(isinstance(f, _LibraryNoise) for f in h.filters):
            h.addFilter(_LibraryNoise())
    if handler is not None:  # ours; a handler someone else set up (Prefect, pytest) keeps its level
        root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger(PRICEFIT).setLevel(logging.DEBUG if verbose else logging.INFO)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else level)
    quiet_libraries(verbose)


def quiet_libraries(verbose: int = 0) -> None:
    """Progress bars and internal deprecation warnings of the ML libraries: off unless verbose."""
    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub is imported
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # datasets' map/save bars, read at its import
    if "datasets" in sys.modules:
        try:
            import datasets

            datasets.disable_progress_bars()
        except Exception:  # noqa: BLE001 - bars stay
            pass
    if "huggingface_hub" in sys.modules:  # already imported: switch them off directly
        try:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        except Exception:  # noqa: BLE001 - an older hub without the helper: bars stay
            pass
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=QUIET_WARNING_MODULES)
