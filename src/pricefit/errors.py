"""User-facing errors: every one says what went wrong and what to change."""

from __future__ import annotations


class PricefitError(Exception):
    """An error caused by input or configuration, reported without a traceback.

    ``hint`` tells the user what to change. The CLI prints both and exits with code 2.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ContractError(PricefitError):
    """A data contract failed; ``report`` holds the readable failure report."""

    def __init__(self, message: str, report: dict | None = None, hint: str | None = None):
        super().__init__(message, hint)
        self.report = report or {}
