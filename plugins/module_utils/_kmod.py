# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is a kernel module available (as a module or built in) for a given installed kernel."""
from __future__ import annotations

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
