"""Shared helpers for the unit tests: small host profiles, sysroot building and file surgery.

Profiles follow docs/profiles.md; :func:`profile` returns a fresh copy of a small but realistic
Intel desktop (iGPU on the root bus, an NVIDIA card with four functions behind a root port, an
NVMe drive, IOMMU on, GRUB + initramfs-tools on Debian 12) with sections overridden.
"""
from __future__ import annotations

import copy
import gzip
import os
import shutil
import struct
from pathlib import Path

from build_sysroot import SysrootBuilder, validate_profile

from ansible_collections.exliar.vfio.plugins.module_utils._rootfs import RootFS

GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
SECURE_BOOT = f"sys/firmware/efi/efivars/SecureBoot-{GUID}"

NVIDIA_GPU = "0000:01:00.0"
NVIDIA_AUDIO = "0000:01:00.1"
NVIDIA_USB = "0000:01:00.2"
NVIDIA_UCSI = "0000:01:00.3"
INTEL_IGPU = "0000:00:02.0"
ROOT_PORT = "0000:00:01.0"
NVME = "0000:02:00.0"

DESKTOP_PCI = [
    {"address": "0000:00:00.0", "id": "8086:3e30", "class": "060000", "subsys": "1462:7b17", "group": 0,
     "driver": "skl_uncore"},
    {"address": ROOT_PORT, "id": "8086:1901", "class": "060400", "driver": "pcieport", "group": 1},
    {"address": INTEL_IGPU, "id": "8086:3e98", "class": "030000", "subsys": "1462:7b17", "driver": "i915",
     "group": 2, "boot_vga": True},
    {"address": NVIDIA_GPU, "id": "10de:1e87", "class": "030000", "subsys": "1462:3721", "rev": "a1",
     "parent": ROOT_PORT, "driver": "nvidia", "group": 1, "reset": ["flr", "bus"]},
    {"address": NVIDIA_AUDIO, "id": "10de:10f8", "class": "040300", "subsys": "1462:3721", "parent": ROOT_PORT,
     "driver": "snd_hda_intel", "group": 1},
    {"address": NVIDIA_USB, "id": "10de:1ad8", "class": "0c0330", "parent": ROOT_PORT, "driver": "xhci_hcd",
     "group": 1},
    {"address": NVIDIA_UCSI, "id": "10de:1ad9", "class": "0c8000", "parent": ROOT_PORT, "driver": "nvidia-gpu",
     "group": 1},
    {"address": "0000:00:14.0", "id": "8086:a36d", "class": "0c0330", "driver": "xhci_hcd", "group": 3},
    {"address": "0000:00:1d.0", "id": "8086:a330", "class": "060400", "driver": "pcieport", "group": 4},
    {"address": NVME, "id": "144d:a808", "class": "010802", "subsys": "144d:a801", "parent": "0000:00:1d.0",
     "driver": "nvme", "group": 4, "block": ["nvme0n1"]},
    {"address": "0000:00:1f.6", "id": "8086:15bc", "class": "020000", "driver": "e1000e", "group": 5,
     "net": ["eno1"]},
]

# A smaller machine for tests that change files (building it is 3x faster than the desktop).
CARD_PCI = [d for d in DESKTOP_PCI if d["address"] in (ROOT_PORT, INTEL_IGPU, NVIDIA_GPU, NVIDIA_AUDIO)]
# For tests about anything but PCI: just the host bridge and the iGPU.
TINY_PCI = [d for d in DESKTOP_PCI if d["address"] in ("0000:00:00.0", INTEL_IGPU)]

DEBIAN_OS_RELEASE = (
    'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
    'VERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n'
    'HOME_URL="https://www.debian.org/"\n')
FEDORA_OS_RELEASE = (
    'NAME="Fedora Linux"\nVERSION="40 (Workstation Edition)"\nID=fedora\nVERSION_ID=40\n'
    'PRETTY_NAME="Fedora Linux 40 (Workstation Edition)"\n')
ARCH_OS_RELEASE = 'NAME="Arch Linux"\nPRETTY_NAME="Arch Linux"\nID=arch\nBUILD_ID=rolling\n'

BASE = {
    "id": "unit-host",
    "summary": "Intel desktop with an NVIDIA card, for unit tests",
    "sources": [{"url": "https://example.org/unit", "used_for": "unit tests"}],
    "machine": {"sys_vendor": "Micro-Star International Co., Ltd.", "product_name": "MS-7B17", "chassis_type": 3},
    "cpu": {"vendor_id": "GenuineIntel", "model_name": "Intel(R) Core(TM) i7-9700K CPU @ 3.60GHz", "threads": 2,
            "flags": ["fpu", "vme", "vmx", "x2apic"]},
    "os": {
        "os_release": DEBIAN_OS_RELEASE,
        "kernel": "6.1.0-18-amd64",
        "cmdline": "BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64 root=UUID=0c6d7b2a ro quiet intel_iommu=on",
        "bootloader": "grub",
        "initramfs": "initramfs-tools",
    },
    "firmware": {"uefi": True, "secure_boot": False, "acpi_tables": ["DMAR"]},
    "iommu": {"units": ["dmar0", "dmar1"], "irq_remapping": True},
    "pci": DESKTOP_PCI,
}

SECTIONS = ("machine", "cpu", "os", "firmware", "iommu")

