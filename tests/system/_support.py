"""Shared helpers of the system tier: wall-time records and failure tracking for fixtures."""
from __future__ import annotations

TIMINGS: dict = {}


def record_timing(name: str, seconds: float) -> None:
    TIMINGS[name] = round(TIMINGS.get(name, 0.0) + seconds, 1)


class FailureWatch:
    """Did a test fail since this was made? Module- and class-scoped fixtures use it after their
    yield to keep artifacts (serial log, ansible output) only when something failed."""

    def __init__(self, request):
        self.session = request.session
        self.before = request.session.testsfailed

    @property
    def failed(self) -> bool:
        return self.session.testsfailed > self.before
