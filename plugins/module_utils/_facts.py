# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Assemble ``ansible_facts.vfio`` from one pass over a host's files."""
from __future__ import annotations

from ansible_collections.exliar.vfio.plugins.module_utils import _system as system
from ansible_collections.exliar.vfio.plugins.module_utils._bootloader_detect import detect_bootloader
from ansible_collections.exliar.vfio.plugins.module_utils._cmdline import parse_cmdline
from ansible_collections.exliar.vfio.plugins.module_utils._gpu import build_gpus
from ansible_collections.exliar.vfio.plugins.module_utils._hostuse import host_usage
from ansible_collections.exliar.vfio.plugins.module_utils._initramfs_detect import detect_initramfs
from ansible_collections.exliar.vfio.plugins.module_utils._iommu import iommu_groups, iommu_state
from ansible_collections.exliar.vfio.plugins.module_utils._kmod import vfio_readiness
from ansible_collections.exliar.vfio.plugins.module_utils._managed import managed_state
from ansible_collections.exliar.vfio.plugins.module_utils._pci import scan_pci
from ansible_collections.exliar.vfio.plugins.module_utils._rootfs import RootFS

FACTS_VERSION = 1


def gather_facts(root: str = "/", with_names: bool = True, connection_address=None) -> dict:
    """Every fact of the host below ``root``; ``connection_address`` is the host-side IP Ansible connects to."""
    fs = RootFS(root)
    if not fs.isdir("/"):
        fs.warn(f"root {root}: not a directory; nothing could be read")
    dist = system.distribution(fs)
    kern = system.kernel(fs)
    cpu = system.cpu(fs)
    boot = system.boot(fs)
    machine = system.machine(fs)
    raw_cmdline = fs.read_line("proc/cmdline", expected=True)
    params = parse_cmdline(raw_cmdline or "")
    devices = scan_pci(fs, with_names=with_names)
    groups = iommu_groups(fs)
    iommu = iommu_state(fs, cpu["vendor"], params, groups, kern["running"])
    kernels = list(kern["installed"])
    if kern["running"] and kern["running"] not in kernels:
        kernels.append(kern["running"])
    efi_entry = system.efi_boot_current(fs) if boot["mode"] == "uefi" else None
    gpus = build_gpus(devices, groups)
    usage = host_usage(fs, connection_address)
    return {
        "facts_version": FACTS_VERSION,
        "root": fs.root,
        "system": {
            "distribution": dist,
            "kernel": kern,
            "cpu": cpu,
            "boot": boot,
            "machine": machine,
        },
        "cmdline": {"raw": raw_cmdline, "params": params},
        "iommu": iommu,
        "bootloader": detect_bootloader(fs, efi_entry),
        "initramfs": detect_initramfs(fs),
        "vfio_modules": vfio_readiness(fs, [k for k in kernels if k]),
        "pci_devices": [d.as_fact() for d in devices],
        "iommu_groups": [{"id": g["id"], "devices": g["devices"], "type": g["type"]} for g in groups],
        "gpus": gpus,
        "host_usage": usage,
        "managed": managed_state(fs),
        "warnings": list(fs.warnings),
    }
