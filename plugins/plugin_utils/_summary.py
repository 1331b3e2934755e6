# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A person-readable per-host summary of ``ansible_facts.vfio`` (used by the summary callback)."""
from __future__ import annotations


def _dev_label(dev: dict) -> str:
    name = dev.get("device_name") or "unknown device"
    ids = f"{dev.get('vendor_id')}:{dev.get('device_id')}"
    return f"{name} [{ids}]"


def _yes_no(value, yes="yes", no="no", unknown="unknown") -> str:
    return unknown if value is None else yes if value else no


def render_host(host: str, facts: dict) -> list:
    """Lines describing one host: system, IOMMU (and what to fix), boot, GPUs and verdicts."""
    lines = [host]
    sysinfo = facts.get("system") or {}
    dist = sysinfo.get("distribution") or {}
    cpu = sysinfo.get("cpu") or {}
    boot = sysinfo.get("boot") or {}
    mach = sysinfo.get("machine") or {}
    kernel = (sysinfo.get("kernel") or {}).get("running")
    lines.append(
        f"  system     {dist.get('pretty_name') or dist.get('name') or 'unknown distribution'}, kernel {kernel or '?'}, "
        f"{cpu.get('vendor') or '?'} CPU (virtualization {cpu.get('virtualization_flag') or 'off'}), "
        f"{(boot.get('mode') or '?').upper()}"
        + (f", Secure Boot {_yes_no(boot.get('secure_boot'), 'on', 'off')}" if boot.get("mode") == "uefi" else "")
        + (", laptop" if mach.get("laptop") else ""))
    if cpu.get("vendor") in ("intel", "amd") and cpu.get("virtualization_enabled") is False and not cpu.get("hypervisor"):
        setting = "Intel VT-x (Virtualization Technology)" if cpu["vendor"] == "intel" else "AMD SVM (AMD-V)"
        lines.append("    ! the CPU does not offer hardware virtualization: KVM cannot run VMs")
        lines.append(f"      fix: enable {setting} in the UEFI/BIOS setup")
    io = facts.get("iommu") or {}
    if io.get("enabled"):
        lines.append(f"  iommu      on ({io.get('type') or '?'}, {io.get('groups_count')} groups, interrupt remapping "
                     f"{_yes_no(io.get('interrupt_remapping'))})")
    else:
        lines.append("  iommu      OFF")
    for p in io.get("problems") or []:
        lines.append(f"    ! {p['what']}")
        lines.append(f"      fix: {p['fix']}")
    bl = (facts.get("bootloader") or {}).get("name")
    ir = (facts.get("initramfs") or {}).get("name")
    lines.append(f"  boot       bootloader {bl or 'UNKNOWN'}, initramfs {ir or 'UNKNOWN'}, vfio modules "
                 f"{'ready' if (facts.get('vfio_modules') or {}).get('ready') else 'MISSING for some kernel'}")
    devices = {d["address"]: d for d in facts.get("pci_devices") or []}
    gpus = facts.get("gpus") or []
    if not gpus:
        lines.append("  gpus       none")
    for g in gpus:
        tags = [g.get("kind") or "?"]
        if g.get("bmc"):
            tags.append("BMC")
        if g.get("boot_vga"):
            tags.append("boot display")
        lines.append(f"  gpu        {g['address']} {_dev_label(g)} ({', '.join(tags)}), driver {g.get('driver') or 'none'}")
        for c in g.get("companions") or []:
            d = devices.get(c, {})
            grp = d.get("iommu_group")
            other = "" if grp == g.get("iommu_group") else f", group {grp}"
            lines.append(f"               + {c} {_dev_label(d)}{other}")
        if g.get("identical_to"):
            lines.append(f"               identical to {', '.join(g['identical_to'])}: select by address")
        if g.get("group_viable") is None:
            lines.append("               group: none (IOMMU off)")
        elif g["group_viable"]:
            lines.append(f"               group {g.get('iommu_group')}: viable for passthrough")
        else:
            lines.append(f"               group {g.get('iommu_group')}: NOT viable, shared with:")
            for b in g.get("group_blockers") or []:
                lines.append(f"                 - {b} {_dev_label(devices.get(b, {}))}")
    for w in facts.get("warnings") or []:
        lines.append(f"  warning    {w}")
    return lines


