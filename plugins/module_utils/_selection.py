# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which PCI functions a ``vfio_devices`` selection names, before companions and groups.

Pure functions over the ``vfio_facts`` dictionary, so the controller (to show the plan and
run hooks) and the target module (to apply it) reach the same answer.
"""
from __future__ import annotations

import fnmatch
import re

SELECTORS = ("address", "id", "name", "gpus")
ENTRY_KEYS = set(SELECTORS) | {"exclude"}
GPU_GROUPS = ("discrete_except_boot",)
ADDRESS_RE = re.compile(r"^(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([0-1][0-9a-fA-F])\.([0-7])$")
ID_RE = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$")


class SelectionError(ValueError):
    """Bad input in ``vfio_devices``: the message says which entry and what to write."""


def normalize_address(text) -> str:
    """``01:00.0`` / ``0000:01:00.0`` (any case) -> ``0000:01:00.0``; anything else is an error."""
    m = ADDRESS_RE.match(str(text).strip()) if isinstance(text, str) else None
    if not m:
        raise SelectionError(f"{text!r} is not a PCI address: write domain:bus:device.function, e.g. 0000:01:00.0 "
                             f"(as `lspci -D` prints it)")
    domain, bus, dev, fn = m.groups()
    return f"{(domain or '0000').lower()}:{bus.lower()}:{dev.lower()}.{fn}"


def normalize_id(text) -> str:
    m = ID_RE.match(str(text).strip()) if isinstance(text, str) else None
    if not m:
        raise SelectionError(f"{text!r} is not a vendor:device id: write four hex digits each, e.g. 10de:1e87 "
                             f"(as `lspci -nn` prints it in brackets)")
    return f"{m.group(1).lower()}:{m.group(2).lower()}"


def parse_entries(entries) -> list:
    """Validate ``vfio_devices``: a list of strings (addresses) or one-selector dicts."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise SelectionError("vfio_devices must be a list of entries, e.g. [{address: '0000:01:00.0'}, {id: '10de:1e87'}]")
    parsed = []
    for n, entry in enumerate(entries, 1):
        if isinstance(entry, str):
            entry = {"address": entry}
        if not isinstance(entry, dict):
            raise SelectionError(f"vfio_devices entry {n}: {entry!r} is neither an address nor a mapping")
        unknown = sorted(set(entry) - ENTRY_KEYS)
        if unknown:
            raise SelectionError(f"vfio_devices entry {n}: unknown key(s) {', '.join(unknown)}; "
                                 f"use one of {', '.join(SELECTORS)} (and optionally exclude: true)")
        keys = [k for k in SELECTORS if k in entry]
        if len(keys) != 1:
            raise SelectionError(f"vfio_devices entry {n}: give exactly one of {', '.join(SELECTORS)}, "
                                 f"found {', '.join(keys) or 'none'}; split it into one entry per selector")
        key = keys[0]
        exclude = entry.get("exclude", False)
        if not isinstance(exclude, bool):
            raise SelectionError(f"vfio_devices entry {n}: exclude must be true or false")
        value = entry[key]
        if key == "address":
            value = normalize_address(value)
        elif key == "id":
            value = normalize_id(value)
        elif key == "name":
            if not isinstance(value, str) or not value.strip():
                raise SelectionError(f"vfio_devices entry {n}: name must be a non-empty pattern such as '*RTX 3090*'")
        elif value not in GPU_GROUPS:
            raise SelectionError(f"vfio_devices entry {n}: gpus: {value!r} is not known; use one of {', '.join(GPU_GROUPS)}")
        parsed.append({"n": n, "key": key, "value": value, "exclude": exclude})
    return parsed


def _label(dev: dict) -> str:
    return " ".join(x for x in (dev.get("vendor_name"), dev.get("device_name")) if x)


def _matches(entry: dict, dev: dict, gpus: dict) -> bool:
    key, value = entry["key"], entry["value"]
    if key == "address":
        return dev["address"] == value
    if key == "id":
        return f"{dev.get('vendor_id')}:{dev.get('device_id')}" == value
    if key == "name":
        pattern = value.lower()
        return any(fnmatch.fnmatchcase(text.lower(), pattern) for text in (_label(dev), dev.get("device_name") or "") if text)
    gpu = gpus.get(dev["address"])
    return bool(gpu) and gpu.get("kind") == "discrete" and not gpu.get("bmc") and not gpu.get("boot_vga")


def match(facts: dict, parsed: list) -> dict:
    """Apply parsed entries to the host's devices.

    Returns ``{"selected": [addresses], "excluded": [addresses], "missing": [addresses named
    that the host lacks], "errors": [messages], "empty_entries": [entry numbers]}``.
    Bridges are never selected by id, name or group of GPUs (an AMD card's switch ports carry
    the GPU's name); naming one by address is an error.
    """
    devices = facts.get("pci_devices") or []
    by_address = {d["address"]: d for d in devices}
    gpus = {g["address"]: g for g in facts.get("gpus") or []}
    selected: list = []
    excluded: list = []
    missing: list = []
    errors: list = []
    empty: list = []
    for entry in parsed:
        if entry["key"] == "address":
            dev = by_address.get(entry["value"])
            if dev is None:
                missing.append(entry["value"])
                continue
            if dev.get("is_bridge"):
                errors.append(f"vfio_devices entry {entry['n']}: {entry['value']} is a PCI bridge ({_label(dev) or dev.get('class')}); "
                              f"bridges stay with the host: select the devices behind it")
                continue
            hits = [dev]
        else:
            hits = [d for d in devices if not d.get("is_bridge") and _matches(entry, d, gpus)]
        if not hits:
            empty.append(entry["n"])
        target = excluded if entry["exclude"] else selected
        for dev in hits:
            if dev["address"] not in target:
                target.append(dev["address"])
    named = {}
    for entry in parsed:
        if entry["key"] == "address":
            named.setdefault(entry["value"], []).append(entry)
    for addr, entries in named.items():
        if len({e["exclude"] for e in entries}) > 1:
            numbers = " and ".join(str(e["n"]) for e in entries)
            errors.append(f"vfio_devices entries {numbers} conflict: {addr} is both selected and excluded; keep one")
    for addr in excluded:
        if addr in selected:
            selected.remove(addr)
    return {"selected": selected, "excluded": excluded, "missing": missing, "errors": errors, "empty_entries": empty}
