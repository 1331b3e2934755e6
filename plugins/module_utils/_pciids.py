# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Vendor and device names from the pci.ids database the host ships (if any)."""
from __future__ import annotations

PCI_IDS_PATHS = ("usr/share/misc/pci.ids", "usr/share/hwdata/pci.ids", "usr/share/pci.ids")


def find_pci_ids(fs):
    for rel in PCI_IDS_PATHS:
        if fs.isfile(rel):
            return rel
    return None


def lookup_names(fs, ids) -> dict:
    """Map ``(vendor, device)`` -> ``(vendor name, device name)`` for the wanted ids.

    One pass over the file, tracking only the wanted vendors, and stopping at the class
    section; a missing database gives ``(None, None)`` for every id.
    """
    wanted = {}
    for vendor, device in ids:
        wanted.setdefault(vendor, set()).add(device)
    names = {key: (None, None) for key in ids}
    rel = find_pci_ids(fs)
    if rel is None or not wanted:
        return names
    try:
        f = open(fs.path(rel), "r", encoding="utf-8", errors="replace")
    except OSError as exc:
        fs.warn(f"{rel}: cannot read ({exc.strerror or exc}); device names left empty")
        return names
    vendor = vendor_name = None
    found = 0
    total = sum(len(v) for v in wanted.values())
    with f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            if line.startswith("C "):
                break
            if not line.startswith("\t"):
                code, _sep, name = line.partition("  ")
                code = code.strip().lower()
                if code in wanted:
                    vendor, vendor_name = code, name.strip()
                    for dev in wanted[code]:
                        names[(code, dev)] = (vendor_name, names[(code, dev)][1])
                else:
                    vendor = None
                continue
            if vendor is None or line.startswith("\t\t"):
                continue
            code, _sep, name = line.strip().partition("  ")
            if code.lower() in wanted[vendor]:
                names[(vendor, code.lower())] = (vendor_name, name.strip())
                found += 1
                if found >= total:
                    break
    return names
