"""CLI subcommands, one module per stage; each registers itself on ``pricefit.cli.app``.

Keep module-level imports light (typer, pathlib): heavy imports go inside the command body.
"""
