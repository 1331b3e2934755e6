"""Reading a built initramfs image: real archives made by the real tools (cpio, gzip, zstd, xz, lz4, bzip2).

Each image is built here the way the generators build them: ``find . | sort | cpio -o -H newc``
compressed, often after an uncompressed early-microcode archive. A case is skipped only when a
tool it needs is not installed (``./dev.sh setup`` installs them: cpio zstd lz4 xz-utils bzip2,
and initramfs-tools-core for the lsinitramfs comparison).
"""
from __future__ import annotations

import glob
import os
import random
import re
import shutil
import subprocess

import pytest

from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_image as img
from ansible_collections.exliar.vfio.plugins.module_utils._initramfs_image import ImageError, check_vfio, list_image

KERNEL = "6.1.0-18-amd64"
MODS = f"lib/modules/{KERNEL}/kernel/drivers/vfio"
MODULE_FILES = [f"{MODS}/vfio.ko.xz", f"{MODS}/vfio_iommu_type1.ko.xz", f"{MODS}/vfio_virqfd.ko.xz", f"{MODS}/pci/vfio-pci.ko.xz"]
CONF = "etc/modprobe.d/exliar-vfio.conf"
OVERRIDE = "usr/local/sbin/exliar-vfio-pci-override"
VFIO = ["vfio", "vfio_iommu_type1", "vfio_virqfd", "vfio-pci"]
COMPRESS = {
    "gzip": ["gzip", "-n", "-9", "-c"],
    "zstd": ["zstd", "-q", "-c", "-19"],
    "xz": ["xz", "--check=crc32", "-c"],  # as dracut and the kernel's own scripts do
    "lzma": ["xz", "--format=lzma", "-c"],
    "lz4": ["lz4", "-l", "-q", "-c"],  # legacy format, the only lz4 the kernel unpacks
    "lz4-frame": ["lz4", "-q", "-c"],
    "bzip2": ["bzip2", "-c"],
}


def need(*tools):
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"{t} is not installed")


def run(argv):
    """A run_command like AnsibleModule.run_command(argv, encoding=None)."""
    try:
        p = subprocess.run(argv, capture_output=True, check=False)
    except FileNotFoundError as e:
        return 127, b"", str(e)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def run_text(argv):
    """What AnsibleModule.run_command returns by default: output decoded, undecodable bytes as surrogates."""
    rc, out, err = run(argv)
    return rc, out.decode("utf-8", "surrogateescape"), err


def make_tree(root, files, links=None):
    """Files (path -> bytes) and symlinks (path -> target) below ``root``; returns the set of every path in it."""
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for rel, target in (links or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / rel)
    paths = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            paths.add(os.path.relpath(os.path.join(dirpath, n), root))
    return paths


def vfio_tree(root, kernel=KERNEL, skip=()):
    files = {p: random.Random(p).randbytes(3000) for p in MODULE_FILES if p not in skip}
    files.update({
        CONF: b"options vfio-pci ids=10de:2204,10de:1aef\nsoftdep nouveau pre: vfio-pci\n",
        OVERRIDE: b"#!/bin/sh\necho vfio-pci > /sys/bus/pci/devices/$1/driver_override\n",
        "init": b"#!/bin/sh\nexec /sbin/init\n",
        "usr/bin/busybox": random.Random(2).randbytes(40000),  # incompressible, several blocks of every format
        "usr/share/zeros": bytes(300000),  # a long run of zeros: the decompressor's biggest output per input
    })
    files = {p.replace(KERNEL, kernel): d for p, d in files.items() if p not in skip}
    return make_tree(root, files, {"bin": "usr/bin", "lib64": "lib"})


def cpio(root, fmt="newc"):
    need("cpio")
    p = subprocess.run(f"find . | LC_ALL=C sort | cpio -o -H {fmt} --quiet -R 0:0", shell=True, cwd=root,
                       capture_output=True, check=True)
    return p.stdout


def compress(data, kind):
    argv = COMPRESS[kind]
    need(argv[0])
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


def microcode(tmp_path):
    """An uncompressed early-microcode archive, as initramfs-tools and dracut's early_cpio put first."""
    root = tmp_path / "early"
    paths = make_tree(root, {"kernel/x86/microcode/GenuineIntel.bin": random.Random(1).randbytes(5000)})
    return cpio(root), paths


