# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kernel modules of an installed kernel: is one available (as a module or built in), which can drive a PCI device."""
from __future__ import annotations

import fnmatch
import re

from ansible_collections.exliar.vfio.plugins.module_utils._system import MODULE_DIRS, kernel_version_tuple

VFIO_MODULES = ("vfio", "vfio_pci", "vfio_iommu_type1", "vfio_virqfd")


def normalize(name: str) -> str:
    return name.replace("-", "_")


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return normalize(base.split(".ko", 1)[0])


def module_dir(fs, kver: str):
    for d in MODULE_DIRS:
        if fs.isdir(f"{d}/{kver}"):
            return f"{d}/{kver}"
    return None


def kernel_modules(fs, kver: str) -> tuple:
    """(modules, builtin): sets of normalized module names for one kernel."""
    mdir = module_dir(fs, kver)
    if mdir is None:
        return set(), set()
    builtin = {_module_name(line) for line in (fs.read_text(f"{mdir}/modules.builtin") or "").split() if line}
    dep = fs.read_text(f"{mdir}/modules.dep")
    if dep is not None:
        modules = {_module_name(line.split(":", 1)[0]) for line in dep.splitlines() if ":" in line}
    else:
        fs.warn(f"{mdir}/modules.dep: missing (depmod not run); looked for vfio modules by file name")
        modules = {_module_name(n) for n in fs.listdir(f"{mdir}/kernel/drivers/vfio")}
        modules |= {_module_name(n) for n in fs.listdir(f"{mdir}/kernel/drivers/vfio/pci")}
    return modules, builtin


def vfio_readiness(fs, kernels: list) -> dict:
    per_kernel = {}
    for k in kernels:
        modules, builtin = kernel_modules(fs, k)
        status = {}
        for m in VFIO_MODULES:
            if m == "vfio_virqfd" and kernel_version_tuple(k) >= (6, 2):
                continue  # folded into vfio since Linux 6.2
            status[m] = "builtin" if m in builtin else "module" if m in modules else "missing"
        per_kernel[k] = {
            "modules": status,
            "ready": all(v != "missing" for v in status.values()),
            "builtin": sorted(m for m, v in status.items() if v == "builtin"),
        }
    loaded = [m for m in VFIO_MODULES if fs.isdir(f"sys/module/{m}")]
    return {"kernels": per_kernel, "loaded": loaded,
            "ready": bool(per_kernel) and all(v["ready"] for v in per_kernel.values())}


# A PCI modalias as file2alias writes it and sysfs shows it: pci:v<vendor>d<device>sv<subsystem vendor>
# sd<subsystem device>bc<base class>sc<subclass>i<prog-if>. Values are uppercase hex, so the lowercase
# field names split a pattern and a device's modalias alike; a field of a pattern may hold fnmatch wildcards.
_PCI_FIELDS = re.compile(r"^pci:v([^d]*)d([^s]*)sv([^s]*)sd([^b]*)bc([^s]*)sc([^i]*)i(.*)$")
# "alias <pattern> <module>" lines of modules.alias with a PCI pattern. Never anchored with ^ and re.M (the
# text gets newlines around it): re then skips ahead to the literal "\nalias pci:", four times faster.
_ALIAS_LINES = r"\nalias (pci:{}\S*) (\S+)[ \t\r]*(?=\n)"
_PCI_ALIAS_LINE = re.compile(_ALIAS_LINES.format(""))
_EXACT_IDS = re.compile(r"pci:v([0-9A-F]{8})d(?:([0-9A-F]{8})sv)?")
_HEX8 = re.compile(r"[0-9A-F]{8}")
_WILDCARDS = ("*", "?", "[")
ANY_VENDOR = ("any",)


def _has_wildcard(text: str) -> bool:
    return any(c in text for c in _WILDCARDS)


def _bucket_of(pattern: str) -> tuple:
    """Which devices a pattern can match: ``("device", vendor, device)``, ``("vendor", vendor)`` or ANY_VENDOR."""
    m = _EXACT_IDS.match(pattern)
    if m is None:
        return ANY_VENDOR
    return ("device", m.group(1), m.group(2)) if m.group(2) else ("vendor", m.group(1))


def _buckets_for(fields: tuple) -> list:
    """The buckets whose patterns can match a modalias with these fields."""
    vendor, device = fields[0], fields[1]
    if not _HEX8.fullmatch(vendor):
        return [ANY_VENDOR]  # no exact vendor field of a pattern equals it
    return [ANY_VENDOR, ("vendor", vendor)] + ([("device", vendor, device)] if _HEX8.fullmatch(device) else [])


def _parse_pattern(pattern: str, module: str) -> tuple:
    """``(pattern, checks, module)``; checks are ``(field index, text, has wildcard)`` of the fields that are not ``*``.

    checks is None for a pattern of another layout, matched as a whole string.
    """
    m = _PCI_FIELDS.match(pattern)
    if m is None:
        return pattern, None, module
    return pattern, tuple((i, f, _has_wildcard(f)) for i, f in enumerate(m.groups()) if f != "*"), module


def _entry_matches(entry: tuple, fields: tuple, modalias: str) -> bool:
    pattern, checks = entry[0], entry[1]
    if checks is None:
        return fnmatch.fnmatchcase(modalias, pattern)
    return all(fnmatch.fnmatchcase(fields[i], text) if wild else fields[i] == text for i, text, wild in checks)


