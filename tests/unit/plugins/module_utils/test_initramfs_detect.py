"""Which initramfs generator builds the host's images, with evidence; several installed."""
from __future__ import annotations

import pytest

from helpers import ARCH_OS_RELEASE, FEDORA_OS_RELEASE, fs_of, remove, write

from ansible_collections.exliar.vfio.plugins.module_utils._initramfs_detect import detect_initramfs

TOOL = "#!/bin/sh\nexit 1\n"


def initramfs_of(root):
    return detect_initramfs(fs_of(root))


@pytest.mark.parametrize("kind,os_,tool,image", [
    ("initramfs-tools", {}, "/usr/sbin/update-initramfs", "/boot/initrd.img-6.1.0-18-amd64"),
    ("dracut", {"os_release": FEDORA_OS_RELEASE, "kernel": "6.8.5-301.fc40.x86_64", "bootloader": "grubby"},
     "/usr/bin/dracut", "/boot/initramfs-6.8.5-301.fc40.x86_64.img"),
    ("mkinitcpio", {"os_release": ARCH_OS_RELEASE, "kernel": "6.10.3-arch1-1", "bootloader": "systemd-boot"},
     "/usr/bin/mkinitcpio", "/boot/initramfs-linux.img"),
    ("booster", {"os_release": ARCH_OS_RELEASE, "kernel": "6.10.3-arch1-1", "bootloader": "systemd-boot"},
     "/usr/bin/booster", "/boot/booster-linux.img"),
])
def test_each_generator_alone(make_sysroot, kind, os_, tool, image):
    ir = initramfs_of(make_sysroot(pci=[], os={"initramfs": kind, **os_}))
    assert ir["name"] == kind
    assert ir["ambiguous"] is False
    assert tool in ir["evidence"]
    assert image in ir["evidence"]
    assert [c["name"] for c in ir["candidates"]] == [kind]


def test_the_sbin_link_does_not_double_the_evidence(make_sysroot):
    # /sbin -> usr/sbin: /sbin/update-initramfs exists too, but it is the same tool
    ir = initramfs_of(make_sysroot(pci=[]))
    assert "/usr/sbin/update-initramfs" in ir["evidence"]
    assert "/sbin/update-initramfs" not in ir["evidence"]
    assert "/etc/initramfs-tools/initramfs.conf" in ir["evidence"]


def test_not_usr_merged(make_sysroot):
    root = make_sysroot(pci=[], os={"usr_merged": False})
    remove(root, "usr/sbin/update-initramfs")
    write(root, "sbin/update-initramfs", TOOL, 0o755)
    ir = initramfs_of(root)
    assert ir["name"] == "initramfs-tools" and "/sbin/update-initramfs" in ir["evidence"]


def test_none_installed(make_sysroot):
    ir = initramfs_of(make_sysroot(pci=[], os={"initramfs": None}))
    assert ir == {"name": None, "evidence": [], "candidates": [], "ambiguous": False}


def test_two_installed_the_images_decide(make_sysroot):
    # Arch with booster in use, mkinitcpio still installed but its image removed
    root = make_sysroot(pci=[], os={"os_release": ARCH_OS_RELEASE, "initramfs": "booster", "bootloader": None})
    write(root, "usr/bin/mkinitcpio", TOOL, 0o755)
    write(root, "etc/mkinitcpio.conf", "HOOKS=(base udev)\n")
    ir = initramfs_of(root)
    assert ir["name"] == "booster"
    assert ir["ambiguous"] is False
    assert {c["name"] for c in ir["candidates"]} == {"booster", "mkinitcpio"}
    assert "/boot/booster-linux.img" in ir["evidence"]


def test_two_installed_both_with_images_is_ambiguous(make_sysroot):
    root = make_sysroot(pci=[], os={"os_release": ARCH_OS_RELEASE, "initramfs": "booster", "bootloader": None})
    write(root, "usr/bin/mkinitcpio", TOOL, 0o755)
    write(root, "boot/initramfs-linux.img", b"\x07\x07\x07")
    ir = initramfs_of(root)
    assert ir["name"] is None
    assert ir["ambiguous"] is True
    assert ir["evidence"] == []
    assert {c["name"] for c in ir["candidates"]} == {"booster", "mkinitcpio"}


def test_two_installed_without_any_image_is_ambiguous(make_sysroot):
    root = make_sysroot(pci=[], os={"initramfs": "mkinitcpio", "bootloader": None})
    write(root, "usr/bin/booster", TOOL, 0o755)
    remove(root, "boot/initramfs-linux.img")
    ir = initramfs_of(root)
    assert ir["name"] is None and ir["ambiguous"] is True


def test_dracut_installed_next_to_mkinitcpio_whose_images_are_there(make_sysroot):
    # dracut's "initramfs-" prefix also matches mkinitcpio's initramfs-linux.img
    root = make_sysroot(pci=[], os={"os_release": ARCH_OS_RELEASE, "initramfs": "mkinitcpio", "bootloader": None})
    write(root, "usr/bin/dracut", TOOL, 0o755)
    ir = initramfs_of(root)
    assert ir["name"] == "mkinitcpio" and ir["ambiguous"] is False
