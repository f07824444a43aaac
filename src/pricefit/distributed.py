"""``python -m pricefit.distributed SPEC``: one rank of a data-parallel run (``train.num_processes``
> 1), the module that ``accelerate launch`` starts in each process.

The code is in the training package: the caller's side in pricefit/training/launch.py, the ranks'
side in pricefit/training/ranks.py (what each rank does). This module stays an entry point and
nothing more: the train step's cache key follows the imports of pricefit.training, which never
imports this module (that would be an import circle), so code here would not be in the key.
"""

from __future__ import annotations

import sys

from .training.launch import (  # noqa: F401 - the names this module had before the split
    ERROR, LAUNCHER, NVLS_OFF, PROGRESS, check, child_env, launch, launch_command)
from .training.ranks import Dist, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
