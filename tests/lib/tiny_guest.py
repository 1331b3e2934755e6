"""A tiny guest for VM-stage tests: a gzip'd ``newc`` initramfs holding a static busybox and an
``/init`` script, booted with a distribution kernel (direct kernel boot).

Standard library only: the system tier also runs this file with the guest's ``python3``
(``python3 -c <source> OUT`` with the script on standard input) to build the nested guest's
initramfs from the guest's own busybox.
"""
from __future__ import annotations

import gzip
import io
import shutil
import struct
import sys

DIRECTORIES = ("bin", "dev", "proc", "sys")


class TinyGuestError(RuntimeError):
    pass


def is_static(path: str) -> bool:
    """An ELF file without a PT_INTERP program header (no dynamic loader needed)."""
    with open(path, "rb") as handle:
        data = handle.read(1 << 16)
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def newc(entries: list) -> bytes:
    """A cpio archive in the kernel's ``newc`` format: (name, mode, data) entries, then the trailer."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        out.write(b"\0" * (-out.tell() % 4) + data + b"\0" * (-len(data) % 4))
    return out.getvalue()


def static_busybox() -> str:
    busybox = shutil.which("busybox")
    if busybox is None or not is_static(busybox):
        raise TinyGuestError("no static busybox on this machine: install busybox-static")
    return busybox


def build_initramfs(path: str, script: str) -> None:
    """Write the initramfs: ``/init`` runs ``script`` with busybox's shell (applets called as
    ``/bin/busybox NAME``, or after ``/bin/busybox --install -s /bin``)."""
    with open(static_busybox(), "rb") as handle:
        binary = handle.read()
    entries = [(d, 0o040755, b"") for d in DIRECTORIES]
    entries += [("bin/busybox", 0o100755, binary), ("init", 0o100755, ("#!/bin/busybox sh\n" + script).encode())]
    with open(path, "wb") as handle:
        handle.write(gzip.compress(newc(entries), compresslevel=1))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tiny_guest.py OUTPUT < init-script")
    build_initramfs(sys.argv[1], sys.stdin.read())
