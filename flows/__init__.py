"""Prefect flows: retrain (the DAG), curate-only, evaluate-only, frontier-baseline, sweep.

Flow bodies read like a table of contents; the work is in ``tasks/`` (thin wrappers) and the
``pricefit`` library. Module names avoid library names (no datasets.py, evaluate.py, tokenize.py).
"""