def write(tmp_path, *parts, name="initrd.img"):
    path = tmp_path / name
    path.write_bytes(b"".join(parts))
    return str(path)


@pytest.mark.parametrize("kind", ["gzip", "zstd", "xz", "lzma", "lz4", "bzip2"])
def test_microcode_then_compressed_main_archive(tmp_path, kind):
    main = vfio_tree(tmp_path / "main")
    early, early_paths = microcode(tmp_path)
    path = write(tmp_path, early, compress(cpio(tmp_path / "main"), kind))
    listing = list_image(path, run)
    assert listing["files"] == main | early_paths
    assert [(s["offset"], s["compression"]) for s in listing["segments"]] == [(0, "none"), (len(early), kind)]
    assert [s["entries"] for s in listing["segments"]] == [len(early_paths) + 1, len(main) + 1]  # and "."
    assert listing["segments"][-1]["end"] == os.path.getsize(path)
    assert listing["links"] == {"bin": "usr/bin", "lib64": "lib"}
    assert listing["warnings"] == []
    result = check_vfio(listing, KERNEL, VFIO, ["/" + CONF, OVERRIDE])
    assert result["ok"] is True and result["missing"] == []
    assert result["found"]["vfio_pci"] == f"{MODS}/pci/vfio-pci.ko.xz"
    assert result["found"][CONF] == CONF
    assert result["kernels"] == [KERNEL] and result["notes"] == []


def test_crc_format_and_no_microcode(tmp_path):
    paths = vfio_tree(tmp_path / "main")
    listing = list_image(write(tmp_path, compress(cpio(tmp_path / "main", "crc"), "gzip")))
    assert listing["files"] == paths
    assert [s["compression"] for s in listing["segments"]] == ["gzip"]


def test_uncompressed_image(tmp_path):
    paths = vfio_tree(tmp_path / "main")
    listing = list_image(write(tmp_path, cpio(tmp_path / "main")))
    assert listing["files"] == paths
    assert check_vfio(listing, KERNEL, VFIO, [CONF])["ok"] is True


@pytest.mark.parametrize("first,second", [("gzip", "zstd"), ("xz", "xz"), ("zstd", "zstd"), ("bzip2", "lz4"), ("lzma", "gzip")])
def test_two_compressed_segments(tmp_path, first, second):
    """Two compressed archives one after the other (with zero padding between, as a bootloader may add)."""
    a = make_tree(tmp_path / "a", {CONF: b"options vfio-pci ids=1002:73bf\n", "usr/share/zeros": bytes(100000)})
    b = vfio_tree(tmp_path / "b")
    one = compress(cpio(tmp_path / "a"), first)
    path = write(tmp_path, one, bytes(-len(one) % 4 + 512), compress(cpio(tmp_path / "b"), second))
    listing = list_image(path, run)
    assert listing["files"] == a | b
    assert [s["compression"] for s in listing["segments"]] == [first, second]
    assert listing["segments"][1]["offset"] == _round4(len(one)) + 512


def _round4(n):
    return (n + 3) & ~3


def test_two_archives_inside_one_compressed_segment(tmp_path):
    """The kernel also takes several cpio archives (zero padded) inside one compressed stream."""
    a = make_tree(tmp_path / "a", {CONF: b"x\n"})
    b = vfio_tree(tmp_path / "b")
    listing = list_image(write(tmp_path, compress(cpio(tmp_path / "a") + bytes(1024) + cpio(tmp_path / "b"), "zstd")), run)
    assert listing["files"] == a | b
    assert [(s["compression"], s["archives"]) for s in listing["segments"]] == [("zstd", 2)]


def test_microcode_padded_and_gzip_multi_member(tmp_path):
    """Extra zero padding after the early archive; a gzip stream of two members is two segments."""
    main = vfio_tree(tmp_path / "main")
    early, early_paths = microcode(tmp_path)
    extra = make_tree(tmp_path / "extra", {"etc/modprobe.d/other.conf": b"blacklist nouveau\n"})
    path = write(tmp_path, early, bytes(4096), compress(cpio(tmp_path / "main"), "gzip"), compress(cpio(tmp_path / "extra"), "gzip"))
    listing = list_image(path)
    assert listing["files"] == main | early_paths | extra
    assert [s["compression"] for s in listing["segments"]] == ["none", "gzip", "gzip"]
    assert listing["segments"][1]["offset"] == len(early) + 4096


