# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Vendor and device names from the pci.ids database the host ships (if any)."""
from __future__ import annotations

import re

_NEXT_VENDOR = re.compile(rb"\n[0-9a-f]{4}  ")
PCI_IDS_PATHS = ("usr/share/misc/pci.ids", "usr/share/hwdata/pci.ids", "usr/share/pci.ids")


def find_pci_ids(fs):
    for rel in PCI_IDS_PATHS:
        if fs.isfile(rel):
            return rel
    return None


def _line_after(data: bytes, key: bytes, start: int, end: int):
    pos = data.find(key, start, end)
    if pos < 0:
        return None
    stop = data.find(b"\n", pos + 1)
    return data[pos + len(key):stop if stop >= 0 else None].decode("utf-8", "replace").strip()


def _names_of_vendor(data: bytes, vendor: str, devices) -> tuple:
    """(vendor name, {device: name}) found by direct searches in the file's bytes.

    pci.ids is 1.3 MB with thousands of Intel lines; searching in C instead of parsing
    every line in Python makes a lookup cost about a millisecond, which counts on a fleet.
    """
    vkey = b"\n" + vendor.encode() + b"  "
    start = data.find(vkey)
    if start < 0:
        return None, {}
    vendor_name = _line_after(data, vkey, start, start + len(vkey) + 200)
    nxt = _NEXT_VENDOR.search(data, start + 1)
    end = nxt.start() if nxt else len(data)
    found = {}
    for device in devices:
        name = _line_after(data, b"\n\t" + device.encode() + b"  ", start, end)
        if name is not None:
            found[device] = name
    return vendor_name, found


def lookup_names(fs, ids) -> dict:
    """Map ``(vendor, device)`` -> ``(vendor name, device name)`` for the wanted ids.

    A missing database gives ``(None, None)`` for every id.
    """
    names = {key: (None, None) for key in ids}
    rel = find_pci_ids(fs)
    if rel is None or not names:
        return names
    data = fs.read_bytes(rel)
    if data is None:
        return names
    cut = data.find(b"\nC ")  # the device classes section follows the vendors
    if cut > 0:
        data = data[:cut]
    wanted: dict = {}
    for vendor, device in ids:
        wanted.setdefault(vendor, set()).add(device)
    for vendor, devices in wanted.items():
        vendor_name, found = _names_of_vendor(data, vendor, devices)
        if vendor_name is None:
            continue
        for device in devices:
            names[(vendor, device)] = (vendor_name, found.get(device))
    return names
