"""The bootloader stage with the real tools: GRUB (EFI and BIOS) and systemd-boot in real Debian 12 roots.

Each test puts a cached root of a bootloader flavour on a block device (``roots.block_root``: an ext4
image on a loop device, an ESP image on a second one at ``/boot/efi``), because ``update-grub``
(grub-probe) and ``bootctl`` need the root on a real file system on a disk. Our stage
(``plugins/module_utils/_bootloader_stage.py``, stdlib only) runs INSIDE the root with the root's
own ``python3``, the collection bound read-only at ``/opt/exliar/ansible_collections/exliar/vfio``,
with ``root="/"``: it runs the real ``update-grub`` itself. What the tools generated is then read
from the files and parsed here, independently of the stage's own read-back.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import roots
from conftest import timed

pytestmark = pytest.mark.realroot

REPO = roots.REPO
COLLECTION_PARENT = "/opt/exliar"  # PYTHONPATH in the root; the collection is bound below it
PARAMS = [{"name": "intel_iommu", "value": "on", "state": "present"},
          {"name": "iommu", "value": "pt", "state": "present"},
          {"name": "vfio-pci.ids", "value": "1234:1111,8086:293e", "state": "present"}]
WORDS = ["intel_iommu=on", "iommu=pt", "vfio-pci.ids=1234:1111,8086:293e"]
ESP = {"grub-efi": "/boot/efi", "grub-pc": None, "systemd-boot": "/boot/efi"}
STATE_FILE = "var/lib/exliar-vfio/state/bootloader.json"
RESULT_MARK = "@@exliar-stage-result@@"
# Runs in the root's python3: one call of the stage, its result (or StageError) as JSON after a marker.
DRIVER = f"""
import json, sys
from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_stage as stage
call = json.loads(sys.argv[1])
function = getattr(stage, call.pop("function"))
try:
    out = {{"result": function(**call)}}
except stage.StageError as exc:
    out = {{"error": str(exc), "type": "StageError", "result": exc.result}}
except Exception as exc:  # restore raises JournalError
    out = {{"error": str(exc), "type": type(exc).__name__, "result": getattr(exc, "result", None)}}
