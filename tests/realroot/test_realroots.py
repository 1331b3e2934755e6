"""The real initramfs generators in real Debian 12 roots: what the initramfs stage relies on.

Each test takes a fresh copy of a cached root (``roots.py``), writes what the stage will write
(the vfio modules for the generator, ``/etc/modprobe.d/exliar-vfio.conf``), regenerates the image
for the installed kernel with the real tool in a chroot with nothing mounted, and reads the real
image back with the generator's own lister.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path

import pytest

import roots
from conftest import timed

pytestmark = pytest.mark.realroot

VFIO_MODULES = ("vfio", "vfio_iommu_type1", "vfio_pci")
CONF = "etc/modprobe.d/exliar-vfio.conf"
CONF_TEXT = "options vfio-pci ids=1234:1111\n"
REGEN_TIMEOUT = 900  # s; about 10 s on an idle 2-core machine


def ko(listing: list, kver: str, name: str) -> list:
    """Paths of module `name` (vfio-pci, vfio_iommu_type1, ...) for kver in an image listing."""
    pattern = re.compile(rf"(usr/)?lib/modules/{re.escape(kver)}/kernel/drivers/vfio/(pci/)?"
                         rf"{re.escape(name)}\.ko(\.(xz|zst|gz))?")
    return [p for p in listing if pattern.fullmatch(p)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def boot_files(root: Path) -> dict:
    return {p.name: sha256(p) for p in (root / "boot").iterdir() if p.is_file()}


def run(root: Path, argv, what: str, show: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = roots.chroot_run(root, argv, kw.pop("timeout", REGEN_TIMEOUT), **kw)
    output = f"{proc.stdout}{proc.stderr}" if show else f"({len(proc.stdout.splitlines())} lines)\n"
    print(f"--- {what}: chroot {' '.join(map(str, argv))} (rc {proc.returncode})\n{output}")
    assert proc.returncode == 0, f"{what} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc


def lsinitramfs(root: Path, image: str) -> list:
    out = run(root, ["lsinitramfs", image], "lsinitramfs", show=False, mounts=(), timeout=120).stdout
    return [line.strip().removeprefix("./") for line in out.splitlines() if line.strip()]


LS_LINE = re.compile(r"^[-dlcbps][-rwxsStT]{9}\s")


def lsinitrd(root: Path, image: str) -> list:
    """Paths in a dracut image (lsinitrd prints ls -l lines after its header)."""
    out = run(root, ["lsinitrd", image], "lsinitrd", show=False, mounts=(), timeout=120).stdout
    paths = []
    for line in out.splitlines():
        if LS_LINE.match(line):
            paths.append(line.split(None, 8)[8].split(" -> ")[0].removeprefix("./"))
    return paths


def write_stage_files(root: Path, generator_lines: str, generator_file: str) -> None:
    """What the initramfs stage writes: modules for the generator, and the vfio-pci options."""
    with open(root / generator_file, "a") as fh:
        fh.write(generator_lines)
    (root / CONF).write_text(CONF_TEXT)


def regenerate(root: Path, flavour: str, argv: list, image: Path) -> None:
    """Run the generator (nothing mounted) and check it rewrote exactly `image` in /boot."""
    before = boot_files(root)
    assert image.name in before, f"no {image} before regenerating: {sorted(before)}"
    time.sleep(0.01)
    with timed(f"{flavour}: regenerate ({' '.join(argv[:1])}, nothing mounted)"):
        run(root, argv, f"{flavour} regeneration", mounts=())
    after = boot_files(root)
    assert sorted(after) == sorted(before), f"/boot changed its files: {sorted(before)} -> {sorted(after)}"
    changed = [name for name in after if after[name] != before[name]]
    assert changed == [image.name], f"expected only {image.name} to be rewritten, got {changed}"


# --------------------------------------------------------------------------------------------
# initramfs-tools
# --------------------------------------------------------------------------------------------

class TestInitramfsTools:
    FLAVOUR = "initramfs-tools"

    def test_update_initramfs_puts_vfio_modules_and_modprobe_conf_in_the_image(self, fresh_root):
        root = fresh_root(self.FLAVOUR)
        kver = roots.kernel_release(root)
        image = f"/boot/initrd.img-{kver}"
        # the image the kernel package made has neither (so what follows proves the regeneration)
        listing = lsinitramfs(root, image)
        assert not ko(listing, kver, "vfio-pci") and CONF not in listing

        write_stage_files(root, "".join(f"{m}\n" for m in VFIO_MODULES), "etc/initramfs-tools/modules")
        regenerate(root, self.FLAVOUR, ["update-initramfs", "-u", "-k", kver], root / image.lstrip("/"))

        listing = lsinitramfs(root, image)
        for module in ("vfio", "vfio_iommu_type1", "vfio-pci", "vfio-pci-core"):
            assert ko(listing, kver, module), f"{module}.ko not in {image}"
        assert CONF in listing, f"{CONF} not in {image}"
        # what is inside, unpacked by the tool's own unmkinitramfs
        run(root, ["unmkinitramfs", image, "/tmp/unpacked"], "unmkinitramfs", show=False, mounts=(), timeout=300)
        unpacked = root / "tmp" / "unpacked"
        main = unpacked / "main" if (unpacked / "main").is_dir() else unpacked
        assert (main / CONF).read_text() == CONF_TEXT
        modules = (main / "conf" / "modules").read_text().split()
        assert all(m in modules for m in VFIO_MODULES), modules
        assert (root / image.lstrip("/")).stat().st_mode & 0o777 == 0o644

    def test_mkinitramfs_copies_every_modprobe_d_file(self, cached_root):
        """The reason the file is in the image without any configuration: mkinitramfs itself."""
        script = (cached_root(self.FLAVOUR) / "usr/sbin/mkinitramfs").read_text()
        assert "for file in /etc/modprobe.d/*.conf /lib/modprobe.d/*.conf ; do" in script
        assert 'copy_file config "$file"' in script

    def test_modules_dep_does_not_work_in_a_chroot(self, fresh_root):
        """MODULES=dep (what the system tier's guest uses) aborts in a chroot: it needs /sys to
        find the root device, and with /sys mounted it would describe this machine instead."""
        root = fresh_root(self.FLAVOUR)
        kver = roots.kernel_release(root)
        (root / "etc/initramfs-tools/conf.d/zz-test-dep.conf").write_text("MODULES=dep\n")
        before = boot_files(root)
        proc = roots.chroot_run(root, ["update-initramfs", "-u", "-k", kver], REGEN_TIMEOUT, mounts=())
        print(proc.stdout, proc.stderr)
        assert proc.returncode != 0
        assert "MODULES dep requires mounted sysfs on /sys" in proc.stdout + proc.stderr
        assert boot_files(root) == before  # update-initramfs keeps the old image on failure


# --------------------------------------------------------------------------------------------
# dracut
# --------------------------------------------------------------------------------------------

class TestDracut:
    FLAVOUR = "dracut"
    FORCE = 'force_drivers+=" vfio vfio_iommu_type1 vfio_pci "\n'

    def _prepare(self, fresh_root, conf_lines: str):
        root = fresh_root(self.FLAVOUR)
        kver = roots.kernel_release(root)
        image = f"/boot/initrd.img-{kver}"  # where Debian's dracut writes (see test below)
        listing = lsinitrd(root, image)
        assert not ko(listing, kver, "vfio-pci") and CONF not in listing
        write_stage_files(root, conf_lines, "etc/dracut.conf.d/test.conf")
        # no output file given: dracut picks /boot/initrd.img-<kver> itself
        regenerate(root, self.FLAVOUR, ["dracut", "--force", "--kver", kver], root / image.lstrip("/"))
        return root, kver, image, lsinitrd(root, image)

    def _file(self, root: Path, image: str, path: str) -> str:
        return run(root, ["lsinitrd", "-f", path, image], f"lsinitrd -f {path}", mounts=(), timeout=120).stdout

    def test_force_drivers_in_the_image_but_modprobe_conf_left_out_by_default(self, fresh_root):
        root, kver, image, listing = self._prepare(fresh_root, self.FORCE)
        for module in ("vfio", "vfio_iommu_type1", "vfio-pci", "vfio-pci-core"):
            assert ko(listing, kver, module), f"{module}.ko not in {image}"
        loads = self._file(root, image, "etc/cmdline.d/20-force_drivers.conf").split()
        assert loads == [f"rd.driver.pre={m}" for m in VFIO_MODULES]
        # Debian's dracut leaves hostonly unset: /etc/modprobe.d is NOT copied (90kernel-modules)
        assert CONF not in listing, f"{CONF} unexpectedly in {image}: has Debian's dracut changed?"
        assert (root / image.lstrip("/")).stat().st_mode & 0o777 == 0o600

    def test_install_items_puts_modprobe_conf_in_the_image(self, fresh_root):
        root, kver, image, listing = self._prepare(
            fresh_root, self.FORCE + f'install_items+=" /{CONF} "\n')
        assert ko(listing, kver, "vfio-pci"), f"vfio-pci.ko not in {image}"
        assert CONF in listing, f"{CONF} not in {image}"
        assert self._file(root, image, CONF) == CONF_TEXT

    def test_modprobe_d_only_copied_in_hostonly_mode(self, cached_root):
        """Why: 90kernel-modules copies /etc/modprobe.d only with hostonly, and dracut turns
        hostonly off unless /sys, /proc, /run and /dev are mounted (in a chroot it would then
        describe this machine)."""
        root = cached_root(self.FLAVOUR)
        setup = (root / "usr/lib/dracut/modules.d/90kernel-modules/module-setup.sh").read_text()
        assert "[[ $hostonly ]] && inst_multiple -H -o /etc/modprobe.d/*.conf /etc/modprobe.conf" in setup
        dracut = (root / "usr/bin/dracut").read_text()
        assert "for i in /sys /proc /run /dev; do" in dracut
        assert "Turning off host-only mode" in dracut
        assert not list((root / "etc/dracut.conf.d").glob("*hostonly*"))
        conf = "".join(p.read_text() for p in sorted((root / "etc/dracut.conf.d").glob("*.conf")))
        conf += (root / "etc/dracut.conf").read_text()
        assert "hostonly" not in re.sub(r"#.*", "", conf)


# --------------------------------------------------------------------------------------------
# The harness itself
# --------------------------------------------------------------------------------------------

def _mounts_below(path: Path) -> list:
    prefix = str(path.resolve()) + "/"
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(prefix)]


def test_chroot_run_leaves_no_mount_and_no_process(fresh_root):
    root = fresh_root("initramfs-tools")
    every = roots.MOUNT_KINDS
    proc = roots.chroot_run(root, ["sh", "-c", "ls /proc/1 >/dev/null && test -e /sys/kernel && test -c /dev/null "
                                   "&& ! test -e /dev/vda && ! test -e /dev/sda && mountpoint -q /run && exit 3"],
                            60, mounts=every)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert _mounts_below(root) == []
    marker = f"sleep 600.{time.monotonic_ns() % 10**6:06d}"  # unique command lines to look for
    with pytest.raises(subprocess.TimeoutExpired):
        roots.chroot_run(root, ["sh", "-c", f"{marker}1 & {marker}2 & exec {marker}3"], 2, mounts=every)
    time.sleep(0.5)
    assert _mounts_below(root) == []
    leftover = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False).stdout
    assert leftover == "", f"processes left after the timeout: {leftover}"
    # the sysfs is read-only
    proc = roots.chroot_run(root, ["sh", "-c", "echo 1 > /sys/kernel/uevent_helper"], 60, mounts=("sys",))
    assert proc.returncode != 0


def test_failed_build_leaves_nothing_in_the_cache(cached_root):
    cached_root("initramfs-tools")  # the base exists, so this fails fast in apt-get
    broken = roots.Flavour(("exliar-no-such-package",))
    entry = roots.CACHE_ROOT / roots.recipe_hash(broken)
    with timed("failed build (apt-get cannot find the package)"):
        with pytest.raises(roots.HarnessError, match="apt-get"):
            roots.ensure_root(broken)
    assert not entry.exists()
    assert not entry.with_name(entry.name + ".build").exists()
    log = next(roots.OUTPUT_DIR.glob(f"{entry.name}-*-build.log"))
    assert "exliar-no-such-package" in log.read_text()
