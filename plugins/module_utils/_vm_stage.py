# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VM stage on the target: check the host for each VM spec (passed devices on vfio-pci, OVMF,
disks), define the libvirt domain when its rendering changed, and optionally start it, wait until
it powers off and return what it used.

Everything is checked for every VM before anything changes. The XML defined last is kept in
``STATE_DIR/<name>.xml`` (a journaled file of the stage): it is the diff's "before", and the
stand-in for libvirt on a root other than ``/``, where only check mode is possible.
"""
from __future__ import annotations

import os
import uuid as uuidlib

from ansible_collections.exliar.vfio.plugins.module_utils import _vm_domain as domain
from ansible_collections.exliar.vfio.plugins.module_utils import _vm_libvirt as libvirt
from ansible_collections.exliar.vfio.plugins.module_utils._journal import Journal, JournalError

STAGE = "vm"
STATE_DIR = "/var/lib/exliar-vfio/state/vm"
VFIO_DRIVER = "vfio-pci"

# (code, variables template) per distribution layout, most specific first; the template may be missing.
OVMF_CANDIDATES = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),  # Debian 12+, Ubuntu 22.04+
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),  # older Debian/Ubuntu
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),  # Fedora, RHEL
    ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),  # Arch (edk2-ovmf)
    ("/usr/share/edk2-ovmf/x64/OVMF_CODE.fd", "/usr/share/edk2-ovmf/x64/OVMF_VARS.fd"),  # older Arch, Gentoo
    ("/usr/share/qemu/ovmf-x86_64-code.bin", "/usr/share/qemu/ovmf-x86_64-vars.bin"),  # openSUSE
    ("/usr/share/edk2/ovmf/OVMF_CODE.secboot.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
)
OVMF_PACKAGES = (("debian", "ovmf (Debian/Ubuntu: apt install ovmf)"), ("redhat", "edk2-ovmf (Fedora/RHEL: dnf install edk2-ovmf)"),
                 ("arch", "edk2-ovmf (Arch: pacman -S edk2-ovmf)"), ("suse", "qemu-ovmf-x86_64 (openSUSE: zypper install qemu-ovmf-x86_64)"))


class StageError(Exception):
    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def is_live(root: str) -> bool:
    return os.path.realpath(root or "/") == "/"


def state_path(name: str) -> str:
    return f"{STATE_DIR}/{name}.xml"


def _below(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _read_text(root: str, path: str):
    try:
        with open(_below(root, path), encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


# --------------------------------------------------------------------------- host checks


def _family(root: str):
    from ansible_collections.exliar.vfio.plugins.module_utils import _system as system  # pylint: disable=import-outside-toplevel
    from ansible_collections.exliar.vfio.plugins.module_utils._rootfs import RootFS  # pylint: disable=import-outside-toplevel
    return system.distribution(RootFS(root)).get("family")


def ovmf_missing(root: str, what: str) -> str:
    family = _family(root)
    packages = [text for fam, text in OVMF_PACKAGES if fam == family] or [text for _fam, text in OVMF_PACKAGES]
    return (f"{what}: install OVMF, the UEFI firmware for VMs: {'; '.join(packages)}, or give loader "
            f"(and nvram_template) explicitly, or use firmware: bios")


def _vars_beside(root: str, code: str):
    for old, new in (("CODE", "VARS"), ("code", "vars")):
        if old in os.path.basename(code):
            candidate = os.path.join(os.path.dirname(code), os.path.basename(code).replace(old, new))
            if os.path.isfile(_below(root, candidate)):
                return candidate
    return None


def find_ovmf(root: str, loader=None, nvram_template=None) -> dict:
    """``{"loader", "nvram_template", "problem"}``: the explicit loader, else the first known OVMF
    build below ``root``; ``problem`` says what is missing (None when all is there)."""
    if loader:
        problem = None if os.path.isfile(_below(root, loader)) else ovmf_missing(root, f"the loader {loader} does not exist")
        template = nvram_template or _vars_beside(root, loader)
    else:
        found = next(((code, tmpl) for code, tmpl in OVMF_CANDIDATES if os.path.isfile(_below(root, code))), None)
        if found is None:
            looked = ", ".join(code for code, _tmpl in OVMF_CANDIDATES)
            return {"loader": OVMF_CANDIDATES[0][0], "nvram_template": OVMF_CANDIDATES[0][1],
                    "problem": ovmf_missing(root, f"no OVMF firmware found (looked for {looked})")}
        problem = None
        template = nvram_template or (found[1] if os.path.isfile(_below(root, found[1])) else None)
        loader = found[0]
    if nvram_template and not os.path.isfile(_below(root, nvram_template)):
        problem = problem or ovmf_missing(root, f"the nvram_template {nvram_template} does not exist")
    return {"loader": loader, "nvram_template": template, "problem": problem}


def device_problems(root: str, devices: list) -> list:
    """``(address, message, bound_later)`` per device that cannot be passed now; ``bound_later`` marks a
    device the binding stage can still bind (a warning in check mode)."""
    out = []
    for device in devices:
        address = device["address"]
        base = _below(root, f"/sys/bus/pci/devices/{address}")
        if not os.path.lexists(base):
            out.append((address, f"there is no PCI device {address} on this host (lspci -D lists them); fix the address", False))
            continue
        driver = os.path.basename(os.readlink(os.path.join(base, "driver"))) if os.path.islink(os.path.join(base, "driver")) else None
        if driver != VFIO_DRIVER:
            out.append((address, f"{address} is on {driver or 'no driver'}, not {VFIO_DRIVER}: bind it first with the binding "
                                 f"stage (vfio_devices, exliar.vfio.vfio_bind) and run again", True))
    return out


def _host_checks(root: str, vm: dict, firmware: dict, check_mode: bool) -> tuple:
    """(errors, warnings) of one VM against the host below ``root``."""
    errors, warnings = [], []
    name = vm["name"]
    for address, message, bound_later in device_problems(root, vm["devices"]):
        (warnings if check_mode and bound_later else errors).append(f"{name}: {message}")
    if firmware.get("problem"):
        (warnings if check_mode else errors).append(f"{name}: {firmware['problem']}")
    files = [(f"disk {d['path']}", d["path"]) for d in vm["disks"]]
    files += [(f"{key} {vm[key]}", vm[key]) for key in ("kernel", "initrd") if vm[key]]
    for what, path in files:
        if not os.path.exists(_below(root, path)):
            message = f"{name}: the {what} does not exist; create it (qemu-img create -f qcow2 PATH 64G) or fix the path"
            (warnings if check_mode else errors).append(message)
    warnings += [f"{name}: {w}" for w in domain.topology_warnings(vm["devices"])]
    return errors, warnings


def _guess_kvm(root: str) -> bool:
    """Without libvirt to ask: /dev/kvm, or the CPU's virtualization flags."""
    if os.path.exists(_below(root, "/dev/kvm")):
        return True
    flags = _read_text(root, "/proc/cpuinfo") or ""
    return any(line.startswith("flags") and (" vmx" in line or " svm" in line) for line in flags.splitlines())


