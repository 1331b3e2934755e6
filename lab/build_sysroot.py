"""Build host sysroots from real-machine profiles (see docs/profiles.md).

The tree is laid out the way a running kernel lays out sysfs, so both our detection and
real tools (``lspci -A linux-sysfs -O sysfs.path=<root>/sys``) read it unchanged.
"""
from __future__ import annotations

import argparse
import hashlib
import ipaddress
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
BUILDER_VERSION = "5"  # bump when the layout changes: invalidates built sysroots

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
VIRTUAL_BLOCK_RE = re.compile(r"^(dm-|md)(\d+)$")
PARTITION_RES = (re.compile(r"^(.+\d)p(\d+)$"), re.compile(r"^([a-z]+)(\d+)$"))  # nvme0n1p2, sda2
BLOCK_MAJORS = {"nvme": 259, "dm-": 253, "md": 9}  # 259 is blkext: NVMe disks and partitions take minors in turn
# (mount options, super options) as the kernel shows them for a default mount of each filesystem
FS_OPTIONS = {
    "ext4": ("rw,relatime", "rw,errors=remount-ro"),
    "xfs": ("rw,relatime", "rw,attr2,inode64,logbufs=8,logbsize=32k,noquota"),
    "btrfs": ("rw,relatime", "rw,ssd,discard=async,space_cache=v2,subvolid=5,subvol=/"),
    "vfat": ("rw,relatime", "rw,fmask=0077,dmask=0077,codepage=437,iocharset=ascii,shortname=mixed,utf8,errors=remount-ro"),
}
# (source, mount point, fstype, mount options, super options): mounted before the root filesystem by systemd
EARLY_MOUNTS = [
    ("sysfs", "/sys", "sysfs", "rw,nosuid,nodev,noexec,relatime", "rw"),
    ("proc", "/proc", "proc", "rw,nosuid,nodev,noexec,relatime", "rw"),
    ("udev", "/dev", "devtmpfs", "rw,nosuid,relatime", "rw,size=8119612k,nr_inodes=2029903,mode=755,inode64"),
    ("devpts", "/dev/pts", "devpts", "rw,nosuid,noexec,relatime", "rw,gid=5,mode=620,ptmxmode=000"),
    ("tmpfs", "/run", "tmpfs", "rw,nosuid,nodev,noexec,relatime", "rw,size=1631388k,mode=755,inode64"),
]
LATE_MOUNTS = [
    ("tmpfs", "/dev/shm", "tmpfs", "rw,nosuid,nodev", "rw,inode64"),
    ("tmpfs", "/run/lock", "tmpfs", "rw,nosuid,nodev,noexec,relatime", "rw,size=5120k,inode64"),
]
EFIVARS_MOUNT = ("efivarfs", "/sys/firmware/efi/efivars", "efivarfs", "rw,nosuid,nodev,noexec,relatime", "rw")
SWAP_SIZE = 8388604  # KiB, an 8 GiB swap partition
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
    storage_layout(p)
    network_layout(p)


def partition_of(name: str):
    """``nvme0n1p2`` -> ``("nvme0n1", 2)``, ``sda3`` -> ``("sda", 3)``, anything else -> None."""
    for rx in PARTITION_RES:
        m = rx.match(name)
        if m:
            return m.group(1), int(m.group(2))
    return None


