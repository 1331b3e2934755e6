"""Shared helpers of the system tier: wall-time records and failure tracking for fixtures."""
from __future__ import annotations

import subprocess
from pathlib import Path

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


def close_ssh_masters(control_dir) -> None:
    """Ask every SSH ControlPersist master with a socket in control_dir to exit (ansible leaves
    them running for 60 s after a run)."""
    control_dir = Path(control_dir)
    if not control_dir.is_dir():
        return
    for sock in control_dir.iterdir():
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "ignored"],
                       capture_output=True, timeout=20, check=False)