print({RESULT_MARK!r} + json.dumps(out, default=str))
"""


@pytest.fixture
def block(cached_root, scratch_dir, request):
    """flavour -> a BlockRoot of the flavour's cached root (ESP at /boot/efi for the EFI flavours),
    ended after the test (loop devices detached, images deleted)."""
    test_dir = scratch_dir / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]
    made = []
    with contextlib.ExitStack() as stack:
        def make(flavour: str) -> roots.BlockRoot:
            source = cached_root(flavour)
            with timed(f"{flavour}: block root up (mkfs.ext4 -d, mkfs esp, loop mounts)"):
                br = stack.enter_context(roots.block_root(source, test_dir / f"{flavour}-{len(made)}", esp=ESP[flavour]))
            made.append(br)
            return br

        yield make
        with timed("block root down (namespace ends, loop devices detach)"):
            stack.close()
    for br in made:
        print(f"block root {br.mountpoint}: {br.timings}, esp {br.esp_fs or '-'}")
        assert roots.loop_devices_of([br.image, *([br.esp_image] if br.esp_image else [])]) == []
    if not os.environ.get("VFIO_TEST_REALROOT_KEEP"):
        shutil.rmtree(test_dir, ignore_errors=True)


def run(br: roots.BlockRoot, argv, what: str, **kw) -> subprocess.CompletedProcess:
    proc = br.run(argv, kw.pop("timeout", 600), **kw)
    print(f"--- {what}: {' '.join(map(str, argv))} (rc {proc.returncode})\n{proc.stdout}{proc.stderr}")
    assert proc.returncode == 0, f"{what} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc


def stage(br: roots.BlockRoot, function: str, label: str = "", **kw) -> dict:
    """One call of the stage inside the root: ``{"result": ...}`` or ``{"error", "type", "result"}``."""
    run_kw = {k: kw.pop(k) for k in ("read_only",) if k in kw}
    with timed(f"stage {function}{' ' + label if label else ''} (python3 in the root, real tools)"):
        proc = br.run(["python3", "-c", DRIVER, json.dumps(dict(kw, function=function))], 600,
                      ro_binds={str(REPO): f"{COLLECTION_PARENT}/ansible_collections/exliar/vfio"},
                      env={"PYTHONPATH": COLLECTION_PARENT, "PYTHONDONTWRITEBYTECODE": "1"}, **run_kw)
    out = proc.stdout + proc.stderr
    assert RESULT_MARK in proc.stdout, f"the stage crashed (rc {proc.returncode}):\n{out[-4000:]}"
    data = json.loads(proc.stdout.rsplit(RESULT_MARK, 1)[1])
    print(f"--- stage {function} {kw}:\n{json.dumps(data, indent=1)[:6000]}")
    return data


def ok(data: dict) -> dict:
    assert "error" not in data, f"{data.get('type')}: {data.get('error')}"
    return data["result"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# GRUB: grub.cfg read here, not through the stage's parser
# --------------------------------------------------------------------------------------------

ENTRY_RE = re.compile(r"^\s*menuentry\s+'([^']*)'")
LINUX_RE = re.compile(r"^\s*linux\s+(\S+)(.*)$")


def grub_entries(cfg: str) -> list:
    """(title, kernel, [words]) of every menuentry with a linux line, in file order."""
    out, title = [], None
    for line in cfg.splitlines():
        m = ENTRY_RE.match(line)
        if m:
            title = m.group(1)
            continue
        m = LINUX_RE.match(line)
        if m and title is not None:
            out.append((title, m.group(1), m.group(2).split()))
            title = None
    return out


def check_grub_cfg(cfg: str, want: list, absent: tuple = ()) -> list:
    """Normal entries carry ``want`` (and none of ``absent``), recovery entries none of them; the entries."""
    entries = grub_entries(cfg)
    normal = [e for e in entries if "(recovery mode)" not in e[0]]
    recovery = [e for e in entries if "(recovery mode)" in e[0]]
    assert len(normal) >= 2 and len(recovery) >= 1, entries  # 'Debian GNU/Linux', the advanced one, recovery
    for title, _kernel, words in normal:
        assert all(w in words for w in want), f"{title!r}: {words} lacks some of {want}"
        assert not [w for w in absent if w in words], f"{title!r} still has {absent}: {words}"
        assert f"root=UUID={roots.ROOT_UUID}" in words  # grub-probe found the root file system on its block device
    for title, _kernel, words in recovery:
        assert not [w for w in want + list(absent) if w in words], f"{title!r} has {words}"
        assert "single" in words
    return entries


def update_grub(br: roots.BlockRoot, flavour: str) -> str:
    """An installed system has a grub.cfg: generate it as the package's postinst would have."""
    with timed(f"{flavour}: update-grub (the installed system's grub.cfg)"):
        run(br, ["update-grub"], "update-grub")
    return (br.path / "boot/grub/grub.cfg").read_text()


DEBIAN_SHIM_STUB = f"""search.fs_uuid {roots.ROOT_UUID} root
set prefix=($root)'/boot/grub'
configfile $prefix/grub.cfg
"""


