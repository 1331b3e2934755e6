"""Real Debian 12 roots for running the stages with the real boot tools (``tests/realroot``).

A *root* is a directory holding an installed Debian 12 (bookworm) system: made by ``debootstrap``
from the Debian archive this machine's apt uses, with a real kernel package and a real initramfs
generator or bootloader installed by ``apt-get`` inside it. Tests never touch the cached root:
each gets a fresh copy (``fresh_copy``) and runs the tools in it through ``chroot_run``, or, for
the bootloaders, whose tools need the root on a disk, a *block root* (``block_root``: the root
written into an ext4 image on a loop device, with an ESP image on a second one, mounted only
inside a mount namespace of its own).

The cache (``<repo>/.cache/realroot/``, or ``$VFIO_TEST_REALROOT_CACHE``) has two layers, each an
entry ``<content hash>/`` with ``rootfs/``, ``info.json`` and ``build.log``:

* the **base**: ``debootstrap --variant=minbase --include=<BASE_PACKAGES> bookworm``, shared by
  every flavour (the slow part, about 80-90 s);
* one entry per **flavour**: a copy of the base, the flavour's files written (configuration that
  makes the generator fast), then ``apt-get install <kernel> <flavour packages>`` in a chroot.
  The kernel comes with the flavour, not the base, because ``linux-image-*`` depends on
  ``initramfs-tools | linux-initramfs-tool``: debootstrap always picks ``initramfs-tools`` for that
  and then fails on dracut's conflict, while apt resolves it the way an administrator's
  ``apt-get install dracut`` does.

The hash covers the recipe (suite, packages, every file written, the debconf answers and the
source of the build functions), not the mirror and not the archive's state: a rebuild months later
gets newer packages. Builds run under a file lock (``.cache/realroot/.lock``), so concurrent test
sessions build once; a build happens in ``<hash>.build/`` and is renamed into place only when
complete; a failed build is deleted (its log goes to ``tests/output/realroot/``), so the cache
never holds a half-made root. Downloaded packages are kept in ``.cache/realroot/debs/``.

Adding a flavour is one line in ``FLAVOURS``. See docs/testing.md ("Real-root tier").
Needs root (debootstrap, chroot, mount namespaces, loop devices).
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
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "system"))

import vm as _vm  # noqa: E402  (the system tier's harness: mirror lookup, errors, safe rmtree)

HarnessError = _vm.HarnessError
debian_mirror = _vm.debian_mirror

CACHE_ROOT = Path(os.environ.get("VFIO_TEST_REALROOT_CACHE") or REPO / ".cache" / "realroot")
OUTPUT_DIR = REPO / "tests" / "output" / "realroot"

SUITE = "bookworm"
# In the base: what every flavour needs. systemd-sysv/udev make it an installed system as a user
# has it (dracut builds a systemd initramfs and needs poweroff/reboot/halt; systemd-boot and
# kernel-install come from systemd).
BASE_PACKAGES = ("systemd-sysv", "udev", "kmod", "zstd", "cpio")
# The cloud kernel: a real Debian kernel with the vfio modules (vfio, vfio_iommu_type1,
# vfio-pci, vfio-pci-core, vfio_virqfd) and a quarter of linux-image-amd64's size (105 MB
# installed instead of 400 MB), so copies and MODULES=most images are small.
KERNEL_PACKAGE = os.environ.get("VFIO_TEST_REALROOT_KERNEL") or "linux-image-cloud-amd64"

CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Flavour:
    """What a flavour adds to the base root.

    packages: installed with ``apt-get install --no-install-recommends`` together with the kernel.
    files: path in the root -> content, written before the install (so the kernel's own
      initramfs run already uses them).
    debconf: ``debconf-set-selections`` lines, answered before the install.
    """
    packages: tuple
    files: dict = field(default_factory=dict)
    debconf: str = ""


# Regeneration speed, without changing what goes into the image:
# initramfs-tools keeps Debian's MODULES=most (MODULES=dep aborts in a chroot: it wants the root
# device from /sys and /proc, and with them mounted it would describe this machine); only the
# compression is faster than Debian's zstd -9.
INITRAMFS_TOOLS_SPEED = {"etc/initramfs-tools/conf.d/zz-realroot-speed.conf": "COMPRESS=zstd\nCOMPRESSLEVEL=1\n"}
# dracut keeps Debian's defaults (hostonly unset = generic image); only the compressor is faster
# than its default (gzip -9 when pigz is missing; zstd would be -15).
DRACUT_SPEED = {"etc/dracut.conf.d/05-realroot-speed.conf": 'compress="zstd -1 -q -T0"\n'}

FLAVOURS = {
    "initramfs-tools": Flavour(("initramfs-tools",), INITRAMFS_TOOLS_SPEED),
    "dracut": Flavour(("dracut", "dracut-core"), DRACUT_SPEED),
    # The bootloader flavours (python3: the bootloader stage runs inside the root with the root's
    # own python). Their tools need the root on a block device: use them through block_root().
    "grub-efi": Flavour(("initramfs-tools", "grub-efi-amd64", "python3"), INITRAMFS_TOOLS_SPEED),
    "grub-pc": Flavour(("initramfs-tools", "grub-pc", "python3"), INITRAMFS_TOOLS_SPEED,
                       debconf="grub-pc grub-pc/install_devices multiselect\n"),
    "systemd-boot": Flavour(("initramfs-tools", "systemd-boot", "python3"), INITRAMFS_TOOLS_SPEED),
}


def log(msg: str) -> None:
    print(f"[realroot {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 1)[0]


def missing_host_tools() -> list:
    return [t for t in ("debootstrap", "unshare", "chroot", "mount", "cp")
            if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]


# --------------------------------------------------------------------------------------------
# Running commands in a root
# --------------------------------------------------------------------------------------------

MOUNT_KINDS = ("proc", "sys", "dev", "run")


def _mount_script(root: Path, mounts, binds: dict, ro_binds: dict | None = None, read_only=(), devices=()) -> str:
    """Shell lines run in the new mount namespace before the chroot.

    ``devices`` (block roots): ``(name, "major:minor", uuid)`` of block devices made as nodes in
    the private /dev, with a ``/dev/disk/by-uuid`` link each. ``ro_binds`` are ``binds`` made
    read-only; ``read_only`` paths in the root are bound on themselves read-only."""
    r = shlex.quote(str(root))
    lines = ["set -e"]
    for kind in mounts:
        if kind == "proc":  # a new procfs: it shows the new PID namespace, not this machine's processes
            lines.append(f"mount -t proc -o nosuid,nodev,noexec proc {r}/proc")
        elif kind == "sys":  # read-only: a tool in the root must not change this machine's devices
            lines.append(f"mount -t sysfs -o ro,nosuid,nodev,noexec sysfs {r}/sys")
        elif kind == "dev":  # a private /dev with the character devices only, never this machine's disks
            lines += [f"mount -t tmpfs -o mode=0755,nosuid,size=1m devtmp {r}/dev"]
            for node in ("null", "zero", "full", "random", "urandom", "tty"):
                lines += [f": > {r}/dev/{node}", f"mount --bind /dev/{node} {r}/dev/{node}"]
            lines += [f"mkdir -p {r}/dev/pts {r}/dev/shm",
                      f"mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts {r}/dev/pts",
                      f"ln -s pts/ptmx {r}/dev/ptmx", f"ln -s /proc/self/fd {r}/dev/fd",
                      f"ln -s /proc/self/fd/0 {r}/dev/stdin", f"ln -s /proc/self/fd/1 {r}/dev/stdout",
                      f"ln -s /proc/self/fd/2 {r}/dev/stderr"]
            for name, majmin, uuid in devices:  # only the block root's own loop devices
                major, minor = majmin.split(":")
                lines += [f"mknod -m 0660 {r}/dev/{name} b {int(major)} {int(minor)}",
                          f"mkdir -p {r}/dev/disk/by-uuid", f"ln -s ../../{name} {r}/dev/disk/by-uuid/{shlex.quote(uuid)}"]
        elif kind == "run":
            lines.append(f"mount -t tmpfs -o mode=0755,nosuid,nodev,size=64m run {r}/run")
        else:
            raise ValueError(f"unknown mount {kind!r}; known: {MOUNT_KINDS}")
    for host, inside in [*binds.items(), *(ro_binds or {}).items()]:
        target = f"{r}/{shlex.quote(str(inside).lstrip('/'))}"
        lines += [f"mkdir -p {target}", f"mount --bind {shlex.quote(str(host))} {target}"]
        if host in (ro_binds or {}):
            lines.append(f"mount -o remount,bind,ro {target}")
    for path in read_only:
        target = f"{r}/{shlex.quote(str(path).lstrip('/'))}"
        lines += [f"mount --bind {target} {target}", f"mount -o remount,bind,ro {target}"]
    return "\n".join(lines)


def chroot_run(root, argv, timeout: float = 600, *, mounts=("proc",), binds: dict | None = None,
               ro_binds: dict | None = None, read_only=(), env: dict | None = None, input: str | None = None,
               logfile: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run argv with ``chroot root`` in a private mount and PID namespace.

    ``mounts`` picks from ``MOUNT_KINDS``: ``proc`` (a new procfs), ``sys`` (sysfs, read-only),
    ``dev`` (a tmpfs with null/zero/full/random/urandom/tty and a private devpts: no block devices)
    and ``run`` (tmpfs). ``binds`` maps a host path to a path in the root. Everything is mounted in
    a mount namespace made by ``unshare --mount --propagation private``, so nothing is ever visible
    on this machine and nothing needs unmounting: the mounts disappear with the namespace's last
    process. ``--pid --fork --kill-child`` puts the command in its own PID namespace; on a timeout
    the whole process group is killed, which ends every process in the namespace and with them
    the mounts; if the test process dies (even by SIGKILL) ``unshare`` gets SIGKILL
    (``PR_SET_PDEATHSIG``) and takes the namespace with it. (update-initramfs and dracut, as configured here, need nothing mounted at all.)

    ``ro_binds`` are binds made read-only; ``read_only`` paths in the root (``"boot/grub"``) are
    made read-only for this one command.

    ``root`` may also be a ``BlockRoot`` (see ``block_root``): the command then starts inside the
    block root's mount namespace (``nsenter``) and gets its own private namespace below it, so
    its mounts still vanish with it; ``dev`` then also holds the block root's loop devices.

    The environment is clean (PATH, HOME, LANG=C.UTF-8, DEBIAN_FRONTEND=noninteractive) plus
    ``env``. Output goes to ``logfile`` (appended) or is captured. Raises
    ``subprocess.TimeoutExpired`` after killing everything on a timeout, and ``HarnessError`` on a
    non-zero exit when ``check``.
    """
    enter, devices = [], ()
    if isinstance(root, BlockRoot):
        if root.holder.poll() is not None:
            raise HarnessError(f"the block root {root.mountpoint} is gone (its namespace ended)")
        if not (root.path / "usr").is_dir():
            raise HarnessError(f"{root.path} is not a root file system")
        enter, devices, root = ["nsenter", f"--target={root.holder.pid}", "--mount", "--"], root.devices(), root.mountpoint
    else:
        root = Path(root).resolve()
        if not (root / "usr").is_dir():
            raise HarnessError(f"{root} is not a root file system")
    argv = [str(a) for a in argv]
    script = (_mount_script(root, mounts, binds or {}, ro_binds, read_only, devices)
              + '\nroot=$1; shift\nexec chroot "$root" "$@"\n')
    cmd = [*enter, "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
           "sh", "-c", script, "chroot_run", str(root), *argv]
    full_env = {"PATH": CHROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
                "TERM": "dumb"}
    full_env.update(env or {})
    out = open(logfile, "a") if logfile is not None else None  # noqa: SIM115 (closed below)
    try:
        if out is not None:
            out.write(f"\n$ chroot {root} {shlex.join(argv)}   (mounts {list(mounts)}, binds {binds or {}}, "
                      f"ro_binds {ro_binds or {}})\n")
            out.flush()
        proc = subprocess.Popen(cmd, env=full_env, text=True, start_new_session=True, preexec_fn=_die_with_parent,
                                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=out if out is not None else subprocess.PIPE,
                                stderr=subprocess.STDOUT if out is not None else subprocess.PIPE)
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except BaseException:  # timeout, KeyboardInterrupt: end the namespace and its mounts
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise
    finally:
        if out is not None:
            out.close()
    result = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        where = f"; see {logfile}" if logfile is not None else f":\n{(stdout or '')[-3000:]}{(stderr or '')[-3000:]}"
        raise HarnessError(f"chroot {root} {shlex.join(argv)} failed (rc {proc.returncode}){where}")
    return result


