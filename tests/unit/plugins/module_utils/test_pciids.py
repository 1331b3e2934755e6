"""Vendor and device names from the host's pci.ids."""
from __future__ import annotations

import pytest

from helpers import PCI_IDS, fs_of, make_unreadable_dir, write

from ansible_collections.exliar.vfio.plugins.module_utils._pciids import find_pci_ids, lookup_names

NV = ("10de", "1e87")


@pytest.mark.parametrize("rel", ["usr/share/misc/pci.ids", "usr/share/hwdata/pci.ids", "usr/share/pci.ids"])
def test_each_distribution_location_is_found(tmp_path, rel):
    write(tmp_path, rel, PCI_IDS)
    fs = fs_of(tmp_path)
    assert find_pci_ids(fs) == rel
    assert lookup_names(fs, [NV]) == {NV: ("NVIDIA Corporation", "TU104 [GeForce RTX 2080 Rev. A]")}


def test_misc_is_preferred_over_hwdata(tmp_path):
    write(tmp_path, "usr/share/hwdata/pci.ids", "10de  Old Name\n\t1e87  Old Device\n")
    write(tmp_path, "usr/share/misc/pci.ids", PCI_IDS)
    assert lookup_names(fs_of(tmp_path), [NV])[NV] == ("NVIDIA Corporation", "TU104 [GeForce RTX 2080 Rev. A]")


def test_several_vendors_in_one_pass(tmp_path):
    write(tmp_path, "usr/share/misc/pci.ids", PCI_IDS)
    ids = [("8086", "3e98"), ("1002", "73bf"), ("144d", "a808"), ("10de", "10f8")]
    names = lookup_names(fs_of(tmp_path), ids)
    assert names == {
        ("8086", "3e98"): ("Intel Corporation", "CoffeeLake-S GT2 [UHD Graphics 630]"),
        ("1002", "73bf"): ("Advanced Micro Devices, Inc. [AMD/ATI]", "Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]"),
        ("144d", "a808"): ("Samsung Electronics Co Ltd", "NVMe SSD Controller SM981/PM981/PM983"),
        ("10de", "10f8"): ("NVIDIA Corporation", "TU104 HD Audio Controller"),
    }


def test_known_vendor_unknown_device(tmp_path):
    write(tmp_path, "usr/share/misc/pci.ids", PCI_IDS)
    assert lookup_names(fs_of(tmp_path), [("10de", "ffff")]) == {("10de", "ffff"): ("NVIDIA Corporation", None)}


def test_unknown_vendor(tmp_path):
    write(tmp_path, "usr/share/misc/pci.ids", PCI_IDS)
    assert lookup_names(fs_of(tmp_path), [("1b36", "0100")]) == {("1b36", "0100"): (None, None)}


def test_device_id_of_another_vendor_is_not_borrowed(tmp_path):
    # 1e87 is an NVIDIA device id; AMD has no 1e87 in the file
    write(tmp_path, "usr/share/misc/pci.ids", PCI_IDS)
    names = lookup_names(fs_of(tmp_path), [("1002", "1e87"), NV])
    assert names[("1002", "1e87")] == ("Advanced Micro Devices, Inc. [AMD/ATI]", None)
    assert names[NV][1] == "TU104 [GeForce RTX 2080 Rev. A]"


def test_subsystem_lines_are_not_devices(tmp_path):
    # "\t\t1462 3721  ..." is a subsystem of 1e87, not a device 1462
    write(tmp_path, "usr/share/misc/pci.ids", PCI_IDS)
    assert lookup_names(fs_of(tmp_path), [("10de", "1462")])[("10de", "1462")] == ("NVIDIA Corporation", None)


def test_class_section_is_not_read_as_vendors(tmp_path):
    # "C 03  Display controller" / "\t00  VGA compatible controller" must not name vendor "0003"
    text = PCI_IDS + "0003  Late Vendor After Classes\n\t0000  Late Device\n"
    write(tmp_path, "usr/share/misc/pci.ids", text)
    assert lookup_names(fs_of(tmp_path), [("0003", "0000")])[("0003", "0000")] == (None, None)


def test_duplicate_ids_are_looked_up_once(tmp_path):
    write(tmp_path, "usr/share/misc/pci.ids", PCI_IDS)
    names = lookup_names(fs_of(tmp_path), [("10de", "2204"), ("10de", "2204")])
    assert names == {("10de", "2204"): ("NVIDIA Corporation", "GA102 [GeForce RTX 3090]")}


def test_no_database_gives_no_names_and_no_warning(tmp_path):
    fs = fs_of(tmp_path)
    assert find_pci_ids(fs) is None
    assert lookup_names(fs, [NV, ("8086", "3e98")]) == {NV: (None, None), ("8086", "3e98"): (None, None)}
    assert fs.warnings == []


def test_a_directory_in_place_of_the_database_is_skipped(tmp_path):
    make_unreadable_dir(tmp_path, "usr/share/misc/pci.ids")
    write(tmp_path, "usr/share/hwdata/pci.ids", PCI_IDS)
    assert lookup_names(fs_of(tmp_path), [NV])[NV][0] == "NVIDIA Corporation"


def test_no_ids_wanted(tmp_path):
    write(tmp_path, "usr/share/misc/pci.ids", PCI_IDS)
    assert lookup_names(fs_of(tmp_path), []) == {}