@pytest.mark.parametrize("flavour", ["grub-efi", "grub-pc"])
def test_grub_configure_regenerate_rerun_and_restore(block, flavour):
    br = block(flavour)
    if br.esp:  # what grub-install --uefi-secure-boot leaves on the ESP: a stub, not the real grub.cfg
        (br.path / "boot/efi/EFI/debian").mkdir(parents=True)
        (br.path / "boot/efi/EFI/debian/grub.cfg").write_text(DEBIAN_SHIM_STUB)
    cfg_path, default_path = br.path / "boot/grub/grub.cfg", br.path / "etc/default/grub"
    original_cfg = update_grub(br, flavour)
    check_grub_cfg(original_cfg, [], absent=tuple(WORDS))
    original_default = default_path.read_bytes()

    predicted = ok(stage(br, "configure", "check mode", entries=PARAMS, check_mode=True))
    assert predicted["changed"] is True and predicted["regenerated"] is False
    assert default_path.read_bytes() == original_default and cfg_path.read_text() == original_cfg

    result = ok(stage(br, "configure", entries=PARAMS))
    assert result["changed"] is True and result["bootloader"] == "grub"
    assert result["regenerated"] is True and result["commands"] == ["update-grub"]
    assert "not_regenerated" not in result
    edited = [f for f in result["files"] if f["changed"]]
    assert "/etc/default/grub" in [f["path"] for f in edited], result["files"]
    # /etc/default/grub: only the GRUB_CMDLINE_LINUX_DEFAULT line changed, "quiet" kept
    before, after = original_default.decode().split("\n"), default_path.read_text().split("\n")
    changed = [(a, b) for a, b in zip(before, after, strict=False) if a != b]
    assert len(before) == len(after) and len(changed) == 1, changed
    assert changed[0][0] == 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"'
    assert changed[0][1] == f'GRUB_CMDLINE_LINUX_DEFAULT="quiet {" ".join(WORDS)}"'
    # the real update-grub ran: grub.cfg's normal entries carry them, recovery entries do not
    cfg = cfg_path.read_text()
    assert cfg != original_cfg
    entries = check_grub_cfg(cfg, WORDS)
    assert result["next_boot_cmdline"].split() == entries[0][2]  # GRUB_DEFAULT=0: the first entry
    assert result["next_boot_source"] == "/boot/grub/grub.cfg"  # not the ESP stub
    assert (br.path / STATE_FILE).is_file()

    mtime = cfg_path.stat().st_mtime_ns
    again = ok(stage(br, "configure", "again", entries=PARAMS))
    assert again["changed"] is False and again["regenerated"] is False, again
    assert cfg_path.stat().st_mtime_ns == mtime and cfg_path.read_text() == cfg
    assert again["next_boot_cmdline"] == result["next_boot_cmdline"]

    restored = ok(stage(br, "restore"))
    assert restored["changed"] is True and restored.get("regenerated") == ["update-grub"], restored
    assert default_path.read_bytes() == original_default
    assert cfg_path.read_text() == original_cfg  # regenerated by update-grub from the restored file: the same bytes
    assert not (br.path / STATE_FILE).exists()
    if br.esp:
        assert (br.path / "boot/efi/EFI/debian/grub.cfg").read_text() == DEBIAN_SHIM_STUB


def test_grub_drop_in_that_sets_the_default_gets_the_edit(block):
    """Debian's grub-mkconfig sources /etc/default/grub.d/*.cfg after /etc/default/grub: the value comes from there."""
    br = block("grub-pc")
    dropin = br.path / "etc/default/grub.d/50-test.cfg"
    dropin.write_text('# a cloud image setting\nGRUB_CMDLINE_LINUX_DEFAULT="console=tty0 splash"\n')
    original_dropin = dropin.read_bytes()
    original_default = (br.path / "etc/default/grub").read_bytes()
    check_grub_cfg(update_grub(br, "grub-pc"), ["console=tty0", "splash"], absent=("quiet", *WORDS))

    result = ok(stage(br, "configure", entries=PARAMS))
    assert result["changed"] is True and result["regenerated"] is True
    assert [f["path"] for f in result["files"] if f["changed"] and f["path"].startswith("/etc/default")] == [
        "/etc/default/grub.d/50-test.cfg"]
    assert (br.path / "etc/default/grub").read_bytes() == original_default
    assert dropin.read_text() == f'# a cloud image setting\nGRUB_CMDLINE_LINUX_DEFAULT="console=tty0 splash {" ".join(WORDS)}"\n'
    entries = check_grub_cfg((br.path / "boot/grub/grub.cfg").read_text(), ["console=tty0", "splash", *WORDS], absent=("quiet",))
    assert result["next_boot_cmdline"].split() == entries[0][2]

    ok(stage(br, "restore"))
    assert dropin.read_bytes() == original_dropin
    assert (br.path / "etc/default/grub").read_bytes() == original_default


BROKEN_SCRIPT = "#!/bin/sh\necho '09_broken: cannot read the disk' >&2\nexit 1\n"


@pytest.mark.parametrize("failure", ["read-only /boot/grub", "broken /etc/grub.d script"])
def test_a_failing_update_grub_is_an_error_and_puts_the_configuration_back(block, failure):
    br = block("grub-pc")
    cfg = update_grub(br, "grub-pc")
    default_path = br.path / "etc/default/grub"
    original_default = default_path.read_bytes()
    run_kw = {}
    if failure.startswith("read-only"):
        run_kw["read_only"] = ("boot/grub",)
    else:
        script = br.path / "etc/grub.d/09_broken"
        script.write_text(BROKEN_SCRIPT)
        script.chmod(0o755)

    failed = stage(br, "configure", failure, entries=PARAMS, **run_kw)
    assert failed.get("type") == "StageError", failed
    assert "update-grub" in failed["error"], failed["error"]
    assert ("Read-only file system" if "read-only" in failure else "09_broken: cannot read the disk") in failed["error"]
    assert "put back" in failed["error"]
    assert failed["result"]["changed"] is False
    assert default_path.read_bytes() == original_default
    assert (br.path / "boot/grub/grub.cfg").read_text() == cfg  # grub-mkconfig writes grub.cfg.new and renames it
    assert not (br.path / STATE_FILE).exists()


