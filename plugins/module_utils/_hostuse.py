# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which PCI devices the host itself is using: mounted filesystems, active swap, the Ansible connection.

Handing such a device to a VM unbinds its host driver: the root filesystem vanishes under the
running system, or the SSH session that does the binding is cut. Everything is read from files
(``/proc``, ``/sys``) through :class:`RootFS`, so a chroot or a sysroot answers like ``/``.
"""
from __future__ import annotations

import ipaddress
import os
import re
import sys

from ansible_collections.exliar.vfio.plugins.module_utils._pci import BDF_RE

DEVNUM_RE = re.compile(r"^(\d+):(\d+)$")
NVME_CTRL_RE = re.compile(r"^nvme\d+$")
OCTAL_RE = re.compile(r"\\([0-7]{3})")
RTF_UP = 0x0001
RTF_REJECT = 0x0200


def _unescape(field: str) -> str:
    r"""The kernel writes space, tab, newline and backslash in mount paths as ``\040`` etc."""
    return OCTAL_RE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list:
    """``/proc/self/mountinfo`` -> ``[{devnum: (major, minor), mountpoint, fstype, source}]``.

    Fields: id, parent id, major:minor, root, mount point, options, optional fields up to a
    lone ``-``, then fstype, source, super options (see proc(5)).
    """
    out = []
    for line in text.splitlines():
        parts = line.split()
        if "-" not in parts[6:]:
            continue
        sep = parts.index("-", 6)
        m = DEVNUM_RE.match(parts[2])
        if not m or len(parts) < sep + 3:
            continue
        out.append({"devnum": (int(m.group(1)), int(m.group(2))), "mountpoint": _unescape(parts[4]),
                    "fstype": parts[sep + 1], "source": _unescape(parts[sep + 2])})
    return out


def parse_mounts(text: str) -> list:
    """``/proc/mounts`` (no device numbers) -> the same shape as :func:`parse_mountinfo`, devnum None."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append({"devnum": None, "mountpoint": _unescape(parts[1]), "fstype": parts[2],
                        "source": _unescape(parts[0])})
    return out