def test_pieces_of_any_size(tmp_path, monkeypatch):
    """Headers, names and link targets split across reads and decompressed pieces are put back together."""
    main = vfio_tree(tmp_path / "main")
    early, early_paths = microcode(tmp_path)
    path = write(tmp_path, early, compress(cpio(tmp_path / "main"), "gzip"), compress(cpio(tmp_path / "main"), "xz"))
    monkeypatch.setattr(img, "CHUNK", 7)
    monkeypatch.setattr(img, "OUT_CHUNK", 5)
    listing = list_image(path)
    assert listing["files"] == main | early_paths
    assert listing["links"]["bin"] == "usr/bin"
    assert [s["compression"] for s in listing["segments"]] == ["none", "gzip", "xz"]


def test_lz4_frame_format_is_listed_with_a_warning(tmp_path):
    main = vfio_tree(tmp_path / "main")
    listing = list_image(write(tmp_path, compress(cpio(tmp_path / "main"), "lz4-frame")), run)
    assert listing["files"] == main
    assert listing["warnings"] == ["offset 0: lz4 frame format: the kernel only unpacks the legacy format (lz4 -l)"]


def test_zstd_output_as_text_from_run_command(tmp_path):
    """AnsibleModule.run_command decodes by default; the bytes come back through surrogateescape."""
    main = vfio_tree(tmp_path / "main")
    early, early_paths = microcode(tmp_path)
    listing = list_image(write(tmp_path, early, compress(cpio(tmp_path / "main"), "zstd")), run_text)
    assert listing["files"] == main | early_paths


# --- check_vfio ---------------------------------------------------------------------------------------

def test_missing_module_and_file_are_named(tmp_path):
    vfio_tree(tmp_path / "main", skip=[f"{MODS}/vfio_iommu_type1.ko.xz", OVERRIDE])
    listing = list_image(write(tmp_path, compress(cpio(tmp_path / "main"), "gzip")))
    result = check_vfio(listing, KERNEL, VFIO, [CONF, OVERRIDE])
    assert result["ok"] is False
    assert result["missing"] == ["vfio_iommu_type1", OVERRIDE]
    assert result["found"] == {"vfio": f"{MODS}/vfio.ko.xz", "vfio_virqfd": f"{MODS}/vfio_virqfd.ko.xz",
                               "vfio_pci": f"{MODS}/pci/vfio-pci.ko.xz", CONF: CONF}


def test_builtin_modules_need_no_file(tmp_path):
    vfio_tree(tmp_path / "main", skip=[f"{MODS}/vfio.ko.xz", f"{MODS}/vfio_iommu_type1.ko.xz"])
    listing = list_image(write(tmp_path, compress(cpio(tmp_path / "main"), "gzip")))
    result = check_vfio(listing, KERNEL, ["builtin:vfio", "builtin:vfio_iommu_type1", "vfio_pci"], [CONF])
    assert result["ok"] is True
    assert result["found"]["vfio"] == "builtin" and result["found"]["vfio_pci"].endswith("vfio-pci.ko.xz")


def test_modules_of_another_kernel_do_not_count(tmp_path):
    vfio_tree(tmp_path / "main", kernel="6.1.0-17-amd64")
    listing = list_image(write(tmp_path, compress(cpio(tmp_path / "main"), "gzip")))
    result = check_vfio(listing, KERNEL, VFIO, [CONF])
    assert result["missing"] == ["vfio", "vfio_iommu_type1", "vfio_virqfd", "vfio_pci"]
    assert result["notes"] == [f"the image has no lib/modules/{KERNEL}; it has modules for: 6.1.0-17-amd64"]


