"""PCI devices from sysfs: the pci_devices facts contract, and bad sysfs content."""
from __future__ import annotations

import re

import pytest

from helpers import (
    CARD_PCI, INTEL_IGPU, NVIDIA_AUDIO, NVIDIA_GPU, NVIDIA_UCSI, NVIDIA_USB, NVME, PCI_IDS, ROOT_PORT,
    by_address, dev_file, fs_of, make_dangling, make_unreadable_dir, symlink, write,
)

from ansible_collections.exliar.vfio.plugins.module_utils._pci import parse_hex, scan_pci

HEX4 = re.compile(r"^[0-9a-f]{4}$")
HEX6 = re.compile(r"^[0-9a-f]{6}$")
ADDR = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def facts_of(root, **kw):
    fs = fs_of(root)
    return by_address([d.as_fact() for d in scan_pci(fs, **kw)]), fs


@pytest.mark.parametrize("text,digits,want", [
    ("0x10de\n", 4, "10de"),
    ("0x10DE", 4, "10de"),
    ("10de", 4, "10de"),
    ("0x030000\n", 6, "030000"),
    ("0xa1\n", 2, "a1"),
    ("0x1", 4, "0001"),
    ("0xZZZZ", 4, None),
    ("garbage", 4, None),
    ("0x10de10de", 4, None),
    ("", 4, None),
    ("0x", 4, None),
    (None, 4, None),
])
def test_parse_hex(text, digits, want):
    assert parse_hex(text, digits) == want


def test_every_function_is_listed_sorted(desktop_root):
    devs = [d.address for d in scan_pci(fs_of(desktop_root))]
    assert devs == sorted(devs)
    assert len(devs) == 11
    assert NVIDIA_GPU in devs and NVME in devs


def test_facts_contract_of_a_gpu(desktop_root):
    devs, fs = facts_of(desktop_root)
    gpu = devs[NVIDIA_GPU]
    assert gpu["address"] == "0000:01:00.0"
    assert gpu["vendor_id"] == "10de"
    assert gpu["device_id"] == "1e87"
    assert gpu["class"] == "030000"
    assert gpu["revision"] == "a1"
    assert gpu["subsystem_vendor_id"] == "1462"
    assert gpu["subsystem_device_id"] == "3721"
    assert gpu["driver"] == "nvidia"
    assert gpu["iommu_group"] == 1
    assert gpu["boot_vga"] is False
    assert gpu["vendor_name"] == "NVIDIA Corporation"
    assert gpu["device_name"] == "TU104 [GeForce RTX 2080 Rev. A]"
    assert gpu["reset_methods"] == ["flr", "bus"]
    assert gpu["parent_bridge"] == ROOT_PORT
    assert gpu["is_bridge"] is False
    assert fs.warnings == []


def test_types_and_formats_of_every_device(desktop_root):
    devs, _fs = facts_of(desktop_root)
    for d in devs.values():
        assert ADDR.match(d["address"])
        assert HEX4.match(d["vendor_id"]) and HEX4.match(d["device_id"])
        assert HEX6.match(d["class"])
        assert HEX4.match(d["subsystem_vendor_id"]) and HEX4.match(d["subsystem_device_id"])
        assert d["driver"] is None or isinstance(d["driver"], str)
        assert isinstance(d["iommu_group"], int) and not isinstance(d["iommu_group"], bool)
        assert isinstance(d["boot_vga"], bool)
        assert isinstance(d["reset_methods"], list)


def test_boot_vga_of_the_igpu(desktop_root):
    devs, _fs = facts_of(desktop_root)
    assert devs[INTEL_IGPU]["boot_vga"] is True
    assert devs[INTEL_IGPU]["parent_bridge"] is None
    assert devs[NVIDIA_AUDIO]["boot_vga"] is False  # no boot_vga file on a non-VGA function


