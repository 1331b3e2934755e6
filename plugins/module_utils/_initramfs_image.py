# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a built initramfs image really holds, read from the archive itself, and whether that is enough for VFIO.

A generator's configuration says what it meant to put in the image; only the image says what the
kernel will unpack at boot. The image is read the way the kernel's ``unpack_to_rootfs`` reads it:
one or more cpio "newc"/"crc" archives, each uncompressed or compressed, with zero padding
between them (typically an uncompressed early-microcode archive, then the compressed main one).

gzip, xz, lzma and bzip2 are decompressed here with the standard library, in bounded pieces, so
the decompressed archive is never held whole. zstd and lz4 have no standard-library module before
Python 3.14: those segments go through the ``zstd``/``lz4`` tools via the ``run_command(argv) ->
(rc, stdout, stderr)`` callable the caller passes in, which returns the whole decompressed segment
(pass bytes, e.g. ``module.run_command(argv, encoding=None)``: decoded text is turned back into
bytes, at the cost of another copy). That output is parsed in place, but a run_command that
collects a pipe (subprocess, AnsibleModule) briefly holds it twice: about 660 MiB of memory for a
340 MB segment, where gzip/xz/bzip2 stay under 50 MiB. The tool reads a file, so a segment that is
not the whole image is first copied alone to a temporary file.
"""
from __future__ import annotations

import bz2
import lzma
import os
import posixpath
import re
import stat
import tempfile
import zlib

CHUNK = 1 << 20  # compressed or uncompressed bytes read from the image at a time
OUT_CHUNK = 8 << 20  # most decompressed bytes produced from one piece of input

HEADER = 110
CPIO_MAGICS = (b"070701", b"070702")  # newc, and crc (newc with a checksum): the only ones the kernel takes
TRAILER = "TRAILER!!!"
MAX_NAME = 1 << 16
MAX_LINK = 1 << 12
_HEX_FIELDS = re.compile(rb"[0-9A-Fa-f]{104}")
_NONZERO = re.compile(rb"[^\x00]")

# The kernel's decompress_method() table, longest magic first where one is a prefix of another.
MAGICS = (
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x02\x21\x4c\x18", "lz4"),  # legacy format: lz4 -l, the only lz4 format the kernel unpacks
    (b"\x04\x22\x4d\x18", "lz4-frame"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x89LZO", "lzo"),
)
_DECOMPRESSORS = {
    "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    "xz": lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ),
    "lzma": lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE),
    "bzip2": bz2.BZ2Decompressor,
}
# compression -> (tool, Debian package that ships it)
TOOLS = {"zstd": ("zstd", "zstd"), "lz4": ("lz4", "lz4"), "lz4-frame": ("lz4", "lz4")}

LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BOUND = (8 << 20) + (8 << 20) // 255 + 16  # LZ4_compressBound() of the 8 MiB legacy block

MODULE_FILE = re.compile(r"^(.+?)\.ko(?:\.xz|\.zst|\.gz)?$")
USR_MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


class ImageError(Exception):
    """The image cannot be read as an initramfs; the message says where and why."""


def normalize(name: str) -> str:
    return name.replace("-", "_")


def _norm(name: str) -> str:
    """An archive or wanted path without its leading ``./`` or ``/``, as a key of ``files``."""
    while name.startswith(("./", "/")):
        name = name[2:] if name.startswith("./") else name[1:]
    name = name.rstrip("/")
    return "" if name == "." else name


def _pad4(n: int) -> int:
    return (n + 3) & ~3


class _Cpio:
    """newc/crc archives from a byte stream fed in pieces of any size; file data is skipped, never kept.

    With ``single`` it stops after the first TRAILER!!! (an uncompressed archive in the image: what
    follows is the next segment); otherwise, as inside a compressed segment, several archives may
    follow each other with zero padding between them.
    """

    def __init__(self, listing: dict, where, single: bool):
        self.listing = listing
        self.where = where  # callable: stream position -> text for an error
        self.single = single
        self.pending = bytearray()
        self.need = HEADER
        self.step = "header"
        self.skip = 0
        self.pos = 0
        self.entries = 0
        self.archives = 1
        self.done = False
        self.mode = self.filesize = self.namesize = 0
        self.path = ""

    def feed(self, data) -> int:
        """Use ``data``; returns how many bytes were used (fewer than all only once ``done``)."""
        view = memoryview(data)
        n = len(view)
        i = 0
        while i < n:
            if self.skip:
                k = min(self.skip, n - i)
                self.skip -= k
                i += k
                self.pos += k
                continue
            if self.step == "between":
                if self.single:
                    self.done = True
                    break
                m = _NONZERO.search(view, i)
                j = m.start() if m else n
                self.pos += j - i
                i = j
                if m:
                    if self.pos & 3:
                        raise ImageError(f"{self.where(self.pos)}: broken padding: an archive starts at a position not a multiple of 4")
                    self.step, self.need = "next", HEADER
                    self.archives += 1
                continue
            take = min(self.need - len(self.pending), n - i)
            self.pending += view[i:i + take]
            i += take
            self.pos += take
            if len(self.pending) == self.need:
                self._step()
        if self.single and self.step == "between" and not self.skip:
            self.done = True
        return i

    def _step(self) -> None:
        block = bytes(self.pending)
        self.pending = bytearray()
        if self.step in ("header", "next"):
            self._header(block)
        elif self.step == "name":
            self._name(block)
        else:  # "link": a symlink's data is its target
            self.listing["links"][self.path] = block.decode("utf-8", "surrogateescape")
            self.step, self.need, self.skip = "header", HEADER, _pad4(self.filesize) - self.filesize

    def _header(self, block: bytes) -> None:
        at = self.pos - HEADER
        if block[:6] not in CPIO_MAGICS:
            if self.step == "next":
                raise ImageError(f"{self.where(at)}: junk after the end of a cpio archive (bytes {block[:8].hex()})")
            what = "an old-format (odc/binary) cpio header, which the kernel does not unpack" if block[:6] == b"070707" else \
                f"no cpio header (bytes {block[:8].hex()})"
            raise ImageError(f"{self.where(at)}: {what}")
        if not _HEX_FIELDS.fullmatch(block, 6):
            raise ImageError(f"{self.where(at)}: corrupt cpio header (fields are not hexadecimal)")
        fields = [int(block[6 + 8 * k:14 + 8 * k], 16) for k in range(13)]
        self.mode, self.filesize, self.namesize = fields[1], fields[6], fields[11]
        if not 0 < self.namesize <= MAX_NAME:
            raise ImageError(f"{self.where(at)}: corrupt cpio header (name size {self.namesize})")
        self.step, self.need = "name", _pad4(HEADER + self.namesize) - HEADER

    def _name(self, block: bytes) -> None:
        name = block[:self.namesize].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if name == TRAILER:
            self.step, self.skip = "between", _pad4(self.filesize)
            return
        self.entries += 1
        self.path = _norm(name)
        if self.path:
            self.listing["files"].add(self.path)
        if stat.S_ISLNK(self.mode) and 0 < self.filesize <= MAX_LINK:
            self.step, self.need = "link", self.filesize
        else:
            self.step, self.need, self.skip = "header", HEADER, _pad4(self.filesize)

    def finish(self) -> None:
        """The stream ended: it must end after a TRAILER!!! (the kernel: "junk at the end of compressed archive")."""
        if self.step == "between" and not self.skip:
            return
        if self.step == "header" and not self.pending and not self.skip:
            raise ImageError(f"{self.where(self.pos)}: the cpio archive ends after {self.entries} entries without its TRAILER!!! (truncated?)")
        inside = f"inside entry {self.entries} ({self.path})" if self.entries else "inside its first header"
        raise ImageError(f"{self.where(self.pos)}: truncated: the cpio archive ends {inside}")


def compression_of(head: bytes):
    """The compression a segment starting with ``head`` uses, "cpio" for an uncompressed archive, or None."""
    if head[:4] == b"0707":
        return "cpio"
    return next((name for magic, name in MAGICS if head.startswith(magic)), None)


def list_image(path: str, run_command=None) -> dict:
    """``{"files": set, "links": {path: target}, "segments": [...], "warnings": [...]}`` of the image at ``path``.

    Paths have no leading ``./`` or ``/``. Each segment is ``{"offset", "end", "compression",
    "entries", "archives", "size"}`` (``size``: uncompressed bytes). Raises :class:`ImageError`
    for a file that is not an initramfs, a truncated or corrupt segment, or a missing tool.
    """
    listing = {"files": set(), "links": {}, "segments": [], "warnings": []}
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ImageError(f"{path}: cannot be read: {e.strerror or e}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while True:
            pos = _skip_zeros(f, pos)
            if pos >= size:
                break
            f.seek(pos)
            head = f.read(8)
            kind = compression_of(head)
            if kind is None or kind == "lzo":
                _unknown(path, pos, size, head, kind, listing)
                break
            try:
                segment = _segment(f, path, pos, size, kind, run_command, listing)
            except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as e:
                raise ImageError(f"{path}: {kind} segment at offset {pos}: corrupt or truncated data ({e})") from None
            listing["segments"].append(segment)
            pos = segment["end"]
    if not listing["segments"]:
        raise ImageError(f"{path}: not an initramfs: " + ("the file is empty" if not size else "it holds only zero bytes"))
    return listing


def _unknown(path, pos, size, head, kind, listing) -> None:
    if kind == "lzo":
        what = "LZO-compressed data, which this reader does not decompress"
    elif head[:2] == b"MZ":
        what = "a PE file (a unified kernel image? its .initrd section is the initramfs)"
    else:
        what = f"neither a cpio archive nor compressed data (bytes {head.hex()})"
    if not listing["segments"]:
        raise ImageError(f"{path}: not an initramfs: offset {pos}: {what}")
    listing["warnings"].append(
        f"offset {pos}: {size - pos} trailing bytes: {what}; the kernel stops unpacking there "
        "('invalid magic at start of compressed archive'), after the files listed")


def _skip_zeros(f, pos: int) -> int:
    f.seek(pos)
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            return pos
        m = _NONZERO.search(chunk)
        if m:
            return pos + m.start()
        pos += len(chunk)


def _segment(f, path, start, size, kind, run_command, listing) -> dict:
    def where(p):
        if kind == "cpio":
            return f"{path}: uncompressed archive at offset {start}, file offset {start + p}"
        return f"{path}: {kind} segment at offset {start}, uncompressed byte {p}"

    parser = _Cpio(listing, where, single=kind == "cpio")
    if kind == "cpio":
        if start & 3:
            listing["warnings"].append(f"offset {start}: a cpio archive not on a 4-byte boundary: the kernel would not unpack it")
        end = _feed_plain(f, start, parser)
    elif kind in _DECOMPRESSORS:
        end = _feed_stdlib(f, path, start, kind, parser)
    else:
        end = _zstd_end(f, path, start, size) if kind == "zstd" else _lz4_end(f, path, start, size, kind)
        _feed_tool(f, path, start, end, size, kind, run_command, parser)
        if kind == "lz4-frame":
            listing["warnings"].append(f"offset {start}: lz4 frame format: the kernel only unpacks the legacy format (lz4 -l)")
    parser.finish()
    return {"offset": start, "end": end, "compression": "none" if kind == "cpio" else kind,
            "entries": parser.entries, "archives": parser.archives, "size": parser.pos}


def _feed_plain(f, start: int, parser: _Cpio) -> int:
    f.seek(start)
    while not parser.done:
        chunk = f.read(CHUNK)
        if not chunk:
            break
        parser.feed(chunk)
    return start + parser.pos


def _feed_stdlib(f, path, start: int, kind: str, parser: _Cpio) -> int:
    dec = _DECOMPRESSORS[kind]()
    f.seek(start)
    fed = 0
    while not dec.eof:
        chunk = f.read(CHUNK)
        if chunk:
            fed += len(chunk)
        for piece in _inflate(dec, kind, chunk):
            parser.feed(piece)
        if not chunk and not dec.eof:
            raise ImageError(f"{path}: {kind} segment at offset {start}: truncated: the file ends inside the compressed data")
    return start + fed - len(dec.unused_data)


def _inflate(dec, kind: str, data: bytes):
    """Decompressed pieces of ``data``, none longer than OUT_CHUNK (a run of zeros compresses a thousand to one)."""
    if kind == "gzip":
        while True:
            out = dec.decompress(data, OUT_CHUNK)
            if out:
                yield out
            data = dec.unconsumed_tail
            if dec.eof or (not data and len(out) < OUT_CHUNK):
                return
    out = dec.decompress(data, OUT_CHUNK)
    if out:
        yield out
    while not dec.eof and not dec.needs_input:
        out = dec.decompress(b"", OUT_CHUNK)
        if out:
            yield out


def _read_at(f, pos: int, n: int) -> bytes:
    f.seek(pos)
    return f.read(n)


def _zstd_end(f, path, start: int, size: int) -> int:
    """End of the zstd frame at ``start``, from its block headers (the kernel unpacks one frame per segment)."""
    def truncated():
        return ImageError(f"{path}: zstd segment at offset {start}: truncated: the file ends inside the frame")

    head = _read_at(f, start, 6)
    if len(head) < 6:
        raise truncated()
    fhd = head[4]
    if fhd & 0x08:
        raise ImageError(f"{path}: zstd segment at offset {start}: corrupt frame header")
    single = fhd >> 5 & 1
    pos = start + 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fhd >> 6]
    while True:
        block = _read_at(f, pos, 3)
        if len(block) < 3:
            raise truncated()
        value = int.from_bytes(block, "little")
        btype = value >> 1 & 3
        if btype == 3:
            raise ImageError(f"{path}: zstd segment at offset {start}: corrupt block header at offset {pos}")
        pos += 3 + (1 if btype == 1 else value >> 3)
        if value & 1:
            break
    pos += 4 if fhd & 0x04 else 0  # content checksum
    if pos > size:
        raise truncated()
    return pos


def _lz4_end(f, path, start: int, size: int, kind: str) -> int:
    """End of the lz4 data at ``start``: legacy chunks until the file ends, a zero or an impossible chunk size; a frame's EndMark."""
    def truncated():
        return ImageError(f"{path}: {kind} segment at offset {start}: truncated: the file ends inside the compressed data")

    if kind == "lz4":
        pos = start + 4
        while pos + 4 <= size:
            value = int.from_bytes(_read_at(f, pos, 4), "little")
            if value == LZ4_LEGACY_MAGIC:
                pos += 4
                continue
            if value == 0 or value > LZ4_LEGACY_BOUND:
                break
            pos += 4 + value
            if pos > size:
                raise truncated()
        return pos
    head = _read_at(f, start, 6)
    if len(head) < 6:
        raise truncated()
    flg = head[4]
    block_checksum = 4 if flg & 0x10 else 0
    pos = start + 7 + (8 if flg & 0x08 else 0) + (4 if flg & 0x01 else 0)
    while True:
        raw = _read_at(f, pos, 4)
        if len(raw) < 4:
            raise truncated()
        value = int.from_bytes(raw, "little")
        pos += 4
        if value == 0:
            break
        pos += (value & 0x7FFFFFFF) + block_checksum
    pos += 4 if flg & 0x04 else 0
    if pos > size:
        raise truncated()
    return pos