@pytest.mark.parametrize("suffix", [".ko", ".ko.zst", ".ko.gz"])
def test_module_compressions(suffix):
    files = {f"usr/lib/modules/{KERNEL}/kernel/drivers/vfio/pci/vfio-pci{suffix}", f"usr/lib/modules/{KERNEL}/kernel/drivers/vfio/vfio{suffix}"}
    assert check_vfio(files, KERNEL, ["vfio_pci", "vfio"], [])["ok"] is True
    assert check_vfio({f"lib/modules/{KERNEL}/vfio-pci{suffix}.sig"}, KERNEL, ["vfio_pci"], [])["missing"] == ["vfio_pci"]


def dracut_tree(root):
    """A usr-merged image as dracut builds it: /sbin, /bin, /lib are links into /usr."""
    files = {p.replace("lib/modules", "usr/lib/modules"): b"m" for p in MODULE_FILES}
    files.update({"usr/sbin/exliar-vfio-pci-override": b"#!/bin/sh\n", CONF: b"options vfio-pci ids=10de:2204\n", "usr/bin/sh": b"sh"})
    return make_tree(root, files, {"sbin": "usr/sbin", "bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64"})


def test_usr_merged_image(tmp_path):
    dracut_tree(tmp_path / "main")
    listing = list_image(write(tmp_path, compress(cpio(tmp_path / "main"), "zstd")), run)
    result = check_vfio(listing, KERNEL, VFIO, [CONF, "/sbin/exliar-vfio-pci-override", "bin/sh", "usr/sbin/exliar-vfio-pci-override"])
    assert result["ok"] is True, result
    assert result["found"]["sbin/exliar-vfio-pci-override"] == "usr/sbin/exliar-vfio-pci-override"
    assert result["found"]["vfio_pci"] == f"usr/lib/modules/{KERNEL}/kernel/drivers/vfio/pci/vfio-pci.ko.xz"
    # the same from the set of paths alone: sbin is an entry with nothing under it, usr/sbin is populated
    assert check_vfio(listing["files"], KERNEL, VFIO, ["sbin/exliar-vfio-pci-override"])["ok"] is True
    assert check_vfio(listing["files"], KERNEL, VFIO, ["sbin/missing"])["missing"] == ["sbin/missing"]


def test_relative_and_chained_links():
    files = {"usr", "usr/sbin", "usr/sbin/x", "sbin", "opt", "opt/tools", "opt/tools/y"}
    links = {"sbin": "usr/sbin", "usr/local": "../opt", "opt/bin": "tools"}
    result = check_vfio(files, KERNEL, [], ["sbin/x", "usr/local/bin/y", "usr/local/bin/z"], links=links)
    assert result["found"] == {"sbin/x": "usr/sbin/x", "usr/local/bin/y": "opt/tools/y"}
    assert result["missing"] == ["usr/local/bin/z"]
    looping = check_vfio({"a", "b"}, KERNEL, [], ["a/x"], links={"a": "b", "b": "a"})
    assert looping["missing"] == ["a/x"]


def test_not_usr_merged_sbin_is_not_usr_sbin(tmp_path):
    """Where /sbin is a real directory, a file in /usr/sbin is not one in /sbin."""
    make_tree(tmp_path / "main", {"usr/sbin/exliar-vfio-pci-override": b"x", "sbin/modprobe": b"y"})
    listing = list_image(write(tmp_path, compress(cpio(tmp_path / "main"), "gzip")))
    assert check_vfio(listing, KERNEL, [], ["sbin/exliar-vfio-pci-override"])["missing"] == ["sbin/exliar-vfio-pci-override"]
    assert check_vfio(listing["files"], KERNEL, [], ["sbin/exliar-vfio-pci-override"])["missing"] == ["sbin/exliar-vfio-pci-override"]


# --- broken images and missing tools ----------------------------------------------------------------------

@pytest.mark.parametrize("data,message", [
    (b"", "not an initramfs: the file is empty"),
    (bytes(5000), "not an initramfs: it holds only zero bytes"),
    (b"\x7fELF\x02\x01\x01" + bytes(100), "not an initramfs: offset 0: neither a cpio archive nor compressed data (bytes 7f454c4602010100)"),
    (b"MZ\x90\x00" + bytes(100), "a PE file (a unified kernel image?"),
    (b"070707" + b"0" * 200, "old-format (odc/binary) cpio header"),
    (b"070701" + b"zz" * 60, "corrupt cpio header (fields are not hexadecimal)"),
    (b"\x89LZO\x00\r\n\x1a\n" + bytes(50), "LZO-compressed data"),
])
def test_garbage(tmp_path, data, message):
    with pytest.raises(ImageError) as e:
        list_image(write(tmp_path, data))
    assert message in str(e.value)