def storage_layout(p: dict) -> dict:
    """The block devices ``mounts`` and ``swaps`` need, checked against the disks of the ``pci`` section.

    Returns ``{"disks": [names in PCI order], "partitions": {disk: [numbers]},
    "virtual": {dm-N/mdN: {"slaves": [...], "name": ...}}}``.
    """
    pid = p.get("id")
    disks = [b for d in p.get("pci") or [] for b in d.get("block") or []]
    parts: dict = {}
    virtual: dict = {}

    def need(spec, where: str) -> str:
        if isinstance(spec, dict):
            name = str(spec.get("block", ""))
            slaves = spec.get("slaves")
        else:
            name, slaves = str(spec), None
        if VIRTUAL_BLOCK_RE.match(name):
            if slaves is not None:
                if not isinstance(slaves, list) or not slaves:
                    raise ProfileError(f"{pid}: {where}: {name}: slaves must be a non-empty list")
                entry = {"slaves": [need(s, f"{where} -> {name}") for s in slaves],
                         "name": str(spec.get("name") or name)}
                if name in virtual and virtual[name]["slaves"] != entry["slaves"]:
                    raise ProfileError(f"{pid}: {where}: {name} is defined twice with different slaves")
                virtual[name] = entry
            return name
        if slaves is not None:
            raise ProfileError(f"{pid}: {where}: {name}: only dm-N and mdN devices have slaves")
        if name in disks:
            return name
        part = partition_of(name)
        if part is None or part[0] not in disks:
            raise ProfileError(f"{pid}: {where}: {name!r} is neither a disk of the pci section nor a partition of one")
        if not 0 < part[1] < (16 if part[0].startswith("sd") else 256):
            raise ProfileError(f"{pid}: {where}: {name}: partition number out of range")
        parts.setdefault(part[0], set()).add(part[1])
        return name

    mounts = p.get("mounts") or []
    if not isinstance(mounts, list):
        raise ProfileError(f"{pid}: mounts must be a list")
    points = set()
    for m in mounts:
        if not isinstance(m, dict) or not m.get("block") or not str(m.get("mountpoint", "")).startswith("/"):
            raise ProfileError(f"{pid}: mounts: each entry needs block and an absolute mountpoint")
        if m["mountpoint"] in points:
            raise ProfileError(f"{pid}: mounts: {m['mountpoint']} mounted twice")
        points.add(m["mountpoint"])
        need(m, f"mounts {m['mountpoint']}")
    swaps = p.get("swaps") or []
    if not isinstance(swaps, list):
        raise ProfileError(f"{pid}: swaps must be a list")
    for s in swaps:
        need(s, "swaps")
    used = [s for v in virtual.values() for s in v["slaves"]]
    named = [m["block"] for m in mounts] + [s["block"] if isinstance(s, dict) else s for s in swaps]
    for name in used + named:
        if VIRTUAL_BLOCK_RE.match(name) and name not in virtual:
            raise ProfileError(f"{pid}: {name} is not defined (give it slaves where it is named)")
    for name in virtual:
        if name not in used and name not in named:
            raise ProfileError(f"{pid}: {name} is defined but neither mounted, swap nor a slave")
    return {"disks": disks, "partitions": {d: sorted(n) for d, n in parts.items()}, "virtual": virtual}