def parse_swaps(text: str) -> list:
    """``/proc/swaps`` -> ``[{filename, type}]`` (the header line skipped)."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2:
            out.append({"filename": _unescape(parts[0]), "type": parts[1]})
    return out


def _block_of_source(fs, source: str):
    """``/dev/nvme0n1p2``, ``/dev/mapper/vg-root`` or a ``/dev/disk/by-*`` link -> kernel block name, or None."""
    if not source.startswith("/dev/"):
        return None
    real = fs.resolve(source) or source
    name = real.rstrip("/").rsplit("/", 1)[-1]
    if name and fs.exists(f"sys/class/block/{name}"):
        return name
    wanted = source.rstrip("/").rsplit("/", 1)[-1]
    for cand in fs.listdir("sys/class/block"):
        if cand.startswith("dm-") and fs.read_line(f"sys/class/block/{cand}/dm/name") == wanted:
            return cand
    return None


def _block_of_devnum(fs, major: int, minor: int):
    link = f"sys/dev/block/{major}:{minor}"
    if fs.readlink(link) is None:
        return None
    real = fs.resolve(link) or ""
    return real.rstrip("/").rsplit("/", 1)[-1] or None


def _bdf_in(path: str):
    found = [p for p in (path or "").split("/") if BDF_RE.match(p)]
    return found[-1] if found else None


def physical_devices(fs, name: str, seen=None) -> list:
    """``[(block name, PCI address)]`` a block device rests on, through dm/md ``slaves`` to the disks.

    A partition without a PCI address in its path (of an md array, say) stands on its disk;
    a native-multipath NVMe namespace (``/sys/devices/virtual/nvme-subsystem/...``) on every
    controller of its subsystem. Loop, zram and other purely virtual devices rest on none.
    """
    seen = set() if seen is None else seen
    if name in seen:
        return []
    seen.add(name)
    base = f"sys/class/block/{name}"
    slaves = fs.listdir(f"{base}/slaves")
    if slaves:
        out = []
        for slave in slaves:
            out.extend(physical_devices(fs, slave, seen))
        return out
    real = fs.resolve(base) or ""
    bdf = _bdf_in(real)
    if bdf:
        return [(name, bdf)]
    parts = real.split("/")
    if "nvme-subsystem" in parts:
        subsys = "/".join(parts[:parts.index("nvme-subsystem") + 2])
        ctrls = [c for c in fs.listdir(subsys) if NVME_CTRL_RE.match(c)]
        return [(name, bdf) for bdf in sorted({_bdf_in(fs.resolve(f"{subsys}/{c}")) for c in ctrls} - {None})]
    if fs.exists(f"{base}/partition") and len(parts) > 1:
        return physical_devices(fs, parts[-2], seen)
    return []


def _btrfs_members(fs, name: str) -> list:
    """Every device of the multi-device btrfs that ``name`` belongs to (mountinfo names only one)."""
    for fsid in fs.listdir("sys/fs/btrfs"):
        members = fs.listdir(f"sys/fs/btrfs/{fsid}/devices")
        if name in members:
            return members
    return [name]


def _add(out: dict, addr: str, entry: dict) -> None:
    entries = out.setdefault(addr, [])
    if entry not in entries:
        entries.append(entry)


def _detail(what: str, top: str, leaf: str) -> str:
    return what if top == leaf else f"{what} via {top}"


def mounted_pci_devices(fs) -> dict:
    """PCI address -> ``[{kind: mount|swap, block, detail}]`` for every mounted filesystem and active swap."""
    out: dict = {}
    text = fs.read_text("proc/self/mountinfo")
    if text is not None:
        mounts = parse_mountinfo(text)
    else:
        if not fs.exists("proc/self/mountinfo"):
            fs.warn("proc/self/mountinfo: missing; mounts are read from proc/mounts, by device name")
        mounts = parse_mounts(fs.read_text("proc/mounts", expected=True) or "")
    zfs_pools: set = set()
    for m in mounts:
        what = f"{m['mountpoint']} ({m['fstype']})"
        major, minor = m["devnum"] or (None, None)
        if major:  # a real block device: its number is authoritative
            names = [_block_of_devnum(fs, major, minor)]
            if names[0] is None:
                fs.warn(f"mount {m['mountpoint']}: block device {major}:{minor} is not in sys/dev/block; "
                        f"the PCI device holding it is unknown")
                continue
        else:  # major 0: virtual, or a filesystem with anonymous device numbers (btrfs) on a named device
            if m["fstype"] == "zfs":
                pool = m["source"].split("/", 1)[0]
                if pool not in zfs_pools:
                    zfs_pools.add(pool)
                    fs.warn(f"zfs pool {pool} is mounted; its disks are not visible in sysfs, "
                            f"so the PCI devices holding it are unknown")
                continue
            names = [_block_of_source(fs, src) for src in m["source"].split(":")]  # bcachefs: /dev/sda:/dev/sdb
            if None in names:
                if (m["devnum"] is None or m["fstype"] in ("btrfs", "bcachefs")) and m["source"].startswith("/dev/"):
                    fs.warn(f"mount {m['mountpoint']}: {m['source']} is not in sys/class/block; "
                            f"the PCI device holding it is unknown")
                names = [n for n in names if n]
                if not names:
                    continue
        tops: list = []
        for name in names:
            for top in _btrfs_members(fs, name) if m["fstype"] == "btrfs" else [name]:
                if top not in tops:
                    tops.append(top)
        for top in tops:
            for leaf, addr in physical_devices(fs, top):
                _add(out, addr, {"kind": "mount", "block": leaf, "detail": _detail(what, top, leaf)})
    swaps = fs.read_text("proc/swaps", expected=True)
    for s in parse_swaps(swaps or ""):
        if s["type"] != "partition":  # a swap file lives on a filesystem, which is mounted
            continue
        name = _block_of_source(fs, s["filename"])
        if name is None:
            fs.warn(f"swap {s['filename']}: not in sys/class/block; the PCI device holding it is unknown")
            continue
        for leaf, addr in physical_devices(fs, name):
            via = name not in (leaf, s["filename"].rsplit("/", 1)[-1])  # the kernel names dm swap /dev/dm-N already
            _add(out, addr, {"kind": "swap", "block": leaf, "detail": f"swap {s['filename']}" + (f" via {name}" if via else "")})
    return out


def effective_connection_address(root: str, given, environ) -> str | None:
    """``given``, else the SSH connection's server address when ``root`` is this machine's ``/``
    (for a sysroot or chroot the environment describes another machine)."""
    if given:
        return given
    return connection_address(environ) if os.path.abspath(root or "/") == "/" else None


def connection_address(environ) -> str | None:
    """The host-side address of the SSH connection (``SSH_CONNECTION``: client ip, port, server ip, port)."""
    parts = (environ.get("SSH_CONNECTION") or "").split()
    return parts[2] if len(parts) == 4 else None


def _parse_ip(address):
    """``(ip, scope)`` for an address text, scope being the ``%eth0`` zone; ``(None, None)`` if invalid."""
    text, _pct, scope = str(address or "").strip().strip("[]").partition("%")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None, None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, scope or None


def _ipv6_interfaces(fs, ip, scope) -> list:
    text = fs.read_text("proc/net/if_inet6", expected=True) or ""
    names = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or len(parts[0]) != 32:
            continue
        try:
            addr = ipaddress.IPv6Address(int(parts[0], 16))
        except ValueError:
            continue
        if addr == ip and parts[5] not in names:
            names.append(parts[5])
    if scope and scope in names:
        return [scope]
    return names


def _fib_local(text: str) -> list:
    """The ``LOCAL`` entries of ``/proc/net/fib_trie`` as networks (a host's own addresses are /32)."""
    nets = []
    key = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "|--":
            key = parts[1]
        elif len(parts) >= 3 and parts[0].startswith("/") and parts[2] == "LOCAL" and key is not None:
            try:
                nets.append(ipaddress.IPv4Network(f"{key}{parts[0]}", strict=False))
            except ValueError:
                continue
    return nets


def _route_hex(field: str):
    """A ``/proc/net/route`` address: 8 hex digits of the network-order value read as a native integer."""
    try:
        return ipaddress.IPv4Address(int(field, 16).to_bytes(4, sys.byteorder))
    except (ValueError, OverflowError):
        return None


def _ipv4_interfaces(fs, ip) -> list:
    trie = fs.read_text("proc/net/fib_trie", expected=True)
    if trie is None:
        return []
    if not any(ip in net for net in _fib_local(trie)):
        return []
    best, names = -1, []
    for line in (fs.read_text("proc/net/route", expected=True) or "").splitlines()[1:]:
        parts = line.split()
        if len(parts) < 8 or parts[0] == "lo":
            continue
        dest, mask = _route_hex(parts[1]), _route_hex(parts[7])
        try:
            flags = int(parts[3], 16)
        except ValueError:
            continue
        if dest is None or mask is None or not flags & RTF_UP or flags & RTF_REJECT:
            continue
        try:
            net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        except ValueError:
            continue
        if ip not in net or net.prefixlen < best:
            continue
        if net.prefixlen > best:
            best, names = net.prefixlen, []
        if parts[0] not in names:
            names.append(parts[0])
    return names


def connection_interfaces(fs, address) -> list:
    """Names of the interfaces that hold the local address ``address`` (IPv4 or IPv6).

    IPv6 addresses are listed with their interface in ``/proc/net/if_inet6``. For IPv4 the
    kernel lists its own addresses as ``/32 host LOCAL`` in ``/proc/net/fib_trie``; the
    interface is that of the most specific route in ``/proc/net/route`` covering it.
    """
    ip, scope = _parse_ip(address)
    if ip is None:
        fs.warn(f"connection address {address!r}: not an IP address; the interface carrying the connection is unknown")
        return []
    if ip.is_loopback:
        return ["lo"]
    names = _ipv6_interfaces(fs, ip, scope) if ip.version == 6 else _ipv4_interfaces(fs, ip)
    if not names:
        fs.warn(f"connection address {ip}: not an address of this host's interfaces; "
                f"the interface carrying the connection is unknown")
    return names


def interface_pci_devices(fs, name: str, seen=None) -> list:
    """PCI addresses below a network interface; a bridge, bond or VLAN stands on its ``lower_*`` interfaces."""
    seen = set() if seen is None else seen
    if name in seen:
        return []
    seen.add(name)
    bdf = _bdf_in(fs.resolve(f"sys/class/net/{name}") or "")
    if bdf:
        return [bdf]
    out = []
    for entry in fs.listdir(f"sys/class/net/{name}"):
        if entry.startswith("lower_"):
            for addr in interface_pci_devices(fs, entry[len("lower_"):], seen):
                if addr not in out:
                    out.append(addr)
    return out


def host_usage(fs, connection_address=None, devices=None) -> dict:
    """What the host uses: ``{connection: {address, interfaces, pci_addresses}, in_use: {address: [...]}}``.

    ``devices`` (addresses, or objects with ``.address``) limits ``in_use`` to those devices.
    """
    in_use = mounted_pci_devices(fs)
    interfaces, pci = [], []
    address = connection_address or None
    if address:
        ip, _scope = _parse_ip(address)
        address = str(ip) if ip is not None else str(address)
        interfaces = connection_interfaces(fs, connection_address)
        for ifname in interfaces:
            for addr in interface_pci_devices(fs, ifname):
                if addr not in pci:
                    pci.append(addr)
                _add(in_use, addr, {"kind": "connection", "interface": ifname,
                                    "detail": f"carries the Ansible connection to {address}"})
    if devices is not None:
        wanted = {getattr(d, "address", d) for d in devices}
        in_use = {a: e for a, e in in_use.items() if a in wanted}
    return {
        "connection": {"address": address, "interfaces": interfaces, "pci_addresses": pci},
        "in_use": {a: in_use[a] for a in sorted(in_use)},
    }
