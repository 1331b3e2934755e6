# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The binding plan: what a selection means on one host, whether it is safe, and the files that
make it last across reboots.

Pure functions over the ``vfio_facts`` dictionary (plus the plan recorded by the last run), so
the controller shows and hooks exactly the plan the target module applies.
"""
from __future__ import annotations

import json

from ansible_collections.exliar.vfio.plugins.module_utils import _selection as selection
from ansible_collections.exliar.vfio.plugins.module_utils._system import kernel_version_tuple

MODPROBE_CONF = "/etc/modprobe.d/exliar-vfio.conf"
OVERRIDE_SCRIPT = "/usr/local/sbin/exliar-vfio-pci-override"
PLAN_RECORD = "/var/lib/exliar-vfio/state/bind.json"
OWNED_FILES = (MODPROBE_CONF, OVERRIDE_SCRIPT, PLAN_RECORD)
VFIO_DRIVER = "vfio-pci"
# Refusals the user may override, each with its own variable (the module option drops the vfio_ prefix).
OVERRIDES = {
    "boot_display": "vfio_allow_boot_display",
    "connection_nic": "vfio_allow_connection_nic",
    "mounted_disk": "vfio_allow_mounted_disk",
    "iommu_off": "vfio_allow_iommu_off",
    "unknown_address": "vfio_allow_missing_devices",
    "empty_selection": "vfio_allow_empty_selection",
    "hardware_changed": "vfio_accept_hardware_change",
    "foreign_vfio_config": "vfio_take_over_vfio_config",
}
DISABLED_MARK = "# disabled by exliar.vfio (playbooks/restore.yml brings it back): "
OPTION_NAMES = tuple(v[len("vfio_"):] for v in OVERRIDES.values())
HEADER = ("# Managed by exliar.vfio (binding stage): changes made here are overwritten on the next run.\n"
          "# Undo: ansible-playbook playbooks/restore.yml\n")


def _label(dev: dict) -> str:
    return " ".join(x for x in (dev.get("vendor_name"), dev.get("device_name")) if x) or f"class {dev.get('class')}"


def _ids(dev: dict) -> str:
    return f"{dev.get('vendor_id')}:{dev.get('device_id')}"


class _Plan:
    def __init__(self, facts: dict, options: dict, recorded):
        self.facts = facts
        self.options = {name: bool((options or {}).get(name)) for name in OPTION_NAMES}
        self.recorded = {d["address"]: d for d in (recorded or {}).get("devices", []) if isinstance(d, dict) and "address" in d}
        self.devices = {d["address"]: d for d in facts.get("pci_devices") or []}
        self.gpus = {g["address"]: g for g in facts.get("gpus") or []}
        self.groups = {g["id"]: list(g["devices"]) for g in facts.get("iommu_groups") or []}
        self.refusals: list = []
        self.errors: list = []
        self.warnings: list = []
        self.reasons: dict = {}
        self.takeover: list = []
        self.kept: list = []

    def refuse(self, code: str, message: str) -> None:
        var = OVERRIDES[code]
        if self.options[var[len("vfio_"):]]:
            self.warnings.append(f"{message} (allowed by {var}: true)")
        else:
            self.refusals.append({"code": code, "message": f"{message}. To do it anyway set {var}: true",
                                  "override": var})

    def describe(self, addr: str) -> str:
        dev = self.devices.get(addr) or {}
        extra = dev.get("block_devices") or dev.get("net_interfaces") or []
        return f"{addr} {_label(dev)}" + (f" ({', '.join(extra)})" if extra else "")

    # ---- expansion --------------------------------------------------------------------
    def expand(self, chosen: list, excluded: list) -> list:
        members: list = []
        for addr in chosen:
            self.reasons.setdefault(addr, "selected")
            members.append(addr)
        for addr in list(members):
            gpu = self.gpus.get(addr)
            for comp in (gpu or {}).get("companions", []):
                if comp not in members:
                    members.append(comp)
                    self.reasons.setdefault(comp, f"companion of {addr} (same slot)")
        for addr in members:
            if addr in excluded:
                self.errors.append(f"vfio_devices conflict: {addr} is excluded but it is {self.reasons[addr]}; "
                                   f"a GPU goes to the VM with every function of its slot, so drop one of the entries")
        self.check_groups(members)
        return members

    def check_groups(self, members: list) -> None:
        reported = set()
        for addr in members:
            group = (self.devices.get(addr) or {}).get("iommu_group")
            if group is None or group in reported:
                continue
            blockers = [m for m in self.groups.get(group, []) if m not in members
                        and not (self.devices.get(m) or {}).get("is_bridge")]
            if blockers:
                reported.add(group)
                names = "; ".join(self.describe(b) for b in blockers)
                self.errors.append(
                    f"{self.describe(addr)} shares IOMMU group {group} with {names}, which is not selected: vfio-pci takes "
                    f"a whole group or nothing. Add it to vfio_devices if the host can do without it, move the card to "
                    f"another slot, or see the ACS override option of the bootloader stage")

    # ---- safety ------------------------------------------------------------------------
    def check_safety(self, members: list) -> None:
        iommu = self.facts.get("iommu") or {}
        if not iommu.get("enabled"):
            fixes = "; ".join(p.get("fix", "") for p in iommu.get("problems") or [] if p.get("fix"))
            self.refuse("iommu_off", "the IOMMU is off on this host (" + (iommu.get("reason") or "no IOMMU groups")
                        + "), so vfio-pci cannot take devices and their groups cannot be checked"
                        + (f". Fix: {fixes}" if fixes else ""))
        self.check_display(members)
        usage = self.facts.get("host_usage") or {}
        conn = usage.get("connection") or {}
        for addr in members:
            if addr in (conn.get("pci_addresses") or []):
                self.refuse("connection_nic", f"{self.describe(addr)} carries the Ansible connection "
                            f"({conn.get('address')} on {', '.join(conn.get('interfaces') or [])}): binding it cuts this host off")
            for use in (usage.get("in_use") or {}).get(addr, []):
                if use.get("kind") in ("mount", "swap"):
                    self.refuse("mounted_disk", f"{self.describe(addr)} holds {use.get('block')}, in use: "
                                f"{use.get('detail') or use.get('kind')}; binding it takes the disk from the running host")
        self.check_foreign()
        for addr, rec in self.recorded.items():
            dev = self.devices.get(addr)
            if dev is None:
                self.warnings.append(f"{addr} ({rec.get('vendor_id')}:{rec.get('device_id')}) was bound by an earlier run "
                                     f"but is no longer on this host")
            elif (dev.get("vendor_id"), dev.get("device_id"), dev.get("class")) != (rec.get("vendor_id"), rec.get("device_id"), rec.get("class")):
                self.refuse("hardware_changed", f"{addr} was {rec.get('vendor_id')}:{rec.get('device_id')} (class {rec.get('class')}) "
                            f"when an earlier run bound it, and is now {_ids(dev)} {_label(dev)}: the hardware changed. "
                            f"Check the selection, or run playbooks/restore.yml first")

    def check_foreign(self) -> None:
        """Other modprobe.d files that configure vfio-pci: refused, or taken over on request
        (their lines disabled, their ``ids`` and other options carried into ours)."""
        foreign = ((self.facts.get("managed") or {}).get("foreign_vfio_config")) or {}
        entries = foreign.get("entries") or []
        for e in entries:
            if e["state"] == "active" and e["directive"] == "blacklist":
                self.warnings.append(f"{e['path']}:{e['line_no']} `{e['line']}`: vfio-pci is not loaded by alias, "
                                     f"only through the softdep lines of {MODPROBE_CONF}")
        active = [e for e in entries if e["state"] == "active" and e["directive"] != "blacklist"]
        planned = {_ids(self.devices[a]) for a in self.reasons if a in self.devices}
        for e in [e for e in active if _only_ids_within(e, planned)]:
            active.remove(e)  # the same ids as ours: harmless; left alone
            self.warnings.append(f"{e['path']}:{e['line_no']} `{e['line']}` also binds these ids; it stays when "
                                 f"playbooks/restore.yml undoes this stage")
        if not active:
            self.kept = [e for e in entries if e["state"] == "disabled" and e["directive"] == "options"]
            return
        where = "; ".join(f"{e['path']}:{e['line_no']} `{e['line']}`" for e in active)
        outside = [e for e in active if not e["path"].startswith("/etc/modprobe.d/")]
        if outside and self.options["take_over_vfio_config"]:
            self.errors.append(f"{where} configure vfio-pci outside /etc/modprobe.d, where exliar.vfio does not edit: mask "
                               f"the file with an /etc/modprobe.d file of the same name, then run again")
            return
        self.refuse("foreign_vfio_config", f"{where} already configure vfio-pci: vfio-pci takes one `ids=` (the last one read "
                    f"wins) and one install command, so the plan would not hold at boot. Remove those lines, or let "
                    f"exliar.vfio disable them and carry their ids into {MODPROBE_CONF}")
        if self.options["take_over_vfio_config"]:
            self.takeover = active
            self.kept = [e for e in entries if e["directive"] == "options"]
            for e in active:
                if e["directive"] == "install":
                    self.warnings.append(f"{e['path']}:{e['line_no']} `{e['line']}` is disabled: devices its command claimed "
                                         f"are bound only if vfio_devices selects them")

    def foreign_edits(self) -> dict:
        """New content of each taken-over file: its vfio-pci lines commented out."""
        contents = (((self.facts.get("managed") or {}).get("foreign_vfio_config")) or {}).get("contents") or {}
        out = {}
        for path in sorted({e["path"] for e in self.takeover}):
            numbers = {e["line_no"] for e in self.takeover if e["path"] == path}
            lines = contents.get(path, "").splitlines(keepends=True)
            new = [DISABLED_MARK + line.strip() + "\n" if n in numbers else line for n, line in enumerate(lines, 1)]
            out[path] = {"content": "".join(new), "mode": None}
        return out

    def kept_options(self, by_address: list) -> tuple:
        """(ids, other parameters) of the taken-over ``options vfio-pci`` lines; an id shared with a
        device bound by address is dropped (it would take the identical device the host keeps)."""
        shared = {self.devices[a]["vendor_id"] + ":" + self.devices[a]["device_id"] for a in by_address if a in self.devices}
        ids, params = [], []
        for e in self.kept:
            for arg in e["args"]:
                key, _eq, value = arg.partition("=")
                if key == "ids":
                    for ident in value.split(","):
                        ident = ident.strip().lower()
                        if ident[:9] in shared:
                            self.warnings.append(f"{e['path']}: the id {ident} it bound is dropped: devices with it are bound by address")
                        elif ident and ident not in ids:
                            ids.append(ident)
                elif arg not in params:
                    params.append(arg)
        return ids, params

    def check_display(self, members: list) -> None:
        gpus_taken = [a for a in members if a in self.gpus]
        if not gpus_taken:
            return
        remaining = [g for a, g in self.gpus.items() if a not in members]
        boot = [a for a, g in self.gpus.items() if g.get("boot_vga")]
        taken_boot = [a for a in gpus_taken if a in boot]
        if remaining:
            for addr in taken_boot:
                other = ", ".join(self.describe(g["address"]) for g in remaining)
                self.warnings.append(f"{self.describe(addr)} shows the firmware's boot screen; the host's display moves to {other} "
                                     f"once vfio-pci takes it (consider video=efifb:off in the bootloader stage)")
            return
        if taken_boot or not boot:
            which = ", ".join(self.describe(a) for a in (taken_boot or gpus_taken))
            self.refuse("boot_display", f"{which} drives the boot display and no other GPU stays with the host: "
                        f"the host would have no console (single-GPU passthrough needs SSH or a serial console)")

    # ---- persistence -------------------------------------------------------------------
    def device_entry(self, addr: str) -> dict:
        dev = self.devices[addr]
        rec = self.recorded.get(addr) or {}
        if dev.get("driver") and dev.get("driver") != VFIO_DRIVER:
            before, module = dev.get("driver"), dev.get("driver_module")
        else:
            before, module = rec.get("driver_before"), rec.get("module_before")
        modules = set(dev.get("kernel_modules") or []) | set(rec.get("modules") or []) | ({module} if module else set())
        return {"address": addr, "ids": _ids(dev), "vendor_id": dev.get("vendor_id"), "device_id": dev.get("device_id"),
                "class": dev.get("class"), "name": _label(dev), "iommu_group": dev.get("iommu_group"),
                "driver": dev.get("driver"), "driver_before": before, "module_before": module,
                "modules": sorted(modules - {"vfio_pci"}), "reason": self.reasons.get(addr, "selected")}


def _only_ids_within(entry: dict, planned: set) -> bool:
    if entry["directive"] != "options" or len(entry["args"]) != 1 or not entry["args"][0].startswith("ids="):
        return False
    ids = {i.strip().lower()[:9] for i in entry["args"][0][4:].split(",") if i.strip()}
    return bool(ids) and ids <= planned


def _binding_modes(entries: list, devices: dict) -> tuple:
    """(ids, addresses): an id goes to ``options vfio-pci ids=`` only when every device on the host
    with that id is selected; the others are claimed by address at early boot."""
    chosen = {e["address"] for e in entries}
    ids, by_address = [], []
    for ident in sorted({e["ids"] for e in entries}):
        holders = [a for a, d in devices.items() if _ids(d) == ident]
        if all(a in chosen for a in holders):
            ids.append(ident)
        else:
            by_address.extend(sorted(e["address"] for e in entries if e["ids"] == ident))
    return ids, by_address


def render_modprobe(entries: list, ids: list, by_address: list, kept=((), ())) -> str:
    lines = [HEADER.rstrip("\n"), "#"]
    for e in entries:
        how = "by address" if e["address"] in by_address else "by id"
        was = e.get("driver_before") or "no driver"
        lines.append(f"# {e['address']}  {e['ids']}  {e['name']}  (was: {was}; {how})")
    kept_ids, kept_params = kept
    if kept_ids or kept_params:
        carried = ([f"ids={','.join(kept_ids)}"] if kept_ids else []) + list(kept_params)
        lines.append(f"# carried over from the vfio-pci lines taken over from other files: {' '.join(carried)}")
    all_ids = list(ids) + [i for i in kept_ids if i not in ids]
    if all_ids or kept_params:
        lines.append("options vfio-pci " + " ".join(([f"ids={','.join(all_ids)}"] if all_ids else []) + list(kept_params)))
    if by_address:
        lines.append(f"install vfio-pci {OVERRIDE_SCRIPT} $CMDLINE_OPTS")
    for module in sorted({m for e in entries for m in e.get("modules") or []}):
        lines.append(f"softdep {module} pre: vfio-pci")
    return "\n".join(lines) + "\n"


def render_override_script(by_address: list) -> str:
    devs = " ".join(by_address)
    return f"""#!/bin/sh
{HEADER}#
# modprobe runs this instead of loading vfio-pci (install line in {MODPROBE_CONF}). It claims
# these functions for vfio-pci by address, so a device with the same vendor:device id stays with
# the host, then loads vfio-pci. A device that is gone is skipped: this must never stop a boot.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
DEVS="{devs}"
for dev in $DEVS; do
    if [ -e "/sys/bus/pci/devices/$dev/driver_override" ]; then
        echo vfio-pci > "/sys/bus/pci/devices/$dev/driver_override"
    fi
