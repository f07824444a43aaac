"""Fixtures shared by the unit tests that train the built-in tiny-random model."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """PRICEFIT_HOME for built-in models: the developer's cache when set, else one built here."""
    mp = pytest.MonkeyPatch()
    if not os.environ.get("PRICEFIT_HOME"):
        mp.setenv("PRICEFIT_HOME", str(tmp_path_factory.mktemp("home")))
    yield
    mp.undo()