def render_bind(plan: dict) -> list:
    """The binding plan of one host: every function, the driver it leaves, how it is bound at boot."""
    lines = []
    status = plan.get("status")
    head = {"ok": "plan", "refused": "REFUSED", "empty": "nothing selected"}.get(status, status or "?")
    lines.append(f"  bind       {head}")
    by_address = set(plan.get("by_address") or [])
    for d in plan.get("devices") or []:
        how = "by address" if d["address"] in by_address else "by id"
        lines.append(f"               {d['address']} {d.get('name') or ''} [{d.get('ids')}] group {d.get('iommu_group')}, "
                     f"leaves {d.get('driver_before') or 'no driver'}, {how} ({d.get('reason')})")
    for e in plan.get("errors") or []:
        lines.append(f"    ! {e}")
    for r in plan.get("refusals") or []:
        lines.append(f"    ! {r['message']}")
    for w in plan.get("warnings") or []:
        lines.append(f"    ~ {w}")
    if plan.get("kernel_params"):
        lines.append(f"               kernel parameters for the bootloader stage: {' '.join(plan['kernel_params'])}")
    return lines


def render_bootloader(bl: dict) -> list:
    """What the bootloader stage put on the command line and what the next boot gets."""
    params = " ".join(p["name"] if p.get("value") is None else f"{p['name']}={p['value']}"
                      for p in bl.get("params") or [] if p.get("state", "present") == "present")
    removed = " ".join(p["name"] if p.get("value") is None else f"{p['name']}={p['value']}"
                       for p in bl.get("params") or [] if p.get("state") == "absent")
    lines = [f"  bootloader {bl.get('bootloader') or '?'}: {params or '(no parameters)'}" + (f", removes {removed}" if removed else "")]
    if bl.get("next_boot_cmdline") is not None:
        lines.append(f"               next boot: {bl['next_boot_cmdline']}")
    if bl.get("not_regenerated"):
        lines.append(f"    ~ not regenerated: {bl['not_regenerated']} (the next boot above is predicted)")
    if bl.get("verified"):
        lines.append("               rebooted: /proc/cmdline has the parameters and the devices are on vfio-pci")
    elif bl.get("reboot_required"):
        lines.append("               REBOOT REQUIRED to use it (vfio_reboot_ok: true lets the playbook reboot and check)")
    return lines


def render_vms(vms: list) -> list:
    """The VM stage: each domain, what it receives, what plugins set, and its run's figures."""
    lines = []
    for vm in vms:
        state = ("would be defined" if vm.get("preview") else "defined") if vm.get("defined") else "unchanged"
        if vm.get("preview") and not vm.get("defined"):
            state = "unchanged (preview)"
        lines.append(f"  vm         {vm.get('name')}: {state}, {vm.get('domain_type') or '?'}, devices "
                     f"{', '.join(vm.get('devices') or []) or 'none'}")
        features = vm.get("features") or {}
        if features:
            shown = ", ".join(f"{k}={v}" if not isinstance(v, bool) else k for k, v in sorted(features.items()) if v)
            by_plugins = vm.get("plugin_features") or []
            lines.append(f"               features {shown}" + (f" (from plugins: {', '.join(by_plugins)})" if by_plugins else ""))
        stats = vm.get("stats") or {}
        if stats:
            cpu = stats.get("cpu_time_seconds")
            mem = stats.get("max_memory_mib")
            lines.append(f"               ran {stats.get('runtime_seconds', 0):.1f} s ({stats.get('shutdown') or '?'}), CPU time "
                         f"{'?' if cpu is None else f'{cpu:.1f} s'}, max memory {'?' if mem is None else f'{mem:.0f} MiB'}")
    return lines


def render_plugins(summary: dict) -> list:
    lines = []
    plugins = summary.get("plugins") or {}
    if plugins:
        lines.append("  plugins    " + ", ".join(
            f"{n} {m.get('version')}" + ("" if m.get("enabled", True) else " (disabled)") for n, m in sorted(plugins.items())))
    for w in summary.get("warnings") or []:
        lines.append(f"    ! {w}")
    for f in summary.get("failures") or []:
        lines.append(f"    ! plugin {f['plugin']} failed in {f['hook']}: {f['error']}")
    for name, reason in sorted((summary.get("rejected") or {}).items()):
        lines.append(f"    ! plugin {name} not loaded: {reason}")
    return lines


def render_summary(results: dict, plugins: dict | None = None) -> str:
    """``results``: host -> {"facts": dict or None, "failed": message or None};
    ``plugins``: host -> plugin summary (loaded plugins, failures, rejected)."""
    out = []
    plugins = plugins or {}
    for host in sorted(set(results) | set(plugins)):
        r = results.get(host, {})
        if r.get("facts"):
            out.extend(render_host(host, r["facts"]))
        else:
            out.append(host)
        if r.get("bind"):
            out.extend(render_bind(r["bind"]))
        if r.get("bootloader"):
            out.extend(render_bootloader(r["bootloader"]))
        if r.get("vms"):
            out.extend(render_vms(r["vms"]))
        out.extend(render_plugins(plugins.get(host) or {}))
        if r.get("failed") and not (r.get("bind") or {}).get("status") == "refused":
            out.append(f"  FAILED     {r['failed']}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
