# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""GPUs, their companion functions, and whether their IOMMU group can be passed through."""
from __future__ import annotations

VENDORS = {"10de": "nvidia", "1002": "amd", "8086": "intel"}

# Board-management controllers' VGA (never a passthrough candidate, often the console).
BMC_IDS = {
    ("1a03", "2000"),  # ASPEED AST2x00
    ("102b", "0522"), ("102b", "0532"), ("102b", "0533"), ("102b", "0534"), ("102b", "0536"),
    ("102b", "0538"),  # Matrox G200e / eW / eH / eR / eW3 / eH3 server graphics
    ("19e5", "1711"),  # Huawei iBMC Hi171x
}
# AMD APU graphics (integrated although they sit behind an internal bridge).
AMD_APU_DEVICE_IDS = {
    "1304", "1305", "1306", "1307", "1309", "130a", "130b", "130c", "130d", "130e", "130f",
    "1310", "1311", "1312", "1313", "1315", "1316", "1317", "1318", "131b", "131c", "131d",  # Kaveri/Godavari
    "9874",  # Carrizo/Bristol Ridge
    "98e4",  # Stoney
    "15d8", "15dd", "15d9",  # Picasso / Raven / Raven2
    "1636", "1638", "164c",  # Renoir / Cezanne / Lucienne
    "15e7",  # Barcelo
    "163f",  # Van Gogh
    "1681",  # Rembrandt
    "164d", "1506",  # Rembrandt / Mendocino
    "164e",  # Raphael / Granite Ridge
    "15bf", "15c8", "1900", "1901",  # Phoenix / Phoenix2 / Hawk Point
    "150e", "1586", "1114",  # Strix Point / Strix Halo / Krackan
    "13c0", "13fe",  # Granite Ridge / Cyan Skillfish
}


def vendor_of(vendor_id) -> str:
    return VENDORS.get(vendor_id or "", "other")


def is_bmc(dev) -> bool:
    return (dev.vendor_id, dev.device_id) in BMC_IDS


def is_integrated(dev) -> bool:
    """Part of the CPU, chipset or board rather than an add-in card or a laptop's dGPU.

    Intel puts its iGPU on the root bus; AMD APUs put theirs behind an internal bridge,
    so they are told by device id; a BMC's VGA is on the board. Anything else on a root
    bus (a root-complex integrated endpoint) is integrated; the rest is discrete.
    """
    vendor = vendor_of(dev.vendor_id)
    if vendor == "nvidia":
        return False
    if vendor == "amd" and dev.device_id in AMD_APU_DEVICE_IDS:
        return True
    if is_bmc(dev):
        return True
    return dev.parent is None


def group_verdicts(gpu, group_members: dict, by_address: dict) -> tuple:
    """(viable, blockers): viable iff every non-bridge member of the group is on the GPU's slot.

    Members come from ``/sys/kernel/iommu_groups/N/devices`` (the kernel's own list), so a
    member whose attributes could not be read still counts, as a blocker: it cannot be
    shown to be a bridge.
    """
    if gpu.iommu_group is None:
        return None, []
    blockers = []
    for addr in group_members.get(gpu.iommu_group, []):
        dev = by_address.get(addr)
        if dev is not None and dev.is_bridge:
            continue
        if addr.rsplit(".", 1)[0] != gpu.slot:
            blockers.append(addr)
    return not blockers, sorted(blockers)


def build_gpus(devices: list, groups: list) -> list:
    """The GPU entries of the facts; ``groups`` as returned by ``_iommu.iommu_groups``."""
    by_address = {d.address: d for d in devices}
    members = {g["id"]: list(g["devices"]) for g in groups}
    for d in devices:  # a device whose group directory was unreadable still names its group
        if d.iommu_group is not None and d.address not in members.setdefault(d.iommu_group, []):
            members[d.iommu_group].append(d.address)
    by_slot: dict = {}
    for d in devices:
        by_slot.setdefault(d.slot, []).append(d)
    gpus = [d for d in devices if d.is_gpu]
    out = []
    for g in gpus:
        viable, blockers = group_verdicts(g, members, by_address)
        companions = sorted(d.address for d in by_slot.get(g.slot, []) if d.address != g.address)
        slot_groups = sorted({d.iommu_group for d in by_slot.get(g.slot, []) if d.iommu_group is not None})
        out.append({
            "address": g.address,
            "vendor_id": g.vendor_id,
            "device_id": g.device_id,
            "class": g.class_code,
            "vendor": vendor_of(g.vendor_id),
            "vendor_name": g.vendor_name,
            "device_name": g.device_name,
            "kind": "integrated" if is_integrated(g) else "discrete",
            "bmc": is_bmc(g),
            "boot_vga": g.boot_vga,
            "driver": g.driver,
            "iommu_group": g.iommu_group,
            "companions": companions,
            "slot_groups": slot_groups,
            "group_viable": viable,
            "group_blockers": blockers,
            "identical_to": sorted(
                o.address for o in gpus
                if o.address != g.address and (o.vendor_id, o.device_id) == (g.vendor_id, g.device_id)
            ),
            "reset_methods": list(g.reset_methods),
        })
    return out