PCI_IDS = """\
# List of PCI ID's (unit-test excerpt of the real database layout)
#
# Version: 2024.02.02

0e11  Compaq Computer Corporation
\t0001  PCI to EISA Bridge
10de  NVIDIA Corporation
\t10f8  TU104 HD Audio Controller
\t1e87  TU104 [GeForce RTX 2080 Rev. A]
\t\t1462 3721  GeForce RTX 2080 GAMING X TRIO
\t1f07  TU106 [GeForce RTX 2070 Rev. A]
\t2204  GA102 [GeForce RTX 3090]
1002  Advanced Micro Devices, Inc. [AMD/ATI]
\t1638  Cezanne [Radeon Vega Series / Radeon Vega Mobile Series]
\t73bf  Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]
8086  Intel Corporation
\t3e98  CoffeeLake-S GT2 [UHD Graphics 630]
\ta36d  Cannon Lake PCH USB 3.1 xHCI Host Controller
144d  Samsung Electronics Co Ltd
\ta808  NVMe SSD Controller SM981/PM981/PM983
C 00  Unclassified device
\t00  Non-VGA unclassified device
C 03  Display controller
\t00  VGA compatible controller
"""


def profile(pci=None, **sections) -> dict:
    """A fresh copy of :data:`BASE`; ``os={...}`` etc. update that section, ``pci=`` replaces the devices.

    A section given as ``None`` is removed (``iommu=None``: IOMMU off).
    """
    p = copy.deepcopy(BASE)
    for key, value in sections.items():
        if value is None:
            p.pop(key, None)
        elif key in SECTIONS and isinstance(value, dict):
            p.setdefault(key, {}).update(copy.deepcopy(value))
        else:
            p[key] = copy.deepcopy(value)
    if pci is not None:
        p["pci"] = copy.deepcopy(pci)
    return p


def build(p: dict, out: Path) -> Path:
    validate_profile(p)
    return SysrootBuilder(p, Path(out)).build()


def write(root: Path, rel: str, content="", mode: int = 0o644) -> Path:
    """Create or replace ``root/rel`` (a symlink at that place is replaced, not followed)."""
    path = Path(root) / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    os.chmod(path, mode)
    return path


def remove(root: Path, rel: str) -> None:
    path = Path(root) / rel.lstrip("/")
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def make_unreadable_dir(root: Path, rel: str) -> None:
    """Replace a file by a directory: open() fails as it would on an unreadable file (tests run as root)."""
    remove(root, rel)
    (Path(root) / rel.lstrip("/")).mkdir(parents=True)


def make_dangling(root: Path, rel: str) -> None:
    remove(root, rel)
    path = Path(root) / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink("nonexistent-target-of-unit-test", path)


def symlink(root: Path, rel: str, target: str) -> None:
    remove(root, rel)
    path = Path(root) / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def dev_file(addr: str, name: str) -> str:
    """The real file behind sys/bus/pci/devices/<addr>/<name> is reached through the bus symlink."""
    return f"sys/bus/pci/devices/{addr}/{name}"


def config_gz(text: str) -> bytes:
    return gzip.compress(text.encode())


def efi_var(payload: bytes, attributes: int = 7) -> bytes:
    """An efivarfs file: 4 bytes of attributes, then the variable's data."""
    return struct.pack("<I", attributes) + payload


def load_option(description: str, path: str, with_hd_node: bool = True, optional: bytes = b"") -> bytes:
    """An EFI_LOAD_OPTION as the firmware stores it in Boot####, like efibootmgr writes it."""
    nodes = b""
    if with_hd_node:
        # hard drive media device path: type 4, subtype 1, length 42
        hd = struct.pack("<I", 1) + struct.pack("<QQ", 2048, 1050624) + b"\x11" * 16 + bytes([2, 2])
        nodes += bytes([4, 1]) + struct.pack("<H", 4 + len(hd)) + hd
    file_path = path.encode("utf-16-le") + b"\x00\x00"
    nodes += bytes([4, 4]) + struct.pack("<H", 4 + len(file_path)) + file_path
    nodes += bytes([0x7F, 0xFF, 4, 0])
    desc = description.encode("utf-16-le") + b"\x00\x00"
    return struct.pack("<IH", 1, len(nodes)) + desc + nodes + optional


def set_boot_entry(root: Path, number: int, description: str, path: str, **kw) -> None:
    """Make the firmware report that it booted from entry ``number`` (BootCurrent + Boot####)."""
    ev = "sys/firmware/efi/efivars"
    write(root, f"{ev}/BootCurrent-{GUID}", efi_var(struct.pack("<H", number), 6))
    write(root, f"{ev}/Boot{number:04X}-{GUID}", efi_var(load_option(description, path, **kw)))


def fs_of(root) -> RootFS:
    return RootFS(str(root))


def by_address(items: list) -> dict:
    return {i["address"]: i for i in items}


# ---- bootloader planners: real distribution files below data/bootloaders/<layout>/ --------------------
BOOTLOADER_DATA = Path(__file__).resolve().parent / "plugins" / "module_utils" / "data" / "bootloaders"


def load(layout: str) -> dict:
    """Every file of a bootloader fixture, as the planners get them: host path -> text."""
    base = BOOTLOADER_DATA / layout
    return {"/" + str(p.relative_to(base)): p.read_bytes().decode("utf-8", "surrogateescape")
            for p in sorted(base.rglob("*")) if p.is_file()}


def applied(files: dict, result: dict) -> dict:
    """The files after a plan's writes (None: removed)."""
    out = dict(files)
    for path, spec in result["files"].items():
        out[path] = None if spec is None else spec["content"]
    return out
