"""`pricefit version` and `pricefit profiles`: cheap introspection commands."""

from __future__ import annotations

import typer

from .. import __version__
from ..cli import JSON_OPTION_HELP, app, command, emit


@app.command("version")
@command
def version(as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP)) -> None:
    """Print the pricefit version."""
    emit({"version": __version__}, as_json, f"pricefit {__version__}")


@app.command("profiles")
@command
def profiles(as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP)) -> None:
    """List the run profiles in deployments/profiles (PRICEFIT_PROFILES overrides the folder)."""
    from ..config import list_profiles, profiles_dir  # deferred: keeps `pricefit --help` fast (loads pydantic, yaml)

    names = list_profiles()
    emit(
        {"profiles": names, "dir": str(profiles_dir())},
        as_json,
        lambda r: f"profiles in {r['dir']}:\n" + "\n".join(f"  {n}" for n in r["profiles"]) if names else "no profiles found",
    )
