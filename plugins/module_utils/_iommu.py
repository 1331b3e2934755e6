# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""IOMMU groups and IOMMU state: is it on, and if not, what exactly to fix."""
from __future__ import annotations

from ansible_collections.exliar.vfio.plugins.module_utils._cmdline import last_value, param_values
from ansible_collections.exliar.vfio.plugins.module_utils._system import kernel_config

GROUPS_DIR = "sys/kernel/iommu_groups"
FIRMWARE_TABLES = {"intel": "DMAR", "amd": "IVRS"}
FIRMWARE_SETTING = {
    "intel": "Intel VT-d (Virtualization Technology for Directed I/O)",
    "amd": "AMD IOMMU (AMD-Vi; on some boards 'IOMMU' under NBIO/AMD CBS) together with SVM",
}


def iommu_groups(fs) -> list:
    groups = []
    for name in fs.listdir(GROUPS_DIR):
        if not name.isdigit():
            continue
        devices = sorted(fs.listdir(f"{GROUPS_DIR}/{name}/devices"))
        groups.append({"id": int(name), "devices": devices, "type": fs.read_line(f"{GROUPS_DIR}/{name}/type")})
    return sorted(groups, key=lambda g: g["id"])


def _enabled_values(values) -> list:
    out = []
    for v in values:
        out.extend((v or "").split(","))
    return out


def interrupt_remapping(fs, enabled: bool):
    text = fs.read_text("proc/interrupts")
    if text is None:
        return None
    if any(" IR-" in line or "\tIR-" in line for line in text.splitlines()):
        return True
    return False if enabled else None


def iommu_state(fs, cpu_vendor, params: list, groups: list, running_kernel) -> dict:
    """Whether the IOMMU is on, and each reason it is not, with the fix."""
    units = fs.listdir("sys/class/iommu")
    tables = set(fs.listdir("sys/firmware/acpi/tables"))
    acpi_readable = fs.isdir("sys/firmware/acpi/tables")
    # The IOMMU itself says what it is (dmarN: Intel VT-d, ivhdN: AMD-Vi), then the firmware's
    # table; the CPU vendor only when neither exists. A VM on an AMD host can have a virtual
    # Intel IOMMU, so the CPU alone is not enough.
    if any(u.startswith("dmar") for u in units):
        kind = "intel"
    elif any(u.startswith("ivhd") for u in units):
        kind = "amd"
    elif "DMAR" in tables and "IVRS" not in tables:
        kind = "intel"
    elif "IVRS" in tables and "DMAR" not in tables:
        kind = "amd"
    else:
        kind = cpu_vendor if cpu_vendor in FIRMWARE_TABLES else None
    table = FIRMWARE_TABLES.get(kind or "")
    firmware_table = (table in tables) if (table and acpi_readable) else None
    enabled = bool(groups)
    config = kernel_config(fs, running_kernel)
    intel_vals = _enabled_values(param_values(params, "intel_iommu"))
    amd_vals = _enabled_values(param_values(params, "amd_iommu"))
    iommu_vals = _enabled_values(param_values(params, "iommu"))
    problems = []
    needed_params = []

    def problem(code, what, fix):
        problems.append({"code": code, "what": what, "fix": fix})

    if not enabled:
        if "off" in iommu_vals or last_value(params, "iommu") == "off":
            problem("param_iommu_off", "the kernel command line has iommu=off", "remove iommu=off from the kernel parameters")
        if kind == "intel" and ([v for v in intel_vals if v in ("on", "off")] or [None])[-1] == "off":
            problem("param_intel_off", "the kernel command line has intel_iommu=off",
                    "replace intel_iommu=off with intel_iommu=on")
        if kind == "amd" and "off" in amd_vals:
            problem("param_amd_off", "the kernel command line has amd_iommu=off", "remove amd_iommu=off")
        if firmware_table is False:
            problem("firmware_off",
                    f"the firmware publishes no ACPI {table} table: the IOMMU is disabled in the UEFI/BIOS setup",
                    f"enable {FIRMWARE_SETTING[kind]} in the UEFI/BIOS setup")
        if kind == "intel":  # also when VT-d is off: once it is on, the kernel still needs this
            cfg_on = config.get("CONFIG_INTEL_IOMMU_DEFAULT_ON") == "y"
            switch = ([v for v in intel_vals if v in ("on", "off")] or [None])[-1]
            if config.get("CONFIG_INTEL_IOMMU") == "n":
                problem("kernel_no_driver", "the kernel is built without CONFIG_INTEL_IOMMU",
                        "boot a kernel with Intel IOMMU support (all major distributions ship one)")
            elif not cfg_on and switch != "on":
                needed_params.append("intel_iommu=on")
                if switch is None:
                    problem("param_missing", "this kernel does not enable the Intel IOMMU by default and "
                            "intel_iommu=on is not on the command line", "add intel_iommu=on to the kernel parameters")
        if kind == "amd" and config.get("CONFIG_AMD_IOMMU") == "n":
            problem("kernel_no_driver", "the kernel is built without CONFIG_AMD_IOMMU",
                    "boot a kernel with AMD IOMMU support")
        if not problems:
            if kind is None:
                problem("unknown_platform", "no IOMMU groups and the CPU vendor is neither Intel nor AMD",
                        "check that the platform has an IOMMU and that it is enabled in firmware and kernel")
            else:
                problem("no_groups", "no IOMMU groups although firmware and command line look right",
                        f"check dmesg for DMAR/AMD-Vi errors and that {FIRMWARE_SETTING[kind]} is enabled")
    ir = interrupt_remapping(fs, enabled)
    if enabled and ir is False:
        problem("no_interrupt_remapping", "interrupt remapping is off: vfio refuses devices unless "
                "vfio_iommu_type1.allow_unsafe_interrupts=1", "enable interrupt remapping (x2APIC) in firmware")
    if kind == "intel":
        default_on = (config.get("CONFIG_INTEL_IOMMU_DEFAULT_ON") == "y") if config else None
    elif kind == "amd":
        default_on = (config.get("CONFIG_AMD_IOMMU") != "n") if config else True
    else:
        default_on = None
    pt = "pt" in iommu_vals or any(g.get("type") == "identity" for g in groups)
    return {
        "enabled": enabled,
        "type": kind,
        "units": units,
        "groups_count": len(groups),
        "firmware_table": table,
        "firmware_table_present": firmware_table,
        "interrupt_remapping": ir,
        "passthrough_mode": pt,
        "default_domain_type": groups[0]["type"] if groups else None,
        "params_needed": needed_params,
        "kernel_default_on": default_on,
        "problems": problems,
        "reason": "; ".join(p["what"] for p in problems if p["code"] != "no_interrupt_remapping") or None,
    }
