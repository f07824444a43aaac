"""Prefect tasks: thin wrappers (10-30 lines each) around the pricefit library, one module per built-in
step; a step declared only in the registry (tasks/steps.py `library_step`) runs through tasks/generic.py.

Every task takes upstream ArtifactRefs + its stage config + the workdir, writes its output to a
content-addressed directory (see :mod:`tasks.cache`), and returns a small JSON-able result. The
library under ``src/pricefit`` never imports Prefect; only this package and ``flows/`` do.
"""