def test_bridges_and_their_children(desktop_root):
    devs, _fs = facts_of(desktop_root)
    assert devs[ROOT_PORT]["is_bridge"] is True
    assert devs["0000:00:1d.0"]["is_bridge"] is True
    assert devs["0000:00:00.0"]["is_bridge"] is True  # a host bridge (0600) counts: vfio accepts it in a group
    for a in (NVIDIA_GPU, NVIDIA_AUDIO, NVIDIA_USB, NVIDIA_UCSI):
        assert devs[a]["parent_bridge"] == ROOT_PORT
    assert devs[NVME]["parent_bridge"] == "0000:00:1d.0"


def test_block_devices_and_network_interfaces(desktop_root):
    devs, _fs = facts_of(desktop_root)
    assert devs[NVME]["block_devices"] == ["nvme0n1"]
    assert devs["0000:00:1f.6"]["net_interfaces"] == ["eno1"]
    assert devs[NVIDIA_GPU]["block_devices"] == [] and devs[NVIDIA_GPU]["net_interfaces"] == []


def test_names_are_null_without_a_database(make_sysroot):
    devs, fs = facts_of(make_sysroot(pci=CARD_PCI))
    assert all(d["vendor_name"] is None and d["device_name"] is None for d in devs.values())
    assert fs.warnings == []


def test_names_from_hwdata(make_sysroot):
    root = make_sysroot(pci=CARD_PCI)
    write(root, "usr/share/hwdata/pci.ids", PCI_IDS)
    devs, _fs = facts_of(root)
    assert devs[INTEL_IGPU]["device_name"] == "CoffeeLake-S GT2 [UHD Graphics 630]"
    assert devs[ROOT_PORT]["vendor_name"] == "Intel Corporation"
    assert devs[ROOT_PORT]["device_name"] is None  # not in the excerpt


def test_names_can_be_skipped(desktop_root):
    devs, _fs = facts_of(desktop_root, with_names=False)
    assert devs[NVIDIA_GPU]["vendor_name"] is None and devs[NVIDIA_GPU]["device_name"] is None


def test_unbound_device_has_no_driver(make_sysroot):
    pci = [dict(d, driver=None) if d["address"] == NVIDIA_AUDIO else d for d in CARD_PCI]
    devs, _fs = facts_of(make_sysroot(pci=pci))
    assert devs[NVIDIA_AUDIO]["driver"] is None
    assert devs[NVIDIA_GPU]["driver"] == "nvidia"


def test_iommu_off_means_no_groups(make_sysroot):
    devs, _fs = facts_of(make_sysroot(pci=CARD_PCI, iommu=None))
    assert all(d["iommu_group"] is None for d in devs.values())


def test_device_without_reset_method_file(desktop_root):
    devs, _fs = facts_of(desktop_root)
    assert devs[NVIDIA_AUDIO]["reset_methods"] == []


def test_uppercase_hex_from_sysfs_is_normalised(make_sysroot):
    root = make_sysroot(pci=CARD_PCI)
    write(root, dev_file(NVIDIA_GPU, "device"), "0x1E87\n")
    devs, fs = facts_of(root)
    assert devs[NVIDIA_GPU]["device_id"] == "1e87"
    assert fs.warnings == []


@pytest.mark.parametrize("name,key", [("vendor", "vendor_id"), ("device", "device_id"), ("class", "class"),
                                      ("subsystem_vendor", "subsystem_vendor_id")])
def test_garbage_in_an_id_file_is_ignored_with_a_warning(make_sysroot, name, key):
    root = make_sysroot(pci=CARD_PCI)
    write(root, dev_file(NVIDIA_GPU, name), "garbage\n")
    devs, fs = facts_of(root)
    assert devs[NVIDIA_GPU][key] is None
    assert devs[NVIDIA_GPU]["driver"] == "nvidia"  # the rest of the device is still read
    assert devs[NVIDIA_AUDIO][key] is not None  # and the other devices are untouched
    assert any(w.startswith(f"sys/bus/pci/devices/{NVIDIA_GPU}/{name}") and "garbage" in w for w in fs.warnings)


