"""System tier: a real kernel in a QEMU guest, and an SSH fleet in network namespaces.

Run with ``tests/system/run.sh`` (installs the host packages first) or
``.venv/bin/pytest tests/system -m system``. Needs root (debootstrap, ip netns).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vm as vmlib  # noqa: E402
from _support import TIMINGS, record_timing  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "system: system tier (real kernel in QEMU, SSH fleet in network namespaces)")


def pytest_terminal_summary(terminalreporter):
    if not TIMINGS:
        return
    terminalreporter.section("system tier wall times (s)")
    for name, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{name:<40} {seconds:7.1f}")
    vmlib.OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    (vmlib.OUTPUT_DIR / "timings.json").write_text(json.dumps(TIMINGS, indent=1) + "\n")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the system tier needs root (debootstrap, QEMU networking, ip netns)")


@pytest.fixture(scope="session")
def guest_image():
    """The Debian 12 guest image, built once and cached in .cache/vm/<recipe hash>/."""
    require_root()
    missing = vmlib.missing_host_tools()
    if missing:
        pytest.fail(f"missing host tools {missing}: run tests/system/setup.sh")
    started = time.monotonic()
    image = vmlib.ensure_image()
    record_timing("guest image (build or cache hit)", time.monotonic() - started)
    return image
