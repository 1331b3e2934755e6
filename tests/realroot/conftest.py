"""Real-root tier: the real initramfs (and later bootloader) tools in real Debian 12 roots.

Run with ``.venv/bin/python -m pytest tests/realroot -m realroot -v -s`` as root. The roots are
built once by ``roots.ensure_root`` and cached in ``.cache/realroot/``; every test works on a
fresh copy. See docs/testing.md ("Real-root tier").
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import roots  # noqa: E402

TIMINGS: dict = {}  # name -> {"seconds": s, "load": "before->after"}


@contextlib.contextmanager
def timed(name: str):
    """Record the wall time of a block with the machine's 1-minute load average before and after."""
    base, n = name, 2
    while name in TIMINGS:
        name, n = f"{base} #{n}", n + 1
    load0 = roots.loadavg()
    started = time.monotonic()
    try:
        yield
    finally:
        seconds = time.monotonic() - started
        TIMINGS[name] = {"seconds": round(seconds, 1), "load": f"{load0}->{roots.loadavg()}"}
        roots.log(f"{name}: {seconds:.1f} s (load {load0} -> {roots.loadavg()})")


def pytest_terminal_summary(terminalreporter):
    if not TIMINGS:
        return
    terminalreporter.section("real-root tier wall times (s, load average before->after)")
    for name, t in TIMINGS.items():
        terminalreporter.write_line(f"{name:<58} {t['seconds']:7.1f}   load {t['load']}")
    sizes = roots.cache_size()
    terminalreporter.write_line("cache " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sizes.items()))
    roots.OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    (roots.OUTPUT_DIR / "timings.json").write_text(
        json.dumps({"timings": TIMINGS, "cache_bytes": sizes}, indent=1) + "\n")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the real-root tier needs root (debootstrap, chroot, mount namespaces)")
    missing = roots.missing_host_tools()
    if missing:
        pytest.fail(f"missing host tools {missing}: apt-get install -y debootstrap")


@pytest.fixture(scope="session")
def cached_root():
    """flavour -> the cached root, built (once, timed) when missing; the build's own step
    timings come from its info.json."""
    require_root()
    seen = {}

    def get(flavour: str) -> Path:
        if flavour not in seen:
            hit = (roots.CACHE_ROOT / roots.recipe_hash(flavour) / "info.json").is_file()
            base = roots.CACHE_ROOT / roots._digest(roots.base_recipe()) / "info.json"
            base_hit = base.is_file()
            with timed(f"{flavour}: root {'from the cache' if hit else 'built'}"):
                seen[flavour] = roots.ensure_root(flavour)
            if not hit:
                steps = {} if base_hit else {f"base {k}": v for k, v in json.loads(base.read_text())["timings"].items()}
                steps.update(json.loads((seen[flavour].parent / "info.json").read_text())["timings"])
                for step, seconds in steps.items():
                    TIMINGS.setdefault(f"{flavour}: build step {step}", {"seconds": seconds, "load": "-"})
        return seen[flavour]

    return get


SHM = Path("/dev/shm")
SHM_PREFIX = "exliar-realroot-"


def _usable_tmpfs(path: Path, need_bytes: int = 4 << 30) -> bool:
    """A tmpfs mounted without nodev/noexec (the copies hold device nodes and programs) with room."""
    options = None
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(path) and fields[2] == "tmpfs":
            options = fields[3].split(",")
    if options is None or "nodev" in options or "noexec" in options:
        return False
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize >= need_bytes


@pytest.fixture(scope="session")
def scratch_dir(tmp_path_factory):
    """Where fresh copies go: $VFIO_TEST_REALROOT_TMP, else /dev/shm when it is a usable tmpfs
    (cp -a of a 270 MB root takes 0.6 s there, 3-18 s on this machine's ext4 disk), else pytest's
    tmp dir. Copies left in /dev/shm by a killed session (its pid is gone) are removed first."""
    override = os.environ.get("VFIO_TEST_REALROOT_TMP")
    if override:
        path = Path(override)
    elif _usable_tmpfs(SHM):
        for stale in SHM.glob(SHM_PREFIX + "*"):
            pid = stale.name[len(SHM_PREFIX):]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(stale, ignore_errors=True)
        path = SHM / f"{SHM_PREFIX}{os.getpid()}"
    else:
        path = tmp_path_factory.mktemp("realroot")
    path.mkdir(parents=True, exist_ok=True)
    roots.log(f"fresh copies go to {path}")
    yield path
    if not os.environ.get("VFIO_TEST_REALROOT_KEEP") and path.parent == SHM:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fresh_root(cached_root, scratch_dir, request):
    """flavour -> a private copy of the cached root (deleted afterwards unless
    VFIO_TEST_REALROOT_KEEP is set)."""
    made = []
    test_dir = scratch_dir / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]

    def make(flavour: str) -> Path:
        cached_root(flavour)
        with timed(f"{flavour}: fresh copy (cp -a)"):
            root = roots.fresh_copy(flavour, test_dir / f"{flavour}-{len(made)}")
        made.append(root)
        return root

    yield make
    if not os.environ.get("VFIO_TEST_REALROOT_KEEP"):
        shutil.rmtree(test_dir, ignore_errors=True)