def _feed_tool(f, path, start: int, end: int, size: int, kind: str, run_command, parser: _Cpio) -> None:
    tool, package = TOOLS[kind]
    where = f"{path}: {kind} segment at offset {start}"
    missing = f"{where}: reading it needs the '{tool}' tool (Debian package {package})"
    if run_command is None:
        raise ImageError(f"{missing}, and no run_command was given")
    src, tmp = path, None
    try:
        if start or end != size:  # the tool reads a whole file: copy the segment alone out of the image
            fd, tmp = tempfile.mkstemp(prefix="exliar-vfio-initramfs-")
            with os.fdopen(fd, "wb") as out:
                f.seek(start)
                left = end - start
                while left:
                    chunk = f.read(min(CHUNK, left))
                    out.write(chunk)
                    left -= len(chunk)
            src = tmp
        try:
            rc, stdout, stderr = run_command([tool, "-d", "-c", "-q", "--", src])
        except OSError as e:
            raise ImageError(f"{missing}: {e.strerror or e}") from None
    finally:
        if tmp:
            os.unlink(tmp)
    if rc == 127:
        raise ImageError(f"{missing}, which is not installed")
    if rc != 0:
        if isinstance(stderr, bytes):
            stderr = stderr.decode("utf-8", "replace")
        raise ImageError(f"{where}: '{tool} -dc' failed (rc {rc}): {(stderr or '').strip()}")
    if isinstance(stdout, str):
        stdout = stdout.encode("utf-8", "surrogateescape")
    parser.feed(stdout)


