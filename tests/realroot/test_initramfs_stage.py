"""The initramfs stage with the real generators, in real Debian 12 roots, through the real module.

``exliar.vfio.vfio_initramfs`` runs as a user runs it (``ansible localhost -m ...``) with ``root``
pointing at a fresh copy of a cached debootstrap root; the generator runs through ``chroot``. The
built image is then listed with the generator's own lister, inside the root.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import roots  # noqa: E402
from conftest import timed  # noqa: E402
from labrun import REPO, VENV_BIN, ansible_env  # noqa: E402

pytestmark = pytest.mark.realroot

MODPROBE = "etc/modprobe.d/exliar-vfio.conf"
LISTER = {"initramfs-tools": ["lsinitramfs"], "dracut": ["lsinitrd"]}
USER_CONFIG = {"initramfs-tools": "etc/initramfs-tools/modules", "dracut": "etc/dracut.conf.d/exliar-vfio.conf"}


def kernel_of(root: Path) -> str:
    return sorted(p.name for p in (root / "lib/modules").iterdir())[0]


def image_of(root: Path, kernel: str) -> Path:
    return root / "boot" / f"initrd.img-{kernel}"


def module(tmp_path: Path, root: Path, **args) -> dict:
    """One ad-hoc call of vfio_initramfs; its JSON result."""
    cmd = [str(VENV_BIN / "ansible"), "localhost", "-c", "local", "-m", "exliar.vfio.vfio_initramfs",
           "-a", json.dumps(dict(args, root=str(root))), "-o"]
    proc = subprocess.run(cmd, cwd=REPO, env=ansible_env(tmp_path, ANSIBLE_LOAD_CALLBACK_PLUGINS="0"),
                          capture_output=True, text=True, timeout=1200, check=False)
    out = proc.stdout
    body = out[out.index("{"):] if "{" in out else "{}"
    result = json.loads(body)
    result["_rc"] = proc.returncode
    return result


def listing(root: Path, flavour: str, image: Path) -> str:
    proc = roots.chroot_run(root, LISTER[flavour] + ["/" + str(image.relative_to(root))], timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("flavour", ["initramfs-tools", "dracut"])
def test_configure_rebuild_verify_and_restore(fresh_root, tmp_path, flavour):
    root = fresh_root(flavour)
    kernel = kernel_of(root)
    (root / MODPROBE).write_text("options vfio-pci ids=1234:1111\n")
    handoff = {"modules": {kernel: ["vfio", "vfio_iommu_type1", "vfio_pci"]}, "files": ["/" + MODPROBE]}
    user_file = root / USER_CONFIG[flavour]
    before_config = user_file.read_bytes() if user_file.exists() else None
    image = image_of(root, kernel)
    old_image = sha(image)

    with timed(f"{flavour}: vfio_initramfs configured"):
        configured = module(tmp_path, root, state="configured", **handoff)
    assert configured["_rc"] == 0 and configured["changed"] is True, configured
    assert configured["generator"] == flavour
    with timed(f"{flavour}: vfio_initramfs regenerated (real generator in chroot)"):
        rebuilt = module(tmp_path, root, state="regenerated", **handoff)
    assert rebuilt["_rc"] == 0 and rebuilt["regenerated"] is True, rebuilt
    assert rebuilt["kernels"][kernel]["ok"] is True, rebuilt["kernels"]
    assert sha(image) != old_image
    listed = listing(root, flavour, image)
    assert "vfio-pci.ko" in listed and "etc/modprobe.d/exliar-vfio.conf" in listed  # the generator's own lister agrees

    again = module(tmp_path, root, state="configured", **handoff)
    assert again["_rc"] == 0 and again["changed"] is False, again
    verified = module(tmp_path, root, state="verified", **handoff)
    assert verified["_rc"] == 0 and verified["kernels"][kernel]["ok"] is True

    restored = subprocess.run(
        [str(VENV_BIN / "ansible"), "localhost", "-c", "local", "-m", "exliar.vfio.vfio_restore",
         "-a", json.dumps({"root": str(root), "stages": ["initramfs"]}), "-o"],
        cwd=REPO, env=ansible_env(tmp_path), capture_output=True, text=True, timeout=1200, check=False)
    assert restored.returncode == 0, restored.stdout[-3000:]
    after_config = user_file.read_bytes() if user_file.exists() else None
    assert after_config == before_config


@pytest.mark.parametrize("flavour", ["initramfs-tools"])
def test_a_failing_generator_puts_the_configuration_and_the_image_back(fresh_root, tmp_path, flavour):
    root = fresh_root(flavour)
    kernel = kernel_of(root)
    (root / MODPROBE).write_text("options vfio-pci ids=1234:1111\n")
    handoff = {"modules": {kernel: ["vfio", "vfio_iommu_type1", "vfio_pci"]}, "files": ["/" + MODPROBE]}
    hook = root / "etc/initramfs-tools/hooks/zz-broken"
    hook.write_text("#!/bin/sh\necho 'zz-broken: the disk is full' >&2\nexit 1\n")
    hook.chmod(0o755)
    modules_file = root / "etc/initramfs-tools/modules"
    before = modules_file.read_bytes()
    image = image_of(root, kernel)
    old_image = sha(image)

    assert module(tmp_path, root, state="configured", **handoff)["changed"] is True
    failed = module(tmp_path, root, state="regenerated", **handoff)
    assert failed["_rc"] != 0
    assert "update-initramfs" in failed["msg"] and "previous configuration and images were put back" in failed["msg"]
    assert modules_file.read_bytes() == before
    assert sha(image) == old_image


def test_a_read_only_boot_is_a_clear_error_and_changes_nothing(fresh_root, tmp_path):
    root = fresh_root("initramfs-tools")
    kernel = kernel_of(root)
    (root / MODPROBE).write_text("options vfio-pci ids=1234:1111\n")
    handoff = {"modules": {kernel: ["vfio", "vfio_iommu_type1", "vfio_pci"]}, "files": ["/" + MODPROBE]}
    modules_file = root / "etc/initramfs-tools/modules"
    before = modules_file.read_bytes()
    image = image_of(root, kernel)
    old_image = sha(image)
    boot = root / "boot"
    subprocess.run(["mount", "--bind", str(boot), str(boot)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(boot)], check=True)
        assert module(tmp_path, root, state="configured", **handoff)["changed"] is True
        failed = module(tmp_path, root, state="regenerated", **handoff)
    finally:
        subprocess.run(["umount", str(boot)], check=True)
    assert failed["_rc"] != 0
    assert "update-initramfs" in failed["msg"] and "Read-only file system" in failed["msg"], failed["msg"]
    assert "previous configuration and images were put back" in failed["msg"]
    assert modules_file.read_bytes() == before
    assert sha(image) == old_image


@pytest.mark.parametrize("flavour", ["initramfs-tools", "dracut"])
def test_the_per_address_script_is_carried_into_the_image(fresh_root, tmp_path, flavour):
    """Identical devices are claimed by a script that modprobe's install line runs: the image must hold it."""
    root = fresh_root(flavour)
    kernel = kernel_of(root)
    script = root / "usr/local/sbin/exliar-vfio-pci-override"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text('#!/bin/sh\nDEVS="0000:02:00.0"\nmodprobe --ignore-install vfio-pci "$@"\n')
    script.chmod(0o755)
    (root / MODPROBE).write_text(f"install vfio-pci /{script.relative_to(root)} $CMDLINE_OPTS\n")
    handoff = {"modules": {kernel: ["vfio", "vfio_iommu_type1", "vfio_pci"]},
               "files": ["/" + MODPROBE, "/usr/local/sbin/exliar-vfio-pci-override"]}
    assert module(tmp_path, root, state="configured", **handoff)["changed"] is True
    rebuilt = module(tmp_path, root, state="regenerated", **handoff)
    assert rebuilt["_rc"] == 0 and rebuilt["kernels"][kernel]["ok"] is True, rebuilt
    assert "usr/local/sbin/exliar-vfio-pci-override" in listing(root, flavour, image_of(root, kernel))
