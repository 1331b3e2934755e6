"""RootFS: every read is below the root, never raises, and says what it could not read."""
from __future__ import annotations

import os


from helpers import NVIDIA_GPU, ROOT_PORT, make_dangling, make_unreadable_dir, symlink, write

from ansible_collections.exliar.vfio.plugins.module_utils._rootfs import RootFS


def test_paths_stay_below_the_root_even_when_absolute(tmp_path):
    fs = RootFS(str(tmp_path))
    assert fs.path("/etc/os-release") == os.path.join(str(tmp_path), "etc/os-release")
    assert fs.path("etc/os-release") == fs.path("/etc/os-release")


def test_empty_root_means_the_real_root():
    assert RootFS("").root == "/"
    assert RootFS(None).root == "/"


def test_reads_a_file_and_strips_a_line(tmp_path):
    write(tmp_path, "proc/sys/kernel/osrelease", "6.8.0-45-generic\n")
    fs = RootFS(str(tmp_path))
    assert fs.read_line("proc/sys/kernel/osrelease") == "6.8.0-45-generic"
    assert fs.read_text("/proc/sys/kernel/osrelease") == "6.8.0-45-generic\n"
    assert fs.read_bytes("proc/sys/kernel/osrelease") == b"6.8.0-45-generic\n"
    assert fs.warnings == []


def test_invalid_utf8_is_replaced_not_raised(tmp_path):
    write(tmp_path, "etc/hostname", b"caf\xe9\n")
    fs = RootFS(str(tmp_path))
    assert fs.read_line("etc/hostname") == "caf\ufffd"


def test_missing_optional_file_is_silent(tmp_path):
    fs = RootFS(str(tmp_path))
    assert fs.read_text("etc/nothing") is None
    assert fs.warnings == []


def test_missing_expected_file_is_a_warning(tmp_path):
    fs = RootFS(str(tmp_path))
    assert fs.read_line("proc/cmdline", expected=True) is None
    assert fs.warnings == ["proc/cmdline: missing"]


def test_unreadable_file_is_a_warning_even_when_optional(tmp_path):
    make_unreadable_dir(tmp_path, "proc/cmdline")
    fs = RootFS(str(tmp_path))
    assert fs.read_text("proc/cmdline") is None
    assert len(fs.warnings) == 1
    assert fs.warnings[0].startswith("proc/cmdline: cannot read")


def test_dangling_symlink_reads_as_missing(tmp_path):
    make_dangling(tmp_path, "etc/os-release")
    fs = RootFS(str(tmp_path))
    assert fs.exists("etc/os-release")  # the link itself is there
    assert not fs.isfile("etc/os-release")
    assert fs.read_text("etc/os-release", expected=True) is None
    assert fs.warnings == ["etc/os-release: missing"]


def test_the_same_warning_is_reported_once(tmp_path):
    fs = RootFS(str(tmp_path))
    for _attempt in range(3):
        fs.read_text("proc/cpuinfo", expected=True)
    assert fs.warnings == ["proc/cpuinfo: missing"]


def test_listdir_is_sorted(tmp_path):
    for name in ("b", "a", "c"):
        write(tmp_path, f"d/{name}")
    assert RootFS(str(tmp_path)).listdir("d") == ["a", "b", "c"]


def test_listdir_of_a_file_is_empty_with_a_warning(tmp_path):
    write(tmp_path, "sys/bus/pci/devices", "not a directory")
    fs = RootFS(str(tmp_path))
    assert fs.listdir("sys/bus/pci/devices") == []
    assert fs.warnings == ["sys/bus/pci/devices: not a directory"]


def test_listdir_missing(tmp_path):
    fs = RootFS(str(tmp_path))
    assert fs.listdir("sys/class/iommu") == []
    assert fs.warnings == []
    assert fs.listdir("sys/bus/pci/devices", expected=True) == []
    assert fs.warnings == ["sys/bus/pci/devices: missing"]


def test_root_that_does_not_exist_reads_nothing_and_never_raises(tmp_path):
    fs = RootFS(str(tmp_path / "no-such-root"))
    assert fs.read_text("etc/os-release") is None
    assert fs.listdir("sys") == []
    assert not fs.isdir("/")
    assert fs.readlink("sys/bus/pci/devices/0000:01:00.0/driver") is None
    assert fs.resolve("sys/bus/pci/devices/0000:01:00.0") == "/sys/bus/pci/devices/0000:01:00.0"


def test_is_executable(tmp_path):
    write(tmp_path, "usr/bin/tool", "#!/bin/sh\n", 0o755)
    write(tmp_path, "usr/bin/data", "x", 0o644)
    fs = RootFS(str(tmp_path))
    assert fs.is_executable("usr/bin/tool")
    assert not fs.is_executable("usr/bin/data")
    assert not fs.is_executable("usr/bin/missing")


def test_sysfs_links_of_a_built_sysroot(desktop_root):
    fs = RootFS(str(desktop_root))
    assert fs.link_name(f"sys/bus/pci/devices/{NVIDIA_GPU}/driver") == "nvidia"
    assert fs.link_name(f"sys/bus/pci/devices/{NVIDIA_GPU}/iommu_group") == "1"
    assert fs.link_name(f"sys/bus/pci/devices/{NVIDIA_GPU}/vendor") is None  # a regular file
    assert fs.resolve(f"sys/bus/pci/devices/{NVIDIA_GPU}") == f"/sys/devices/pci0000:00/{ROOT_PORT}/{NVIDIA_GPU}"
    assert fs.resolve(f"sys/bus/pci/devices/{NVIDIA_GPU}/driver") == "/sys/bus/pci/drivers/nvidia"
    # through the usr-merge link
    assert fs.resolve("lib/modules") == "/usr/lib/modules"


def test_resolve_takes_absolute_targets_relative_to_the_root(tmp_path):
    symlink(tmp_path, "etc/os-release", "/usr/lib/os-release")
    assert RootFS(str(tmp_path)).resolve("etc/os-release") == "/usr/lib/os-release"


def test_resolve_survives_a_symlink_loop(tmp_path):
    symlink(tmp_path, "a", "b")
    symlink(tmp_path, "b", "a")
    assert RootFS(str(tmp_path)).resolve("a/x") is None


def test_reading_through_an_absolute_symlink_stays_in_the_root(tmp_path):
    # A chroot or copied root often has absolute links; the host's file must never be read instead.
    # (No file of this name exists on the machine running the tests.)
    write(tmp_path, "opt/exliar-vfio-unit/os-release", "ID=fedora\n")
    symlink(tmp_path, "etc/os-release", "/opt/exliar-vfio-unit/os-release")
    fs = RootFS(str(tmp_path))
    assert fs.isfile("etc/os-release")
    assert fs.read_line("etc/os-release") == "ID=fedora"
