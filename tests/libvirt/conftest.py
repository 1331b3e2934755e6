"""libvirt tier: the VM stage against a real libvirtd with QEMU (TCG, no KVM needed).

Run with ``./dev.sh libvirt`` (installs the packages and a guest kernel first) or
``.venv/bin/pytest tests/libvirt -m libvirt -v`` as root. libvirtd (and virtlogd) are started in the
foreground when nothing answers at ``qemu:///system`` (there may be no systemd), and stopped at the end.
Test domains are named ``exliar-vfio-test-*`` and removed after each test; the journal and state
files go to a temporary directory, never to the machine's own /var/lib/exliar-vfio.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import tiny_guest

from ansible_collections.exliar.vfio.plugins.module_utils import _vm_libvirt as libvirt

REPO = Path(__file__).resolve().parents[2]
OUTPUT_DIR = REPO / "tests" / "output" / "libvirt"
PREFIX = "exliar-vfio-test-"
URI = "qemu:///system"
TIMINGS: dict = {}


def pytest_configure(config):
    config.addinivalue_line("markers", "libvirt: libvirt tier (a real libvirtd with QEMU; needs root; tests/libvirt)")


def pytest_terminal_summary(terminalreporter):
    if not TIMINGS:
        return
    terminalreporter.section("libvirt tier wall times (s)")
    for name, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{name:<60} {seconds:7.1f}")
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUTPUT_DIR / "timings.json").write_text(json.dumps(TIMINGS, indent=1) + "\n")


@contextlib.contextmanager
def timed(name: str):
    started = time.monotonic()
    try:
        yield
    finally:
        TIMINGS[name] = round(time.monotonic() - started, 1)


def run(argv: list) -> tuple:
    """The run_command the stage gets: argv -> (rc, stdout, stderr), like AnsibleModule.run_command."""
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, text=True, timeout=120)
    except OSError as exc:
        return 127, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


class Recorder:
    """The real runner, keeping every argv: lets a test see that no ``virsh define`` ran."""

    def __init__(self):
        self.calls: list = []

    def __call__(self, argv):
        self.calls.append(list(argv))
        return run(argv)

    def virsh(self, command: str) -> list:
        return [c for c in self.calls if c[0] == "virsh" and command in c]


# --------------------------------------------------------------------------- the daemons


def _answers() -> bool:
    return run(["virsh", "--connect", URI, "uri"])[0] == 0


def _pid(path: str):
    try:
        return int(Path(path).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="session")
def libvirtd():
    """A libvirt daemon answering at qemu:///system: the running one, else libvirtd -d (with virtlogd -d)."""
    if os.geteuid() != 0:
        pytest.skip("the libvirt tier needs root (qemu:///system, QEMU run by libvirtd); run it as root")
    missing = [tool for tool in ("virsh", "libvirtd", "virtlogd", "qemu-system-x86_64") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run ./dev.sh libvirt (it installs the tier's Debian packages)")
    started = []
    with timed("libvirtd answering (start when needed)"):
        if not _answers():
            for daemon in ("virtlogd", "libvirtd"):
                pid = _pid(f"/run/{daemon}.pid")
                if pid is None or not os.path.exists(f"/proc/{pid}"):
                    # in the foreground, as this session's child: stopped and reaped at the end
                    started.append(subprocess.Popen([daemon], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL, start_new_session=True))
            deadline = time.monotonic() + 60
            while not _answers():
                if time.monotonic() > deadline or any(p.poll() is not None for p in started):
                    pytest.fail("libvirtd was started but does not answer at qemu:///system within 60 s; "
                                "run `libvirtd` by hand to see why")
                time.sleep(0.5)
    _remove_test_domains()
    yield URI
    _remove_test_domains()
    for proc in reversed(started):  # only the daemons this session started
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _remove_test_domains() -> None:
    rc, out, _err = run(["virsh", "--connect", URI, "list", "--all", "--name"])
    for name in out.split() if rc == 0 else []:
        if name.startswith(PREFIX):
            remove_domain(name)


def remove_domain(name: str) -> None:
    run(["virsh", "--connect", URI, "destroy", name])
    run(["virsh", "--connect", URI, "undefine", "--nvram", name])


@pytest.fixture
def virsh(libvirtd):
    return libvirt.Virsh(run, libvirtd)


@pytest.fixture
def domains(libvirtd):
    """``domains(suffix)`` -> a test domain name, destroyed and undefined after the test."""
    names = []

    def make(suffix: str) -> str:
        names.append(PREFIX + suffix)
        return names[-1]

    yield make
    for name in names:
        remove_domain(name)


@pytest.fixture
def state_root(tmp_path):
    return str(tmp_path / "state-root")


# --------------------------------------------------------------------------- the tiny guest


def guest_kernel() -> str:
    """The host's own kernel from /boot, else the one ./dev.sh libvirt unpacked (a container has no /boot kernel)."""
    wanted = os.environ.get("EXLIAR_VFIO_TEST_KERNEL")
    candidates = [wanted] if wanted else []
    candidates += sorted(glob.glob("/boot/vmlinuz-*"), reverse=True)
    candidates += sorted(glob.glob(str(REPO / ".cache/libvirt/kernel/boot/vmlinuz-*")), reverse=True)
    for path in candidates:
        if os.access(path, os.R_OK):
            return path
    pytest.fail("no kernel for the test guest: none readable in /boot; run ./dev.sh libvirt "
                "(it unpacks Debian's cloud kernel into .cache/libvirt) or set EXLIAR_VFIO_TEST_KERNEL")
    return ""


def build_initramfs(path: str, script: str) -> None:
    try:
        tiny_guest.build_initramfs(path, script)
    except tiny_guest.TinyGuestError as exc:
        pytest.fail(f"{exc} (./dev.sh libvirt installs it)")


@pytest.fixture(scope="session")
def guest():
    """Kernel and two initramfs images readable by libvirt's QEMU user: ``poweroff`` (prints a line and
    powers off at once) and ``sleep`` (stays up). A world-readable directory, since QEMU does not run as root."""
    directory = tempfile.mkdtemp(prefix="exliar-vfio-libvirt-")
    os.chmod(directory, 0o755)
    with timed("guest kernel copy and initramfs build"):
        kernel = os.path.join(directory, "vmlinuz")
        shutil.copyfile(guest_kernel(), kernel)
        images = {}
        for name, script in (("poweroff", "/bin/busybox echo exliar-vfio guest up\n/bin/busybox poweroff -f\n"),
                             ("sleep", "/bin/busybox sleep 600\n")):
            images[name] = os.path.join(directory, f"initrd-{name}.gz")
            build_initramfs(images[name], script)
        for path in [kernel] + list(images.values()):
            os.chmod(path, 0o644)
    yield {"kernel": kernel, "initrd": images, "cmdline": "console=ttyS0 quiet panic=-1"}
    shutil.rmtree(directory, ignore_errors=True)
