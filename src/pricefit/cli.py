"""The ``pricefit`` command: one subcommand per stage.

Every subcommand prints a readable summary, or with ``--json`` exactly one JSON object on stdout
(logs and progress go to stderr). Heavy libraries (torch, transformers, great_expectations) are
imported inside the commands so that ``pricefit --help`` answers at once.

Subcommands live in ``pricefit.commands.<name>`` and register themselves on :data:`app`.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click
import typer
import typer.core

from . import commands, logs
from .errors import ContractError, PricefitError

# the commands in the order a user meets them (the pipeline, then the flow, then the helpers); others after
COMMAND_ORDER = ("curate", "validate", "tokenize", "train", "evaluate", "baselines", "compare", "promote", "predict",
                 "run", "sweep", "serve", "profiles", "model", "plan-memory", "version")


class _PipelineOrder(typer.core.TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {n: i for i, n in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))


_typer_display_type = typer.core.TyperOption.display_type_rich


def _display_type(self: Any, ctx: Any) -> str | None:
    """Help shows no type for a flag (typer 0.29 prints ``<bool>``), ``<text>...`` for a repeatable
    option (not ``<list[str]>``) and a plain ``<float>`` for a bounded number (the bound is in the
    error message; "[x>=0.0]" widened the type column until long option names were cut)."""
    if self.is_flag or self.count:
        return None
    if self.multiple and self.metavar is None:
        return "<text>..."
    shown = _typer_display_type(self, ctx)
    return shown.replace(" range>", ">") if shown else shown


# on typer's option class itself: --help is built by typer's own decorator, not from this app
typer.core.TyperOption.display_type_rich = _display_type
typer.core.TyperOption._get_number_range_help_str = lambda self: None
app = typer.Typer(
    cls=_PipelineOrder,
    name="pricefit",
    help=(
        "Curate product listings, QLoRA fine-tune a causal LM to predict prices, evaluate it against "
        "baselines, and orchestrate it all as a cached Prefect flow.\n\n"
        "Quick start:  pricefit curate --source demo --out runs/demo/curated"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

JSON_OPTION_HELP = "Print one JSON object on stdout (logs go to stderr)."
log = logging.getLogger("pricefit")



_STATE = {"verbose": 0}


@app.callback()
def _global_options(
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True,
        help="More output: pricefit's debug lines, library info lines, progress bars and warnings (quiet by default).",
    ),
) -> None:
    _STATE["verbose"] = verbose


def setup_logging(verbose: int | None = None) -> None:
    """pricefit's records at INFO on stderr (DEBUG with -v); library chatter kept out (pricefit.logs)."""
    import os

    if verbose is None:  # -v, or PRICEFIT_VERBOSE (what `pricefit -v serve` hands its flow runs)
        verbose = _STATE["verbose"] or int(os.environ.get("PRICEFIT_VERBOSE") or 0)
    logs.setup(verbose)


def emit(result: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], str] | str | None = None) -> None:
    """Print ``result`` as one JSON object, or as a readable summary."""
    if as_json:
        sys.stdout.write(json.dumps(result, default=str, sort_keys=True) + "\n")
        sys.stdout.flush()
        return
    if callable(human):
        text = human(result)
    elif isinstance(human, str):
        text = human
    else:
        text = "\n".join(f"{k}: {v}" for k, v in result.items())
    typer.echo(text)


