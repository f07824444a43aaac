"""The library's import structure: no cycle between compare and the baselines (counting the
function-local imports too, read with ast as the step cache reads them)."""

from __future__ import annotations

from tasks import cache


def test_the_baselines_never_import_compare_and_compare_imports_the_baselines_at_the_top():
    assert "pricefit.compare" not in cache.dependency_closure(["pricefit.baselines"])
    assert "pricefit.items" in cache.dependency_closure(["pricefit.baselines"])
    import pricefit.compare as compare
    from pricefit import baselines, items

    assert compare.read_summary is baselines.read_summary and compare.item_set_sha256 is items.item_set_sha256
