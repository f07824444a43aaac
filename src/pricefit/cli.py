"""The ``pricefit`` command: one subcommand per stage.

Every subcommand prints a readable summary, or with ``--json`` exactly one JSON object on stdout
(logs and progress go to stderr). Heavy libraries (torch, transformers, great_expectations) are
imported inside the commands so that ``pricefit --help`` answers at once.

Subcommands live in ``pricefit.commands.<name>`` and register themselves on :data:`app`.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any, Callable

import typer

app = typer.Typer(
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


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


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
        from .errors import ContractError, PricefitError

        setup_logging()
        as_json = bool(kwargs.get("as_json")) or "--json" in sys.argv
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

    return wrapper


def _register() -> None:
    import importlib
    import pkgutil

    from . import commands

    for mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"{commands.__name__}.{mod}")


_register()


if __name__ == "__main__":  # pragma: no cover
    app()