# --------------------------------------------------------------------------------------------
# systemd-boot
# --------------------------------------------------------------------------------------------

SDBOOT_ENV = {"SYSTEMD_RELAX_ESP_CHECKS": "1"}  # the ESP is a whole disk (no GPT partition type to check), maybe not vfat
FUTURE = "6.1.0-99-future"


def install_systemd_boot(br: roots.BlockRoot, kver: str) -> Path:
    """``bootctl install`` on the ESP and ``kernel-install add``: the entry of the installed kernel."""
    with timed("systemd-boot: bootctl install + kernel-install add"):
        run(br, ["bootctl", "install", "--esp-path=/boot/efi", "--no-variables"], "bootctl install", env=SDBOOT_ENV)
        run(br, ["kernel-install", "add", kver, f"/boot/vmlinuz-{kver}"], "kernel-install add", env=SDBOOT_ENV)
    machine_id = (br.path / "etc/machine-id").read_text().strip()
    entry = br.path / f"boot/efi/loader/entries/{machine_id}-{kver}.conf"
    assert entry.is_file(), sorted(p.name for p in (br.path / "boot/efi/loader/entries").iterdir())
    assert (br.path / f"boot/efi/{machine_id}/{kver}/linux").is_file()
    return entry


def options(entry: Path) -> list:
    return [w for line in entry.read_text().splitlines() if line.startswith("options") for w in line.split()[1:]]


def add_future_kernel(br: roots.BlockRoot, kver: str) -> Path:
    """A kernel installed after the stage ran: kernel-install takes its options from /etc/kernel/cmdline."""
    vmlinuz = br.path / f"boot/vmlinuz-{FUTURE}"
    vmlinuz.write_bytes((br.path / f"boot/vmlinuz-{kver}").read_bytes())
    run(br, ["kernel-install", "add", FUTURE, f"/boot/vmlinuz-{FUTURE}"], "kernel-install add (future kernel)", env=SDBOOT_ENV)
    machine_id = (br.path / "etc/machine-id").read_text().strip()
    return br.path / f"boot/efi/loader/entries/{machine_id}-{FUTURE}.conf"


def test_systemd_boot_entries_and_etc_kernel_cmdline(block):
    br = block("systemd-boot")
    kver = roots.kernel_release(br.path)
    cmdline_file = br.path / "etc/kernel/cmdline"
    cmdline_file.write_text(f"root=UUID={roots.ROOT_UUID} ro quiet\n")
    entry = install_systemd_boot(br, kver)
    machine_id = (br.path / "etc/machine-id").read_text().strip()
    assert options(entry) == [f"root=UUID={roots.ROOT_UUID}", "ro", "quiet", f"systemd.machine_id={machine_id}"]
    original_entry, original_cmdline = entry.read_bytes(), cmdline_file.read_bytes()

    result = ok(stage(br, "configure", entries=PARAMS))
    assert result["changed"] is True and result["bootloader"] == "systemd-boot", result
    paths = sorted(f["path"] for f in result["files"] if f["changed"])
    assert paths == sorted(["/etc/kernel/cmdline", f"/boot/efi/loader/entries/{entry.name}", "/" + STATE_FILE]), paths
    assert cmdline_file.read_text() == f"root=UUID={roots.ROOT_UUID} ro quiet {' '.join(WORDS)}\n"
    assert options(entry) == [f"root=UUID={roots.ROOT_UUID}", "ro", "quiet", f"systemd.machine_id={machine_id}", *WORDS]
    other = [line for line in entry.read_text().splitlines() if not line.startswith("options")]
    assert other == [line for line in original_entry.decode().splitlines() if not line.startswith("options")]
    assert result["next_boot_source"] == f"/boot/efi/loader/entries/{entry.name}"
    assert result["next_boot_cmdline"].split() == options(entry)
    # the real bootctl reads the edited entry
    listed = run(br, ["bootctl", "--esp-path=/boot/efi", "list", "--no-pager"], "bootctl list", env=SDBOOT_ENV).stdout
    assert re.search(r"options: .*" + re.escape(" ".join(WORDS)), listed), listed

    again = ok(stage(br, "configure", "again", entries=PARAMS))
    assert again["changed"] is False, again

    future = add_future_kernel(br, kver)
    assert options(future) == [f"root=UUID={roots.ROOT_UUID}", "ro", "quiet", *WORDS, f"systemd.machine_id={machine_id}"]
    # the new kernel's entry needs nothing more, and it is the default now: the stage agrees with bootctl which one
    with_future = ok(stage(br, "configure", "after a new kernel", entries=PARAMS))
    assert with_future["changed"] is False, with_future
    listed = run(br, ["bootctl", "--esp-path=/boot/efi", "list", "--no-pager"], "bootctl list", env=SDBOOT_ENV).stdout
    default_id = re.search(r"title: .*\(default\).*\n\s+id: (\S+)", listed).group(1)
    assert default_id == future.name and with_future["next_boot_source"] == f"/boot/efi/loader/entries/{future.name}"
    future.unlink()  # not the stage's file: restore leaves it, so it goes before the byte comparison below

    restored = ok(stage(br, "restore"))
    assert restored["changed"] is True, restored
    assert entry.read_bytes() == original_entry and cmdline_file.read_bytes() == original_cmdline
    assert not (br.path / STATE_FILE).exists()