def command(func: Callable) -> Callable:
    """Wrap a subcommand: turn PricefitError into a clear message and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        setup_logging()
        as_json = bool(kwargs.get("as_json"))  # every command names its --json option as_json
        try:
            return func(*args, **kwargs)
        except ContractError as e:
            typer.echo(f"error: {e.message}", err=True)
            if e.hint:
                typer.echo(f"  hint: {e.hint}", err=True)
            if as_json:
                emit({"ok": False, "error": e.message, "contract": e.report}, True)
            raise typer.Exit(3) from None
        except PricefitError as e:
            typer.echo(f"error: {e.message}", err=True)
            if e.hint:
                typer.echo(f"  hint: {e.hint}", err=True)
            if as_json:
                emit({"ok": False, "error": e.message, "hint": e.hint}, True)
            raise typer.Exit(2) from None
        except OSError as e:  # disk full, a read-only or foreign output folder: say which file and what to do
            message, hint = os_error_message(e)
            typer.echo(f"error: {message}", err=True)
            typer.echo(f"  hint: {hint}", err=True)
            if as_json:
                emit({"ok": False, "error": message, "hint": hint}, True)
            raise typer.Exit(2) from None
        except _EXITS:  # a command's own exit code (typer.Exit is a RuntimeError): not an error of ours
            raise
        except Exception as e:  # a bug: the traceback goes to stderr, and --json still prints one object
            if as_json:
                emit({"ok": False, "error": f"internal error: {type(e).__name__}: {e}",
                      "hint": "this is a bug in pricefit; the traceback is on stderr"}, True)
            raise

    return wrapper


_EXITS = (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def os_error_message(e: OSError) -> tuple[str, str]:
    """(message, hint) for an OSError: the file, what happened, and what to change."""
    where = f" {e.filename}" if e.filename else ""
    what = e.strerror or str(e)
    if e.errno in _NO_SPACE or "os error 28" in str(e):
        return (f"no space left on the device to write{where}: {what}",
                "free disk space (or quota) on that device, or give --out (or workdir) on another disk, then rerun")
    if e.errno in _READ_ONLY:
        return (f"cannot write{where}: {what} (the folder is read-only or not yours)",
                "give an --out (or workdir) you can write to, or fix the folder's permissions, then rerun")
    return f"cannot access{where}: {what}", "check the path, its permissions and free space, then rerun"


# what makes each artifact kind (manifest.json "kind"), for messages that say where an input comes from
ARTIFACT_MAKERS = {
    "raw": "`pricefit curate` (its raw/ folder)",
    "curated": "`pricefit curate`",
    "tokenized": "`pricefit tokenize`",
    "adapter": "`pricefit train`",
    "evaluation": "`pricefit evaluate`",
    "baselines": "`pricefit baselines`",
    "comparison": "`pricefit compare`",
}


# kinds whose folder the library also reads without a manifest (a bare PEFT adapter, an evaluation
# written by other code): those files, all of them, make a manifest-less folder acceptable
BARE_LAYOUTS = {
    "adapter": (("adapter_config.json",), ("adapter/adapter_config.json",)),
    "evaluation": (("metrics.json", "predictions.parquet"),),
}


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _did_you_mean(path: Path) -> str | None:
    import difflib

    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return None
    names = sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))
    close = [n for n in difflib.get_close_matches(path.name, names, n=3, cutoff=0.6) if n[:1] == path.name[:1]]
    return str(parent / close[0]) if close else None


def check_input(path: Any, option: str, kinds: tuple[str, ...] = (), *, file: bool = False) -> Path | None:
    """Check one input path of a command at once, before any heavy import.

    ``path`` must exist (``file=True``: be a file); with ``kinds`` it must be a finished pricefit
    artifact whose manifest kind is one of them (or hold one of :data:`BARE_LAYOUTS` of those
    kinds: a bare PEFT adapter folder passes as an adapter). The error names the option, what the path is and what was expected.
    """
    if path is None:
        return None
    p = Path(path)
    wanted = " or ".join(f"{_article(k)} {k} artifact (the output of {ARTIFACT_MAKERS.get(k, k)})" for k in kinds)
    if not p.exists():
        close = _did_you_mean(p)
        hint = f"did you mean {option} {close}?" if close else (f"{option} takes {wanted}" if kinds else None)
        missing = "no such file" if file else "no such file or directory"
        raise PricefitError(f"{option} {p}: {missing}", hint=hint)
    if file:
        if p.is_dir():
            raise PricefitError(f"{option} {p} is a directory; it expects a file")
        return p
    if not kinds:
        return p
    if not p.is_dir():
        raise PricefitError(f"{option} {p} is a file; it expects {wanted}")
    manifest = p / "manifest.json"
    if not manifest.exists():
        for kind in kinds:
            if any(all((p / f).is_file() for f in layout) for layout in BARE_LAYOUTS.get(kind, ())):
                return p
        raise PricefitError(
            f"{option} {p} has no manifest.json: it is not a finished pricefit artifact; {option} expects {wanted}",
            hint="point at the --out directory of that command, or rerun it (an interrupted run leaves no manifest)",
        )
    try:
        kind = json.loads(manifest.read_text()).get("kind")
    except (ValueError, OSError, AttributeError):
        kind = None
    if kind not in kinds:
        what = f"{_article(str(kind))} {kind} artifact (the output of {ARTIFACT_MAKERS[kind]})" if kind in ARTIFACT_MAKERS else (
            f"an artifact of unknown kind {kind!r}")
        raise PricefitError(f"{option} {p} is {what}; {option} expects {wanted}")
    return p


PROFILE_OPTION_HELP = ("A run profile's settings for this stage: a name in deployments/profiles (`pricefit profiles`; "
                       "demo = what `make demo` runs) or a YAML file, a stage mapping or a profile. --set overrides it.")


def profile_names() -> list[str]:
    """The profile names of config.profiles_dir(), found without loading pydantic (``pricefit --help``
    lists them): ``$PRICEFIT_PROFILES``, else the nearest ``deployments/profiles`` above this package."""
    import os

    env = os.environ.get("PRICEFIT_PROFILES")
    here = Path(__file__).resolve().parent
    folders = [Path(os.path.expanduser(env))] if env else [f / "deployments" / "profiles" for f in (here, *here.parents)]
    found = next((f for f in folders if f.is_dir()), None)
    return sorted(p.stem for p in found.glob("*.yaml")) if found else []


def check_config(value: Any) -> Path | None:
    """``--profile``/``--config``: a profile name (no suffix, no such file) is read from the profiles
    folder; a path must be a file. Checked at once, before any heavy import."""
    if value is None:
        return None
    p = Path(value)
    # a name (gpu-qwen1.5b has a dot, not a .yaml suffix), unless it is a file here
    if p.suffix not in (".yaml", ".yml") and not p.exists() and "/" not in str(value):
        from .config import list_profiles, profiles_dir  # deferred: keeps `pricefit --help` fast

        named = profiles_dir() / f"{p}.yaml"
        if not named.is_file():
            raise PricefitError(f"--profile {value}: no such profile in {profiles_dir()}",
                                hint=f"available profiles: {', '.join(list_profiles()) or '(none)'}; or give a YAML file")
        return named
    return check_input(p, "--config", file=True)


def check_source(spec: str | None, option: str) -> None:
    """A listings source given as files or a glob: check that they exist at once (reads nothing)."""
    if not spec or spec.strip() == "demo" or spec.startswith(("demo:", "hf:")):
        return
    from .sources import expand_paths  # deferred: only a command given a --source file needs it (not `pricefit --help`)

    try:
        expand_paths(spec[4:] if spec.startswith("csv:") else spec)
    except PricefitError as e:
        raise PricefitError(f"{option} {spec}: {e.message}", hint=e.hint) from None


def main() -> None:
    """``python -m pricefit``: the same command as the ``pricefit`` entry point."""
    app(prog_name="pricefit")


PLUGIN_GROUP = "pricefit.commands"  # entry point group: modules whose commands join this app
PLUGIN_ENV = "PRICEFIT_COMMANDS"  # comma-separated module names, for an install whose entry points are stale


def plugin_modules() -> list[str]:
    """Modules that add commands to :data:`app`: the ``pricefit.commands`` entry points, then PRICEFIT_COMMANDS.

    The library names no orchestration module: pyproject.toml declares the entry point
    (``orchestration = "flows.commands"``), so a package above the library adds its commands
    (``run``, ``sweep``, ``serve``) without the library importing it.
    """
    import os
    from importlib.metadata import entry_points

    names = [ep.value.split(":", 1)[0] for ep in entry_points(group=PLUGIN_GROUP)]
    names += [n.strip() for n in os.environ.get(PLUGIN_ENV, "").split(",") if n.strip()]
    return list(dict.fromkeys(names))


def _register() -> None:
    """The stage commands (``pricefit.commands.*``), then the plugins' (each registers on import)."""
    import importlib
    import pkgutil

    for mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"{commands.__name__}.{mod}")
    for name in plugin_modules():
        try:
            importlib.import_module(name)
        except ImportError as e:  # the stage commands still work; say why the others are missing
            sys.stderr.write(f"pricefit: commands of {name!r} not loaded ({type(e).__name__}: {e})\n")


_register()


if __name__ == "__main__":  # pragma: no cover - `python -m pricefit.cli`: the commands registered on pricefit.cli.app
    from pricefit.cli import main as _main

    _main()