# --------------------------------------------------------------------------- planning


def _resolve_type(vm: dict, kvm) -> tuple:
    """(domain type, warning or None)."""
    if vm["domain_type"] != "auto":
        return vm["domain_type"], None
    if kvm:
        return "kvm", None
    return "qemu", (f"{vm['name']}: KVM is not available (no /dev/kvm, or virtualization is off in the firmware): "
                    f"the VM runs under QEMU's emulation (TCG), much slower; turn on VT-x/AMD-V in the firmware for kvm")


def _plan_one(root: str, state_root: str, vm: dict, virsh, kvm, check_mode: bool) -> dict:
    """Render one VM and compare it with what libvirt (or, without libvirt, the state file) holds."""
    firmware = find_ovmf(root, vm["loader"], vm["nvram_template"]) if vm["firmware"] == "efi" else {}
    errors, warnings = _host_checks(root, vm, firmware, check_mode)
    domain_type, warning = _resolve_type(vm, kvm)
    if warning:
        warnings.append(warning)
    state_xml = _read_text(state_root, state_path(vm["name"]))
    existing = virsh.inactive_xml(vm["name"]) if virsh else None
    known = existing if virsh else state_xml
    uuid = domain.domain_uuid(known) or (None if check_mode else str(uuidlib.uuid4()))
    rendered = domain.render(vm, domain_type, firmware, uuid=uuid)
    if existing is not None and domain.stored_hash(existing) is None:
        warnings.append(f"{vm['name']}: a domain of that name exists that this collection did not define; it is replaced")
    before = state_xml if state_xml is not None else (existing or "")
    return {
        "vm": vm, "errors": errors, "warnings": warnings, "firmware": firmware, "domain_type": domain_type,
        "rendered": rendered, "existed": None if virsh is None else existing is not None,
        "define": domain.stored_hash(known) != rendered["hash"],
        "diff": {"before": before, "after": rendered["xml"],
                 "before_header": f"libvirt domain {vm['name']} ({state_path(vm['name'])})", "after_header": f"libvirt domain {vm['name']}"},
    }


