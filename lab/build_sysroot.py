"""Build host sysroots from real-machine profiles (see docs/profiles.md).

The tree is laid out the way a running kernel lays out sysfs, so both our detection and
real tools (``lspci -A linux-sysfs -O sysfs.path=<root>/sys``) read it unchanged.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import struct
import sys
from pathlib import Path

import yaml

LAB_DIR = Path(__file__).resolve().parent
PROFILE_DIR = LAB_DIR / "profiles"
DEFAULT_OUT = LAB_DIR / ".sysroots"
BUILDER_VERSION = "3"  # bump when the layout changes: invalidates built sysroots

BDF_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")
ID_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}$")
CLASS_RE = re.compile(r"^[0-9a-f]{6}$")
PCIE_TYPES = {
    "endpoint": 0x0, "legacy": 0x1, "root_port": 0x4, "upstream": 0x5, "downstream": 0x6,
    "pcie_pci_bridge": 0x7, "rciep": 0x9, "rcec": 0xA,
}
# Where a module lives in the kernel tree (relative to kernel/), for the modules we care about.
MODULE_PATHS = {
    "vfio": "drivers/vfio/vfio", "vfio_pci": "drivers/vfio/pci/vfio-pci",
    "vfio_pci_core": "drivers/vfio/pci/vfio-pci-core", "vfio_iommu_type1": "drivers/vfio/vfio_iommu_type1",
    "vfio_virqfd": "drivers/vfio/vfio_virqfd", "kvm": "arch/x86/kvm/kvm", "kvm_intel": "arch/x86/kvm/kvm-intel",
    "kvm_amd": "arch/x86/kvm/kvm-amd", "irqbypass": "virt/lib/irqbypass",
}
SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"


class ProfileError(ValueError):
    """A profile that cannot describe a real machine."""


def load_profile(path: Path) -> dict:
    data = yaml.safe_load(Path(path).read_text())
    validate_profile(data, Path(path).stem)
    return data


def validate_profile(p: dict, stem: str | None = None) -> None:
    if not isinstance(p, dict):
        raise ProfileError("a profile is a mapping")
    pid = p.get("id")
    if stem is not None and pid != stem:
        raise ProfileError(f"profile id {pid!r} must equal its file name {stem!r}")
    if not p.get("sources"):
        raise ProfileError(f"{pid}: cite at least one source (sources: [{{url, used_for}}])")
    devs = p.get("pci") or []
    seen = {}
    for d in devs:
        a = str(d.get("address", ""))
        if not BDF_RE.match(a):
            raise ProfileError(f"{pid}: bad PCI address {a!r} (want 0000:01:00.0)")
        if a in seen:
            raise ProfileError(f"{pid}: {a} listed twice")
        seen[a] = d
        if not ID_RE.match(str(d.get("id", ""))):
            raise ProfileError(f"{pid}: {a}: id must be vendor:device in lowercase hex")
        if d.get("subsys") is not None and not ID_RE.match(str(d["subsys"])):
            raise ProfileError(f"{pid}: {a}: subsys must be vendor:device in lowercase hex")
        if not CLASS_RE.match(str(d.get("class", ""))):
            raise ProfileError(f"{pid}: {a}: class must be 6 lowercase hex digits")
        if d.get("pcie") is not None and d["pcie"] not in PCIE_TYPES and d["pcie"] != "pci":
            raise ProfileError(f"{pid}: {a}: unknown pcie type {d['pcie']!r}")
    for a, d in seen.items():
        parent = d.get("parent")
        if parent is None:
            continue
        if parent not in seen:
            raise ProfileError(f"{pid}: {a}: parent {parent} is not in the profile")
        if not str(seen[parent]["class"]).startswith("0604") and not str(seen[parent]["class"]).startswith("0609"):
            raise ProfileError(f"{pid}: {a}: parent {parent} is not a PCI bridge")
    # every bus that is not a root bus must hang below exactly one bridge
    root_buses = {a[:7] for a, d in seen.items() if d.get("parent") is None}
    for a, d in seen.items():
        if d.get("parent") is not None and a[:7] in root_buses:
            raise ProfileError(f"{pid}: {a}: bus {a[:7]} is a root bus but the device names a parent")


def _w(path: Path, content, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    os.chmod(path, mode)


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    os.symlink(target, path)


def _rel(target: Path, link: Path) -> str:
    return os.path.relpath(target, link.parent)


def _config_space(d: dict, multifunction: bool, pcie: str | None, buses: tuple | None) -> bytes:
    cfg = bytearray(256)
    vendor, device = (int(x, 16) for x in d["id"].split(":"))
    klass = int(d["class"], 16)
    struct.pack_into("<HHHH", cfg, 0, vendor, device, 0x0407, 0x0010)
    cfg[8] = int(str(d.get("rev", "00")), 16)
    cfg[9], cfg[10], cfg[11] = klass & 0xFF, (klass >> 8) & 0xFF, (klass >> 16) & 0xFF
    is_bridge = (klass >> 8) in (0x0604, 0x0609)
    cfg[0x0E] = (0x01 if is_bridge else 0x00) | (0x80 if multifunction else 0)
    if is_bridge and buses:
        cfg[0x18], cfg[0x19], cfg[0x1A] = buses
    elif d.get("subsys"):
        sv, sd = (int(x, 16) for x in d["subsys"].split(":"))
        struct.pack_into("<HH", cfg, 0x2C, sv, sd)
    if pcie and pcie != "pci":
        cfg[0x34] = 0x40
        cfg[0x40], cfg[0x41] = 0x10, 0x00
        struct.pack_into("<H", cfg, 0x42, 0x2 | (PCIE_TYPES[pcie] << 4))
    return bytes(cfg)


def _pcie_type(d: dict, parent: dict | None, is_bridge: bool) -> str:
    """The PCIe port type a device has in its tree position, unless the profile says."""
    if d.get("pcie"):
        return d["pcie"]
    if parent is None:
        return "root_port" if is_bridge else "rciep"
    if parent["_pcie"] in ("pci", "pcie_pci_bridge"):
        return "pci"  # behind a PCIe-to-PCI bridge: conventional PCI, no express capability
    if is_bridge:
        return "downstream" if parent["_pcie"] == "upstream" else "upstream"
    return "endpoint"


class SysrootBuilder:
    """Lay out one profile as a sysroot under ``out``."""

    def __init__(self, profile: dict, out: Path, pci_ids: Path | None = None, hwdb: Path | None = None):
        self.p = profile
        self.out = Path(out)
        self.pci_ids = pci_ids
        self.hwdb = hwdb

    # ---- public -------------------------------------------------------------------
    def build(self) -> Path:
        if self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True)
        os_ = self.p.get("os") or {}
        self.kernel = str(os_.get("kernel", "6.1.0-18-amd64"))
        self.kernels = [str(k) for k in os_.get("kernels") or [self.kernel]]
        self._usr_merge()
        self._pci()
        self._iommu()
        self._firmware()
        self._dmi()
        self._proc()
        self._os()
        self._modules()
        self._boot()
        self._pci_ids()
        for path, content in (os_.get("files") or {}).items():
            _w(self.out / path.lstrip("/"), str(content))
        return self.out

    # ---- pieces -------------------------------------------------------------------
    def _usr_merge(self) -> None:
        for d in ("usr/lib", "usr/bin", "usr/sbin", "etc", "boot", "proc", "sys", "var/lib"):
            (self.out / d).mkdir(parents=True, exist_ok=True)
        if (self.p.get("os") or {}).get("usr_merged", True):
            for d in ("lib", "bin", "sbin"):
                _link(self.out / d, f"usr/{d}")
        else:
            for d in ("lib", "bin", "sbin"):
                (self.out / d).mkdir(exist_ok=True)

    def _device_paths(self) -> dict:
        devs = {d["address"]: d for d in self.p.get("pci") or []}
        paths: dict[str, Path] = {}

        def path_of(a: str) -> Path:
            if a in paths:
                return paths[a]
            d = devs[a]
            if d.get("parent"):
                p = path_of(d["parent"]) / a
            else:
                p = Path("sys/devices") / f"pci{a[:7]}" / a
            paths[a] = p
            return p

        for a in devs:
            path_of(a)
        return paths

    def _pci(self) -> None:
        devs = {d["address"]: dict(d) for d in self.p.get("pci") or []}
        self.paths = self._device_paths()
        iommu_on = bool((self.p.get("iommu") or {}).get("units"))
        slots: dict[str, int] = {}
        for a in devs:
            slots[a[:-2]] = slots.get(a[:-2], 0) + 1
        children: dict[str, list] = {}
        for a, d in devs.items():
            if d.get("parent"):
                children.setdefault(d["parent"], []).append(a)

        def sub_buses(a: str) -> list:
            out = []
            for c in children.get(a, []):
                out.append(int(c[5:7], 16))
                out.extend(sub_buses(c))
            return out

        order = sorted(devs, key=lambda a: len(self.paths[a].parts))
        for a in order:
            d = devs[a]
            parent = devs.get(d.get("parent")) if d.get("parent") else None
            klass = str(d["class"])
            is_bridge = klass[:4] in ("0604", "0609")
            d["_pcie"] = _pcie_type(d, parent, is_bridge)
            buses = None
            if is_bridge:
                kids = children.get(a, [])
                sec = int(kids[0][5:7], 16) if kids else 0
                sub = max(sub_buses(a) or [sec])
                buses = (int(a[5:7], 16), sec, sub)
            base = self.out / self.paths[a]
            vendor, device = d["id"].split(":")
            sv, sd = (d.get("subsys") or "0000:0000").split(":")
            files = {
                "vendor": f"0x{vendor}\n", "device": f"0x{device}\n",
                "subsystem_vendor": f"0x{sv}\n", "subsystem_device": f"0x{sd}\n",
                "class": f"0x{klass}\n", "revision": f"0x{d.get('rev', '00')}\n",
                "enable": "1\n", "irq": "16\n", "numa_node": "-1\n", "local_cpulist": "0-7\n",
                "driver_override": "(null)\n", "broken_parity_status": "0\n", "msi_bus": "1\n",
                "d3cold_allowed": "1\n", "power_state": "D0\n",
                "modalias": (
                    f"pci:v0000{vendor.upper()}d0000{device.upper()}sv0000{sv.upper()}sd0000{sd.upper()}"
                    f"bc{klass[0:2].upper()}sc{klass[2:4].upper()}i{klass[4:6].upper()}\n"
                ),
                "resource": "0x0000000000000000 0x0000000000000000 0x0000000000000000\n" * 13,
            }
            if klass.startswith("0300"):
                files["boot_vga"] = "1\n" if d.get("boot_vga") else "0\n"
            if d.get("reset"):
                files["reset_method"] = " ".join(d["reset"]) + "\n"
                files["reset"] = ""
            if d["_pcie"] not in ("pci", "rciep"):
                files["current_link_speed"] = "8.0 GT/s PCIe\n"
                files["current_link_width"] = "16\n"
            uevent = []
            if d.get("driver"):
                uevent.append(f"DRIVER={d['driver']}")
            uevent += [
                f"PCI_CLASS={int(klass, 16):X}", f"PCI_ID={vendor.upper()}:{device.upper()}",
                f"PCI_SUBSYS_ID={sv.upper()}:{sd.upper()}", f"PCI_SLOT_NAME={a}",
                "MODALIAS=" + files["modalias"].strip(),
            ]
            files["uevent"] = "\n".join(uevent) + "\n"
            for name, content in files.items():
                _w(base / name, content, 0o200 if name == "reset" else 0o644)
            _w(base / "config", _config_space(d, slots[a[:-2]] > 1, d["_pcie"], buses))
            _link(base / "subsystem", _rel(self.out / "sys/bus/pci", base / "subsystem"))
            _link(self.out / "sys/bus/pci/devices" / a, _rel(base, self.out / "sys/bus/pci/devices" / a))
            if d.get("driver"):
                drv = self.out / "sys/bus/pci/drivers" / d["driver"]
                for f in ("bind", "unbind", "new_id", "remove_id"):
                    if not (drv / f).exists():
                        _w(drv / f, "", 0o200)
                _link(drv / a, _rel(base, drv / a))
                _link(base / "driver", _rel(drv, base / "driver"))
                mod = self.out / "sys/module" / d["driver"].replace("-", "_")
                (mod / "drivers").mkdir(parents=True, exist_ok=True)
                _link(drv / "module", _rel(mod, drv / "module"))
            if iommu_on and d.get("group") is not None:
                g = self.out / "sys/kernel/iommu_groups" / str(int(d["group"]))
                _link(g / "devices" / a, _rel(base, g / "devices" / a))
                _w(g / "type", (self.p.get("iommu") or {}).get("domain_type", "DMA-FQ") + "\n")
                _w(g / "reserved_regions", "0x00000000fee00000 0x00000000feefffff msi\n")
                _link(base / "iommu_group", _rel(g, base / "iommu_group"))
            for blk in d.get("block") or []:
                if blk.startswith("nvme"):  # nvme1n1 sits below controller nvme1, major 259
                    sub, devnum = f"nvme/{blk[:blk.rindex('n')]}", "259:0"
                else:  # sdb below its SCSI host, major 8, minor 16 per disk
                    n = ord(blk[2]) - ord("a") if len(blk) > 2 else 0
                    sub, devnum = f"ata{n + 1}/host{n}/target{n}:0:0/{n}:0:0:0/block", f"8:{16 * n}"
                dev_dir = base / sub / blk
                _w(dev_dir / "dev", devnum + "\n")
                _w(dev_dir / "size", "1000215216\n")
                _link(self.out / "sys/block" / blk, _rel(dev_dir, self.out / "sys/block" / blk))
                _link(self.out / "sys/class/block" / blk, _rel(dev_dir, self.out / "sys/class/block" / blk))
            for nic in d.get("net") or []:
                ndir = base / "net" / nic
                _w(ndir / "address", "00:11:22:33:44:55\n")
                _w(ndir / "operstate", "up\n")
                _link(self.out / "sys/class/net" / nic, _rel(ndir, self.out / "sys/class/net" / nic))
        self.devs = devs

    def _iommu(self) -> None:
        io = self.p.get("iommu") or {}
        for unit in io.get("units") or []:
            if unit.startswith("ivhd"):
                host = next((a for a, d in self.devs.items() if d["class"].startswith("0806") and d["id"].startswith("1022:")), None)
                target = (self.out / self.paths[host] / "iommu" / unit) if host else self.out / "sys/devices/virtual/iommu" / unit
            else:
                target = self.out / "sys/devices/virtual/iommu" / unit
                _w(target / "intel-iommu" / "cap", "d2008c40660462\n")
                _w(target / "intel-iommu" / "ecap", "f050da\n")
            (target / "devices").mkdir(parents=True, exist_ok=True)
            _link(self.out / "sys/class/iommu" / unit, _rel(target, self.out / "sys/class/iommu" / unit))
        (self.out / "sys/kernel/iommu_groups").mkdir(parents=True, exist_ok=True)
        (self.out / "sys/class/iommu").mkdir(parents=True, exist_ok=True)

    def _firmware(self) -> None:
        fw = self.p.get("firmware") or {}
        tables = self.out / "sys/firmware/acpi/tables"
        for t in ["APIC", "DSDT", "FACP", "MCFG", "SSDT1"] + list(fw.get("acpi_tables") or []):
            sig = t[:4].encode()
            _w(tables / t, sig + struct.pack("<I", 36) + b"\x01" + b"\x00" * 27, 0o400)
        if fw.get("uefi", True):
            ev = self.out / "sys/firmware/efi/efivars"
            _w(ev / SECURE_BOOT_VAR, b"\x06\x00\x00\x00" + (b"\x01" if fw.get("secure_boot") else b"\x00"))
            _w(self.out / "sys/firmware/efi/fw_platform_size", "64\n")
            entry = fw.get("boot_entry")
            if entry:
                _w(ev / f"BootCurrent-{GLOBAL_GUID}", b"\x06\x00\x00\x00" + struct.pack("<H", 1))
                desc = entry["description"].encode("utf-16-le") + b"\x00\x00"
                path = entry["path"].encode("utf-16-le") + b"\x00\x00"
                fp = bytes([4, 4]) + struct.pack("<H", 4 + len(path)) + path + bytes([0x7F, 0xFF, 4, 0])
                opt = struct.pack("<IH", 1, len(fp)) + desc + fp
                _w(ev / f"Boot0001-{GLOBAL_GUID}", b"\x07\x00\x00\x00" + opt)

    def _dmi(self) -> None:
        m = self.p.get("machine") or {}
        dmi = self.out / "sys/devices/virtual/dmi/id"
        for k in ("sys_vendor", "product_name", "board_vendor", "board_name", "bios_vendor", "bios_version"):
            if m.get(k) is not None:
                _w(dmi / k, f"{m[k]}\n")
        _w(dmi / "chassis_type", f"{int(m.get('chassis_type', 3))}\n")
        _link(self.out / "sys/class/dmi/id", _rel(dmi, self.out / "sys/class/dmi/id"))

    def _proc(self) -> None:
        os_ = self.p.get("os") or {}
        cpu = self.p.get("cpu") or {}
        _w(self.out / "proc/cmdline", str(os_.get("cmdline", "ro quiet")).strip() + "\n")
        _w(self.out / "proc/sys/kernel/osrelease", self.kernel + "\n")
        _w(self.out / "proc/version", f"Linux version {self.kernel} (lab@profile) #1 SMP PREEMPT_DYNAMIC\n")
        blocks = []
        for i in range(int(cpu.get("threads", 4))):
            blocks.append("\n".join([
                f"processor\t: {i}", f"vendor_id\t: {cpu.get('vendor_id', 'GenuineIntel')}",
                f"cpu family\t: {cpu.get('family', 25 if cpu.get('vendor_id') == 'AuthenticAMD' else 6)}",
                f"model name\t: {cpu.get('model_name', 'Unknown CPU')}",
                f"flags\t\t: {' '.join(cpu.get('flags') or [])}", "",
            ]))
        _w(self.out / "proc/cpuinfo", "\n".join(blocks))
        io = self.p.get("iommu") or {}
        chip = "IR-PCI-MSI" if io.get("irq_remapping") and io.get("units") else "PCI-MSI"
        _w(self.out / "proc/interrupts", (
            "           CPU0       CPU1\n"
            "   0:         21          0   IO-APIC   2-edge      timer\n"
            f" 120:          0        512   {chip} 327680-edge      xhci_hcd\n"
        ))
        mounts = ["/dev/nvme0n1p2 / ext4 rw,relatime 0 0", "proc /proc proc rw 0 0", "sysfs /sys sysfs rw 0 0"]
        if (self.p.get("firmware") or {}).get("uefi", True):
            esp = os_.get("esp", "/boot/efi")
            mounts.append(f"/dev/nvme0n1p1 {esp} vfat rw,relatime,fmask=0077,dmask=0077 0 0")
        _w(self.out / "proc/mounts", "\n".join(mounts) + "\n")
        loaded = sorted({str(d["driver"]).replace("-", "_") for d in self.devs.values() if d.get("driver")}
                        | set(os_.get("loaded_modules") or []))
        builtin = set(os_.get("builtin_modules") or [])
        _w(self.out / "proc/modules", "".join(
            f"{m} 16384 0 - Live 0x0000000000000000\n" for m in loaded if m not in builtin))
        for m in loaded:
            (self.out / "sys/module" / m).mkdir(parents=True, exist_ok=True)

    def _os(self) -> None:
        os_ = self.p.get("os") or {}
        if os_.get("os_release") is not None:
            _w(self.out / "usr/lib/os-release", str(os_["os_release"]))
            _link(self.out / "etc/os-release", "../usr/lib/os-release")
        _w(self.out / "etc/machine-id", hashlib.md5(self.p["id"].encode()).hexdigest() + "\n")
        _w(self.out / "etc/hostname", self.p["id"] + "\n")

    def _modules(self) -> None:
        os_ = self.p.get("os") or {}
        ext = os_.get("module_ext", ".ko")
        builtin = set(os_.get("builtin_modules") or [])
        missing = set(os_.get("missing_modules") or [])
        for k in self.kernels:
            merged = (self.p.get("os") or {}).get("usr_merged", True)
            mdir = self.out / ("usr/lib/modules" if merged else "lib/modules") / k
            deps, bi = [], []
            names = dict(MODULE_PATHS)
            for d in self.devs.values():
                if d.get("driver"):
                    n = str(d["driver"]).replace("-", "_")
                    names.setdefault(n, f"drivers/misc/{d['driver']}")
            for name, rel in sorted(names.items()):
                if name in missing:
                    continue
                if name in builtin:
                    bi.append(f"kernel/{rel}.ko")
                    continue
                if name == "vfio_virqfd" and _kver(k) >= (6, 2):
                    continue  # merged into vfio in 6.2
                _w(mdir / "kernel" / (rel + ext), b"\x7fELF")
                deps.append(f"kernel/{rel}{ext}:")
            _w(mdir / "modules.dep", "\n".join(deps) + "\n")
            _w(mdir / "modules.builtin", "\n".join(bi) + ("\n" if bi else ""))
            config = {"CONFIG_VFIO": "m", "CONFIG_VFIO_PCI": "m", "CONFIG_IOMMU_SUPPORT": "y",
                      "CONFIG_INTEL_IOMMU": "y", "CONFIG_AMD_IOMMU": "y", "CONFIG_IRQ_REMAP": "y"}
            config.update({k2: str(v) for k2, v in (os_.get("kernel_config") or {}).items()})
            lines = [f"{key}={val}" if val != "n" else f"# {key} is not set" for key, val in config.items()]
            _w(self.out / "boot" / f"config-{k}", "\n".join(lines) + "\n")
            _w(self.out / "boot" / f"vmlinuz-{k}", b"MZ")

    def _boot(self) -> None:
        from _layouts import bootloader_files, initramfs_files  # noqa: PLC0415  (lab-only helper)

        os_ = self.p.get("os") or {}
        ctx = {"kernel": self.kernel, "kernels": self.kernels, "cmdline": str(os_.get("cmdline", "")),
               "esp": os_.get("esp", "/boot/efi"), "id": self.p["id"],
               "os_id": _os_release_value(str(os_.get("os_release", "")), "ID") or "linux",
               "uefi": (self.p.get("firmware") or {}).get("uefi", True)}
        files = {}
        if os_.get("bootloader"):
            files.update(bootloader_files(os_["bootloader"], ctx))
        if os_.get("initramfs"):
            files.update(initramfs_files(os_["initramfs"], ctx))
        for path, spec in files.items():
            content, mode = spec if isinstance(spec, tuple) else (spec, 0o644)
            _w(self.out / path.lstrip("/"), content, mode)

    def _pci_ids(self) -> None:
        """The name databases every distribution ships, taken from the machine building the lab."""
        for src, rel in ((self.pci_ids, "usr/share/misc/pci.ids"), (self.hwdb, "usr/lib/udev/hwdb.bin")):
            if src is None or not src.exists():
                continue
            dst = self.out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)


def _kver(k: str) -> tuple:
    m = re.match(r"(\d+)\.(\d+)", k)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _os_release_value(text: str, key: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(key + "="):
            return line.split("=", 1)[1].strip().strip('"')
    return None


def find_pci_ids() -> Path | None:
    for c in ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids"):
        if Path(c).exists():
            return Path(c)
    return None


def find_hwdb() -> Path | None:
    for c in ("/etc/udev/hwdb.bin", "/usr/lib/udev/hwdb.bin", "/lib/udev/hwdb.bin"):
        if Path(c).exists():
            return Path(c)
    return None


def profile_paths() -> list:
    return sorted(PROFILE_DIR.glob("*.yml"))


def build(profile_path: Path, out_dir: Path = DEFAULT_OUT, force: bool = False) -> Path:
    """Build one sysroot, skipping the work when profile and builder are unchanged."""
    profile_path = Path(profile_path)
    profile = load_profile(profile_path)
    target = Path(out_dir) / profile["id"]
    layouts = (LAB_DIR / "_layouts.py").read_bytes()
    stamp = hashlib.sha256(profile_path.read_bytes() + layouts + Path(__file__).read_bytes()
                           + BUILDER_VERSION.encode()).hexdigest()
    stamp_file = target / ".profile-hash"
    if not force and stamp_file.exists() and stamp_file.read_text() == stamp:
        return target
    SysrootBuilder(profile, target, find_pci_ids(), find_hwdb()).build()
    stamp_file.write_text(stamp)
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profiles", nargs="*", help="profile files or ids (default: --all)")
    ap.add_argument("--all", action="store_true", help="build every profile in lab/profiles")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output directory (default: lab/.sysroots)")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    ap.add_argument("--list", action="store_true", help="print the profile ids as JSON and exit")
    args = ap.parse_args(argv)
    paths = [Path(p) if p.endswith(".yml") else PROFILE_DIR / f"{p}.yml" for p in args.profiles]
    if args.all or not paths:
        paths = profile_paths()
    if args.list:
        print(json.dumps([p.stem for p in paths]))
        return 0
    for p in paths:
        try:
            print(build(p, Path(args.out), args.force))
        except (ProfileError, OSError, yaml.YAMLError) as exc:
            print(f"error: {p}: {exc}", file=sys.stderr)
            return 2
    return 0


sys.path.insert(0, str(LAB_DIR))

if __name__ == "__main__":
    sys.exit(main())