def test_systemd_boot_without_etc_kernel_cmdline_creates_it_for_future_kernels(block):
    """Without /etc/kernel/cmdline kernel-install takes a new kernel's options from /proc/cmdline (here: this
    machine's): the stage creates the file from the default entry, so future kernels keep root= and the parameters."""
    br = block("systemd-boot")
    kver = roots.kernel_release(br.path)
    cmdline_file = br.path / "etc/kernel/cmdline"
    assert not cmdline_file.exists()
    entry = install_systemd_boot(br, kver)
    # written from /proc/cmdline (BOOT_IMAGE= and initrd= dropped); give it the root of a real installation
    text = entry.read_text()
    opts = next(line for line in text.splitlines() if line.startswith("options"))
    machine_id = (br.path / "etc/machine-id").read_text().strip()
    entry.write_text(text.replace(opts, f"options    root=UUID={roots.ROOT_UUID} ro quiet systemd.machine_id={machine_id}"))
    original_entry = entry.read_bytes()

    result = ok(stage(br, "configure", entries=PARAMS))
    assert result["changed"] is True, result
    assert any("/etc/kernel/cmdline did not exist" in w for w in result["warnings"]), result["warnings"]
    created = cmdline_file.read_text().split()
    assert created[:3] == [f"root=UUID={roots.ROOT_UUID}", "ro", "quiet"] and all(w in created for w in WORDS), created
    assert all(w in options(entry) for w in WORDS)

    future = add_future_kernel(br, kver)
    assert f"root=UUID={roots.ROOT_UUID}" in options(future) and all(w in options(future) for w in WORDS), options(future)
    future.unlink()

    ok(stage(br, "restore"))
    assert not cmdline_file.exists()  # created by the stage: removed again, so kernel-install falls back as before
    assert entry.read_bytes() == original_entry


# --------------------------------------------------------------------------------------------
# The harness: block roots
# --------------------------------------------------------------------------------------------

def _mounts_below(path: Path) -> list:
    prefix = str(path.resolve()) + "/"
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(prefix)]