def network_layout(p: dict) -> dict:
    """``network`` as ``{interface: {"addresses": [ip_interface], "lower": [...]}}``, checked."""
    pid = p.get("id")
    net = p.get("network") or {}
    if not isinstance(net, dict):
        raise ProfileError(f"{pid}: network must map interface names to addresses")
    nics = {n for d in p.get("pci") or [] for n in d.get("net") or []}
    out = {}
    for name, spec in net.items():
        if not re.match(r"^[A-Za-z0-9_.:-]{1,15}$", str(name)) or name == "lo":
            raise ProfileError(f"{pid}: network: bad interface name {name!r}")
        spec = {"addresses": spec} if isinstance(spec, list) else dict(spec or {})
        addrs = []
        for raw in spec.get("addresses") or []:
            try:
                addr = ipaddress.ip_interface(str(raw))
            except ValueError as exc:
                raise ProfileError(f"{pid}: network: {name}: {exc}") from None
            if "/" not in str(raw) or addr.ip.is_loopback:
                raise ProfileError(f"{pid}: network: {name}: {raw}: give a non-loopback address with its prefix")
            addrs.append(addr)
        lower = [str(x) for x in spec.get("lower") or []]
        for x in lower:
            if x not in nics and x not in net:
                raise ProfileError(f"{pid}: network: {name}: lower interface {x} does not exist")
        out[str(name)] = {"addresses": addrs, "lower": lower}
    return out


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
        self.disk_dirs: dict = {}
        self.nic_dirs: dict = {}
        self._pci()
        self._storage()
        self._network()
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
            for blk in d.get("block") or []:  # numbered, with their partitions, in _storage()
                if blk.startswith("nvme"):  # nvme1n1 sits below controller nvme1
                    sub = f"nvme/{blk[:blk.rindex('n')]}"
                else:  # sdb below its SCSI host
                    n = ord(blk[2]) - ord("a") if len(blk) > 2 else 0
                    sub = f"ata{n + 1}/host{n}/target{n}:0:0/{n}:0:0:0/block"
                self.disk_dirs[blk] = base / sub / blk
            for nic in d.get("net") or []:
                ndir = base / "net" / nic
                _w(ndir / "address", "00:11:22:33:44:55\n")
                _w(ndir / "operstate", "up\n")
                _link(self.out / "sys/class/net" / nic, _rel(ndir, self.out / "sys/class/net" / nic))
                self.nic_dirs[nic] = ndir
        self.devs = devs

    def _block_node(self, name: str, path: Path, devnum: tuple, devtype: str, partn: int | None = None) -> None:
        major, minor = devnum
        uevent = [f"MAJOR={major}", f"MINOR={minor}", f"DEVNAME={name}", f"DEVTYPE={devtype}"]
        _w(path / "dev", f"{major}:{minor}\n")
        _w(path / "size", ("2097152" if partn else "1000215216") + "\n")
        _w(path / "ro", "0\n")
        (path / "holders").mkdir(parents=True, exist_ok=True)
        if partn:
            uevent.append(f"PARTN={partn}")
            _w(path / "partition", f"{partn}\n")
            _w(path / "start", f"{2048 + (partn - 1) * 2097152}\n")
        else:
            (path / "slaves").mkdir(parents=True, exist_ok=True)
            _link(self.out / "sys/block" / name, _rel(path, self.out / "sys/block" / name))
        _w(path / "uevent", "\n".join(uevent) + "\n")
        _link(self.out / "sys/class/block" / name, _rel(path, self.out / "sys/class/block" / name))
        link = self.out / "sys/dev/block" / f"{major}:{minor}"
        _link(link, _rel(path, link))

    def _storage(self) -> None:
        """Disks, partitions and dm/md devices with unique device numbers; the mount and swap tables."""
        layout = storage_layout(self.p)
        nodes: dict = {}  # name -> (sysfs dir, (major, minor))
        blkext = 0
        for disk in layout["disks"]:
            ddir = self.disk_dirs[disk]
            if disk.startswith("nvme"):
                devnum, blkext = (BLOCK_MAJORS["nvme"], blkext), blkext + 1
            else:  # sd: major 8, 16 minors per disk, partitions in between
                devnum = (8, 16 * (ord(disk[2]) - ord("a") if len(disk) > 2 else 0))
            nodes[disk] = (ddir, devnum)
            self._block_node(disk, ddir, devnum, "disk")
            for num in layout["partitions"].get(disk, []):
                pname = f"{disk}p{num}" if disk[-1].isdigit() else f"{disk}{num}"
                if devnum[0] == BLOCK_MAJORS["nvme"]:
                    pnum, blkext = (devnum[0], blkext), blkext + 1
                else:
                    pnum = (devnum[0], devnum[1] + num)
                nodes[pname] = (ddir / pname, pnum)
                self._block_node(pname, ddir / pname, pnum, "partition", num)
        for name, v in layout["virtual"].items():
            m = VIRTUAL_BLOCK_RE.match(name)
            vdir = self.out / "sys/devices/virtual/block" / name
            nodes[name] = (vdir, (BLOCK_MAJORS[m.group(1)], int(m.group(2))))
            self._block_node(name, vdir, nodes[name][1], "disk")
            if m.group(1) == "dm-":
                _w(vdir / "dm/name", v["name"] + "\n")
                _w(vdir / "dm/suspended", "0\n")
            else:
                _w(vdir / "md/level", "raid1\n")
        numbers = [n[1] for n in nodes.values()]
        if len(set(numbers)) != len(numbers):
            raise ProfileError(f"{self.p.get('id')}: two block devices would get the same major:minor")
        for name, v in layout["virtual"].items():
            vdir = nodes[name][0]
            for slave in v["slaves"]:
                sdir = nodes[slave][0]
                _link(vdir / "slaves" / slave, _rel(sdir, vdir / "slaves" / slave))
                _link(sdir / "holders" / name, _rel(vdir, sdir / "holders" / name))
        self._mount_tables(layout, nodes)
        swaps = ["Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"]
        for prio, spec in enumerate(self.p.get("swaps") or [], start=2):
            path = "/dev/" + (spec["block"] if isinstance(spec, dict) else str(spec))
            # the kernel's swap_show(): "%*s%s\t%lu\t%s%lu\t%s%d\n", the name padded to 40 columns
            swaps.append(f"{path}{' ' * max(40 - len(path), 1)}partition\t{SWAP_SIZE}\t\t0\t\t-{prio}\n")
        _w(self.out / "proc/swaps", "".join(swaps))

    def _mount_tables(self, layout: dict, nodes: dict) -> None:
        """/proc/self/mountinfo and /proc/mounts: systemd's early virtual mounts, the profile's, the late ones."""
        anon = iter(range(20, 256))
        entries = []  # (source, mount point, fstype, mount options, super options, (major, minor))
        for src, mp, fstype, mopts, sopts in EARLY_MOUNTS:
            entries.append((src, mp, fstype, mopts, sopts, (0, 5) if fstype == "devtmpfs" else (0, next(anon))))
        for m in sorted(self.p.get("mounts") or [], key=lambda m: m["mountpoint"].rstrip("/").count("/")):
            name, fstype = m["block"], str(m.get("fstype", "ext4"))
            mopts, sopts = FS_OPTIONS.get(fstype, ("rw,relatime", "rw"))
            v = layout["virtual"].get(name)
            source = f"/dev/mapper/{v['name']}" if v and name.startswith("dm-") else f"/dev/{name}"
            devnum = nodes[name][1]
            if fstype == "btrfs":  # anonymous device numbers; the devices are listed in /sys/fs/btrfs
                devnum = (0, next(anon))
                fsid = hashlib.md5(f"{self.p['id']}{m['mountpoint']}".encode()).hexdigest()
                fsid = f"{fsid[:8]}-{fsid[8:12]}-{fsid[12:16]}-{fsid[16:20]}-{fsid[20:]}"
                link = self.out / "sys/fs/btrfs" / fsid / "devices" / name
                _link(link, _rel(nodes[name][0], link))
            entries.append((source, m["mountpoint"], fstype, mopts, sopts, devnum))
        uefi = (self.p.get("firmware") or {}).get("uefi", True)
        late = LATE_MOUNTS + ([EFIVARS_MOUNT] if uefi else [])
        for src, mp, fstype, mopts, sopts in late:
            entries.append((src, mp, fstype, mopts, sopts, (0, next(anon))))
        ids = {e[1]: i for i, e in enumerate(entries, start=21)}  # the root's id follows the early mounts'

        def parent(mp: str) -> int:
            best = None
            for other in ids:
                if other != mp and (other == "/" or mp.startswith(other.rstrip("/") + "/")):
                    if best is None or len(other) > len(best):
                        best = other
            return ids[best] if best is not None else 1

        info, mounts = [], []
        for shared, (src, mp, fstype, mopts, sopts, (major, minor)) in enumerate(entries, start=1):
            info.append(f"{ids[mp]} {parent(mp)} {major}:{minor} / {_esc(mp)} {mopts} shared:{shared} - "
                        f"{fstype} {_esc(src)} {sopts}")
            extra = ",".join(o for o in sopts.split(",") if o not in ("rw", "ro"))
            mounts.append(f"{_esc(src)} {_esc(mp)} {fstype} {mopts}{',' + extra if extra else ''} 0 0")
        if "mounts" not in self.p and uefi:
            # a profile without a mount table: /proc/mounts still names the ESP (on a partition that is not modelled)
            # for the bootloader detection; mountinfo, whose device numbers must resolve, lists the virtual mounts only
            mounts.append(f"/dev/nvme0n1p1 {_esc((self.p.get('os') or {}).get('esp', '/boot/efi'))} vfat "
                          "rw,relatime,fmask=0077,dmask=0077 0 0")
        _w(self.out / "proc/self/mountinfo", "\n".join(info) + "\n")
        _w(self.out / "proc/mounts", "\n".join(mounts) + "\n")

    def _network(self) -> None:
        """Interfaces (lo, the PCI ones, virtual ones), and the kernel's route, fib_trie and if_inet6 files."""
        net = network_layout(self.p)
        dirs = {}
        names = ["lo"] + list(self.nic_dirs) + [n for n in net if n not in self.nic_dirs]
        for index, name in enumerate(names, start=1):
            ndir = self.nic_dirs.get(name)
            if ndir is None:
                ndir = self.out / "sys/devices/virtual/net" / name
                mac = "00:00:00:00:00:00" if name == "lo" else "02:00:00:00:00:%02x" % index
                _w(ndir / "address", mac + "\n")
                _w(ndir / "operstate", ("unknown" if name == "lo" else "up") + "\n")
                _link(self.out / "sys/class/net" / name, _rel(ndir, self.out / "sys/class/net" / name))
            _w(ndir / "ifindex", f"{index}\n")
            dirs[name] = (ndir, index)
        for name, spec in net.items():
            for lower in spec["lower"]:
                up, low = dirs[name][0], dirs[lower][0]
                _link(up / f"lower_{lower}", _rel(low, up / f"lower_{lower}"))
                _link(low / f"upper_{name}", _rel(up, low / f"upper_{name}"))
        inet6 = ["00000000000000000000000000000001 01 80 10 80       lo"]
        routes, leaves = [], {}
        for key, entry in ((0x7F000000, (8, "host", "LOCAL")), (0x7F000001, (32, "host", "LOCAL")),
                           (0x7FFFFFFF, (32, "link", "BROADCAST"))):
            leaves.setdefault(key, []).append(entry)
        for name, spec in net.items():
            index = dirs[name][1]
            for addr in spec["addresses"]:
                if addr.version == 6:
                    scope = 0x20 if addr.ip.is_link_local else 0x00
                    inet6.append(f"{addr.ip.packed.hex()} {index:02x} {addr.network.prefixlen:02x} {scope:02x} 80 {name:>8}")
                    continue
                nw, plen = addr.network, addr.network.prefixlen
                leaves.setdefault(int(addr.ip), []).append((32, "host", "LOCAL"))
                if plen < 32:
                    leaves.setdefault(int(nw.network_address), []).append((plen, "link", "UNICAST"))
                    routes.append((name, nw.network_address, ipaddress.IPv4Address(0), 0x0001, nw.netmask))
                if plen < 31:
                    leaves.setdefault(int(nw.broadcast_address), []).append((32, "link", "BROADCAST"))
        first = next(((n, a) for n, s in net.items() for a in s["addresses"] if a.version == 4), None)
        if first is not None:
            gateway = first[1].network.network_address + 1
            if gateway == first[1].ip and first[1].network.num_addresses > 2:
                gateway += 1
            routes.insert(0, (first[0], ipaddress.IPv4Address(0), gateway, 0x0003, ipaddress.IPv4Address(0)))
            leaves.setdefault(0, []).append((0, "universe", "UNICAST"))

        def hx(ip) -> str:  # the kernel prints the network-order word as a native (little-endian) integer
            return f"{int.from_bytes(ip.packed, 'little'):08X}"

        route = ["Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT".ljust(127)]
        for name, dest, gw, flags, mask in routes:
            route.append(f"{name}\t{hx(dest)}\t{hx(gw)}\t{flags:04X}\t0\t0\t100\t{hx(mask)}\t0\t0\t0".ljust(127))
        _w(self.out / "proc/net/route", "\n".join(route) + "\n")
        trie = _fib_trie(leaves)
        _w(self.out / "proc/net/fib_trie", "Main:\n" + trie + "Local:\n" + trie)
        _w(self.out / "proc/net/if_inet6", "\n".join(inet6) + "\n")

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
            _w(mdir / "modules.alias", self._aliases(builtin))
            _w(mdir / "modules.builtin", "\n".join(bi) + ("\n" if bi else ""))
            config = {"CONFIG_VFIO": "m", "CONFIG_VFIO_PCI": "m", "CONFIG_IOMMU_SUPPORT": "y",
                      "CONFIG_INTEL_IOMMU": "y", "CONFIG_AMD_IOMMU": "y", "CONFIG_IRQ_REMAP": "y"}
            config.update({k2: str(v) for k2, v in (os_.get("kernel_config") or {}).items()})
            lines = [f"{key}={val}" if val != "n" else f"# {key} is not set" for key, val in config.items()]
            _w(self.out / "boot" / f"config-{k}", "\n".join(lines) + "\n")
            _w(self.out / "boot" / f"vmlinuz-{k}", b"MZ")

    def _aliases(self, builtin: set) -> str:
        """modules.alias as depmod writes it: the modules that claim each device (the profile's
        `modules`, as `lspci -k` shows them, else its driver), by exact vendor:device id. Built-in
        drivers are not in it (depmod lists only loadable modules there)."""
        lines = ["# Aliases extracted from modules themselves.", "alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci"]
        for d in self.devs.values():
            mods = d.get("modules") or ([d["driver"]] if d.get("driver") and d["driver"] != "vfio-pci" else [])
            vendor, device = d["id"].split(":")
            for mod in mods:
                if str(mod).replace("-", "_") in builtin or mod in builtin:
                    continue
                line = f"alias pci:v0000{vendor.upper()}d0000{device.upper()}sv*sd*bc*sc*i* {str(mod).replace('-', '_')}"
                if line not in lines:
                    lines.append(line)
        return "\n".join(lines) + "\n"

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


