# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Distribution, kernel, CPU, firmware boot mode and chassis of a host."""
from __future__ import annotations

import gzip
import re
import shlex
import zlib

_DECIMAL = re.compile(r"^[0-9]{1,3}$")
_KERNEL_RELEASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$")
SECURE_BOOT_VAR = "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
# SMBIOS chassis types of portable machines (DMTF DSP0134, 7.4.1).
LAPTOP_CHASSIS = {8: "portable", 9: "laptop", 10: "notebook", 11: "hand held", 14: "sub notebook",
                  30: "tablet", 31: "convertible", 32: "detachable"}
MODULE_DIRS = ("usr/lib/modules", "lib/modules")


def parse_os_release(text: str) -> dict:
    values = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _sep, raw = line.partition("=")
        try:
            parts = shlex.split(raw)
            values[key.strip()] = parts[0] if parts else ""
        except ValueError:
            values[key.strip()] = raw.strip().strip("\"'")
    return values


def distribution(fs) -> dict:
    text = fs.read_text("etc/os-release")
    if text is None:
        text = fs.read_text("usr/lib/os-release")
    if text is None:
        fs.warn("etc/os-release and usr/lib/os-release: missing; distribution unknown")
    v = parse_os_release(text or "")
    return {
        "id": v.get("ID") or None,
        "id_like": (v.get("ID_LIKE") or "").split(),
        "name": v.get("NAME") or None,
        "pretty_name": v.get("PRETTY_NAME") or None,
        "version_id": v.get("VERSION_ID") or None,
        "codename": v.get("VERSION_CODENAME") or None,
        "family": _family(v.get("ID"), (v.get("ID_LIKE") or "").split()),
    }


FAMILIES = (("debian", ("debian", "ubuntu")), ("redhat", ("fedora", "rhel", "centos")),
            ("arch", ("arch",)), ("suse", ("suse", "opensuse")))


def _family(os_id, like: list):
    ids = [os_id or ""] + like
    for fam, members in FAMILIES:
        if any(i == m or i.startswith(m + "-") for i in ids for m in members):
            return fam
    return None


def installed_kernels(fs) -> list:
    """Kernel versions with a modules directory (``/lib`` and ``/usr/lib`` may both exist)."""
    found = set()
    for d in MODULE_DIRS:
        for k in fs.listdir(d):
            if fs.isdir(f"{d}/{k}/kernel") or fs.isfile(f"{d}/{k}/modules.dep"):
                found.add(k)
    return sorted(found, key=_kernel_sort_key)


def _kernel_sort_key(k: str):
    return [(0, int(x), "") if x.isdigit() else (1, 0, x) for x in re.split(r"[.\-+_]", k)]


def kernel_version_tuple(k) -> tuple:
    m = re.match(r"(\d+)\.(\d+)", k or "")
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def kernel(fs) -> dict:
    running = fs.read_line("proc/sys/kernel/osrelease", expected=True)
    if running is not None and not _KERNEL_RELEASE.match(running):
        fs.warn(f"proc/sys/kernel/osrelease: unexpected content {running[:40]!r}, running kernel unknown")
        running = None
    return {"running": running, "installed": installed_kernels(fs)}


def kernel_config(fs, kver) -> dict:
    """CONFIG_* of a kernel from /boot/config-<v>, the modules dir, or /proc/config.gz."""
    text = None
    if kver:
        text = fs.read_text(f"boot/config-{kver}")
        for d in MODULE_DIRS:
            if text is None:
                text = fs.read_text(f"{d}/{kver}/config")
    if text is None and kver and kver == fs.read_line("proc/sys/kernel/osrelease"):
        raw = fs.read_bytes("proc/config.gz")
        if raw:
            try:
                text = gzip.decompress(raw).decode("utf-8", "replace")
            except (OSError, EOFError, zlib.error):
                fs.warn("proc/config.gz: not a valid gzip file, ignored")
    config = {}
    for line in (text or "").splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _sep, val = line.partition("=")
            config[key] = val.strip().strip('"')
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            config[line[2:-len(" is not set")]] = "n"
    return config


def cpu(fs) -> dict:
    text = fs.read_text("proc/cpuinfo", expected=True) or ""
    vendor_id = model = None
    flags: set = set()
    threads = 0
    for line in text.splitlines():
        key, _sep, val = line.partition(":")
        key = key.strip()
        if key == "processor":
            threads += 1
        elif key == "vendor_id" and vendor_id is None:
            vendor_id = val.strip()
        elif key == "model name" and model is None:
            model = val.strip()
        elif key == "flags" and not flags:
            flags = set(val.split())
    vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "amd"}.get(vendor_id or "", "other")
    virt = "vmx" if "vmx" in flags else "svm" if "svm" in flags else None
    return {
        "vendor": vendor if vendor_id else None,
        "vendor_id": vendor_id,
        "model_name": model,
        "threads": threads or None,
        "virtualization_flag": virt,
        "virtualization_enabled": virt is not None,
        "hypervisor": "hypervisor" in flags,
    }


def boot(fs) -> dict:
    if not fs.isdir("sys/firmware"):
        fs.warn("sys/firmware: missing; boot mode unknown")
        return {"mode": None, "secure_boot": None}
    uefi = fs.isdir("sys/firmware/efi")
    secure = None
    if uefi:
        raw = fs.read_bytes(SECURE_BOOT_VAR)
        if raw is not None and len(raw) >= 5:
            secure = raw[4] == 1
        elif raw is not None:
            fs.warn(f"{SECURE_BOOT_VAR}: unexpected size {len(raw)}, Secure Boot state unknown")
    else:
        secure = False
    return {"mode": "uefi" if uefi else "bios", "secure_boot": secure}


def machine(fs) -> dict:
    raw = fs.read_line("sys/class/dmi/id/chassis_type")
    chassis = int(raw) if raw and _DECIMAL.match(raw) else None
    if raw is not None and chassis is None:
        fs.warn(f"sys/class/dmi/id/chassis_type: unexpected content {raw[:20]!r}")
    return {
        "vendor": fs.read_line("sys/class/dmi/id/sys_vendor"),
        "product": fs.read_line("sys/class/dmi/id/product_name"),
        "chassis_type": chassis,
        "laptop": chassis in LAPTOP_CHASSIS if chassis is not None else None,
    }


def efi_boot_current(fs):
    """Description and loader path of the EFI boot entry the machine booted from, if readable."""
    guid = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
    cur = fs.read_bytes(f"sys/firmware/efi/efivars/BootCurrent-{guid}")
    if not cur or len(cur) < 6:
        return None
    num = int.from_bytes(cur[4:6], "little")
    opt = fs.read_bytes(f"sys/firmware/efi/efivars/Boot{num:04X}-{guid}")
    if not opt or len(opt) < 10:
        return None
    data = opt[4:]
    fp_len = int.from_bytes(data[4:6], "little")
    end = 6
    while end + 1 < len(data) and data[end:end + 2] != b"\x00\x00":
        end += 2
    desc = data[6:end].decode("utf-16-le", "replace")
    fp = data[end + 2:end + 2 + fp_len]
    path = None
    i = 0
    while i + 4 <= len(fp):
        typ, sub, length = fp[i], fp[i + 1], int.from_bytes(fp[i + 2:i + 4], "little")
        if length < 4:
            break
        if typ == 4 and sub == 4:
            path = fp[i + 4:i + length].decode("utf-16-le", "replace").rstrip("\x00")
        if typ == 0x7F:
            break
        i += length
    return {"number": f"{num:04X}", "description": desc, "path": path}
