# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kernel modules of an installed kernel: is one available (as a module or built in), which drive a PCI device."""
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
_WILDCARDS = ("*", "?", "[")


def _has_wildcard(text: str) -> bool:
    return any(c in text for c in _WILDCARDS)


class PciAliasMatcher:
    """``modalias -> sorted module names``, like modprobe's fnmatch over the ``alias pci:`` patterns.

    A kernel has thousands of PCI patterns and almost all name an exact vendor and device, so they
    are bucketed by (vendor, device), then vendor, and only the few class matches (``v*``, e.g.
    xhci_pci's ``bc0Csc03i30*``) are tried for every device. Each pattern is split into its fields
    once; matching field by field is the same as modprobe's whole-string fnmatch for a well-formed
    modalias, and a pattern or modalias of another layout falls back to exactly that.
    """

    def __init__(self):
        self.by_id: dict = {}      # (vendor, device), both exact -> [(checks, module)]
        self.by_vendor: dict = {}  # exact vendor, wildcard device -> [(checks, module)]
        self.any_vendor: list = []
        self.whole: list = []      # (pattern, module) of every pattern, for a modalias of another layout
        self.odd: list = []        # (pattern, module) of patterns of another layout
        self._cache: dict = {}

    def __len__(self) -> int:
        return len(self.whole)

    def add(self, pattern: str, module: str) -> None:
        module = normalize(module)
        self.whole.append((pattern, module))
        m = _PCI_FIELDS.match(pattern)
        if m is None:
            self.odd.append((pattern, module))
            return
        fields = m.groups()
        vendor, device = fields[0], fields[1]
        if _has_wildcard(vendor):
            first, bucket = 0, self.any_vendor
        elif _has_wildcard(device):
            first, bucket = 1, self.by_vendor.setdefault(vendor, [])
        else:
            first, bucket = 2, self.by_id.setdefault((vendor, device), [])
        checks = tuple((i, fields[i], _has_wildcard(fields[i])) for i in range(first, 7) if fields[i] != "*")
        bucket.append((checks, module))

    def __call__(self, modalias) -> list:
        if not modalias:
            return []
        found = self._cache.get(modalias)
        if found is None:
            found = self._cache[modalias] = sorted(self._match(modalias))
        return list(found)

    def _match(self, modalias: str) -> set:
        m = _PCI_FIELDS.match(modalias)
        if m is None or _has_wildcard(modalias):
            return {mod for pat, mod in self.whole if fnmatch.fnmatchcase(modalias, pat)}
        fields = m.groups()
        found = {mod for pat, mod in self.odd if fnmatch.fnmatchcase(modalias, pat)}
        for bucket in (self.by_id.get(fields[:2], ()), self.by_vendor.get(fields[0], ()), self.any_vendor):
            for checks, mod in bucket:
                if mod not in found and all(
                        fnmatch.fnmatchcase(fields[i], text) if wild else fields[i] == text for i, text, wild in checks):
                    found.add(mod)
        return found


def _builtin_pci_aliases(fs, mdir: str):
    """(pattern, module) of the built-in drivers' PCI aliases.

    The kernel lists them in ``modules.builtin.modinfo`` (``name.alias=pci:...`` records separated
    by NUL bytes; only newer kernels put the drivers' device tables there), from which depmod builds
    its binary index; a text ``modules.builtin.alias`` in the ``modules.alias`` layout is read too.
    """
    for line in (fs.read_text(f"{mdir}/modules.builtin.alias") or "").splitlines():
        parts = line.split()
        if parts and parts[0] == "alias":
            parts = parts[1:]
        if len(parts) == 2 and parts[0].startswith("pci:"):
            yield parts[0], parts[1]
    raw = fs.read_bytes(f"{mdir}/modules.builtin.modinfo") or b""
    for record in raw.split(b"\0"):
        name, sep, rest = record.partition(b".")
        if sep and rest.startswith(b"alias=pci:") and name:
            yield rest[len(b"alias="):].decode("ascii", "replace").strip(), name.decode("ascii", "replace")


def pci_alias_matcher(fs, kver) -> PciAliasMatcher:
    """The ``modalias -> [module, ...]`` of kernel ``kver``: its modules and built-in drivers, like ``lspci -k``.

    No modules dir (a kernel without modules, an unknown running kernel): an empty matcher, no
    warning. A modules dir without ``modules.alias``: empty for the modules, with a warning.
    """
    matcher = PciAliasMatcher()
    mdir = module_dir(fs, kver) if kver else None
    if mdir is None:
        return matcher
    text = fs.read_text(f"{mdir}/modules.alias")
    if text is None:
        fs.warn(f"{mdir}/modules.alias: missing (depmod not run); kernel_modules of the PCI devices unknown")
    for line in (text or "").splitlines():
        if line.startswith("alias pci:"):
            parts = line.split()
            if len(parts) == 3:
                matcher.add(parts[1], parts[2])
    for pattern, module in _builtin_pci_aliases(fs, mdir):
        matcher.add(pattern, module)
    return matcher