def _esc(path: str) -> str:
    """Space, tab, newline and backslash as the kernel escapes them in mount tables."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def _fib_trie(leaves: dict) -> str:
    """``cat /proc/net/fib_trie`` of one table: a path-compressed binary trie of the keys.

    Every node, inner (``+-- prefix/len bits full_children empty_children``) or leaf
    (``|-- address`` and its ``/len scope TYPE`` aliases, longest prefix first), is indented
    three spaces per level, as fib_trie_seq_show() prints it.
    """
    lines = []

    def node(keys: list, level: int) -> None:
        pad = "   " * level
        if len(keys) == 1:
            lines.append(f"{pad}  |-- {ipaddress.IPv4Address(keys[0])}")
            for plen, scope, typ in sorted(leaves[keys[0]], key=lambda a: -a[0]):
                lines.append(f"{pad}     /{plen} {scope} {typ}")
            return
        plen = 32 - (keys[0] ^ keys[-1]).bit_length()
        prefix = keys[0] & (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0
        bit = 31 - plen
        halves = ([k for k in keys if not k >> bit & 1], [k for k in keys if k >> bit & 1])
        full = sum(1 for h in halves if len(h) > 1 and 32 - (h[0] ^ h[-1]).bit_length() == plen + 1)
        lines.append(f"{pad}  +-- {ipaddress.IPv4Address(prefix)}/{plen} 1 {full} 0")
        for h in halves:
            node(h, level + 1)

    node(sorted(leaves), 0)
    return "\n".join(lines) + "\n"


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
    touched = (target / "var/lib/exliar-vfio").exists()  # the collection changed it: start again from the profile
    if not force and not touched and stamp_file.exists() and stamp_file.read_text() == stamp:
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