def test_block_root_is_a_disk_for_grub_probe_and_leaves_nothing_behind(cached_root, scratch_dir):
    """No stage: grub-probe finds the root's disk, and the loop devices and mounts go on every way out."""
    source = cached_root("grub-efi")
    work = scratch_dir / "harness-block-root"
    with roots.block_root(source, work, esp="/boot/efi") as br:
        images = [br.image, br.esp_image]
        assert sorted(br.loops) == ["vda", "vdb"] and len(roots.loop_devices_of(images)) == 2
        assert _mounts_below(work) == [] and _mounts_below(source) == []  # nothing mounted on this machine
        script = "grub-probe --target=device /; grub-probe --target=fs_uuid /; grub-probe --target=device /boot/efi; cat /proc/self/mountinfo"
        probe = run(br, ["sh", "-c", script], "grub-probe")
        lines = probe.stdout.splitlines()
        assert lines[:3] == ["/dev/vda", roots.ROOT_UUID, "/dev/vdb"], lines
        assert any(" / / " in line and " - ext4 /dev/vda " in line for line in lines)
        assert (br.path / "etc/os-release").read_text().startswith('PRETTY_NAME="Debian GNU/Linux 12')
        # a command that hangs is killed at its timeout; the block root stays usable
        with pytest.raises(subprocess.TimeoutExpired):
            br.run(["sleep", "600"], 2)
        assert run(br, ["true"], "after a timeout").returncode == 0
    assert roots.loop_devices_of(images) == [] and not br.image.exists()
    assert br.holder.poll() is not None

    # an exception inside, and a holder killed from outside: the devices still go
    with pytest.raises(RuntimeError, match="inside"), roots.block_root(source, work) as br:
        images = [br.image]
        raise RuntimeError("inside")
    assert roots.loop_devices_of(images) == []
    with roots.block_root(source, work) as br:
        images = [br.image]
        subprocess.run(["kill", "-KILL", str(br.holder.pid)], check=True)
        br.holder.wait()
        deadline = time.monotonic() + 10
        while roots.loop_devices_of(images) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert roots.loop_devices_of(images) == []  # the kernel detached it: nothing held the file system
        with pytest.raises(roots.HarnessError, match="is gone"):
            br.run(["true"])
    assert not work.exists() or not any(work.iterdir())

    # the test process killed (SIGKILL, no cleanup code runs): the holder dies with it, the devices go
    code = (f"import sys, time; sys.path.insert(0, {str(roots.HERE)!r}); import roots\n"
            f"with roots.block_root({str(source)!r}, {str(work)!r}, esp='/boot/efi') as br:\n"
            f"    print(br.image, br.esp_image, flush=True)\n    time.sleep(600)\n")
    victim = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        images = victim.stdout.readline().split()
        assert len(roots.loop_devices_of(images)) == 2
    finally:
        victim.kill()
        victim.wait()
    deadline = time.monotonic() + 10
    while roots.loop_devices_of(images) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert roots.loop_devices_of(images) == []
    assert _mounts_below(work) == []
    shutil.rmtree(work)  # the killed process could not delete its images


def test_a_block_root_that_cannot_be_mounted_leaves_no_loop_device(scratch_dir, monkeypatch):
    """The holder fails after the devices were attached (the ESP's mount point cannot be made; on a
    kernel without vfat also a vfat ESP): a HarnessError with the holder's message, nothing attached."""
    source = scratch_dir / "tiny-root"
    (source / "usr").mkdir(parents=True)
    (source / "boot").mkdir()
    (source / "boot/efi").write_text("a file where the ESP's mount point should be\n")
    work = scratch_dir / "tiny-block-root"
    attached = []
    real_attach = roots._attach  # pylint: disable=protected-access
    monkeypatch.setattr(roots, "_attach", lambda image: attached.append(real_attach(image)) or attached[-1])
    cases = [("ext4", "mkdir: cannot create directory")]
    if not roots.vfat_available():
        cases.append(("vfat", "unknown filesystem type 'vfat'"))
    for esp_fs, message in cases:
        if esp_fs == "vfat":
            (source / "boot/efi").unlink()
        attached.clear()
        with pytest.raises(roots.HarnessError, match=message), roots.block_root(source, work, esp="/boot/efi", esp_fs=esp_fs):
            pass
        assert len(attached) == 2, attached
        assert roots.loop_devices_of([work / "root.img", work / "esp.img"]) == []  # detached, not left to autoclear
    monkeypatch.undo()
    shutil.rmtree(source)

    # a device a killed session attached and never mounted: the next block_root's sweep detaches it
    gone = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True).stdout.strip()
    stale = scratch_dir / f"exliar-realroot-{gone}" / "test_x" / "grub-pc-0" / "root.img"
    stale.parent.mkdir(parents=True)
    with open(stale, "wb") as f:
        f.truncate(1 << 20)
    device = roots._attach(stale)  # pylint: disable=protected-access
    try:
        assert roots.loop_devices_of([stale]) == [device]
        assert device in roots.sweep_stale_loops()
        assert roots.loop_devices_of([stale]) == []
    finally:
        if roots.loop_devices_of([stale]):
            subprocess.run(["losetup", "-d", device], check=False)
        shutil.rmtree(stale.parents[2])