def _connect(root: str, check_mode: bool, run_command, uri: str) -> tuple:
    """(Virsh or None, warnings). On a root other than ``/`` libvirt is never asked."""
    if not is_live(root):
        if not check_mode:
            raise StageError(f"VMs can only be defined on the running system (root: /), not below {root}; "
                             f"run in check mode to preview the domain XML. Nothing was changed", {"changed": False, "vms": []})
        return None, []
    virsh = libvirt.Virsh(run_command, uri)
    why = virsh.unavailable()
    if why is None:
        return virsh, []
    if check_mode:
        return None, [f"{why}. The domains are rendered without asking libvirt"]
    raise StageError(f"{why}. Nothing was changed", {"changed": False, "vms": []})


def plan(root: str, vms, check_mode: bool, run_command, uri: str = libvirt.DEFAULT_URI, state_root=None) -> tuple:
    """(Virsh or None, per-VM plans, warnings); StageError lists every problem of every VM."""
    try:
        specs = domain.validate_all(vms)
    except domain.SpecError as exc:
        raise StageError(f"{exc}. Nothing was changed", {"changed": False, "vms": []}) from exc
    virsh, warnings = _connect(root, check_mode, run_command, uri)
    kvm = None
    if any(vm["domain_type"] == "auto" for vm in specs):
        kvm = virsh.kvm_available() if virsh else _guess_kvm(root)
    plans = [_plan_one(root, state_root or root, vm, virsh, kvm, check_mode) for vm in specs]
    errors = [e for p in plans for e in p["errors"]]
    warnings += [w for p in plans for w in p["warnings"]]
    if errors:
        raise StageError("; ".join(errors) + ". Nothing was changed",
                         {"changed": False, "vms": [_public(p) for p in plans], "warnings": warnings})
    return virsh, plans, warnings


# --------------------------------------------------------------------------- applying


def _public(p: dict) -> dict:
    vm = p["vm"]
    return {
        "name": vm["name"], "changed": False, "defined": p["define"], "existed": p["existed"],
        "hash": p["rendered"]["hash"], "domain_type": p["domain_type"],
        "firmware": {"type": vm["firmware"], "loader": p["firmware"].get("loader"), "nvram_template": p["firmware"].get("nvram_template")},
        "devices": [d["address"] for d in vm["devices"]], "xml": p["rendered"]["xml"], "state_file": state_path(vm["name"]),
        "diff": p["diff"], "started": False, "state": None, "stats": None,
    }


def _define(state_root: str, p: dict, virsh, check_mode: bool) -> dict:
    vm, xml = p["vm"], p["rendered"]["xml"]
    out = _public(p)
    if p["define"] and not check_mode:
        try:
            virsh.define(xml)
        except libvirt.LibvirtError as exc:
            raise StageError(f"{vm['name']}: libvirt refused the domain: {exc}", out) from exc
        Journal(state_root).record(STAGE, "domain", name=vm["name"], hash=p["rendered"]["hash"], action="define")
    written = Journal(state_root).write_file(STAGE, state_path(vm["name"]), xml.encode("utf-8"), mode="0644", check_mode=check_mode)
    out["changed"] = p["define"] or written["changed"]
    return out


