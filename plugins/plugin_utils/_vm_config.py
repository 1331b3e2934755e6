# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VM stage on the controller: ``vfio_vms`` entries -> ``VmConfig`` objects for the hooks, and
back to the module's VM specs.

A VM names the devices it receives by reference to the binding stage's selection
(``vfio_bind_plan``): ``all``, or the address of a selected device. A GPU's address brings the
functions of its slot that were selected with it (its audio, USB and UCSI functions), so the
guest gets the card with the topology it has on the host.
"""
from __future__ import annotations

from ansible_collections.exliar.vfio.plugins.module_utils._selection import SelectionError, normalize_address
from ansible_collections.exliar.vfio.plugins.plugin_utils import api

# What the module takes besides the devices and what the hooks may change.
SPEC_KEYS = ("firmware", "loader", "nvram_template", "machine", "domain_type", "disks", "kernel", "initrd", "cmdline",
             "start", "wait", "wait_timeout")


class VmSpecError(ValueError):
    """A ``vfio_vms`` entry the stage cannot use; the message says what to change."""


def _slot(address: str) -> str:
    return address.rsplit(".", 1)[0]


def resolve_devices(vm_name: str, refs, plan: dict | None) -> list:
    """The addresses (sorted) a VM receives: ``refs`` is ``all`` or a list of addresses (or
    ``{address: ...}``) of devices the binding stage selected."""
    selected = sorted(d["address"] for d in (plan or {}).get("devices") or [] if d.get("address"))
    if refs in (None, [], ""):
        return []
    if not selected:
        raise VmSpecError(f"VM {vm_name}: it asks for devices but the binding stage selected none on this host "
                          f"(vfio_bind_plan is empty): select them with vfio_devices first")
    if refs == "all":
        return selected
    if isinstance(refs, (str, dict)):
        refs = [refs]
    out = set()
    for n, ref in enumerate(refs, 1):
        raw = ref.get("address") if isinstance(ref, dict) else ref
        if raw == "all":
            out.update(selected)
            continue
        try:
            addr = normalize_address(raw)
        except SelectionError as exc:
            raise VmSpecError(f"VM {vm_name}: devices entry {n} ({ref!r}) is not a PCI address like 0000:01:00.0 "
                              f"or 'all'") from exc
        if addr not in selected:
            raise VmSpecError(f"VM {vm_name}: {addr} is not among the devices the binding stage selected on this host "
                              f"({', '.join(selected)}); add it to vfio_devices, or fix the address")
        out.add(addr)
        out.update(a for a in selected if _slot(a) == _slot(addr))
    return sorted(out)


def _device_objects(addresses: list, facts: dict) -> list:
    gpus = {g["address"]: g for g in facts.get("gpus") or []}
    pci = {d["address"]: d for d in facts.get("pci_devices") or []}
    out = []
    for addr in addresses:
        if addr in gpus:
            out.append(api.GpuDevice.from_fact(dict(pci.get(addr) or {}, **gpus[addr])))
        elif addr in pci:
            out.append(api.PciDevice.from_fact(pci[addr]))
        else:
            out.append(api.PciDevice(address=addr))
    return out


def _positive_int(vm_name: str, key: str, value, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise VmSpecError(f"VM {vm_name}: {key} must be a whole number, not {value!r}") from None
    if isinstance(value, bool) or number < minimum:
        raise VmSpecError(f"VM {vm_name}: {key} must be a whole number of at least {minimum}, not {value!r}")
    return number


def vm_configs(vms, facts: dict, plan: dict | None) -> list:
    """``[(VmConfig, the rest of the entry)]`` for every ``vfio_vms`` entry, checked."""
    if not isinstance(vms, list):
        raise VmSpecError(f"vfio_vms must be a list of VMs (name, memory_mib, vcpus, devices, ...), not {type(vms).__name__}")
    out, names = [], set()
    for n, entry in enumerate(vms, 1):
        if not isinstance(entry, dict) or not entry.get("name"):
            raise VmSpecError(f"vfio_vms entry {n}: a VM is a mapping with at least a name")
        name = str(entry["name"])
        if name in names:
            raise VmSpecError(f"vfio_vms: VM {name} is declared twice")
        names.add(name)
        unknown = sorted(set(entry) - set(SPEC_KEYS) - {"name", "memory_mib", "vcpus", "devices", "features"})
        if unknown:
            raise VmSpecError(f"VM {name}: unknown keys {', '.join(unknown)} (known: name, memory_mib, vcpus, devices, "
                              f"features, {', '.join(SPEC_KEYS)})")
        features = entry.get("features") or {}
        if not isinstance(features, dict):
            raise VmSpecError(f"VM {name}: features must be a mapping (hypervisor_hidden, vendor_id, kvm_hidden)")
        config = api.VmConfig(name=name,
                              memory_mib=_positive_int(name, "memory_mib", entry.get("memory_mib", 4096), 64),
                              vcpus=_positive_int(name, "vcpus", entry.get("vcpus", 4), 1),
                              devices=_device_objects(resolve_devices(name, entry.get("devices"), plan), facts),
                              features=dict(features))
        out.append((config, {k: entry[k] for k in SPEC_KEYS if entry.get(k) is not None}))
    return out


def module_spec(config: api.VmConfig, rest: dict) -> dict:
    """The module's VM spec from a (possibly hook-changed) VmConfig."""
    spec = dict(rest, name=config.name, memory_mib=int(config.memory_mib), vcpus=int(config.vcpus),
                devices=[{"address": d.address, "vendor_id": d.vendor_id, "device_id": d.device_id, "class": d.class_code}
                         for d in config.devices],
                features={k: v for k, v in config.features.items() if k in ("hypervisor_hidden", "vendor_id", "kvm_hidden")})
    if config.monitor.get("interval_seconds"):
        spec["monitor"] = {"interval_seconds": float(config.monitor["interval_seconds"])}
    return spec


def vm_stats(name: str, stats: dict) -> api.VmStats:
    """``VmStats`` from the module's ``stats`` of one VM run."""
    return api.VmStats(name=name, runtime_seconds=float(stats.get("runtime_seconds") or 0.0),
                       cpu_time_seconds=stats.get("cpu_time_seconds"), max_memory_mib=stats.get("max_memory_mib"),
                       gpu=dict(stats.get("gpu") or {}), samples=list(stats.get("samples") or []),
                       shutdown=stats.get("shutdown"))