def _resolve(path: str, links: dict) -> str:
    """``path`` with every symlinked directory in it replaced by the link's target, inside the image."""
    for _hop in range(40):  # a link loop stops somewhere
        parts = path.split("/")
        for i in range(len(parts) - 1):  # directories only: the entry itself is what is looked for
            target = links.get("/".join(parts[:i + 1]))
            if target is not None:
                base = "/" + "/".join(parts[:i])
                path = _norm(posixpath.normpath(posixpath.join(base, target, *parts[i + 1:])))
                break
        else:
            return path
    return path


def _guess_usr_links(files: set) -> dict:
    """Without the image's symlinks: a top-level bin, sbin, lib... entry with nothing under it next to a
    populated /usr counterpart is the usr-merge link."""
    parents = set()
    for p in files:
        for m in re.finditer("/", p):
            parents.add(p[:m.start()])
    return {d: "usr/" + d for d in USR_MERGED if d in files and d not in parents and "usr/" + d in parents}


def check_vfio(files, kernel: str, modules, extra_files, links=None) -> dict:
    """Does an image listing hold the vfio modules of ``kernel`` and the ``extra_files``?

    ``files`` is :func:`list_image`'s result (its symlinks are then used) or a set of paths.
    ``modules`` are names (``vfio-pci`` and ``vfio_pci`` alike); ``builtin:NAME`` marks one built
    into the kernel, which needs no file. An extra file is also found through a symlinked
    directory, e.g. ``sbin/x`` as ``usr/sbin/x`` in a usr-merged (dracut) image.
    Returns ``{"ok", "missing", "found": {name or path: path in image or "builtin"}, "kernels", "notes"}``.
    """
    if isinstance(files, dict):
        links = files.get("links") if links is None else links
        files = files.get("files", ())
    files = {_norm(p) for p in files} - {""}
    if links is None:
        links = _guess_usr_links(files)
    else:
        links = {_norm(k): v for k, v in links.items()}
    kernels, index = set(), {}
    for p in sorted(files):
        parts = p.split("/")
        if parts[0] == "usr":
            parts = parts[1:]
        if len(parts) < 3 or parts[:2] != ["lib", "modules"]:
            continue
        kernels.add(parts[2])
        m = MODULE_FILE.match(parts[-1])
        if parts[2] == kernel and m:
            index.setdefault(normalize(m.group(1)), p)
    found, missing, notes = {}, [], []
    for name in modules:
        if name.startswith("builtin:"):
            found[normalize(name[len("builtin:"):])] = "builtin"
            continue
        key = normalize(name.rsplit("/", 1)[-1].split(".ko", 1)[0])
        if key in index:
            found[key] = index[key]
        else:
            missing.append(key)
    for want in extra_files:
        rel = _norm(want)
        hit = rel if rel in files else _resolve(rel, links)
        if hit in files:
            found[rel] = hit
        else:
            missing.append(rel)
    if kernel not in kernels and any(not m.startswith("builtin:") for m in modules):
        notes.append(f"the image has no lib/modules/{kernel}; it has modules for: {', '.join(sorted(kernels)) or 'no kernel'}")
    return {"ok": not missing, "missing": missing, "found": found, "kernels": sorted(kernels), "notes": notes}