def _stats(monitor, waited: dict) -> dict:
    return {
        "runtime_seconds": waited["runtime_seconds"], "shutdown": waited["shutdown"], "reason": waited["reason"],
        "cpu_time_seconds": None if monitor.cpu_seconds is None else round(monitor.cpu_seconds, 3),
        "max_memory_mib": monitor.max_memory_mib, "gpu": monitor.gpu(), "samples": monitor.samples,
    }


def _running(state) -> bool:
    return state is not None and state[0] not in ("shut off", "crashed")


def _run(root: str, p: dict, out: dict, virsh, check_mode: bool, poll: float) -> list:
    """Start (when asked and not running) and wait (when asked and running); fills ``out``. Returns warnings."""
    vm, name = p["vm"], p["vm"]["name"]
    if virsh is None:  # check mode without libvirt to ask
        out["started"] = vm["start"]
        out["changed"] = out["changed"] or vm["start"]
        return []
    running = _running(virsh.state(name))
    if check_mode:
        out["started"] = vm["start"] and not running
        out["changed"] = out["changed"] or out["started"]
        return []
    if vm["start"] and not running:
        try:
            virsh.start(name)
        except libvirt.LibvirtError as exc:
            out["changed"] = True
            hint = ("; if KVM does not work on this host (nested virtualization, a VM without VT-x/AMD-V passed through), "
                    "set domain_type: qemu" if p["domain_type"] == "kvm" else "")
            raise StageError(f"{name} is defined but did not start: {exc}{hint}", out) from exc
        out["started"] = out["changed"] = running = True
    warnings = []
    if vm["wait"] and running:
        interval = vm["monitor"]["interval_seconds"]
        monitor = libvirt.Monitor(virsh, name, root, [d["address"] for d in vm["devices"]], interval)
        waited = libvirt.wait_shutoff(virsh, name, vm["wait_timeout"], monitor, poll=min(poll, interval or poll))
        out["stats"] = _stats(monitor, waited)
        if waited["shutdown"] == "timeout":
            out["state"] = "running"
            raise StageError(f"{name} did not power off within {vm['wait_timeout']:g} s; it was left running: stop it from "
                             f"inside the guest, or with `virsh shutdown {name}` (`virsh destroy {name}` cuts the power)", out)
        if waited["shutdown"] == "crashed":
            warnings.append(f"{name} crashed ({waited['reason']}); see /var/log/libvirt/qemu/{name}.log")
    return warnings


def apply(root: str, vms, check_mode: bool, run_command, uri: str = libvirt.DEFAULT_URI,
          poll: float = libvirt.POLL_SECONDS, state_root=None) -> dict:
    """Define every VM whose rendering changed, then start and wait for those that ask for it.

    ``state_root`` holds the journal and the state files (default ``root``; the libvirt tests keep
    them out of the test machine's own). Returns ``{"changed", "vms": [per VM], "warnings"}``; see
    the module's RETURN for the per-VM keys. Raises StageError (with the same shape in ``result``).
    """
    virsh, plans, warnings = plan(root, vms, check_mode, run_command, uri, state_root)
    if not check_mode:
        try:
            Journal(state_root or root).preflight([state_path(p["vm"]["name"]) for p in plans])
        except JournalError as exc:
            raise StageError(str(exc), {"changed": False, "vms": [_public(p) for p in plans], "warnings": warnings}) from exc
    results = []
    try:
        for p in plans:
            name = p["vm"]["name"]
            if virsh is not None and p["define"] and _running(virsh.state(name)):
                warnings.append(f"{name} is running: its new definition applies from its next start")
            out = _define(state_root or root, p, virsh, check_mode)
            results.append(out)
            if p["vm"]["start"] or p["vm"]["wait"]:
                warnings += _run(root, p, out, virsh, check_mode, poll)
            if virsh is not None:
                state = virsh.state(name)
                out["state"] = None if state is None else state[0]
    except StageError as exc:
        results += [_public(q) for q in plans[len(results):]]
        exc.result = {"changed": any(r["changed"] for r in results), "vms": results, "warnings": warnings}
        raise
    except JournalError as exc:
        raise StageError(str(exc), {"changed": any(r["changed"] for r in results), "vms": results, "warnings": warnings}) from exc
    return {"changed": any(r["changed"] for r in results), "vms": results, "warnings": warnings}