def test_random_bytes(tmp_path):
    data = random.Random(7).randbytes(100000)
    data = b"\x01" + data[1:]  # not a zero, not a magic
    with pytest.raises(ImageError, match="not an initramfs"):
        list_image(write(tmp_path, data))


def test_no_such_file(tmp_path):
    with pytest.raises(ImageError, match="cannot be read: No such file or directory"):
        list_image(str(tmp_path / "initrd.img-none"))


@pytest.mark.parametrize("kind", ["gzip", "zstd", "xz", "lzma", "lz4", "bzip2", "none"])
def test_truncated(tmp_path, kind):
    vfio_tree(tmp_path / "main")
    early, _paths = microcode(tmp_path)
    archive = cpio(tmp_path / "main")
    data = early + (archive if kind == "none" else compress(archive, kind))
    with pytest.raises(ImageError) as e:
        list_image(write(tmp_path, data[:len(early) + (len(data) - len(early)) * 2 // 3]), run)
    text = str(e.value)
    assert f"offset {len(early)}" in text
    assert "truncated" in text or "corrupt" in text


def test_truncated_microcode_archive(tmp_path):
    early, _paths = microcode(tmp_path)
    with pytest.raises(ImageError, match=r"offset \d+: truncated: the cpio archive ends inside entry"):
        list_image(write(tmp_path, early[:3000]))


def test_corrupt_compressed_data(tmp_path):
    vfio_tree(tmp_path / "main")
    data = bytearray(compress(cpio(tmp_path / "main"), "gzip"))
    data[2000:2100] = bytes(range(100))
    with pytest.raises(ImageError, match="gzip segment at offset 0"):
        list_image(write(tmp_path, bytes(data)))


def test_corrupt_zstd_data(tmp_path):
    vfio_tree(tmp_path / "main")
    data = bytearray(compress(cpio(tmp_path / "main"), "zstd"))
    data[len(data) // 2:len(data) // 2 + 50] = b"\xff" * 50
    with pytest.raises(ImageError, match="zstd segment at offset 0"):
        list_image(write(tmp_path, bytes(data)), run)


def test_compressed_stream_without_trailer(tmp_path):
    """A compressed segment must hold whole archives (the kernel: "junk at the end of compressed archive")."""
    vfio_tree(tmp_path / "main")
    archive = cpio(tmp_path / "main")
    cut = archive[:archive.index(b"TRAILER!!!") - 110]  # up to the trailer's 110-byte header
    with pytest.raises(ImageError, match="without its TRAILER!!!"):
        list_image(write(tmp_path, compress(cut, "gzip")))


def test_uncompressed_archive_off_the_4_byte_boundary_is_a_warning(tmp_path):
    b = make_tree(tmp_path / "b", {OVERRIDE: b"y\n"})
    for n in range(1, 40):  # a gzip segment whose length is not a multiple of 4
        a = make_tree(tmp_path / f"a{n}", {CONF: b"x" * n})
        one = compress(cpio(tmp_path / f"a{n}"), "gzip")
        if len(one) % 4:
            break
    listing = list_image(write(tmp_path, one, cpio(tmp_path / "b")))
    assert listing["files"] == a | b
    assert listing["warnings"] == [f"offset {len(one)}: a cpio archive not on a 4-byte boundary: the kernel would not unpack it"]


def test_trailing_junk_is_a_warning(tmp_path):
    main = vfio_tree(tmp_path / "main")
    listing = list_image(write(tmp_path, compress(cpio(tmp_path / "main"), "gzip"), b"\x00\x00\x00\x00SIGNATURE-BLOB"))
    assert listing["files"] == main
    assert len(listing["warnings"]) == 1 and "14 trailing bytes" in listing["warnings"][0]
    assert "invalid magic at start of compressed archive" in listing["warnings"][0]


def test_missing_zstd_tool_names_the_package(tmp_path):
    vfio_tree(tmp_path / "main")
    early, _paths = microcode(tmp_path)
    path = write(tmp_path, early, compress(cpio(tmp_path / "main"), "zstd"))
    calls = []

    def no_zstd(argv):
        calls.append(argv)
        return 127, b"", "/bin/sh: 1: zstd: not found"

    with pytest.raises(ImageError) as e:
        list_image(path, no_zstd)
    assert str(e.value) == f"{path}: zstd segment at offset {len(early)}: reading it needs the 'zstd' tool (Debian package zstd), which is not installed"
    assert calls[0][:5] == ["zstd", "-d", "-c", "-q", "--"]
    assert not os.path.exists(calls[0][5]), "the copy of the segment is removed"

    def raises(argv):
        raise FileNotFoundError(2, "No such file or directory")

    with pytest.raises(ImageError, match=r"needs the 'zstd' tool \(Debian package zstd\): No such file or directory"):
        list_image(path, raises)
    with pytest.raises(ImageError, match=r"needs the 'zstd' tool \(Debian package zstd\), and no run_command was given"):
        list_image(path)


def test_missing_lz4_tool_names_the_package(tmp_path):
    vfio_tree(tmp_path / "main")
    path = write(tmp_path, compress(cpio(tmp_path / "main"), "lz4"))
    with pytest.raises(ImageError, match=r"'lz4' tool \(Debian package lz4\), which is not installed"):
        list_image(path, lambda argv: (127, b"", "lz4: not found"))


def test_tool_failure_is_reported(tmp_path):
    vfio_tree(tmp_path / "main")
    path = write(tmp_path, compress(cpio(tmp_path / "main"), "zstd"))
    with pytest.raises(ImageError, match=r"'zstd -dc' failed \(rc 1\): zstd: error 70 : Write error"):
        list_image(path, lambda argv: (1, b"", "zstd: error 70 : Write error\n"))


# --- real images and the reference tool --------------------------------------------------------------------

def test_lsinitramfs_lists_the_same(tmp_path):
    need("lsinitramfs", "zstd")
    main = vfio_tree(tmp_path / "main")
    early, early_paths = microcode(tmp_path)
    path = write(tmp_path, early, compress(cpio(tmp_path / "main"), "zstd"))
    out = subprocess.run(["lsinitramfs", path], capture_output=True, check=True, text=True).stdout
    theirs = {line for line in out.splitlines() if line not in (".", "")}
    assert theirs == main | early_paths
    assert list_image(path, run)["files"] == theirs


REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))


def real_images():
    """This machine's images, the real-root tier's cached Debian roots' (dracut's among them), and $EXLIAR_VFIO_INITRAMFS_IMAGE."""
    found = sorted(glob.glob("/boot/initrd.img-*") + glob.glob("/boot/initramfs-*.img"))[:2]
    cached = glob.glob(os.path.join(REPO, ".cache/realroot/*/rootfs/boot/initrd.img-*"))  # finished roots only
    found += sorted(p for p in cached if re.search(r"/realroot/[0-9a-f]{16}/rootfs/", p) and not p.endswith((".new", ".bak", ".tmp")))[:4]
    found += [p for p in os.environ.get("EXLIAR_VFIO_INITRAMFS_IMAGE", "").split(os.pathsep) if p]
    return found or [None]


@pytest.mark.parametrize("path", real_images())
def test_real_initramfs(path):
    if path is None:
        pytest.skip("no real image: no /boot/initrd.img-*, no real-root cache, no $EXLIAR_VFIO_INITRAMFS_IMAGE")
    listing = list_image(path, run)
    assert listing["files"] and listing["warnings"] == []
    assert all(s["entries"] for s in listing["segments"])
    name = os.path.basename(path)
    kernels = check_vfio(listing, "none", [], [])["kernels"]
    if name.startswith("initrd.img-") and kernels:  # the version is in the name (not in Arch's initramfs-linux.img)
        assert name[len("initrd.img-"):] in kernels
    if shutil.which("lsinitramfs") and name.startswith("initrd.img-"):
        out = subprocess.run(["lsinitramfs", path], capture_output=True, check=True, text=True).stdout
        assert listing["files"] == {line for line in out.splitlines() if line not in (".", "")}
