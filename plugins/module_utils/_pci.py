# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PCI devices as the kernel shows them in sysfs."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ansible_collections.exliar.vfio.plugins.module_utils import _hwdb, _pciids, _system
from ansible_collections.exliar.vfio.plugins.module_utils._kmod import pci_alias_matcher

BDF_RE = re.compile(r"^([0-9a-f]{4,8}):([0-9a-f]{2}):([0-1][0-9a-f])\.([0-7])$")
PCI_DEVICES = "sys/bus/pci/devices"
# Host bridges (0600, e.g. AMD's "dummy host bridge" that shares a GPU's group) and PCI
# bridges (0604, 0609) never take part in DMA on a device's behalf; vfio accepts them in a group.
BRIDGE_CLASSES = ("0600", "0604", "0609")


@dataclass
class PciDevice:
    address: str
    vendor_id: str | None
    device_id: str | None
    class_code: str | None
    subsystem_vendor_id: str | None = None
    subsystem_device_id: str | None = None
    revision: str | None = None
    driver: str | None = None
    driver_module: str | None = None
    kernel_modules: list = field(default_factory=list)
    iommu_group: int | None = None
    boot_vga: bool = False
    vendor_name: str | None = None
    device_name: str | None = None
    reset_methods: list = field(default_factory=list)
    parent: str | None = None
    sysfs_path: str | None = None
    block_devices: list = field(default_factory=list)
    net_interfaces: list = field(default_factory=list)

    @property
    def slot(self) -> str:
        """domain:bus:device, the part all functions of one card share."""
        return self.address.rsplit(".", 1)[0]

    @property
    def is_bridge(self) -> bool:
        return bool(self.class_code) and self.class_code[:4] in BRIDGE_CLASSES

    @property
    def is_gpu(self) -> bool:
        return bool(self.class_code) and self.class_code.startswith("03")

    def as_fact(self) -> dict:
        return {
            "address": self.address, "vendor_id": self.vendor_id, "device_id": self.device_id,
            "class": self.class_code, "revision": self.revision,
            "subsystem_vendor_id": self.subsystem_vendor_id, "subsystem_device_id": self.subsystem_device_id,
            "driver": self.driver, "driver_module": self.driver_module, "kernel_modules": list(self.kernel_modules),
            "iommu_group": self.iommu_group, "boot_vga": self.boot_vga,
            "vendor_name": self.vendor_name, "device_name": self.device_name,
            "reset_methods": list(self.reset_methods), "parent_bridge": self.parent,
            "is_bridge": self.is_bridge, "block_devices": list(self.block_devices),
            "net_interfaces": list(self.net_interfaces),
        }


def parse_hex(text, digits: int):
    """``"0x10de\\n"`` -> ``"10de"``; anything else -> None."""
    if text is None:
        return None
    t = text.strip().lower()
    if t.startswith("0x"):
        t = t[2:]
    if not t or len(t) > digits or any(c not in "0123456789abcdef" for c in t):
        return None
    return t.zfill(digits)


def _read_hex(fs, base: str, name: str, digits: int, required: bool):
    raw = fs.read_text(f"{base}/{name}", expected=required)
    value = parse_hex(raw, digits)
    if raw is not None and value is None:
        fs.warn(f"{base}/{name}: unexpected content {raw.strip()[:40]!r}, ignored")
    return value


def _children_by_device(fs, class_dir: str) -> dict:
    """Map a PCI address to the names in ``/sys/class/<class_dir>`` that sit below it."""
    out: dict = {}
    for name in fs.listdir(f"sys/class/{class_dir}"):
        real = fs.resolve(f"sys/class/{class_dir}/{name}") or ""
        addrs = [p for p in real.split("/") if BDF_RE.match(p)]
        if addrs:
            out.setdefault(addrs[-1], []).append(name)
    return out


def scan_pci(fs, with_names: bool = True) -> list:
    """Every PCI function under ``sys/bus/pci/devices``, sorted by address."""
    entries = fs.listdir(PCI_DEVICES, expected=True)
    blocks = _children_by_device(fs, "block")
    nets = _children_by_device(fs, "net")
    devices = []
    modaliases = {}
    for addr in entries:
        if not BDF_RE.match(addr):
            fs.warn(f"{PCI_DEVICES}/{addr}: not a PCI address, skipped")
            continue
        base = f"{PCI_DEVICES}/{addr}"
        real = fs.resolve(base) or ""
        chain = [p for p in real.split("/") if BDF_RE.match(p)]
        parent = chain[-2] if len(chain) >= 2 and chain[-1] == addr else None
        group = fs.link_name(f"{base}/iommu_group")
        reset = fs.read_line(f"{base}/reset_method")
        dev = PciDevice(
            address=addr,
            vendor_id=_read_hex(fs, base, "vendor", 4, True),
            device_id=_read_hex(fs, base, "device", 4, True),
            class_code=_read_hex(fs, base, "class", 6, True),
            subsystem_vendor_id=_read_hex(fs, base, "subsystem_vendor", 4, False),
            subsystem_device_id=_read_hex(fs, base, "subsystem_device", 4, False),
            revision=_read_hex(fs, base, "revision", 2, False),
            driver=fs.link_name(f"{base}/driver"),
            driver_module=fs.link_name(f"{base}/driver/module"),
            iommu_group=int(group) if group and group.isdigit() else None,
            boot_vga=fs.read_line(f"{base}/boot_vga") == "1",
            reset_methods=reset.split() if reset else [],
            parent=parent,
            sysfs_path=real or None,
            block_devices=sorted(blocks.get(addr, [])),
            net_interfaces=sorted(nets.get(addr, [])),
        )
        devices.append(dev)
        modaliases[addr] = fs.read_line(f"{base}/modalias")
    if any(modaliases.values()):
        # like lspci -k's "Kernel modules": every driver of the running kernel that could claim the device
        matcher = pci_alias_matcher(fs, _system.kernel(fs)["running"], modaliases.values())
        for d in devices:
            d.kernel_modules = matcher(modaliases[d.address])
    if with_names:
        ids = sorted({(d.vendor_id, d.device_id) for d in devices if d.vendor_id and d.device_id})
        names = _pciids.lookup_names(fs, ids)
        unnamed = [key for key in ids if names[key][1] is None]
        for key, (vendor, device) in _hwdb.lookup_names(fs, unnamed).items():  # newer than pci.ids on many hosts
            names[key] = (names[key][0] or vendor, device)
        for d in devices:
            d.vendor_name, d.device_name = names.get((d.vendor_id, d.device_id), (None, None))
    return devices
