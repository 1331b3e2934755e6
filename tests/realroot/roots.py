"""Real Debian 12 roots for running the stages with the real boot tools (``tests/realroot``).

A *root* is a directory holding an installed Debian 12 (bookworm) system: made by ``debootstrap``
from the Debian archive this machine's apt uses, with a real kernel package and a real initramfs
generator (or, later, a real bootloader) installed by ``apt-get`` inside it. Tests never touch
the cached root: each gets a fresh copy (``fresh_copy``) and runs the tools in it through
``chroot_run``.

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
Needs root (debootstrap, chroot, mount namespaces).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
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
    # Bootloader flavours are one line each. These three build (25-29 s each on a cached base) but
    # are not used yet: in them update-grub fails ("grub-probe: cannot find a device for /": the
    # root is a directory, not a block device) and bootctl wants an ESP at --esp-path, neither of
    # which chroot_run provides; kernel-install add exits 0 with nothing mounted (effect unchecked).
    # "grub-efi": Flavour(("initramfs-tools", "grub-efi-amd64"), INITRAMFS_TOOLS_SPEED),
    # "grub-pc": Flavour(("initramfs-tools", "grub-pc"), INITRAMFS_TOOLS_SPEED,
    #                    debconf="grub-pc grub-pc/install_devices multiselect\n"),
    # "systemd-boot": Flavour(("initramfs-tools", "systemd-boot"), INITRAMFS_TOOLS_SPEED),
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


def _mount_script(root: Path, mounts, binds: dict) -> str:
    """Shell lines run in the new mount namespace before the chroot."""
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
        elif kind == "run":
            lines.append(f"mount -t tmpfs -o mode=0755,nosuid,nodev,size=64m run {r}/run")
        else:
            raise ValueError(f"unknown mount {kind!r}; known: {MOUNT_KINDS}")
    for host, inside in binds.items():
        target = f"{r}/{shlex.quote(str(inside).lstrip('/'))}"
        lines += [f"mkdir -p {target}", f"mount --bind {shlex.quote(str(host))} {target}"]
    return "\n".join(lines)


def chroot_run(root, argv, timeout: float = 600, *, mounts=("proc",), binds: dict | None = None,
               env: dict | None = None, input: str | None = None, logfile: Path | None = None,
               check: bool = False) -> subprocess.CompletedProcess:
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

    The environment is clean (PATH, HOME, LANG=C.UTF-8, DEBIAN_FRONTEND=noninteractive) plus
    ``env``. Output goes to ``logfile`` (appended) or is captured. Raises
    ``subprocess.TimeoutExpired`` after killing everything on a timeout, and ``HarnessError`` on a
    non-zero exit when ``check``.
    """
    root = Path(root).resolve()
    if not (root / "usr").is_dir():
        raise HarnessError(f"{root} is not a root file system")
    argv = [str(a) for a in argv]
    script = _mount_script(root, mounts, binds or {}) + '\nroot=$1; shift\nexec chroot "$root" "$@"\n'
    cmd = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
           "sh", "-c", script, "chroot_run", str(root), *argv]
    full_env = {"PATH": CHROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
                "TERM": "dumb"}
    full_env.update(env or {})
    out = open(logfile, "a") if logfile is not None else None  # noqa: SIM115 (closed below)
    try:
        if out is not None:
            out.write(f"\n$ chroot {root} {shlex.join(argv)}   (mounts {list(mounts)}, binds {binds or {}})\n")
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


def base_recipe() -> dict:
    return {"layer": "base", "suite": SUITE, "variant": "minbase", "include": sorted(BASE_PACKAGES),
            "steps": inspect.getsource(_build_base) + inspect.getsource(_ns_run)}


def flavour_recipe(flavour: Flavour) -> dict:
    return {"layer": "flavour", "base": _digest(base_recipe()), "kernel": KERNEL_PACKAGE,
            "packages": sorted(flavour.packages), "files": flavour.files, "debconf": flavour.debconf,
            "steps": inspect.getsource(_build_flavour) + inspect.getsource(_mount_script)
            + inspect.getsource(chroot_run)}


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


def cache_size(cache_root: Path = CACHE_ROOT) -> dict:
    """Disk use (bytes, hard links counted once) per cache entry, of debs/ and in total."""
    sizes = {}
    for path in sorted(cache_root.iterdir()) if cache_root.is_dir() else []:
        if path.is_dir():
            out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=False).stdout
            sizes[path.name] = int(out.split()[0]) if out else 0
    sizes["total"] = sum(sizes.values())
    return sizes
