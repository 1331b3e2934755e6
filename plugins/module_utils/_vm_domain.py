# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM spec (the ``vms`` option) validated and rendered as libvirt domain XML. Pure: no file or
command is touched here; the stage checks the host (devices, firmware, disks) and runs virsh.

The rendered domain carries ``<metadata><vfio:domain hash=.../></metadata>``: the sha256 of the
rendering without the metadata and without the UUID (libvirt's, taken over from an existing
domain). An existing domain whose hash equals the new rendering's is left alone.
"""
from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET

NAMESPACE = "urn:exliar-vfio:domain:1"
METADATA_TAG = f"{{{NAMESPACE}}}domain"
ARCH = "x86_64"

NAME_RE = re.compile(r"^[A-Za-z0-9_.+][A-Za-z0-9_.+-]{0,63}$")
BDF_RE = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{2}):([01][0-9a-f])\.([0-7])$")
HEX4_RE = re.compile(r"^(0x)?[0-9a-f]{4}$")
CLASS_RE = re.compile(r"^(0x)?[0-9a-f]{6}$")
VENDOR_ID_RE = re.compile(r"^[!-+\--~]{1,12}$")  # visible ASCII except ',' (QEMU's -cpu separator)

FIRMWARES = ("efi", "bios")
DOMAIN_TYPES = ("kvm", "qemu", "auto")
DISK_FORMATS = ("qcow2", "raw")
DISK_BUSES = ("virtio", "sata", "scsi")
DISK_DEVICES = ("disk", "cdrom")
MIN_MEMORY_MIB = 64
MIN_MONITOR_INTERVAL = 0.1
DEFAULT_WAIT_TIMEOUT = 600

TOP_KEYS = ("name", "memory_mib", "vcpus", "firmware", "loader", "nvram_template", "machine", "domain_type", "disks",
            "kernel", "initrd", "cmdline", "devices", "features", "monitor", "start", "wait", "wait_timeout")
DISK_KEYS = ("path", "format", "bus", "device", "readonly")
DEVICE_KEYS = ("address", "vendor_id", "device_id", "class")
FEATURE_KEYS = ("hypervisor_hidden", "vendor_id", "kvm_hidden")
MONITOR_KEYS = ("interval_seconds",)


class SpecError(ValueError):
    """A VM spec is wrong; the message names the VM, the option and what to write instead."""


# --------------------------------------------------------------------------- validation


def _unknown(where: str, value: dict, known: tuple, problems: list) -> None:
    extra = sorted(k for k in value if k not in known)
    if extra:
        problems.append(f"{where}: unknown option(s) {', '.join(extra)}; known: {', '.join(known)}")


def _int(value, where: str, minimum: int, problems: list):
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value), 10)
        except (TypeError, ValueError):
            problems.append(f"{where} must be an integer >= {minimum}, not {value!r}")
            return None
    if value < minimum:
        problems.append(f"{where} must be an integer >= {minimum}, not {value}")
        return None
    return value


def _number(value, where: str, minimum: float, problems: list):
    if isinstance(value, bool):
        value = None
    try:
        number = float(value)
    except (TypeError, ValueError):
        problems.append(f"{where} must be a number of seconds >= {minimum}, not {value!r}")
        return None
    if not number >= minimum:  # NaN too
        problems.append(f"{where} must be a number of seconds >= {minimum}, not {value!r}")
        return None
    return number


def _bool(value, where: str, default: bool, problems: list) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true", "on", "1"):
        return True
    if text in ("no", "false", "off", "0"):
        return False
    problems.append(f"{where} must be true or false, not {value!r}")
    return default


def _choice(value, where: str, choices: tuple, default, problems: list):
    if value is None:
        return default
    if value not in choices:
        problems.append(f"{where} must be one of {', '.join(choices)}, not {value!r}")
        return default
    return value


def _abs_path(value, where: str, problems: list, required: bool = False):
    if value is None or value == "":
        if required:
            problems.append(f"{where} is required: give the absolute path on the host")
        return None
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        problems.append(f"{where} must be an absolute path on the host, not {value!r}")
        return None
    return value


def _optional_dict(value, where: str, known: tuple, problems: list) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where} must be a mapping with {', '.join(known)}, not {value!r}")
        return {}
    _unknown(where, value, known, problems)
    return value


def _list_of_dicts(value, where: str, problems: list) -> list:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        problems.append(f"{where} must be a list of mappings, not {value!r}")
        return []
    return value


def default_format(path: str) -> str:
    """qcow2 for ``*.qcow2``/``*.qcow``, raw for anything else (``.img``, ``.raw``, ``.iso``, block devices)."""
    return "qcow2" if path.lower().endswith((".qcow2", ".qcow")) else "raw"


def _disks(value, where: str, problems: list) -> list:
    out = []
    for index, disk in enumerate(_list_of_dicts(value, where, problems)):
        here = f"{where}[{index}]"
        _unknown(here, disk, DISK_KEYS, problems)
        path = _abs_path(disk.get("path"), f"{here}.path", problems, required=True)
        device = _choice(disk.get("device"), f"{here}.device", DISK_DEVICES, "disk", problems)
        bus = _choice(disk.get("bus"), f"{here}.bus", DISK_BUSES, "sata" if device == "cdrom" else "virtio", problems)
        if device == "cdrom" and bus == "virtio":
            problems.append(f"{here}: a cdrom cannot be on the virtio bus; use bus: sata (or scsi)")
        fmt = _choice(disk.get("format"), f"{here}.format", DISK_FORMATS, default_format(path or ""), problems)
        readonly = _bool(disk.get("readonly"), f"{here}.readonly", device == "cdrom", problems)
        out.append({"path": path, "format": fmt, "bus": bus, "device": device, "readonly": readonly or device == "cdrom"})
    return out


def _hex(value, pattern, where: str, what: str, problems: list):
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if not pattern.match(text):
        problems.append(f"{where} must be {what}, not {value!r}")
        return None
    return text[2:] if text.startswith("0x") else text


def _devices(value, where: str, problems: list) -> list:
    out, seen = [], set()
    for index, device in enumerate(_list_of_dicts(value, where, problems)):
        here = f"{where}[{index}]"
        _unknown(here, device, DEVICE_KEYS, problems)
        address = str(device.get("address") or "").strip().lower()
        if not BDF_RE.match(address):
            problems.append(f"{here}.address must be a full PCI address DDDD:BB:DD.F such as 0000:01:00.0, "
                            f"not {device.get('address')!r}")
            continue
        if address in seen:
            problems.append(f"{here}.address {address} is listed twice; list each PCI function once")
            continue
        seen.add(address)
        out.append({
            "address": address,
            "vendor_id": _hex(device.get("vendor_id"), HEX4_RE, f"{here}.vendor_id", "4 hex digits such as 10de", problems),
            "device_id": _hex(device.get("device_id"), HEX4_RE, f"{here}.device_id", "4 hex digits such as 2204", problems),
            "class": _hex(device.get("class"), CLASS_RE, f"{here}.class", "6 hex digits such as 030000", problems),
        })
    return sorted(out, key=lambda d: d["address"])


def _features(value, where: str, problems: list) -> dict:
    raw = _optional_dict(value, where, FEATURE_KEYS, problems)
    vendor_id = raw.get("vendor_id")
    if vendor_id is not None and vendor_id != "":
        if not isinstance(vendor_id, str) or not VENDOR_ID_RE.match(vendor_id):
            problems.append(f"{where}.vendor_id must be 1 to 12 visible ASCII characters without spaces or commas "
                            f"(e.g. 'exliarvfio'), not {vendor_id!r}")
            vendor_id = None
    else:
        vendor_id = None
    return {
        "hypervisor_hidden": _bool(raw.get("hypervisor_hidden"), f"{where}.hypervisor_hidden", False, problems),
        "vendor_id": vendor_id,
        "kvm_hidden": _bool(raw.get("kvm_hidden"), f"{where}.kvm_hidden", False, problems),
    }


def validate(spec, where: str = "vm") -> dict:
    """The spec with defaults filled in and values normalised; SpecError lists every problem at once."""
    if not isinstance(spec, dict):
        raise SpecError(f"{where} must be a mapping with at least name, memory_mib and vcpus, not {spec!r}")
    problems: list = []
    name = spec.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        problems.append(f"{where}.name must be 1 to 64 characters of A-Z a-z 0-9 _ . + - not starting with '-', not {name!r}")
    else:
        where = f"{where} ({name})"
    _unknown(where, spec, TOP_KEYS, problems)
    out = {"name": name}
    out["memory_mib"] = _int(spec.get("memory_mib"), f"{where}.memory_mib", MIN_MEMORY_MIB, problems)
    out["vcpus"] = _int(spec.get("vcpus"), f"{where}.vcpus", 1, problems)
    out["firmware"] = _choice(spec.get("firmware"), f"{where}.firmware", FIRMWARES, "efi", problems)
    out["loader"] = _abs_path(spec.get("loader"), f"{where}.loader", problems)
    out["nvram_template"] = _abs_path(spec.get("nvram_template"), f"{where}.nvram_template", problems)
    if out["firmware"] == "bios" and (out["loader"] or out["nvram_template"]):
        problems.append(f"{where}: loader and nvram_template apply to firmware: efi only; remove them or set firmware: efi")
    machine = spec.get("machine") or "q35"
    if not isinstance(machine, str) or not re.match(r"^[A-Za-z0-9_.-]{1,64}$", machine):
        problems.append(f"{where}.machine must be a QEMU machine type such as q35 or pc-q35-7.2, not {machine!r}")
    out["machine"] = machine
    out["domain_type"] = _choice(spec.get("domain_type"), f"{where}.domain_type", DOMAIN_TYPES, "auto", problems)
    out["disks"] = _disks(spec.get("disks"), f"{where}.disks", problems)
    out["kernel"] = _abs_path(spec.get("kernel"), f"{where}.kernel", problems)
    out["initrd"] = _abs_path(spec.get("initrd"), f"{where}.initrd", problems)
    cmdline = spec.get("cmdline")
    if cmdline is not None and not isinstance(cmdline, str):
        problems.append(f"{where}.cmdline must be a string, not {cmdline!r}")
        cmdline = None
    out["cmdline"] = cmdline or None
    if not out["kernel"] and (out["initrd"] or out["cmdline"]):
        problems.append(f"{where}: initrd and cmdline need kernel (direct kernel boot); add kernel or remove them")
    out["devices"] = _devices(spec.get("devices"), f"{where}.devices", problems)
    out["features"] = _features(spec.get("features"), f"{where}.features", problems)
    monitor = _optional_dict(spec.get("monitor"), f"{where}.monitor", MONITOR_KEYS, problems)
    interval = monitor.get("interval_seconds")
    out["monitor"] = {"interval_seconds": None if interval is None else
                      _number(interval, f"{where}.monitor.interval_seconds", MIN_MONITOR_INTERVAL, problems)}
    out["start"] = _bool(spec.get("start"), f"{where}.start", False, problems)
    out["wait"] = _bool(spec.get("wait"), f"{where}.wait", out["start"], problems)
    timeout = spec.get("wait_timeout")
    out["wait_timeout"] = DEFAULT_WAIT_TIMEOUT if timeout is None else _number(timeout, f"{where}.wait_timeout", 1, problems)
    if problems:
        raise SpecError("; ".join(problems))
    return out


def validate_all(specs) -> list:
    """Every spec validated (names unique); SpecError lists the problems of all of them."""
    if not isinstance(specs, list):
        raise SpecError(f"vms must be a list of VM specs, not {specs!r}")
    problems, out, names = [], [], set()
    for index, spec in enumerate(specs):
        try:
            vm = validate(spec, f"vms[{index}]")
        except SpecError as exc:
            problems.append(str(exc))
            continue
        if vm["name"] in names:
            problems.append(f"vms[{index}]: the name {vm['name']} is used twice; VM names must be unique")
        names.add(vm["name"])
        out.append(vm)
    if problems:
        raise SpecError("; ".join(problems))
    return out


# --------------------------------------------------------------------------- guest PCI topology


def is_q35(machine: str) -> bool:
    return machine == "q35" or "q35" in machine.split("-")


def slot_groups(devices: list) -> list:
    """Host functions grouped by host slot (``0000:01:00``), sorted; each group keeps its function numbers,
    except a group without function 0, renumbered from 0 (a guest only scans a slot that has a function 0)."""
    groups: dict = {}
    for device in devices:
        groups.setdefault(device["address"][:-2], []).append(device["address"])
    out = []
    for slot in sorted(groups):
        addresses = sorted(groups[slot])
        functions = [int(a[-1]) for a in addresses]
        if 0 not in functions:
            functions = list(range(len(addresses)))
        out.append({"slot": slot, "functions": list(zip(addresses, functions))})
    return out


def topology_warnings(devices: list) -> list:
    return [f"the functions of host slot {g['slot']} ({', '.join(a for a, _f in g['functions'])}) do not include "
            f"function 0: they are renumbered from 0 in the guest" for g in slot_groups(devices)
            if not any(a.endswith(".0") for a, _f in g["functions"])]


# --------------------------------------------------------------------------- rendering


def _sub(parent, tag: str, text=None, **attrs):
    element = ET.SubElement(parent, tag, {k.rstrip("_"): str(v) for k, v in attrs.items()})
    if text is not None:
        element.text = str(text)
    return element


def _pci_address(parent, address: str, **extra):
    domain, bus, slot, function = BDF_RE.match(address).groups()
    return _sub(parent, "address", domain=f"0x{domain}", bus=f"0x{bus}", slot=f"0x{slot}", function=f"0x{function}", **extra)


def _os(domain, vm: dict, firmware: dict) -> None:
    os_el = _sub(domain, "os")
    _sub(os_el, "type", "hvm", arch=ARCH, machine=vm["machine"])
    if vm["firmware"] == "efi":
        _sub(os_el, "loader", firmware["loader"], readonly="yes", type_="pflash")
        if firmware.get("nvram_template"):
            _sub(os_el, "nvram", template=firmware["nvram_template"])
    if vm["kernel"]:
        _sub(os_el, "kernel", vm["kernel"])
        if vm["initrd"]:
            _sub(os_el, "initrd", vm["initrd"])
        if vm["cmdline"]:
            _sub(os_el, "cmdline", vm["cmdline"])
    else:
        _sub(os_el, "boot", dev="hd")
        if any(d["device"] == "cdrom" for d in vm["disks"]):
            _sub(os_el, "boot", dev="cdrom")


def _features_and_cpu(domain, vm: dict, domain_type: str) -> None:
    features = vm["features"]
    feat = _sub(domain, "features")
    _sub(feat, "acpi")
    _sub(feat, "apic")
    if features["vendor_id"]:
        hyperv = _sub(feat, "hyperv", mode="custom")
        _sub(hyperv, "vendor_id", state="on", value=features["vendor_id"])
    if features["kvm_hidden"]:
        _sub(_sub(feat, "kvm"), "hidden", state="on")
    if domain_type == "kvm":
        cpu = _sub(domain, "cpu", mode="host-passthrough", check="none", migratable="on")
    elif features["hypervisor_hidden"]:
        cpu = _sub(domain, "cpu", mode="host-model", check="none")  # TCG cannot pass the host CPU through
    else:
        return
    if features["hypervisor_hidden"]:
        _sub(cpu, "feature", policy="disable", name="hypervisor")


def _disk_targets(disks: list) -> list:
    """vda, vdb... for virtio; sda, sdb... shared by sata and scsi (both appear as sdX)."""
    counters = {"vd": 0, "sd": 0}
    out = []
    for disk in disks:
        prefix = "vd" if disk["bus"] == "virtio" else "sd"
        out.append(prefix + _letters(counters[prefix]))
        counters[prefix] += 1
    return out


def _letters(index: int) -> str:
    text = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        text = chr(ord("a") + rest) + text
    return text


def _devices_xml(domain, vm: dict) -> None:
    devices = _sub(domain, "devices")
    for disk, target in zip(vm["disks"], _disk_targets(vm["disks"])):
        el = _sub(devices, "disk", type_="file", device=disk["device"])
        _sub(el, "driver", name="qemu", type_=disk["format"])
        _sub(el, "source", file=disk["path"])
        _sub(el, "target", dev=target, bus=disk["bus"])
        if disk["readonly"]:
            _sub(el, "readonly")
    if any(d["bus"] == "scsi" for d in vm["disks"]):
        _sub(devices, "controller", type_="scsi", index="0", model="virtio-scsi")
    q35 = is_q35(vm["machine"])
    for number, group in enumerate(slot_groups(vm["devices"]), start=1):
        if q35:  # one pcie-root-port per host slot: the guest sees the card as a PCIe endpoint on its own port
            _sub(devices, "controller", type_="pci", index=str(number), model="pcie-root-port")
            bus, slot = number, 0
        else:  # i440fx: conventional PCI slots on the root bus, from 0x10 up (clear of libvirt's own devices)
            bus, slot = 0, 0x0f + number
        multifunction = len(group["functions"]) > 1
        for address, function in group["functions"]:
            hostdev = _sub(devices, "hostdev", mode="subsystem", type_="pci", managed="no")
            _pci_address(_sub(hostdev, "source"), address)
            extra = {"multifunction": "on"} if multifunction and function == 0 else {}
            _pci_address(hostdev, f"0000:{bus:02x}:{slot:02x}.{function}", type_="pci", **extra)
    _sub(devices, "serial", type_="pty")
    _sub(_sub(devices, "console", type_="pty"), "target", type_="serial", port="0")
    _sub(devices, "memballoon", model="none")


def _tree(vm: dict, domain_type: str, firmware: dict, uuid=None) -> ET.Element:
    domain = ET.Element("domain", {"type": domain_type})
    _sub(domain, "name", vm["name"])
    if uuid:
        _sub(domain, "uuid", uuid)
    _sub(domain, "memory", vm["memory_mib"], unit="MiB")
    _sub(domain, "vcpu", vm["vcpus"], placement="static")
    _os(domain, vm, firmware)
    _features_and_cpu(domain, vm, domain_type)
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    _devices_xml(domain, vm)
    return domain


def _text(element: ET.Element) -> str:
    ET.indent(element, space="  ")
    return ET.tostring(element, encoding="unicode") + "\n"


def render(vm: dict, domain_type: str, firmware=None, uuid=None) -> dict:
    """``{"xml", "hash"}`` of a validated spec. ``domain_type`` is the resolved one (kvm or qemu);
    ``firmware`` is ``{"loader", "nvram_template"}`` for EFI; ``uuid`` the existing domain's, if any."""
    if domain_type not in ("kvm", "qemu"):
        raise SpecError(f"cannot render domain type {domain_type!r}: resolve auto to kvm or qemu first")
    if vm["firmware"] == "efi" and not (firmware or {}).get("loader"):
        raise SpecError(f"{vm['name']}: firmware efi needs an OVMF loader path")
    digest = hashlib.sha256(_text(_tree(vm, domain_type, firmware or {})).encode()).hexdigest()
    domain = _tree(vm, domain_type, firmware or {}, uuid)
    metadata = ET.Element("metadata")
    ET.SubElement(metadata, METADATA_TAG, {"hash": digest})
    domain.insert(2 if uuid else 1, metadata)
    ET.register_namespace("vfio", NAMESPACE)
    return {"xml": _text(domain), "hash": digest}


# --------------------------------------------------------------------------- reading libvirt's XML back


def parse(xml_text):
    """The root element of a domain XML, or None when it is not one."""
    if not xml_text:
        return None
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return None
    return root if root.tag == "domain" else None


def stored_hash(xml_text):
    """Our metadata hash in a domain's XML (as libvirt dumps it), or None."""
    root = parse(xml_text)
    element = None if root is None else root.find(f"metadata/{METADATA_TAG}")
    return None if element is None else element.get("hash")


def domain_uuid(xml_text):
    root = parse(xml_text)
    element = None if root is None else root.find("uuid")
    return None if element is None or not element.text else element.text.strip()