class PciAliasMatcher:
    """``modalias -> sorted module names``, what modprobe's fnmatch over the ``alias pci:`` patterns gives.

    A kernel has about 10,000 PCI patterns, nearly all for one exact vendor and device; a host's
    devices can match a few hundred of them. The patterns are bucketed by what they can match: one
    vendor:device, any device of one vendor (snd_hda_intel's Intel HD Audio class), any vendor (class
    matches such as xhci_pci's ``bc0Csc03i30*``). Only the buckets of the devices asked about are read
    from ``modules.alias``: in one pass for the modaliases given up front, in one more for a device
    asked about later; reading and splitting every line would cost more than the rest of the PCI scan.
    A bucket's patterns are split into their fields once. Matching field by field is the same as
    modprobe's whole-string fnmatch for a well-formed modalias; a pattern or modalias of another
    layout is matched as a whole string.
    """

    def __init__(self, text: str = "", builtin=(), modaliases=()):
        """``text``: a modules.alias; ``builtin``: ``(pattern, module)`` of built-in drivers; ``modaliases``: those to come."""
        self._text = f"\n{text}\n" if text else ""
        self._builtin = list(builtin)
        self._buckets: dict = {}
        self._loaded: set = set()
        self._parsed: dict = {}
        self._cache: dict = {}
        for pattern, module in self._builtin:
            self._buckets.setdefault(_bucket_of(pattern), []).append((pattern, module))
        wanted: set = set()
        for alias in modaliases:
            m = _PCI_FIELDS.match(alias or "")
            if m:
                wanted.update(_buckets_for(m.groups()))
        self._load(wanted)

    def __len__(self) -> int:
        """Number of PCI patterns (reads them all)."""
        return len(self._everything())

    def __call__(self, modalias) -> list:
        if not modalias:
            return []
        found = self._cache.get(modalias)
        if found is None:
            found = self._cache[modalias] = sorted({normalize(m) for m in self._match(modalias)})
        return list(found)

    def _everything(self) -> list:
        return _PCI_ALIAS_LINE.findall(self._text) + self._builtin

    def _load(self, buckets) -> None:
        """Read the patterns of these buckets from the text, in one pass."""
        buckets = set(buckets) - self._loaded
        if not buckets or not self._text:
            self._loaded |= buckets
            return
        self._loaded |= buckets
        ids = sorted(b[1:] for b in buckets if b[0] == "device")
        vendors = sorted(b[1] for b in buckets if b[0] == "vendor")
        parts = []
        if ids:  # every vendor with every device: what was not asked for is left out below
            parts.append("v(?:{})d(?:{})sv".format("|".join(sorted({v for v, d in ids})), "|".join(sorted({d for v, d in ids}))))
        if vendors:
            parts.append("v(?:{})d(?![0-9A-F]{{8}}sv)".format("|".join(vendors)))
        if ANY_VENDOR in buckets:
            parts.append("(?!v[0-9A-F]{8}d)")
        for pattern, module in re.findall(_ALIAS_LINES.format("(?:{})".format("|".join(parts))), self._text):
            bucket = _bucket_of(pattern)
            if bucket in buckets:
                self._buckets.setdefault(bucket, []).append((pattern, module))

    def _match(self, modalias: str) -> set:
        m = _PCI_FIELDS.match(modalias)
        if m is None or _has_wildcard(modalias):
            return {mod for pat, mod in self._everything() if fnmatch.fnmatchcase(modalias, pat)}
        fields = m.groups()
        buckets = _buckets_for(fields)
        self._load(buckets)
        found: set = set()
        for bucket in buckets:
            entries = self._parsed.get(bucket)
            if entries is None:
                entries = self._parsed[bucket] = [_parse_pattern(p, mod) for p, mod in self._buckets.get(bucket, ())]
            for entry in entries:
                if entry[2] not in found and _entry_matches(entry, fields, modalias):
                    found.add(entry[2])
        return found


def _builtin_pci_aliases(fs, mdir: str) -> list:
    """``(pattern, module)`` of the PCI aliases of the drivers built into the kernel.

    The kernel lists them in ``modules.builtin.modinfo`` (``name.alias=pci:...`` records separated
    by NUL bytes; only newer kernels put the drivers' device tables there), from which depmod builds
    its binary index; a text ``modules.builtin.alias`` in the ``modules.alias`` layout is read too.
    """
    found = []
    for line in (fs.read_text(f"{mdir}/modules.builtin.alias") or "").splitlines():
        parts = line.split()
        if parts and parts[0] == "alias":
            parts = parts[1:]
        if len(parts) == 2 and parts[0].startswith("pci:"):
            found.append((parts[0], parts[1]))
    raw = fs.read_bytes(f"{mdir}/modules.builtin.modinfo") or b""
    if b".alias=pci:" in raw:
        for record in raw.split(b"\0"):
            name, sep, rest = record.partition(b".")
            if sep and name and rest.startswith(b"alias=pci:"):
                found.append((rest[len(b"alias="):].decode("ascii", "replace").strip(), name.decode("ascii", "replace")))
    return found


def pci_alias_matcher(fs, kver, modaliases=()) -> PciAliasMatcher:
    """``modalias -> [module, ...]`` for kernel ``kver``: its modules and built-in drivers, like ``lspci -k``.

    ``modaliases``: the ones that will be asked about, when known (their patterns are read in one
    pass). No modules dir (a kernel without modules, an unknown running kernel): an empty matcher
    and no warning. A modules dir without ``modules.alias``: only the built-in drivers, and a warning.
    """
    mdir = module_dir(fs, kver) if kver else None
    if mdir is None:
        return PciAliasMatcher()
    text = fs.read_text(f"{mdir}/modules.alias")
    if text is None and not fs.exists(f"{mdir}/modules.alias"):
        fs.warn(f"{mdir}/modules.alias: missing (depmod not run); the kernel_modules of the PCI devices are unknown")
    return PciAliasMatcher(text or "", _builtin_pci_aliases(fs, mdir), modaliases)