def test_unreadable_class_file(make_sysroot):
    root = make_sysroot(pci=CARD_PCI)
    make_unreadable_dir(root, dev_file(NVIDIA_GPU, "class"))
    devs, fs = facts_of(root)
    assert devs[NVIDIA_GPU]["class"] is None
    assert devs[NVIDIA_GPU]["vendor_id"] == "10de"
    assert any(f"{NVIDIA_GPU}/class: cannot read" in w for w in fs.warnings)


def test_dangling_vendor_file(make_sysroot):
    root = make_sysroot(pci=CARD_PCI)
    make_dangling(root, dev_file(NVIDIA_GPU, "vendor"))
    devs, fs = facts_of(root)
    assert devs[NVIDIA_GPU]["vendor_id"] is None
    assert devs[NVIDIA_GPU]["vendor_name"] is None
    assert f"sys/bus/pci/devices/{NVIDIA_GPU}/vendor: missing" in fs.warnings


def test_unreadable_optional_files_do_not_drop_the_device(make_sysroot):
    root = make_sysroot(pci=CARD_PCI)
    make_unreadable_dir(root, dev_file(NVIDIA_GPU, "reset_method"))
    make_unreadable_dir(root, dev_file(NVIDIA_GPU, "boot_vga"))
    make_dangling(root, dev_file(NVIDIA_GPU, "subsystem_device"))
    devs, fs = facts_of(root)
    gpu = devs[NVIDIA_GPU]
    assert gpu["reset_methods"] == [] and gpu["boot_vga"] is False and gpu["subsystem_device_id"] is None
    assert gpu["device_id"] == "1e87" and gpu["iommu_group"] == 1
    assert any("reset_method: cannot read" in w for w in fs.warnings)


def test_entry_that_is_not_a_pci_address_is_skipped(make_sysroot):
    root = make_sysroot(pci=CARD_PCI)
    (root / "sys/bus/pci/devices/garbage").mkdir()
    devs, fs = facts_of(root)
    assert "garbage" not in devs and len(devs) == 4
    assert "sys/bus/pci/devices/garbage: not a PCI address, skipped" in fs.warnings


def test_no_pci_bus(tmp_path):
    fs = fs_of(tmp_path)
    assert scan_pci(fs) == []
    assert fs.warnings == ["sys/bus/pci/devices: missing"]


def test_devices_behind_intel_vmd_are_listed(make_sysroot):
    # Intel RST/VMD laptops: the NVMe drive sits in PCI domain 10000, below the VMD controller 0000:00:0e.0
    vmd = {"address": "0000:00:0e.0", "id": "8086:467f", "class": "010400", "driver": "vmd", "group": 6}
    root = make_sysroot(pci=CARD_PCI + [vmd])
    vmd_dir = "sys/devices/pci0000:00/0000:00:0e.0/pci10000:e0"
    for addr, rel, vid, did, klass in (
        ("10000:e0:06.0", f"{vmd_dir}/10000:e0:06.0", "0x8086", "0x464d", "0x060400"),
        ("10000:e1:00.0", f"{vmd_dir}/10000:e0:06.0/10000:e1:00.0", "0x144d", "0xa80a", "0x010802"),
    ):
        for name, value in (("vendor", vid), ("device", did), ("class", klass), ("subsystem_vendor", vid),
                            ("subsystem_device", "0x0000"), ("revision", "0x00")):
            write(root, f"{rel}/{name}", value + "\n")
        symlink(root, f"sys/bus/pci/devices/{addr}", "../../../" + rel[len("sys/"):])
    devs, fs = facts_of(root)
    assert not any("not a PCI address" in w for w in fs.warnings)
    nvme = devs["10000:e1:00.0"]
    assert nvme["vendor_id"] == "144d" and nvme["class"] == "010802"
    assert nvme["parent_bridge"] == "10000:e0:06.0"
