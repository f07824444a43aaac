"""``python -m pricefit``: the same command as ``pricefit``."""

from pricefit.cli import main

if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    main()
