"""System-test harness: a real Debian 12 guest under QEMU with an emulated Intel IOMMU.

Two parts:

* ``ensure_image()`` builds the guest disk image once and caches it under ``<repo>/.cache/vm/<hash>/``,
  keyed by a content hash of the build recipe (suite, packages, every file written into the guest,
  the kernel command line, image geometry and the source of the build steps). The image is made
  without loop devices or mounts: ``debootstrap`` into a directory, then a GPT image whose ESP is
  written with mtools and whose ext4 root is written by ``mke2fs -d`` at the partition offset.
  A first "provisioning" boot then turns it into an installed Debian system: the real
  ``update-initramfs`` (MODULES=dep, zstd level 1), ``update-grub`` and ``grub-install``.
* ``VM`` boots that image (through a throw-away qcow2 overlay) in the PCI topology of a layout
  file from ``tests/system/layouts/`` and gives SSH access to it. It is a context manager: the
  VM is always stopped, and the serial log is kept under ``tests/output/system/`` on failure.

Everything runs under TCG (no KVM needed) on q35 with ``intel-iommu``; the guest kernel line
carries ``no_timer_check`` (the IO-APIC timer check can fail under slow TCG) and QEMU runs with
``-no-reboot`` (a guest reboot ends QEMU: OVMF under TCG takes minutes after a warm reset).
``VM(..., reboot=True)`` is for the tests that reboot the guest on purpose: when the guest
reboots, the harness starts QEMU again at once with the same disk overlay, UEFI variables, SSH
port forward and serial log (a power cycle); ``serial_boots()`` splits the serial log at the
boot boundaries.
Root is needed (debootstrap). See docs/testing-system.md.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LAYOUT_DIR = HERE / "layouts"
# VFIO_TEST_VM_CACHE puts the cache elsewhere, e.g. to share one image between clones
CACHE_ROOT = Path(os.environ.get("VFIO_TEST_VM_CACHE") or REPO / ".cache" / "vm")
OUTPUT_DIR = REPO / "tests" / "output" / "system"

OVMF_DIR = Path("/usr/share/OVMF")
OVMF_CODE = OVMF_DIR / "OVMF_CODE_4M.fd"
OVMF_VARS = OVMF_DIR / "OVMF_VARS_4M.fd"

SUITE = "bookworm"
PACKAGES = (
    "linux-image-amd64", "systemd-sysv", "udev", "kmod", "dbus", "pciutils", "initramfs-tools", "zstd",
    "e2fsprogs", "dosfstools", "grub-efi-amd64", "efibootmgr", "openssh-server", "python3", "iproute2", "procps",
    # the VM stage in the guest: libvirt and QEMU run a nested guest with the guest's vfio-bound devices,
    # which boots the guest's own kernel with a busybox initramfs
    "libvirt-daemon-system", "libvirt-clients", "libvirt-daemon-driver-qemu", "qemu-system-x86", "busybox-static",
    "libpam-systemd",  # provides logind, which polkitd (a dependency of libvirt-daemon-system) needs; debootstrap skips virtual packages
)
KERNEL_PARAMS = "no_timer_check console=ttyS0 intel_iommu=on"
GUEST_MAC = "52:54:00:12:34:56"
GUEST_HOSTNAME = "vfio-guest"
IMAGE_MIB = 3072
ESP_MIB = 64
ROOT_START_MIB = 1 + ESP_MIB
ROOT_MIB = IMAGE_MIB - ROOT_START_MIB - 1  # leave the last MiB for the backup GPT
# Harness devices sit on the root complex at fixed slots that layouts leave free.
DISK_ADDR = "0x3"
NIC_ADDR = "0x2"
RESERVED_ROOT_SLOTS = {0x0, 0x2, 0x3, 0x1f}

SSH_OPTS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15")


def log(msg: str) -> None:
    print(f"[vm {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class HarnessError(RuntimeError):
    """The harness itself could not do its job (build, boot, SSH)."""


# --------------------------------------------------------------------------------------------
# Files written into the guest (part of the recipe hash)
# --------------------------------------------------------------------------------------------

def guest_files() -> dict:
    """Path in the guest -> content. The authorized key is added at build time (not hashed)."""
    return {
        "etc/hostname": f"{GUEST_HOSTNAME}\n",
        "etc/hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{GUEST_HOSTNAME}\n",
        "etc/fstab": ("LABEL=root\t/\text4\terrors=remount-ro\t0\t1\n"
                      "LABEL=ESP\t/boot/efi\tvfat\tumask=0077\t0\t1\n"),
        "etc/default/grub": (
            "GRUB_DEFAULT=0\nGRUB_TIMEOUT=0\nGRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\n"
            f'GRUB_CMDLINE_LINUX_DEFAULT="{KERNEL_PARAMS}"\nGRUB_CMDLINE_LINUX=""\n'
            "GRUB_TERMINAL=console\nGRUB_DISABLE_OS_PROBER=true\n"),
        # what the package ships, with MODULES=dep and a fast zstd level: regenerating under TCG
        # takes about a minute instead of many
        "etc/initramfs-tools/conf.d/zz-vfio-system-test.conf": "MODULES=dep\nCOMPRESS=zstd\nCOMPRESSLEVEL=1\n",
        "etc/ssh/sshd_config.d/10-vfio-system-test.conf": (
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UseDNS no\n"),
        # QEMU user networking: the guest is 10.0.2.15, the host's forwarded port reaches its port 22
        "etc/systemd/network/10-qemu-user.network": (
            f"[Match]\nMACAddress={GUEST_MAC}\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"),
    }


GUEST_LINKS = {  # enable systemd-networkd without running systemctl in a chroot
    "etc/systemd/system/multi-user.target.wants/systemd-networkd.service": "/lib/systemd/system/systemd-networkd.service",
    "etc/systemd/system/sockets.target.wants/systemd-networkd.socket": "/lib/systemd/system/systemd-networkd.socket",
}

# Run in the guest over SSH on the first boot: make it an installed Debian system.
PROVISION_SCRIPT = """set -eux
mountpoint -q /boot/efi
update-initramfs -u -k all
update-grub
grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram
apt-get clean
systemctl disable --now apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer 2>/dev/null || true
# libvirtd stays socket-activated: nothing starts it at boot (libvirt-guests would), the VM stage's first virsh call does
systemctl disable libvirt-guests.service 2>/dev/null || true
uname -r > /root/.kernel-release
sync
"""


def recipe() -> dict:
    return {
        "suite": SUITE, "variant": "minbase", "packages": sorted(PACKAGES), "kernel_params": KERNEL_PARAMS,
        "files": guest_files(), "links": GUEST_LINKS, "provision": PROVISION_SCRIPT, "mac": GUEST_MAC,
        "geometry": [IMAGE_MIB, ESP_MIB, ROOT_START_MIB, ROOT_MIB],
        "steps": "".join(inspect.getsource(f)
                         for f in (_build, _debootstrap, _configure_rootfs, _make_disk, _provision)),
    }


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Host helpers
# --------------------------------------------------------------------------------------------

def run(cmd, *, logfile: Path | None = None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run a command; its output goes to logfile (appended) or is captured. Raises with the tail on failure."""
    cmd = [str(c) for c in cmd]
    if logfile is not None:
        with open(logfile, "a") as fh:
            fh.write(f"\n$ {shlex.join(cmd)}\n")
            fh.flush()
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False,
                                  **kw)
        if proc.returncode != 0:
            tail = "".join(Path(logfile).read_text().splitlines(True)[-40:])
            raise HarnessError(f"{shlex.join(cmd)} failed (rc {proc.returncode}); end of {logfile}:\n{tail}")
        return proc
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if proc.returncode != 0:
        raise HarnessError(f"{shlex.join(cmd)} failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


def missing_host_tools() -> list:
    tools = ["qemu-system-x86_64", "qemu-img", "debootstrap", "sfdisk", "mformat", "mcopy", "mke2fs",
             "grub-mkstandalone", "ssh", "ssh-keygen", "timeout"]
    missing = [t for t in tools if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    missing += [str(p) for p in (OVMF_CODE, OVMF_VARS) if not p.exists()]
    return missing


def debian_mirror(suite: str = SUITE) -> str:
    """The Debian archive this machine's apt uses for ``suite`` (read from /etc/apt at run time)."""
    override = os.environ.get("VFIO_TEST_DEBIAN_MIRROR")
    if override:
        return override
    entries = []  # (uri, suites)
    apt = Path("/etc/apt")
    lists = [apt / "sources.list"] + sorted((apt / "sources.list.d").glob("*.list"))
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            line = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                entries.append((line[1], [line[2]]))
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for para in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields = {}
            for line in para.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _sep, value = line.partition(":")
                fields[key.strip().lower()] = value.split()
            if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"])[0].lower() != "no":
                for uri in fields.get("uris", []):
                    entries.append((uri, fields.get("suites", [])))
    for uri, suites in entries:
        if suite in suites:
            return uri.rstrip("/")
    raise HarnessError(f"no apt source for the Debian suite {suite!r} in /etc/apt/sources.list*; "
                       "set VFIO_TEST_DEBIAN_MIRROR to a Debian archive URL")


def _umount_below(path: Path) -> None:
    """Unmount whatever a failed debootstrap left mounted below path (before deleting it)."""
    prefix = str(path.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], check=False)


def _rmtree(path: Path) -> None:
    if path.exists():
        _umount_below(path)
        shutil.rmtree(path, ignore_errors=True)


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the test process dies, even by SIGKILL (prctl PDEATHSIG),
    so no QEMU or sshd outlives an interrupted run."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# The guest image
# --------------------------------------------------------------------------------------------

class GuestImage:
    """A built, provisioned guest image in the cache."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.disk = self.dir / "disk.img"
        self.key = self.dir / "id_ed25519"
        self.info = json.loads((self.dir / "info.json").read_text())

    @property
    def kernel(self) -> str:
        return self.info["kernel"]

    def __repr__(self) -> str:
        return f"GuestImage({self.dir.name}, kernel {self.kernel})"


def ensure_image(cache_root: Path = CACHE_ROOT) -> GuestImage:
    """The cached image for the current recipe, built (once, under a lock) when missing."""
    missing = missing_host_tools()
    if missing:
        raise HarnessError(f"missing host tools {missing}: run tests/system/setup.sh")
    cache_root.mkdir(parents=True, exist_ok=True)
    target = cache_root / recipe_hash()
    with open(cache_root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "info.json").exists():
            return GuestImage(target)
        work = cache_root / f"{target.name}.build"
        _rmtree(work)
        work.mkdir()
        started = time.monotonic()
        try:
            _build(work, cache_root)
        except BaseException:
            log(f"image build failed; logs kept in {work}")
            raise
        for leftover in ("BOOTX64.EFI", "early.cfg"):
            (work / leftover).unlink(missing_ok=True)
        _rmtree(target)
        work.rename(target)
        image = GuestImage(target)
        log(f"built {image} in {time.monotonic() - started:.0f} s")
        return image


def _build(work: Path, cache_root: Path) -> None:
    buildlog = work / "build.log"
    rootfs = work / "rootfs"
    t0 = time.monotonic()
    log(f"building the guest image in {work} (log: {buildlog})")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vfio-system-test", "-f", work / "id_ed25519"],
        logfile=buildlog)
    _debootstrap(rootfs, cache_root / "debs", buildlog)
    t1 = time.monotonic()
    kernel = _configure_rootfs(rootfs, (work / "id_ed25519.pub").read_text())
    _make_disk(rootfs, work, buildlog)
    t2 = time.monotonic()
    _rmtree(rootfs)
    info = {"kernel": kernel, "recipe": recipe_hash(), "suite": SUITE,
            "timings": {"debootstrap": round(t1 - t0, 1), "disk": round(t2 - t1, 1)}}
    (work / "info.json.partial").write_text(json.dumps(info))
    _provision(work, buildlog)
    info["timings"]["provision"] = round(time.monotonic() - t2, 1)
    (work / "info.json").write_text(json.dumps(info, indent=1))
    (work / "info.json.partial").unlink()


def _debootstrap(rootfs: Path, debs: Path, buildlog: Path) -> None:
    mirror = debian_mirror()
    debs.mkdir(parents=True, exist_ok=True)
    log(f"debootstrap {SUITE} ({len(PACKAGES)} extra packages)")
    run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", f"--cache-dir={debs.resolve()}",
         SUITE, rootfs, mirror], logfile=buildlog, timeout=1800)


def _configure_rootfs(rootfs: Path, pubkey: str) -> str:
    """Configure the guest from the host, without chroot. Returns the kernel release."""
    for rel, content in guest_files().items():
        path = rootfs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    for rel, target in GUEST_LINKS.items():
        link = rootfs / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    ssh_dir = rootfs / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(pubkey)
    os.chmod(ssh_dir / "authorized_keys", 0o600)
    (rootfs / "boot" / "efi").mkdir(parents=True, exist_ok=True)
    kernels = sorted(p.name[len("vmlinuz-"):] for p in (rootfs / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise HarnessError(f"expected one kernel in the guest's /boot, found {kernels}")
    kernel = kernels[0]
    # first boot only: the provisioning boot replaces this with update-grub's grub.cfg
    (rootfs / "boot" / "grub").mkdir(parents=True, exist_ok=True)
    (rootfs / "boot" / "grub" / "grub.cfg").write_text(
        "set timeout=0\n"
        f"linux /boot/vmlinuz-{kernel} root=LABEL=root ro {KERNEL_PARAMS}\n"
        f"initrd /boot/initrd.img-{kernel}\nboot\n")
    for stale in (rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        stale.unlink()
    return kernel


def _make_disk(rootfs: Path, work: Path, buildlog: Path) -> None:
    """GPT image with a FAT32 ESP (standalone GRUB) and an ext4 root, without loop devices or mounts."""
    disk = work / "disk.img"
    log("writing the GPT disk image (mtools + mke2fs -d)")
    with open(disk, "wb") as fh:
        fh.truncate(IMAGE_MIB * 1024 * 1024)
    table = (f"label: gpt\nstart={1}MiB, size={ESP_MIB}MiB, type=U, name=ESP\n"
             f"start={ROOT_START_MIB}MiB, size={ROOT_MIB}MiB, type=L, name=root\n")
    run(["sfdisk", "-q", disk], input=table, logfile=None)
    early = work / "early.cfg"
    early.write_text("search --no-floppy --label --set=root root\nconfigfile ($root)/boot/grub/grub.cfg\n")
    efi = work / "BOOTX64.EFI"
    run(["grub-mkstandalone", "-O", "x86_64-efi", "-o", efi,
         "--modules=part_gpt ext2 fat search search_label normal linux configfile efi_gop",
         f"boot/grub/grub.cfg={early}"], logfile=buildlog)
    esp = f"{disk}@@{1024 * 1024}"
    run(["mformat", "-i", esp, "-F", "-T", ESP_MIB * 2048, "-v", "ESP", "-N", "12345678", "::"], logfile=buildlog)
    run(["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT"], logfile=buildlog)
    run(["mcopy", "-i", esp, efi, "::/EFI/BOOT/BOOTX64.EFI"], logfile=buildlog)
    run(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", rootfs, "-E", f"offset={ROOT_START_MIB * 1024 * 1024}",
         disk, f"{ROOT_MIB}M"], logfile=buildlog, timeout=900)


def _provision(work: Path, buildlog: Path) -> None:
    """First boot: real update-initramfs, update-grub and grub-install in the guest, then power off."""
    log("provisioning boot: update-initramfs (MODULES=dep), update-grub, grub-install in the guest")
    image = _PartialImage(work)
    with VM(image, layout={"name": "provision", "devices": []}, name="provision", direct_disk=True) as vm:
        vm.wait_ssh()
        proc = vm.ssh(PROVISION_SCRIPT, timeout=1500)
        with open(buildlog, "a") as fh:
            fh.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            vm.keep_artifacts("provision failed")
            raise HarnessError(f"provisioning failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        vm.poweroff()


class _PartialImage(GuestImage):
    def __init__(self, directory: Path):  # noqa: super not called: info.json does not exist yet
        self.dir = Path(directory)
        self.disk = self.dir / "disk.img"
        self.key = self.dir / "id_ed25519"
        self.info = json.loads((self.dir / "info.json.partial").read_text())


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------

def layout_names() -> list:
    return sorted(p.stem for p in LAYOUT_DIR.glob("*.yml"))


def load_layout(name: str) -> dict:
    """Read and check tests/system/layouts/<name>.yml (see docs/testing-system.md for the format)."""
    path = LAYOUT_DIR / f"{name}.yml"
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
        raise HarnessError(f"{path}: a layout is a mapping with a devices list")
    data.setdefault("name", name)
    ids = set()
    for dev in data["devices"]:
        if not isinstance(dev, dict) or "device" not in dev:
            raise HarnessError(f"{path}: every device needs 'device' (the QEMU device type): {dev!r}")
        addr = dev.get("addr")
        if addr is not None and not isinstance(addr, str):
            raise HarnessError(f"{path}: {dev['device']}: quote addr (\"0x1c\", \"0x0.1\"), YAML reads {addr!r}")
        if dev.get("bus", "pcie.0") == "pcie.0" and addr is not None:
            slot = int(addr.split(".")[0], 16)
            if slot in RESERVED_ROOT_SLOTS:
                raise HarnessError(f"{path}: {dev['device']}: slot {addr} on pcie.0 is used by the harness")
        if "id" in dev:
            if dev["id"] in ids:
                raise HarnessError(f"{path}: id {dev['id']!r} used twice")
            ids.add(dev["id"])
    return data


def _qemu_value(value) -> str:
    if value is True:
        return "on"
    if value is False:
        return "off"
    return str(value)


def device_args(devices: list) -> list:
    args = []
    for dev in devices:
        props = [dev["device"]] + [f"{k}={_qemu_value(v)}" for k, v in dev.items() if k != "device"]
        args += ["-device", ",".join(props)]
    return args


# --------------------------------------------------------------------------------------------
# The VM
# --------------------------------------------------------------------------------------------

MILESTONES = (  # serial-log markers of the boot phases, for timings and debugging
    ("firmware done", "BdsDxe: starting"),
    ("kernel started", "Linux version"),
    ("initramfs /init", "Run /init as init process"),
    ("systemd started", "systemd[1]: systemd "),
    ("sshd started", "Started ssh.service"),
    ("login prompt", f"{GUEST_HOSTNAME} login:"),   # getty on ttyS0: the boot reached multi-user
)
ANSI = re.compile(r"\x1b\[[0-9;=?]*[A-Za-z]")
RESET_MARKER = "reboot: Restarting system"   # the kernel's last words before it resets the machine
KERNEL_LINE = re.compile(r"^\s*\[\s*\d+\.\d+\] ")     # a printk line with its timestamp


class BootSplitter:
    """Tells where a new boot starts in the serial log of a QEMU that was reset (``VM(reboot=True)``).

    A boot ends with the kernel's ``reboot: Restarting system`` (and ``reboot: machine restart``);
    the first non-empty line after it that is not a kernel line is the firmware's, the start of
    the next boot. A reset without that line (QMP ``system_reset``, a triple fault) is caught when
    the firmware's ``BdsDxe: starting`` comes again after a kernel had started."""

    def __init__(self):
        self.boot = 1
        self.reset_seen = False
        self._kernel_seen = False

    def feed(self, line: str) -> bool:
        """Feed one line (without ANSI sequences); True when it is the first line of a new boot."""
        new = ((self.reset_seen and line.strip() and not KERNEL_LINE.match(line))
               or (self._kernel_seen and MILESTONES[0][1] in line))
        if new:
            self.boot += 1
            self.reset_seen = self._kernel_seen = False
        if RESET_MARKER in line:
            self.reset_seen = True
        if MILESTONES[1][1] in line:
            self._kernel_seen = True
        return bool(new)


def split_boots(text: str) -> list:
    """The serial log's lines (ANSI sequences removed), one list per boot."""
    splitter = BootSplitter()
    boots: list = [[]]
    for raw in text.splitlines():
        line = ANSI.sub("", raw).rstrip("\r")
        if splitter.feed(line):
            boots.append([])
        boots[-1].append(line)
    return boots


class SerialTimer(threading.Thread):
    """Follows the serial log and writes each line with the host's seconds since QEMU started to
    serial.timed.log; records when each boot milestone appeared.

    After a reboot (``VM(reboot=True)``) a marker line is written to serial.timed.log and the
    milestones of the new boot are recorded separately: ``boots`` holds one entry per boot
    (``start``: seconds after QEMU start, ``line``: its first line in serial.log, ``milestones``);
    ``milestones`` is the latest boot's; ``reset`` (s after QEMU start) is when a boot's kernel
    said it restarts the machine."""

    def __init__(self, src: Path, dest: Path, start: float):
        super().__init__(daemon=True)
        self.src, self.dest, self.start_time = src, dest, start
        self.boots: list = [{"start": 0.0, "line": 1, "milestones": {}}]
        self.stop_event = threading.Event()

    @property
    def milestones(self) -> dict:
        return self.boots[-1]["milestones"]

    def run(self) -> None:
        pos, partial, lineno = 0, b"", 0
        splitter = BootSplitter()
        with open(self.dest, "w") as out:
            while True:
                stopping = self.stop_event.is_set()
                try:
                    with open(self.src, "rb") as fh:
                        fh.seek(pos)
                        chunk = fh.read()
                except FileNotFoundError:
                    chunk = b""
                pos += len(chunk)
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()
                now = time.monotonic() - self.start_time
                for raw in lines:
                    line = ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\r")
                    lineno += 1
                    if splitter.feed(line):
                        self.boots.append({"start": round(now, 1), "line": lineno, "milestones": {}})
                        out.write(f"{now:7.1f} ===== [harness] boot {splitter.boot} starts here "
                                  f"(the guest reset; serial.log line {lineno}) =====\n")
                    out.write(f"{now:7.1f} {line}\n")
                    if RESET_MARKER in line:
                        self.boots[-1]["reset"] = round(now, 1)
                    for name, marker in MILESTONES:
                        if name not in self.milestones and marker in line:
                            self.milestones[name] = round(now, 1)
                # the login prompt ends without a newline: look for it in the unfinished line too
                name, marker = MILESTONES[-1]
                if partial and name not in self.milestones and not splitter.reset_seen and marker.encode() in partial:
                    self.milestones[name] = round(now, 1)
                out.flush()
                if stopping:
                    return
                self.stop_event.wait(0.5)


class VM:
    """One boot of the guest image in a layout. Use as a context manager; it always stops QEMU.

    ``timeout`` bounds each QEMU process's life (it runs under coreutils ``timeout``),
    ``boot_timeout`` the wait for SSH. QEMU always runs with ``-no-reboot``: a reboot in the guest
    ends the QEMU process. With ``reboot=True`` the harness then starts QEMU again at once with the
    same disk overlay, UEFI variables, SSH port forward, QMP socket and serial log (appended): the
    guest's reboot becomes a power cycle, which under TCG boots in about a minute where OVMF took
    4 to 6 minutes after a warm reset. ``boots()`` and ``serial_boots()`` tell the boots apart.
    """

    def __init__(self, image: GuestImage, layout: str | dict, *, name: str | None = None,
                 timeout: float = 1800, boot_timeout: float = 600, memory_mib: int = 1536,
                 direct_disk: bool = False, reboot: bool = False):
        self.image = image
        self.layout = load_layout(layout) if isinstance(layout, str) else layout
        self.name = name or self.layout["name"]
        self.timeout = timeout
        self.boot_timeout = boot_timeout
        self.memory_mib = int(self.layout.get("memory_mib", memory_mib))
        self.direct_disk = direct_disk
        self.reboots = reboot
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.rundir = Path(tempfile.mkdtemp(prefix=f"vfio-vm-{self.name}-"))
        self.serial_log = self.rundir / "serial.log"
        self.qmp_sock = self.rundir / "qmp.sock"
        self.started_at: float | None = None
        self.ssh_ready_after: float | None = None
        self.kept: Path | None = None
        self._notes: list = []
        self.timer: SerialTimer | None = None
        self.restarts: list = []              # (seconds after the first start, new pid) per power cycle
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------------
    def command(self) -> list:
        lay = self.layout
        iommu = dict(lay.get("iommu") or {"type": "intel-iommu"})
        iommu_type = iommu.pop("type", "intel-iommu")
        machine = str(lay.get("machine", "q35"))
        if iommu_type == "intel-iommu":
            iommu.setdefault("intremap", "on")
            iommu.setdefault("caching-mode", "on")
            if _qemu_value(iommu["intremap"]) == "on" and "kernel-irqchip" not in machine:
                machine += ",kernel-irqchip=split"  # interrupt remapping needs the split irqchip
        disk = self.image.disk if self.direct_disk else self.rundir / "overlay.qcow2"
        disk_fmt = "raw" if self.direct_disk else "qcow2"
        cmd = [
            "timeout", "--kill-after=15", str(int(self.timeout)),
            "qemu-system-x86_64", "-name", f"vfio-test-{self.name}", "-nodefaults", "-no-user-config",
            "-accel", "tcg", "-cpu", str(lay.get("cpu", "max")), "-smp", str(lay.get("smp", 2)),
            "-m", str(self.memory_mib), "-machine", machine,
        ]
        if iommu_type:
            cmd += ["-device", ",".join([iommu_type] + [f"{k}={_qemu_value(v)}" for k, v in iommu.items()])]
        cmd += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.rundir / 'vars.fd'}",
            "-display", "none", "-vga", "none", "-no-reboot",
            # append: the power cycles of VM(reboot=True) write on in the same log
            "-chardev", f"file,id=serial0,path={self.serial_log},append=on", "-serial", "chardev:serial0",
            "-qmp", f"unix:{self.qmp_sock},server=on,wait=off",
            "-drive", f"if=none,id=disk0,file={disk},format={disk_fmt},cache=unsafe,discard=unmap",
            "-device", f"virtio-blk-pci,drive=disk0,bus=pcie.0,addr={DISK_ADDR},bootindex=0",
            "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:22",
            "-device", f"virtio-net-pci,netdev=net0,mac={GUEST_MAC},romfile=,bus=pcie.0,addr={NIC_ADDR}",
        ]
        return cmd + device_args(lay["devices"])

    def start(self) -> "VM":
        shutil.copyfile(OVMF_VARS, self.rundir / "vars.fd")
        if not self.direct_disk:
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", self.image.disk.resolve(),
                 self.rundir / "overlay.qcow2"])
        for attempt in range(3):
            self.port = free_port()
            cmd = self.command()
            (self.rundir / "qemu.cmd").write_text(shlex.join(cmd) + "\n")
            self.started_at = time.monotonic()
            self.proc = self._launch(cmd, "w")
            time.sleep(1.0)
            if self.proc.poll() is None:
                log(f"{self.name}: QEMU started (pid {self.proc.pid}, ssh on 127.0.0.1:{self.port})")
                self.timer = SerialTimer(self.serial_log, self.rundir / "serial.timed.log", self.started_at)
                self.timer.start()
                if self.reboots:
                    self._supervisor = threading.Thread(target=self._power_cycles, daemon=True)
                    self._supervisor.start()
                return self
            err = (self.rundir / "qemu.stderr").read_text()
            if "hostfwd" not in err and "Could not set up host forwarding" not in err:
                break
        raise HarnessError(f"{self.name}: QEMU did not start: {(self.rundir / 'qemu.stderr').read_text()[-2000:]}")

    def _launch(self, cmd: list, mode: str) -> subprocess.Popen:
        with open(self.rundir / "qemu.stderr", mode) as stderr:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                    start_new_session=True, preexec_fn=die_with_parent)

    def _reset_pending(self) -> bool:
        """Did the running boot end in the kernel's reset (and no new boot has started yet)?"""
        deadline = time.monotonic() + 5   # the timer reads the serial log every 0.5 s
        while time.monotonic() < deadline:
            if "reset" in self.timer.boots[-1]:
                return True
            time.sleep(0.2)
        return False

    def _power_cycles(self) -> None:
        """VM(reboot=True): start QEMU again whenever the guest rebooted; end when it powered off or
        crashed, or when the harness stops the VM."""
        while not self._stopping.is_set():
            if self.proc.poll() is None:
                self._stopping.wait(0.2)
                continue
            if self._stopping.is_set() or self.proc.returncode != 0 or not self._reset_pending():
                return
            cmd = shlex.split((self.rundir / "qemu.cmd").read_text())
            self.proc = self._launch(cmd, "a")
            self.restarts.append((round(time.monotonic() - self.started_at, 1), self.proc.pid))
            self.note(f"{self.restarts[-1][0]} s: the guest rebooted; QEMU started again (pid {self.proc.pid})")
            log(f"{self.name}: the guest rebooted; QEMU started again (pid {self.proc.pid})")

    def __enter__(self) -> "VM":
        try:
            return self.start()
        except BaseException:
            self.keep_artifacts("start failed")
            self.stop()
            self._cleanup()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.keep_artifacts(f"{exc_type.__name__}: {exc}")
        self.stop()
        self._cleanup()

    def alive(self) -> bool:
        """QEMU runs, or (VM(reboot=True)) the guest rebooted and QEMU is being started again."""
        if self.proc is not None and self.proc.poll() is None:
            return True
        return self._supervisor is not None and self._supervisor.is_alive()

    def stop(self, grace: float = 10) -> None:
        """Stop QEMU: QMP quit, then SIGTERM, then SIGKILL to its process group."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=10)
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(Exception):
            self.qmp("quit")
        for sig, wait in ((None, grace), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def poweroff(self, timeout: float = 120) -> None:
        """Clean shutdown from inside the guest; QEMU exits by itself."""
        self._stopping.set()
        self.ssh("systemctl poweroff", timeout=30)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{self.name}: the guest did not power off within {timeout} s") from None

    def _cleanup(self) -> None:
        if self.timer is not None:
            self.timer.stop_event.set()
            self.timer.join(timeout=5)
        shutil.rmtree(self.rundir, ignore_errors=True)

    def keep_artifacts(self, reason: str = "", dest: Path | None = None) -> Path:
        """Copy the serial log, QEMU's command and stderr, and notes to tests/output/system/<name>/."""
        dest = dest or OUTPUT_DIR / self.name
        dest.mkdir(parents=True, exist_ok=True)
        if self.timer is not None and self.timer.is_alive():
            self.timer.stop_event.set()
            self.timer.join(timeout=5)
        for name in ("serial.log", "serial.timed.log", "qemu.cmd", "qemu.stderr"):
            src = self.rundir / name
            if src.exists():
                shutil.copyfile(src, dest / name)
        notes = [f"reason: {reason}"] if reason else []
        boots = self.boots()
        if len(boots) <= 1:
            notes += [f"boot milestones (s after QEMU start): {self.milestones()}"]
        for n, boot in enumerate(boots if len(boots) > 1 else [], 1):
            reset = f"; reset at {boot['reset']} s" if "reset" in boot else ""
            notes += [f"boot {n}: serial.log from line {boot['line']}, {boot['start']} s after QEMU start; "
                      f"milestones (s after QEMU start): {boot['milestones']}{reset}"]
        (dest / "notes.txt").write_text("\n".join(notes + self._notes) + "\n")
        if self.kept != dest:
            log(f"{self.name}: serial log and QEMU output kept in {dest}")
        self.kept = dest
        return dest

    def milestones(self) -> dict:
        """Boot phase -> seconds after QEMU start at which its serial-log marker appeared (the latest boot)."""
        return dict(self.timer.milestones) if self.timer is not None else {}

    def boots(self) -> list:
        """One entry per boot seen on the serial console so far (more than one after a reboot):
        ``start`` (s after QEMU start), ``line`` (its first line in serial.log), ``milestones`` and, for
        a boot that ended in a reset, ``reset``."""
        if self.timer is None:
            return []
        return [dict(b, milestones=dict(b["milestones"])) for b in self.timer.boots]

    def note(self, text: str) -> None:
        self._notes.append(text)

    # -- access -------------------------------------------------------------------------------
    def ssh_command(self, command: str | None = None) -> list:
        cmd = ["ssh", *SSH_OPTS, "-i", str(self.image.key), "-p", str(self.port), "root@127.0.0.1"]
        return cmd + ([command] if command is not None else [])

    def ssh(self, command: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.ssh_command(command), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
        if check and proc.returncode != 0:
            raise HarnessError(f"{self.name}: `{command}` failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
        return proc

    def _banner(self, timeout: float = 5) -> bool:
        """Does something answer with an SSH banner on the forwarded port? (cheap, before real ssh)"""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
                s.settimeout(timeout)
                return s.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def wait_ssh(self) -> float:
        """Wait until SSH logs in; returns the seconds since QEMU started.

        Until the guest's sshd listens, QEMU's user network accepts the forwarded connection and
        then resets or stalls it, so the port is probed for the SSH banner (short timeouts) and
        the real ssh login is only tried once the banner comes.
        """
        deadline = time.monotonic() + self.boot_timeout
        last = "no SSH banner"
        while time.monotonic() < deadline:
            if not self.alive():
                raise HarnessError(f"{self.name}: QEMU exited (rc {self.proc.returncode}) before SSH came up; "
                                   f"serial log tail:\n{self.serial_tail()}")
            if not self._banner():
                time.sleep(1)
                continue
            try:
                proc = subprocess.run(self.ssh_command("true"), capture_output=True, text=True, timeout=60,
                                      stdin=subprocess.DEVNULL, check=False)
                if proc.returncode == 0:
                    self.ssh_ready_after = time.monotonic() - self.started_at
                    log(f"{self.name}: SSH up {self.ssh_ready_after:.1f} s after QEMU start "
                        f"(milestones: {self.milestones()})")
                    self.note(f"ssh up after {self.ssh_ready_after:.1f} s")
                    return self.ssh_ready_after
                last = proc.stderr.strip()
            except subprocess.TimeoutExpired:
                last = "ssh login timed out after the banner"
            self.note(f"{time.monotonic() - self.started_at:.1f} s: {last}")
            time.sleep(1)
        raise HarnessError(f"{self.name}: no SSH within {self.boot_timeout} s (last: {last}); "
                           f"serial log tail:\n{self.serial_tail()}")

    def boot_id(self) -> str:
        """The running kernel's boot id (a new one after every boot)."""
        return self.ssh("cat /proc/sys/kernel/random/boot_id", check=True).stdout.strip()

    def wait_new_boot(self, old_boot_id: str, timeout: float | None = None) -> str:
        """Wait until SSH answers from a boot other than ``old_boot_id``; returns the new boot id.
        (The old sshd may still answer for a while after a reboot was asked for.)"""
        deadline = time.monotonic() + (timeout or self.boot_timeout)
        while time.monotonic() < deadline:
            if not self.alive():
                raise HarnessError(f"{self.name}: QEMU exited (rc {self.proc.returncode}) during the reboot"
                                   + ("" if self.reboots else " (a reboot ends QEMU: use VM(reboot=True))")
                                   + f"; serial log tail:\n{self.serial_tail()}")
            if self._banner():
                try:
                    proc = subprocess.run(self.ssh_command("cat /proc/sys/kernel/random/boot_id"), capture_output=True,
                                          text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
                    new = proc.stdout.strip() if proc.returncode == 0 else ""
                    if new and new != old_boot_id:
                        return new
                except subprocess.TimeoutExpired:
                    pass
            time.sleep(2)
        raise HarnessError(f"{self.name}: no SSH from a new boot within {timeout or self.boot_timeout} s; "
                           f"serial log tail:\n{self.serial_tail()}")

    def reboot_and_wait(self, timeout: float | None = None) -> str:
        """``systemctl reboot`` in the guest (``VM(reboot=True)`` only) and wait for SSH from the new
        boot; returns its boot id."""
        if not self.reboots:
            raise HarnessError(f"{self.name}: a reboot would end QEMU; start the VM with reboot=True to reboot it")
        old = self.boot_id()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.ssh("systemctl reboot", timeout=60)
        new = self.wait_new_boot(old, timeout)
        self.note(f"rebooted by the harness: boot id {old} -> {new}")
        return new

    def serial_text(self) -> str:
        try:
            return self.serial_log.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def serial_boots(self) -> list:
        """The serial log split at the boot boundaries: one list of lines per boot (see ``BootSplitter``)."""
        return split_boots(self.serial_text())

    def serial_tail(self, lines: int = 30) -> str:
        return "\n".join(self.serial_text().splitlines()[-lines:])

    def qmp(self, command: str, **arguments):
        """One QMP command over the monitor socket; returns its 'return' value."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(20)
            s.connect(str(self.qmp_sock))
            f = s.makefile("rwb")

            def send(obj):
                f.write(json.dumps(obj).encode() + b"\n")
                f.flush()

            def reply():
                while True:
                    line = f.readline()
                    if not line:
                        raise HarnessError(f"{self.name}: QMP closed")
                    msg = json.loads(line)
                    if "return" in msg or "error" in msg:
                        return msg

            json.loads(f.readline())  # greeting
            send({"execute": "qmp_capabilities"})
            reply()
            send({"execute": command, **({"arguments": arguments} if arguments else {})})
            if command == "quit":
                return None
            msg = reply()
            if "error" in msg:
                raise HarnessError(f"{self.name}: QMP {command}: {msg['error']}")
            return msg["return"]

    def pci_addresses(self) -> dict:
        """Layout device id -> the PCI address the guest sees, from QEMU's own view (QMP query-pci)."""
        out = {}

        def walk(devices):
            for d in devices:
                if d.get("qdev_id"):
                    out[d["qdev_id"]] = f"0000:{d['bus']:02x}:{d['slot']:02x}.{d['function']:x}"
                bridge = d.get("pci_bridge") or {}
                walk(bridge.get("devices") or [])

        for bus in self.qmp("query-pci"):
            walk(bus["devices"])
        return out
