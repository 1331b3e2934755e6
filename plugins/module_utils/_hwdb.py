# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read systemd's hardware database (``hwdb.bin``), the names source when pci.ids is absent.

The file is a trie (systemd ``src/libsystemd/sd-hwdb/hwdb-internal.h``): a header, nodes with
a shared prefix string, children sorted by character and value entries. Keys may hold
``*``, ``?`` and ``[`` patterns, matched with fnmatch as ``sd_hwdb_get`` does.
"""
from __future__ import annotations

import struct
from fnmatch import fnmatchcase

HWDB_PATHS = ("etc/udev/hwdb.bin", "usr/lib/udev/hwdb.bin", "lib/udev/hwdb.bin", "etc/systemd/hwdb/hwdb.bin")
SIGNATURE = b"KSLPHHRH"
_HEADER = struct.Struct("<8sQQQQQQQQQ")


class HwdbError(ValueError):
    """The file is not a hwdb.bin this code understands."""


class Hwdb:
    def __init__(self, data: bytes):
        if len(data) < _HEADER.size or data[:8] != SIGNATURE:
            raise HwdbError("not a hwdb.bin (bad signature)")
        (_sig, _tool, file_size, _hsize, self.node_size, self.child_size, self.value_size,
         self.root, _nodes_len, _strings_len) = _HEADER.unpack_from(data, 0)
        if file_size != len(data) or self.node_size < 24 or self.child_size < 16 or self.value_size < 16:
            raise HwdbError("hwdb.bin has an unexpected size or layout")
        self.data = data

    def _string(self, off: int) -> str:
        end = self.data.index(b"\0", off)
        return self.data[off:end].decode("utf-8", "replace")

    def _node(self, off: int):
        prefix_off, children, values = struct.unpack_from("<QB7xQ", self.data, off)
        return prefix_off, children, values

    def _children(self, off: int, count: int):
        base = off + self.node_size
        for i in range(count):
            c, child_off = struct.unpack_from("<B7xQ", self.data, base + i * self.child_size)
            yield chr(c), child_off

    def _child(self, off: int, count: int, ch: str):
        for c, child_off in self._children(off, count):
            if c == ch:
                return child_off
        return None

    def _values(self, off: int, children: int, count: int, props: dict) -> None:
        base = off + self.node_size + children * self.child_size
        for i in range(count):
            key_off, value_off = struct.unpack_from("<QQ", self.data, base + i * self.value_size)
            key = self._string(key_off)
            if key.startswith(" "):  # properties start with a space; other prefixes are reserved
                props[key[1:]] = self._string(value_off)

    def _fnmatch(self, off: int, p: int, buf: str, search: str, props: dict) -> None:
        prefix_off, children, values = self._node(off)
        buf += self._string(prefix_off)[p:] if prefix_off else ""
        for c, child_off in self._children(off, children):
            self._fnmatch(child_off, 0, buf + c, search, props)
        if values and fnmatchcase(search, buf):
            self._values(off, children, values, props)

    def lookup(self, search: str) -> dict:
        """Properties of every entry matching ``search`` (for example a PCI modalias)."""
        props: dict = {}
        off = self.root
        i = 0
        while off:
            prefix_off, children, values = self._node(off)
            if prefix_off:
                prefix = self._string(prefix_off)
                for p, c in enumerate(prefix):
                    if c in "*?[":  # the rest of this prefix is a pattern for the rest of the search
                        self._fnmatch(off, p, "", search[i + p:], props)
                        return props
                    if i + p >= len(search) or c != search[i + p]:
                        return props
                i += len(prefix)
            for wild in "*?[":
                child = self._child(off, children, wild)
                if child:
                    self._fnmatch(child, 0, wild, search[i:], props)
            if i >= len(search):
                self._values(off, children, values, props)
                return props
            off = self._child(off, children, search[i])
            i += 1
        return props

    def exact(self, key: str) -> dict:
        """Properties stored under exactly ``key`` (patterns in it are plain characters).

        The names come from keys such as ``pci:v000010DE*`` and ``pci:v000010DEd00001E87*``;
        looking those up directly avoids matching every wildcard branch of the trie, which is
        what a general lookup must do and costs milliseconds per device in Python.
        """
        props: dict = {}
        off, i = self.root, 0
        while off:
            prefix_off, children, values = self._node(off)
            if prefix_off:
                prefix = self._string(prefix_off)
                if key[i:i + len(prefix)] != prefix:
                    return props
                i += len(prefix)
            if i == len(key):
                self._values(off, children, values, props)
                return props
            off = self._child(off, children, key[i])
            i += 1
        return props


def find_hwdb(fs):
    for rel in HWDB_PATHS:
        if fs.isfile(rel):
            return rel
    return None


def lookup_names(fs, ids) -> dict:
    """``(vendor, device)`` -> ``(vendor name, device name)`` from hwdb; absent ids are left out."""
    rel = find_hwdb(fs)
    if rel is None or not ids:
        return {}
    data = fs.read_bytes(rel)
    if data is None:
        return {}
    try:
        db = Hwdb(data)
    except HwdbError as exc:
        fs.warn(f"{rel}: {exc}; device names from it skipped")
        return {}
    out = {}
    for vendor, device in ids:
        v = f"pci:v0000{vendor.upper()}"
        out[(vendor, device)] = (db.exact(v + "*").get("ID_VENDOR_FROM_DATABASE"),
                                 db.exact(f"{v}d0000{device.upper()}*").get("ID_MODEL_FROM_DATABASE"))
    return out