def _ns_run(argv, logfile: Path, timeout: float) -> None:
    """Run a host command (debootstrap) in a private mount namespace: its mounts of proc and sys
    in the target vanish with it, even when it fails or is killed."""
    cmd = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
           *[str(a) for a in argv]]
    with open(logfile, "a") as out:
        out.write(f"\n$ {shlex.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_die_with_parent)
        try:
            rc = proc.wait(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if rc != 0:
        tail = "".join(logfile.read_text(errors="replace").splitlines(True)[-40:])
        raise HarnessError(f"{shlex.join(cmd)} failed (rc {rc}); end of {logfile}:\n{tail}")


# --------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """preexec_fn: SIGKILL when the test process dies, even by SIGKILL (PR_SET_PDEATHSIG).
    SIGKILL, not the SIGTERM of the system tier's helper: ``unshare --fork`` ignores SIGTERM
    while it waits for its child. Its ``--kill-child`` then kills the namespace's first process,
    and with it every process in the PID namespace."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


_SOURCES: dict = {}  # filled at the end of the module


def _source(fn) -> str:
    """A build function's source as this session loaded it. Read once, at import: inspect reads the
    file again on every call, so an edit of roots.py during a session would give other hashes
    (a spurious rebuild of the base and every flavour)."""
    return _SOURCES.get(fn.__name__) or inspect.getsource(fn)


def base_recipe() -> dict:
    return {"layer": "base", "suite": SUITE, "variant": "minbase", "include": sorted(BASE_PACKAGES),
            "steps": _source(_build_base) + _source(_ns_run)}


def flavour_recipe(flavour: Flavour) -> dict:
    return {"layer": "flavour", "base": _digest(base_recipe()), "kernel": KERNEL_PACKAGE,
            "packages": sorted(flavour.packages), "files": flavour.files, "debconf": flavour.debconf,
            "steps": _source(_build_flavour) + _source(_mount_script) + _source(chroot_run)}


def _flavour(flavour) -> tuple:
    """(name, Flavour) for a name in FLAVOURS or a Flavour object."""
    if isinstance(flavour, Flavour):
        return f"custom-{_digest(flavour_recipe(flavour))[:8]}", flavour
    try:
        return flavour, FLAVOURS[flavour]
    except KeyError:
        raise HarnessError(f"unknown flavour {flavour!r}; known: {sorted(FLAVOURS)}") from None


def recipe_hash(flavour) -> str:
    return _digest(flavour_recipe(_flavour(flavour)[1]))


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------

def ensure_root(flavour, cache_root: Path = CACHE_ROOT) -> Path:
    """The cached root (``<cache>/<hash>/rootfs``) of a flavour, built once when missing.

    ``flavour`` is a name in ``FLAVOURS`` or a ``Flavour``. The returned directory is shared by
    every test session: never change it, work on ``fresh_copy(flavour, ...)``.
    """
    name, flav = _flavour(flavour)
    entry = cache_root / _digest(flavour_recipe(flav))
    if (entry / "info.json").is_file():  # complete entries are renamed into place, never changed
        return entry / "rootfs"
    missing = missing_host_tools()
    if missing:
        raise HarnessError(f"missing host tools {missing} (apt-get install -y debootstrap)")
    if os.geteuid() != 0:
        raise HarnessError("building a real root needs root (debootstrap, chroot)")
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / ".lock", "w") as lock:
        waited = time.monotonic()
        fcntl.flock(lock, fcntl.LOCK_EX)
        if time.monotonic() - waited > 1:
            log(f"waited {time.monotonic() - waited:.0f} s for another session's build")
        if (entry / "info.json").is_file():
            return entry / "rootfs"
        base = cache_root / _digest(base_recipe())
        if not (base / "info.json").is_file():
            _build_entry(base, "base", lambda work: _build_base(work, cache_root))
        _build_entry(entry, name, lambda work: _build_flavour(work, base, name, flav, cache_root))
    return entry / "rootfs"


def info(flavour, cache_root: Path = CACHE_ROOT) -> dict:
    """The cached root's info.json: flavour, kernel release, package versions, build timings."""
    return json.loads((ensure_root(flavour, cache_root).parent / "info.json").read_text())


def _build_entry(entry: Path, name: str, build) -> None:
    """Build into <entry>.build and rename it into place; on any failure delete it (the log is
    kept in tests/output/realroot/). Called with the cache lock held."""
    work = entry.with_name(entry.name + ".build")
    _vm._rmtree(work)  # left by a build that was killed
    if work.exists():
        raise HarnessError(f"cannot remove {work} (left by an earlier build); is something still using it?")
    work.mkdir()
    started = time.monotonic()
    log(f"building the {name} root {entry.name} (log: {work / 'build.log'}; load {loadavg()})")
    try:
        data = build(work)
        data.update(name=name, recipe=entry.name, built=time.strftime("%Y-%m-%d %H:%M:%S"),
                    build_seconds=round(time.monotonic() - started, 1), load_after=loadavg())
        (work / "info.json").write_text(json.dumps(data, indent=1) + "\n")
        _vm._rmtree(entry)
        work.rename(entry)
    except BaseException:
        OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
        kept = OUTPUT_DIR / f"{entry.name}-{name}-build.log"
        if (work / "build.log").exists():
            shutil.copyfile(work / "build.log", kept)
        _vm._rmtree(work)
        log(f"building the {name} root failed; nothing left in the cache, log in {kept}")
        raise
    log(f"built the {name} root {entry.name} in {data['build_seconds']} s (load {loadavg()})")


def _build_base(work: Path, cache_root: Path) -> dict:
    buildlog = work / "build.log"
    debs = cache_root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror(SUITE)
    t0 = time.monotonic()
    load0 = loadavg()
    _ns_run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
             f"--cache-dir={debs.resolve()}", SUITE, work / "rootfs", mirror], buildlog, timeout=1800)
    for deb in (work / "rootfs" / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        deb.unlink()  # debootstrap copies them in; the shared copy is in debs/
    return {"layer": "base", "suite": SUITE, "mirror": mirror, "packages": list(BASE_PACKAGES),
            "timings": {"debootstrap": round(time.monotonic() - t0, 1)}, "load_before": load0}


def _build_flavour(work: Path, base: Path, name: str, flavour: Flavour, cache_root: Path) -> dict:
    buildlog = work / "build.log"
    rootfs = work / "rootfs"
    t0 = time.monotonic()
    load0 = loadavg()
    subprocess.run(["cp", "-a", base / "rootfs", rootfs], check=True, preexec_fn=_die_with_parent)
    t1 = time.monotonic()
    for rel, content in flavour.files.items():
        path = rootfs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    policy = rootfs / "usr" / "sbin" / "policy-rc.d"  # no service starts in the chroot
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    apt = ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "-o", "Dpkg::Use-Pty=0"]
    binds = {cache_root / "debs": "/var/cache/apt/archives"}
    if flavour.debconf:
        chroot_run(rootfs, ["debconf-set-selections"], 120, input=flavour.debconf, logfile=buildlog, check=True)
    # the lists are debootstrap's; refresh them so a base built long ago still finds its packages
    chroot_run(rootfs, apt + ["update"], 600, binds=binds, logfile=buildlog, check=True)
    chroot_run(rootfs, apt + ["install", "-y", "--no-install-recommends", KERNEL_PACKAGE, *flavour.packages],
               1800, binds=binds, logfile=buildlog, check=True)
    t2 = time.monotonic()
    policy.unlink()
    # smaller copies: apt's lists and caches (100+ MB), documentation and manual pages
    for junk in [*(rootfs / "var/lib/apt/lists").glob("*"), *(rootfs / "var/cache/apt").glob("*.bin"),
                 *(rootfs / "usr/share/doc").glob("*"), *(rootfs / "usr/share/man").glob("*")]:
        if junk.is_dir() and not junk.is_symlink():
            shutil.rmtree(junk)
        elif junk.name != "partial":
            junk.unlink()
    kernels = sorted(p.name[len("vmlinuz-"):] for p in (rootfs / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise HarnessError(f"expected one kernel in {rootfs}/boot, found {kernels}")
    query = chroot_run(rootfs, ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", KERNEL_PACKAGE,
                                f"linux-image-{kernels[0]}", *flavour.packages], 60, mounts=(), check=True)
    versions = dict(line.split(" ", 1) for line in query.stdout.splitlines() if " " in line)
    return {"layer": "flavour", "flavour": name, "kernel": kernels[0], "versions": versions,
            "boot": sorted(p.name for p in (rootfs / "boot").iterdir()),
            "timings": {"copy base": round(t1 - t0, 1), "apt-get install": round(t2 - t1, 1)},
            "load_before": load0}


def fresh_copy(flavour, dest: Path, cache_root: Path = CACHE_ROOT) -> Path:
    """A private copy (``cp -a``) of the flavour's cached root at ``dest`` (must not exist)."""
    src = ensure_root(flavour, cache_root)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", src, dest], check=True, preexec_fn=_die_with_parent)
    return dest


def kernel_release(root: Path) -> str:
    """The release of the one kernel installed in root (from /boot/vmlinuz-*)."""
    kernels = sorted(p.name[len("vmlinuz-"):] for p in (Path(root) / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise HarnessError(f"expected one kernel in {root}/boot, found {kernels}")
    return kernels[0]


# --------------------------------------------------------------------------------------------
# Block-device roots: the root on a real file system on a loop device
# --------------------------------------------------------------------------------------------

ROOT_UUID = "5eed0000-e71a-4f00-8000-00000000f001"  # fixed, so the generated files are predictable
ESP_UUIDS = {"vfat": "5EED-E5B0", "ext4": "5eed0000-e71a-4f00-8000-00000000e5b0"}
# ext4 features GRUB 2.06 (bookworm) cannot read: turned off, whatever this machine's mke2fs.conf says
EXT4_OFF = "^metadata_csum_seed,^large_dir"
# The names the loop devices have in the root (and in its mountinfo): a virtio disk's, not
# /dev/loopN, which grub-mkconfig treats as a loop-mounted file (it writes `loopback loopN <file>`
# lines with this machine's path, and only for loop0-loop9).
ROOT_DISK, ESP_DISK = "vda", "vdb"


@dataclass
class BlockRoot:
    """A root mounted from an ext4 image on a loop device, in a mount namespace of its own.

    ``path`` is where this process reads and writes its files (``/proc/<holder>/root/<mountpoint>``:
    the mount is visible only through the namespace's holder process, never on this machine);
    ``run(argv, ...)`` runs a command in it: ``chroot_run`` with proc, sys and a private /dev that
    holds the disks (``/dev/vda`` the root, ``/dev/vdb`` the ESP) and their ``/dev/disk/by-uuid``
    links. Made by ``block_root``.
    """
    mountpoint: Path
    image: Path
    holder: subprocess.Popen
    loops: dict = field(default_factory=dict)  # name in the root ("vda") -> this machine's loop device
    uuid: str = ROOT_UUID
    esp: str | None = None
    esp_image: Path | None = None
    esp_fs: str = ""
    esp_uuid: str = ""
    timings: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(f"/proc/{self.holder.pid}/root") / str(self.mountpoint).lstrip("/")

    def devices(self) -> list:
        """(name in the root, "major:minor", file system UUID) of the disks, for the private /dev."""
        uuids = {ROOT_DISK: self.uuid, ESP_DISK: self.esp_uuid}
        return [(name, _sysfs_dev(loop), uuids[name]) for name, loop in self.loops.items()]

    def run(self, argv, timeout: float = 600, *, mounts=("proc", "sys", "dev"), **kw) -> subprocess.CompletedProcess:
        return chroot_run(self, argv, timeout, mounts=mounts, **kw)


def _sysfs_dev(loop: str) -> str:
    return Path(f"/sys/class/block/{loop.removeprefix('/dev/')}/dev").read_text().strip()


def vfat_available() -> bool:
    """Whether this machine's kernel can mount vfat (built in, or a module it can load)."""
    if any(line.split()[-1] == "vfat" for line in Path("/proc/filesystems").read_text().splitlines() if line.split()):
        return True
    modprobe = shutil.which("modprobe") or shutil.which("modprobe", path="/usr/sbin:/sbin")
    return modprobe is not None and subprocess.run([modprobe, "-n", "-q", "vfat"], check=False, capture_output=True).returncode == 0


BLOCK_TOOLS = {"losetup": "mount", "nsenter": "util-linux", "mkfs.ext4": "e2fsprogs", "mkfs.vfat": "dosfstools"}


def missing_block_tools(esp_fs: str = "ext4") -> list:
    """Debian packages to install for ``block_root`` (``./dev.sh realroot`` installs them)."""
    need = [t for t in BLOCK_TOOLS if t != "mkfs.vfat" or esp_fs == "vfat"]
    return sorted({BLOCK_TOOLS[t] for t in need if shutil.which(t) is None and shutil.which(t, path="/usr/sbin:/sbin") is None})


def _apparent_size(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def _holder_script(work: Path, disks: list) -> str:
    """The holder's shell: mount the attached loop devices through a private /dev in which they are
    /dev/vda and /dev/vdb, hand them to the kernel's autoclear, wait.
    ``disks``: (name in /dev, "major:minor", mount point)."""
    q = shlex.quote
    hdev = q(str(work / "dev"))
    lines = ["set -e", f"mkdir -p {hdev}", f"mount -t tmpfs -o mode=0755,size=64k,nosuid holderdev {hdev}"]
    for node in ("null", "zero", "full", "random", "urandom", "tty"):
        lines += [f": > {hdev}/{node}", f"mount --bind /dev/{node} {hdev}/{node}"]
    for name, majmin, _target in disks:
        major, minor = majmin.split(":")
        lines.append(f"mknod -m 0660 {hdev}/{name} b {int(major)} {int(minor)}")
    lines.append(f"mount --move {hdev} /dev")  # this namespace's /dev only
    for name, _majmin, target in disks:
        lines += [f"mkdir -p {q(str(target))}", f"mount /dev/{name} {q(str(target))}"]
    # busy devices: LOOP_CLR_FD only sets autoclear, the kernel detaches them once unmounted
    lines += [f"losetup -d {' '.join('/dev/' + disk[0] for disk in disks)}", "echo ready", "exec cat >/dev/null"]
    return "\n".join(lines)


@contextlib.contextmanager
def block_root(source: Path, work: Path, *, esp: str | None = None, esp_fs: str = "auto", esp_mb: int = 256,
               free_mb: int = 512, timeout: float = 120):
    """A ``BlockRoot``: ``source`` (a root directory, e.g. ``ensure_root(flavour)``: it is only read)
    put on a file system on a block device, as grub-probe, bootctl and kernel-install need.

    1. ``mkfs.ext4 -d <source>`` makes ``<work>/root.img`` (sparse: the content plus ``free_mb``
       MiB; UUID ``ROOT_UUID``); no copy of the directory is needed. With ``esp``
       (``"/boot/efi"``) also ``<work>/esp.img`` (``esp_mb`` MiB, sparse): vfat when this kernel can
       mount vfat, else ext4 (``esp_fs="auto"``; ``"vfat"``/``"ext4"`` force one); UUID in ``ESP_UUIDS``.
    2. ``losetup -f --show`` attaches them here (in this machine's namespace, so that their
       ``backing_file`` stays readable whatever becomes of the holder). A holder process
       (``unshare --mount --propagation private --pid --fork --kill-child``) gives its namespace a
       private /dev in which they are ``/dev/vda`` and ``/dev/vdb``, mounts them on ``<work>/mnt``
       (and ``<work>/mnt<esp>``), calls ``losetup -d`` (on a mounted device that only sets the
       autoclear flag: the kernel detaches the device when its file system is unmounted) and waits.
       Nothing is mounted on this machine.
    3. Commands run through ``BlockRoot.run`` (``nsenter`` into that namespace, then the usual
       private namespace of ``chroot_run``, whose /dev also holds the disks and their
       ``/dev/disk/by-uuid`` links); this process reads and writes the files at ``BlockRoot.path``.

    On leaving (also after an error or a timeout inside, or when mounting failed) the holder is
    killed: the namespace ends, its mounts go, the loop devices detach themselves. That is
    checked: our devices still attached without autoclear (the holder failed or died before
    mounting) are detached with ``losetup -d``; one still attached 10 s later (something keeps
    its file system open) is a ``HarnessError``. If this process is killed, the holder gets
    SIGKILL (``PR_SET_PDEATHSIG``) and the same happens, except in the instant between attaching
    and the holder's ``losetup -d``: the next ``block_root`` detaches such devices
    (``sweep_stale_loops``). The images are deleted unless ``$VFIO_TEST_REALROOT_KEEP`` is set.
    """
    source, work = Path(source), Path(work)
    if not (source / "usr").is_dir():
        raise HarnessError(f"{source} is not a root file system")
    if esp_fs == "auto":
        esp_fs = "vfat" if vfat_available() else "ext4"
    if esp and esp_fs not in ESP_UUIDS:
        raise ValueError(f"esp_fs {esp_fs!r}: auto, vfat or ext4")
    missing = missing_block_tools(esp_fs if esp else "ext4")
    if missing:
        raise HarnessError(f"block roots need the Debian packages {missing}: apt-get install -y {' '.join(missing)}")
    sweep_stale_loops()
    work.mkdir(parents=True, exist_ok=True)
    image, esp_image, mnt = work / "root.img", work / "esp.img", work / "mnt"
    mnt.mkdir(exist_ok=True)
    images = [image] + ([esp_image] if esp else [])
    holder, loops, timings = None, {}, {}
    try:
        t0 = time.monotonic()
        with open(image, "wb") as f:  # sparse: only what mkfs writes takes room
            f.truncate(int(_apparent_size(source) * 1.15) + (free_mb << 20))
        _quiet(["mkfs.ext4", "-q", "-F", "-U", ROOT_UUID, "-L", "root", "-O", EXT4_OFF, "-d", str(source), str(image)])
        t1 = time.monotonic()
        targets = {ROOT_DISK: (image, mnt)}
        if esp:
            esp_image.unlink(missing_ok=True)
            if esp_fs == "vfat":
                _quiet(["mkfs.vfat", "-C", "-F", "32", "-n", "ESP", "-i", ESP_UUIDS["vfat"].replace("-", ""),
                        str(esp_image), str(esp_mb << 10)])
            else:
                with open(esp_image, "wb") as f:
                    f.truncate(esp_mb << 20)
                _quiet(["mkfs.ext4", "-q", "-F", "-U", ESP_UUIDS["ext4"], "-L", "ESP", "-O", EXT4_OFF, str(esp_image)])
            targets[ESP_DISK] = (esp_image, mnt / esp.lstrip("/"))
        t2 = time.monotonic()
        # attached here, in this machine's namespace: their backing_file stays readable (and
        # so recognisable as ours) whatever becomes of the holder's namespace
        for name, (img, _target) in targets.items():
            loops[name] = _attach(img)
        disks = [(name, _sysfs_dev(loops[name]), target) for name, (_img, target) in targets.items()]
        holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
                                   "sh", "-c", _holder_script(work, disks)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                  preexec_fn=_die_with_parent)
        _read_until_ready(holder, timeout)
        timings = {"mkfs.ext4": round(t1 - t0, 2), "mkfs esp": round(t2 - t1, 2), "attach and mount": round(time.monotonic() - t2, 2)}
        br = BlockRoot(mountpoint=mnt, image=image, holder=holder, loops=loops, esp=esp, esp_image=esp_image if esp else None,
                       esp_fs=esp_fs if esp else "", esp_uuid=ESP_UUIDS[esp_fs] if esp else "", timings=timings)
        yield br
    finally:
        t3 = time.monotonic()
        _end_block_root(holder, loops, images)
        timings["teardown"] = round(time.monotonic() - t3, 2)
        if not os.environ.get("VFIO_TEST_REALROOT_KEEP"):
            for path in images:
                path.unlink(missing_ok=True)
            for path in (mnt, work / "dev"):
                with contextlib.suppress(OSError):
                    path.rmdir()


# a block root's image in the scratch directory of a test session: <scratch>/<test>/<flavour>-<n>/root.img,
# the scratch directory being /dev/shm/exliar-realroot-<pid> (conftest.py)
STALE_IMAGE = re.compile(r"/exliar-realroot-(?P<pid>\d+)/[^/]+/[^/]+/(?:root|esp)\.img(?: \(deleted\))?$")


def sweep_stale_loops() -> list:
    """Detach loop devices that a killed session attached and never handed to autoclear (it died in
    the instant between attaching and mounting): backed by a block root image of a session whose
    process is gone. Nothing else is touched."""
    swept = []
    for entry in sorted(Path("/sys/class/block").glob("loop*")):
        m = STALE_IMAGE.search(_loop_attr(entry.name, "backing_file") or "")
        if m and _loop_attr(entry.name, "autoclear") == "0" and not Path(f"/proc/{m.group('pid')}").exists():
            subprocess.run(["losetup", "-d", f"/dev/{entry.name}"], check=False)
            swept.append(f"/dev/{entry.name}")
    if swept:
        log(f"block root: detached {swept}, left attached by a killed session")
    return swept


def _attach(image: Path) -> str:
    """``losetup -f --show``: the loop device now backed by image."""
    proc = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=False)
    device = proc.stdout.strip()
    if proc.returncode != 0 or not device.startswith("/dev/loop"):
        raise HarnessError(f"losetup -f --show {image} failed (rc {proc.returncode}): {proc.stdout}{proc.stderr}")
    return device


def _quiet(argv) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, preexec_fn=_die_with_parent)
    if proc.returncode != 0:
        raise HarnessError(f"{shlex.join(argv)} failed (rc {proc.returncode}): {proc.stdout}{proc.stderr}")


def _read_until_ready(holder: subprocess.Popen, timeout: float) -> list:
    """The holder's output lines up to "ready"; HarnessError with them when it fails or hangs."""
    import selectors  # pylint: disable=import-outside-toplevel

    data, deadline = b"", time.monotonic() + timeout
    fd = holder.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline and b"ready\n" not in data:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    text = data.decode(errors="replace")
    if "ready\n" in text:
        return text.split("ready\n")[0].splitlines()
    raise HarnessError("block root: mounting failed or timed out:\n" + text)


def _end_block_root(holder, loops: dict, images: list) -> None:
    """Kill the holder (its namespace and mounts end with it) and make sure our loop devices are gone:
    the kernel detaches the ones handed to autoclear once unmounted; the others (the holder failed
    or died before mounting) are detached here."""
    if holder is not None:
        with contextlib.suppress(OSError):
            holder.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
        with contextlib.suppress(OSError):
            holder.stdout.close()
    deadline = time.monotonic() + 10  # autoclear detaches asynchronously
    while True:
        left = [dev for dev in loop_devices_of(images) if dev in loops.values()]
        never_handed_over = [dev for dev in left if _loop_attr(dev, "autoclear") != "1"]
        for dev in never_handed_over:
            subprocess.run(["losetup", "-d", dev], check=False)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for dev in left:  # autoclear set, but the file system is still mounted somewhere or open
        log(f"block root: {dev} still attached to {_loop_attr(dev, 'backing_file')} 10 s after its namespace ended")
    if left:
        raise HarnessError(f"block root: loop devices {left} are still attached to {[str(p) for p in images]}")


def _loop_attr(device: str, name: str) -> str | None:
    try:
        return Path(f"/sys/class/block/{device.removeprefix('/dev/')}/loop/{name}").read_text().strip()
    except OSError:
        return None


def loop_devices_of(files) -> list:
    """The loop devices attached to any of these files (from /sys/class/block/loop*/loop/backing_file)."""
    files = {str(Path(f).resolve()) for f in files}
    out = []
    for entry in sorted(Path("/sys/class/block").glob("loop*")):
        backing = _loop_attr(entry.name, "backing_file")
        if backing is not None and backing.removesuffix(" (deleted)") in files:
            out.append(f"/dev/{entry.name}")
    return out


def cache_size(cache_root: Path = CACHE_ROOT) -> dict:
    """Disk use (bytes, hard links counted once) per cache entry, of debs/ and in total."""
    sizes = {}
    for path in sorted(cache_root.iterdir()) if cache_root.is_dir() else []:
        if path.is_dir():
            out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=False).stdout
            sizes[path.name] = int(out.split()[0]) if out else 0
    sizes["total"] = sum(sizes.values())
    return sizes


_SOURCES.update((fn.__name__, inspect.getsource(fn)) for fn in (_build_base, _ns_run, _build_flavour, _mount_script, chroot_run))
