"""Test processes only (this folder on PYTHONPATH): with PRICEFIT_FAULT_FILE set, wrap the step tasks
in the fault switch of pricefit_faults.py as their modules load."""

import os

if os.environ.get("PRICEFIT_FAULT_FILE"):
    import pricefit_faults

    pricefit_faults.install_on_import()
