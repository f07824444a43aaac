"""Each stage's settings, one module per stage, so that a step's cache key covers its own settings.

A step's key hashes the source of the modules its code imports (tasks/cache.py): the library
modules import their own stage's module here (``pricefit.settings.train``), never
:mod:`pricefit.config` (which assembles them all into RunConfig), so editing the curation settings
does not rerun training. This package's ``__init__`` imports nothing for that reason.
"""