done
# Load vfio-pci itself without running this install command again: kmod's modprobe --ignore-install.
# An initramfs with busybox can give the name modprobe to busybox's, which has no such option; kmod
# acts by the name it is called with, so it is then called through a link named modprobe in /run.
kmod_modprobe() {{
    case "$(modprobe --help 2>&1)" in
        *--ignore-install*) modprobe "$@"; return ;;
    esac
    kmod=$(command -v kmod) || {{ echo "exliar-vfio: no kmod to load vfio-pci with" >&2; return 1; }}
    mkdir -p /run/exliar-vfio && ln -sf "$kmod" /run/exliar-vfio/modprobe && /run/exliar-vfio/modprobe "$@"
}}
kmod_modprobe --ignore-install vfio-pci "$@" || exit $?
for dev in $DEVS; do
    if [ -e "/sys/bus/pci/devices/$dev" ] && [ ! -e "/sys/bus/pci/devices/$dev/driver" ]; then
        echo "$dev" > /sys/bus/pci/drivers_probe 2>/dev/null || true
    fi
done
exit 0
"""


def render_record(entries: list) -> str:
    keep = ("address", "vendor_id", "device_id", "class", "iommu_group", "driver_before", "module_before", "modules")
    return json.dumps({"version": 1, "devices": [{k: e.get(k) for k in keep} for e in entries]}, indent=2, sort_keys=True) + "\n"


def _kernel_handoff(facts: dict, ids: list, by_address: list) -> tuple:
    """(initramfs, kernel_params, warnings) the later stages need, per installed kernel."""
    kernels = ((facts.get("vfio_modules") or {}).get("kernels")) or {}
    modules, builtin_pci, warnings = {}, [], []
    order = ("vfio", "vfio_iommu_type1", "vfio_virqfd", "vfio_pci")
    for kver, info in sorted(kernels.items()):
        status = info.get("modules") or {}
        wanted = [m for m in order if status.get(m) == "module" and (m != "vfio_virqfd" or kernel_version_tuple(kver) < (6, 2))]
        modules[kver] = wanted
        missing = [m for m in order if status.get(m) == "missing"]
        if missing:
            warnings.append(f"kernel {kver} lacks {', '.join(missing)}: it cannot use vfio-pci (install the distribution's full kernel)")
        if status.get("vfio_pci") == "builtin":
            builtin_pci.append(kver)
    params = []
    if builtin_pci and ids:
        params.append(f"vfio-pci.ids={','.join(ids)}")
    if builtin_pci and by_address:
        warnings.append(f"vfio-pci is built into {', '.join(builtin_pci)}: modprobe never loads it there, so "
                        f"{', '.join(by_address)} are claimed at boot only through the host driver's softdep; "
                        f"check after a reboot that they are on vfio-pci")
    files = [MODPROBE_CONF] + ([OVERRIDE_SCRIPT] if by_address else [])
    return {"modules": modules, "files": files}, params, warnings


def make_plan(facts: dict, entries, options: dict | None = None, recorded: dict | None = None) -> dict:
    """The whole plan for one host. ``entries`` is ``vfio_devices``; ``recorded`` the plan an
    earlier run applied (``ansible_facts.vfio.managed.bind``).

    ``status`` is ``ok``, ``refused`` (refusals or errors: nothing may change), or ``empty``
    (nothing selected and that was allowed: nothing to do).
    """
    plan = _Plan(facts, options or {}, recorded)
    try:
        parsed = selection.parse_entries(entries)
    except selection.SelectionError as exc:
        return _result(plan, [], [], [], errors=[str(exc)])
    found = selection.match(facts, parsed)
    plan.errors.extend(found["errors"])
    for addr in found["missing"]:
        plan.refuse("unknown_address", f"{addr} is not a PCI device on this host (see `lspci -D`)")
    if not found["selected"]:
        if not plan.errors and not found["missing"]:
            plan.refuse("empty_selection", "vfio_devices selects no device on this host"
                        + (f" (entries {', '.join(map(str, found['empty_entries']))} match nothing)" if found["empty_entries"] else ""))
        return _result(plan, [], [], [])
    members = plan.expand(found["selected"], found["excluded"])
    plan.check_safety(members)
    entries_out = [plan.device_entry(a) for a in sorted(members, key=_address_key)]
    for e in entries_out:
        if e["driver"] not in (None, VFIO_DRIVER) and not e["module_before"]:
            plan.warnings.append(f"{e['address']}: its driver {e['driver']} is built into the kernel, so vfio-pci cannot be "
                                 f"loaded before it at boot; it is bound when the playbook runs")
    ids, by_address = _binding_modes(entries_out, plan.devices)
    return _result(plan, entries_out, ids, by_address)


def _address_key(addr: str) -> tuple:
    return tuple(int(p, 16) for p in addr.replace(".", ":").split(":"))


def _result(plan: _Plan, entries: list, ids: list, by_address: list, errors=()) -> dict:
    errors = list(errors) + plan.errors
    blocked = bool(errors or plan.refusals)
    out = {"devices": entries, "ids": ids, "by_address": by_address, "refusals": plan.refusals, "errors": errors,
           "warnings": list(plan.warnings), "files": {}, "initramfs": {"modules": {}, "files": []}, "kernel_params": []}
    if blocked:
        out["status"] = "refused"
        return out
    if not entries:
        out["status"] = "empty"
        return out
    kept = plan.kept_options(by_address)
    out["kept_options"] = {"ids": kept[0], "params": kept[1]}
    initramfs, params, warnings = _kernel_handoff(plan.facts, ids + [i for i in kept[0] if i not in ids], by_address)
    out["warnings"] = list(plan.warnings) + warnings
    out["initramfs"], out["kernel_params"] = initramfs, params
    out["files"] = {
        MODPROBE_CONF: {"content": render_modprobe(entries, ids, by_address, kept), "mode": 0o644},
        OVERRIDE_SCRIPT: {"content": render_override_script(by_address), "mode": 0o755} if by_address else None,
        **plan.foreign_edits(),
        PLAN_RECORD: {"content": render_record(entries), "mode": 0o644},
    }
    out["status"] = "ok"
    return out
