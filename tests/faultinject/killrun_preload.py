"""Imported once by the forkserver of killrun.py: the heavy imports every stage needs, and the kill
points. Runs nothing (no torch op, no thread pool), so the children it forks start clean."""

import killpoints
import pricefit.cli  # noqa: F401  (registers every stage command)

for _name in ("torch", "transformers", "peft", "datasets", "polars", "safetensors.torch", "pyarrow.parquet"):
    try:
        __import__(_name)
    except ImportError:  # a stage that needs it fails in the child with the real message
        pass

killpoints.install()
