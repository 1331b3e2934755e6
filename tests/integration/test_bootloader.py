"""The bootloader stage end to end: playbooks/vfio.yml (detect, bind, initramfs, bootloader) and playbooks/restore.yml run
by ansible-playbook, as a user runs them, over copies of lab sysroots, one host per bootloader the lab has (GRUB on Debian,
grubby/BLS on Fedora, systemd-boot on Arch, kernelstub on Pop!_OS, Proxmox); checked on the files below each root, on the
play recap, on the task results (runs with -v print each result as one JSON line), the cached facts and the VFIO SUMMARY.

The sysroots are built from lab/profiles by lab/build_sysroot.py's build() into this module's own directory (never
lab/.sysroots; the bootloader files come from lab/_layouts.py). A lab sysroot has no shell, so no bootloader tool
(update-grub, kernelstub, proxmox-boot-tool) can run in it: the stage reports ``not_regenerated`` and the next boot is
predicted; bootloaders without a tool (BLS, systemd-boot) are read back from the edited entries. Nothing here reboots:
``vfio_root`` is never ``/``.

Bad input runs the detection and bootloader roles alone (``BAD_PLAYBOOK``, the binding plan given by the inventory), so
that a refusal must leave the whole tree as it was; a first play there calls the module directly (no facts: the module
computes the parameters itself). The read-only cases use the immutable attribute (``chattr +i``): root ignores modes.

Every playbook run costs seconds, so one module fixture (``boot_lab``) does all runs, each over many hosts:

1. apply: vfio.yml -v --diff over HOSTS;   alongside: vfio.yml -v --check --diff over fresh copies (CHECK_HOSTS), and
   the bad-input playbook over BAD_HOSTS and MODULE_HOSTS
2. again: vfio.yml -v over HOSTS, with the second-run variables of the hosts that change them (``vars2``)
3. restore: restore.yml -v --diff over HOSTS, then
4. restore2: restore.yml -v again (changed=0)
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from build_sysroot import build, profile_paths
from labrun import VENV_BIN, cached_facts
from sysroot_trees import Run, copy_root as _copy, differences, private_work_dir, tree

PROFILES = {p.stem: p for p in profile_paths()}

DEBIAN = "apu-raven-rx580-debian"      # Debian 10, GRUB (update-grub), AMD: iommu=pt vfio-pci.ids=1002:67df
FEDORA = "desktop-intel-turing"        # Fedora 34, grubby/BLS: two entries, GRUB_CMDLINE_LINUX, /etc/kernel/cmdline
ARCH = "alderlake-rtx3090-arch"        # Arch, systemd-boot on /boot: two entries, no /etc/kernel/cmdline; intel_iommu=on already
POP = "gpu-nvme-shared-group"          # Pop!_OS, kernelstub; the user's vfio-pci.ids="1002:aaf8,1002:687f" (quoted)
PVE = "server-bmc-vga"                 # Proxmox VE 9 on ZFS: /etc/kernel/cmdline and /etc/default/grub (loader not known)
B550 = "b550-navi21-split-audio"       # Arch, GRUB, whose command line already has iommu=pt and the ids the binding stage binds

STATE = "var/lib/exliar-vfio"
STATE_FILE = f"{STATE}/state/bootloader.json"
JOURNAL = f"{STATE}/journal.jsonl"
DEFAULT_GRUB = "etc/default/grub"
KERNEL_CMDLINE = "etc/kernel/cmdline"
KERNELSTUB = "etc/kernelstub/configuration"
FEDORA_MID = "aa81aab3688e61db2d86c58db6d949df"
BLS_ENTRIES = [f"boot/loader/entries/{FEDORA_MID}-{k}.conf" for k in ("5.11.12-300.fc34.x86_64", "5.12.9-300.fc34.x86_64")]
SDBOOT_ENTRIES = ["boot/loader/entries/arch.conf", "boot/loader/entries/arch-fallback.conf"]
POP_ENTRIES = ["boot/efi/loader/entries/Pop_OS-current.conf", "boot/efi/loader/entries/Pop_OS-oldkern.conf"]

TASK = "exliar.vfio.bootloader : Put the kernel parameters where the bootloader in use reads them"
REBOOT_TASK = "exliar.vfio.bootloader : Reboot into the new kernel command line (vfio_reboot_ok)"
TELL_TASK = "exliar.vfio.bootloader : Tell that a reboot is needed"
SPEC_TASK = ("exliar.vfio.bootloader : Validating arguments against arg spec 'main' - Kernel parameters for the bootloader "
             "in use, read back, and an opt-in reboot with a check")
RESTORE_TASK = "exliar.vfio.restore : Undo the changes of exliar.vfio recorded in the host's journal"
CANNOT_RUN = "{tool} cannot run in {root} (not the running system, nor a chroot with it installed)"

DISCRETE = [{"gpus": "discrete_except_boot"}]
DEBIAN_WORDS = "iommu=pt vfio-pci.ids=1002:67df"
FEDORA_IDS = "vfio-pci.ids=10de:10f9,10de:1ada,10de:1adb,10de:1f02"
ARCH_WORDS = "iommu=pt vfio-pci.ids=10de:1aef,10de:2204"
PVE_IDS = "vfio-pci.ids=8086:e212"


# ---- preparing copies ---------------------------------------------------------------------------------

def _backtick(root: Path) -> None:
    """A GRUB_CMDLINE_LINUX_DEFAULT the stage cannot edit safely: a command substitution inside the value."""
    path = root / DEFAULT_GRUB
    text = path.read_text()
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n' in text
    path.write_text(text.replace('GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n', 'GRUB_CMDLINE_LINUX_DEFAULT="quiet `echo splash`"\n'))


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, (path, old)
    path.write_text(text.replace(old, new))


def _rebooted_grub(root: Path) -> None:
    """Configured and rebooted, with Ubuntu's grub.cfg: 10_linux ends the linux line with $vt_handoff, which the running
    kernel shows as vt.handoff=7 (and BOOT_IMAGE= in front)."""
    _replace(root / DEFAULT_GRUB, 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"', f'GRUB_CMDLINE_LINUX_DEFAULT="quiet splash {DEBIAN_WORDS}"')
    _replace(root / "boot/grub/grub.cfg", " ro quiet\n", f" ro quiet splash $vt_handoff {DEBIAN_WORDS}\n")
    (root / "proc/cmdline").write_text(f"BOOT_IMAGE=/boot/vmlinuz-4.19.0-5-amd64 root=UUID=5e0c8f6d-3b2a-4c1e-9d7f-0a1b2c3d4e5f ro "
                                       f"quiet splash vt.handoff=7 {DEBIAN_WORDS}\n")


def _rebooted_pve(root: Path) -> None:
    """The Proxmox machine configured and rebooted through its GRUB (BOOT_IMAGE=, and root= and ro that grub-mkconfig adds)."""
    _replace(root / DEFAULT_GRUB, 'GRUB_CMDLINE_LINUX_DEFAULT="quiet iommu=pt"', f'GRUB_CMDLINE_LINUX_DEFAULT="quiet iommu=pt {PVE_IDS}"')
    (root / KERNEL_CMDLINE).write_text(f"root=ZFS=rpool/ROOT/pve-1 boot=zfs iommu=pt {PVE_IDS}\n")
    _replace(root / "proc/cmdline", " iommu=pt\n", f" iommu=pt {PVE_IDS}\n")


IMMUTABLE: list = []  # paths made read-only, made writable again when the module's work is done


def _read_only(path: Path) -> None:
    """``path`` cannot be written, also by root: the immutable attribute (root ignores modes), else the modes."""
    if os.geteuid() == 0:
        proc = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.skip(f"chattr +i {path}: {proc.stderr.strip()} (the read-only cases need it as root)")
    else:
        path.chmod(path.stat().st_mode & ~0o222)
    IMMUTABLE.append(path)


def _writable_again() -> None:
    for path in IMMUTABLE:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)
        else:
            path.chmod(path.stat().st_mode | 0o200)
    IMMUTABLE.clear()


def _etc_default_read_only(root: Path) -> None:
    _read_only(root / "etc/default")


def _kernel_cmdline_read_only(root: Path) -> None:
    """The last file grubby's layout writes (after both entries and /etc/default/grub) cannot be written."""
    _read_only(root / KERNEL_CMDLINE)


# host -> profile, vfio_devices, variables of the first run, of the second run (vars2: when they differ), preparation;
# lean: without the initramfs stage, which adds no kernel parameter on these machines (initramfs-tools, mkinitcpio)
HOSTS = {
    "grub": dict(profile=DEBIAN, devices=DISCRETE),
    "bls": dict(profile=FEDORA, devices=DISCRETE),
    "sdboot": dict(profile=ARCH, devices=DISCRETE, vars={"vfio_reboot_ok": True}),
    "kernelstub": dict(profile=POP, devices=DISCRETE),
    "proxmox": dict(profile=PVE, devices=[{"address": "0000:03:00.0"}]),
    # user entries: remove a flag, add a parameter, leave iommu=pt out (vfio_iommu_pt: false); the second run drops the
    # added parameter from vfio_kernel_params, so it goes again, while the removed flag stays removed
    "user-grub": dict(profile=DEBIAN, devices=DISCRETE, lean=True,
                      vars={"vfio_iommu_pt": False,
                            "vfio_kernel_params": [{"name": "quiet", "state": "absent"}, {"name": "kvm.ignore_msrs", "value": "1"}]},
                      vars2={"vfio_iommu_pt": False, "vfio_kernel_params": [{"name": "quiet", "state": "absent"}]}),
    # user entries that override defaults: no iommu= at all, intel_iommu with one more item, rhgb removed
    "user-bls": dict(profile=FEDORA, devices=DISCRETE,
                     vars={"vfio_kernel_params": [{"name": "iommu", "state": "absent"}, {"name": "intel_iommu", "value": "on,sm_on"},
                                                  {"name": "rhgb", "state": "absent"}]}),
    # opt-in video=efifb:off, then not any more: the stage removes what it added, the user's words stay
    "efifb": dict(profile=DEBIAN, devices=DISCRETE, lean=True, vars={"vfio_efifb_off": True}, vars2={}),
    # the user's own iommu=pt and ids already on the command line: nothing to add, and when a later run no longer
    # wants iommu=pt it is still the user's
    "own-params": dict(profile=B550, devices=["0000:08:00.0"], lean=True, vars={}, vars2={"vfio_iommu_pt": False}),
    "stage-off": dict(profile=DEBIAN, devices=DISCRETE, lean=True, vars={"vfio_bootloader_stage": False}),
    # configured earlier and rebooted: every parameter is on the running command line, nothing to do and no reboot
    "rebooted-grub": dict(profile=DEBIAN, devices=DISCRETE, lean=True, prepare=_rebooted_grub),
    "rebooted-pve": dict(profile=PVE, devices=[{"address": "0000:03:00.0"}], lean=True, prepare=_rebooted_pve),
}
MAIN = ["grub", "bls", "sdboot", "kernelstub", "proxmox"]
CONVERGED = [h for h, s in HOSTS.items() if "vars2" not in s]
CHECK_HOSTS = {
    "check-grub": dict(profile=DEBIAN, devices=DISCRETE),
    "check-bls": dict(profile=FEDORA, devices=DISCRETE),
    "check-kernelstub": dict(profile=POP, devices=DISCRETE),
}
DEBIAN_PLAN = {"status": "ok", "ids": ["1002:67df"], "kernel_params": [], "devices": [{"address": "0000:10:00.0"}]}
FEDORA_PLAN = {"status": "ok", "ids": ["10de:1f02"], "kernel_params": [], "devices": [{"address": "0000:01:00.0"}]}
# bad input: host -> profile, variables, preparation, the start of the error message (root is filled in)
BAD_HOSTS = {
    "bad-name": dict(vars={"vfio_kernel_params": [{"name": "iommu;reboot", "value": "pt"}]},
                     msg="vfio_kernel_params entry 1: name 'iommu;reboot' is not a kernel parameter name (letters, digits, '_', "
                         "'-', '.'; e.g. iommu or vfio-pci.ids); nothing was changed"),
    "bad-space": dict(vars={"vfio_kernel_params": [{"name": "video", "value": "efifb:off vesafb:off"}]},
                      msg="vfio_kernel_params entry 1 (video): value 'efifb:off vesafb:off' has blanks, quotes or shell characters, "
                          "or is empty; a kernel parameter value is one word (use value: null for a flag such as 'quiet'); "
                          "nothing was changed"),
    "bad-quote": dict(vars={"vfio_kernel_params": [{"name": "modprobe.blacklist", "value": 'nouveau"'}]},
                      msg="vfio_kernel_params entry 1 (modprobe.blacklist): value 'nouveau\"' has blanks, quotes or shell "
                          "characters, or is empty;"),
    "bad-both": dict(vars={"vfio_kernel_params": [{"name": "quiet"}, {"name": "quiet", "state": "absent"}]},
                     msg="vfio_kernel_params: quiet is both present and absent; keep one entry; nothing was changed"),
    "bad-root": dict(vars={"vfio_kernel_params": [{"name": "root", "value": "/dev/sda2"}]},
                     msg="vfio_kernel_params entry 1: root decides whether the system boots at all; exliar.vfio never adds or "
                         "removes it (change it with your distribution's tools); nothing was changed"),
    "bad-amd": dict(vars={"vfio_kernel_params": [{"name": "amd_iommu", "value": "on"}]},
                    msg="vfio_kernel_params entry 1: amd_iommu=on: on is not a value the kernel accepts for amd_iommu (known: "),
    "bad-loader": dict(vars={"vfio_bootloader": "foo"}, msg="argument spec"),
    "bad-backtick": dict(vars={}, prepare=_backtick,
                         msg="/etc/default/grub line 9: GRUB_CMDLINE_LINUX_DEFAULT has a command substitution or quoting inside "
                             "the value; exliar.vfio edits only plain assignments (VAR=\"words\"): simplify the line, or set "
                             "vfio_bootloader_stage: false"),
    "ro-dir": dict(vars={}, prepare=_etc_default_read_only,
                   msg="cannot write /etc/default/grub: /etc/default is not writable (a read-only file system?). Nothing was changed"),
    "ro-file": dict(profile=FEDORA, plan=FEDORA_PLAN, vars={}, prepare=_kernel_cmdline_read_only,
                    msg="cannot write {root}/etc/kernel/cmdline: "),
}
MODULE_HOSTS = {"module": dict(profile=DEBIAN)}
BAD_PLAYBOOK = """\
- name: The module called directly, without the detection facts
  hosts: module
  gather_facts: false
  tasks:
    - name: "module: unknown bootloader"
      exliar.vfio.vfio_bootloader:
        root: "{{ vfio_root }}"
        bootloader: foo
      ignore_errors: true

    - name: "module: a value with a blank"
      exliar.vfio.vfio_bootloader:
        root: "{{ vfio_root }}"
        kernel_params: [{name: iommu, value: "pt off"}]
      ignore_errors: true

    - name: "module: check mode with a diff"
      exliar.vfio.vfio_bootloader:
        root: "{{ vfio_root }}"
        vfio_ids: ["1002:67df"]
        kernel_params: [{name: video, value: "efifb:off"}]
      check_mode: true
      diff: true

    - name: "module: verified on a system that was not rebooted"
      exliar.vfio.vfio_bootloader:
        root: "{{ vfio_root }}"
        state: verified
        computed_params: false
        kernel_params: [{name: iommu, value: pt}]
        devices: ["0000:10:00.0"]
      ignore_errors: true

# last: a play whose every host fails ends the playbook
- name: The bootloader stage alone (the binding plan comes from the inventory)
  hosts: bad
  gather_facts: false
  roles:
    - role: exliar.vfio.detect
    - role: exliar.vfio.bootloader
"""


# ---- the runs ---------------------------------------------------------------------------------------------

def _inventory(path: Path, hosts: dict, roots: dict, second: bool = False) -> Path:
    def host_vars(spec: dict) -> dict:
        out = dict(spec.get("vars2", spec.get("vars") or {}) if second else spec.get("vars") or {})
        return dict(out, vfio_initramfs=False) if spec.get("lean") else out

    inv = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": str(VENV_BIN / "python"),
                            "vfio_take_over_vfio_config": True, "vfio_plugin_default_dirs": False},
                   "hosts": {h: dict(host_vars(spec), vfio_root=str(roots[h]), vfio_devices=spec["devices"]) for h, spec in hosts.items()}}}
    path.write_text(yaml.safe_dump(inv, sort_keys=True))
    return path


def _bad_inventory(path: Path, roots: dict) -> Path:
    common = {"ansible_connection": "local", "ansible_python_interpreter": str(VENV_BIN / "python"), "vfio_plugin_default_dirs": False}
    inv = {"all": {"vars": common, "children": {
        "bad": {"hosts": {h: dict(spec["vars"], vfio_root=str(roots[h]), vfio_bind_plan=spec.get("plan", DEBIAN_PLAN))
                          for h, spec in BAD_HOSTS.items()}},
        "module": {"hosts": {h: {"vfio_root": str(roots[h])} for h in MODULE_HOSTS}}}}}
    path.write_text(yaml.safe_dump(inv, sort_keys=True))
    return path


WATCHED = ("etc/default", "etc/kernel", "etc/kernelstub", "boot/loader", "boot/efi/loader", "boot/grub", "boot/grub2")


def texts(root: Path) -> dict:
    """The text of every file the bootloader stage may touch (relative path -> str; the bytes as they are: no newline
    translation, undecodable bytes kept as surrogates)."""
    out = {}
    for rel in WATCHED:
        base = root / rel
        for path in sorted(base.rglob("*")) if base.is_dir() else []:
            if path.is_file() and not path.is_symlink():
                out[os.path.relpath(path, root)] = path.read_bytes().decode("utf-8", "surrogateescape")
    if (root / STATE_FILE).is_file():
        out[STATE_FILE] = (root / STATE_FILE).read_bytes().decode()
    return out


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    yield from private_work_dir(tmp_path_factory, "bootloader")
    _writable_again()


@pytest.fixture(scope="module")
def boot_lab(work_dir):
    started = time.monotonic()
    work = work_dir
    every = {**HOSTS, **CHECK_HOSTS, **BAD_HOSTS, **MODULE_HOSTS}
    bases = {pid: build(PROFILES[pid], work / "base") for pid in sorted({s.get("profile", DEBIAN) for s in every.values()})}
    roots = {}
    for host, spec in every.items():
        roots[host] = _copy(bases[spec.get("profile", DEBIAN)], work / "roots" / host)
    try:
        for host, spec in every.items():
            if spec.get("prepare"):
                spec["prepare"](roots[host])
        inventory = _inventory(work / "inventory.yml", HOSTS, roots)
        inventory2 = _inventory(work / "inventory2.yml", HOSTS, roots, second=True)
        check_inventory = _inventory(work / "check-inventory.yml", CHECK_HOSTS, roots)
        bad_inventory = _bad_inventory(work / "bad-inventory.yml", roots)
        (work / "bootloader-only.yml").write_text(BAD_PLAYBOOK)
        snaps = {"before": {h: tree(r) for h, r in roots.items()}}
        files = {"before": {h: texts(r) for h, r in roots.items()}}
        prepared = time.monotonic()

        check = Run(work, "check", "playbooks/vfio.yml", "-v", "--check", "--diff", inventory=check_inventory)
        bad = Run(work, "bad", str(work / "bootloader-only.yml"), "-v", inventory=bad_inventory)
        runs = {"apply": Run(work, "apply", "playbooks/vfio.yml", "-v", "--diff", inventory=inventory).wait()}
        snaps["applied"] = {h: tree(roots[h]) for h in HOSTS}
        files["applied"] = {h: texts(roots[h]) for h in HOSTS}
        journal = {"applied": {h: read_journal(roots[h]) for h in HOSTS}}
        runs["check"], runs["bad"] = check.wait(), bad.wait()
        snaps["checked"] = {h: tree(roots[h]) for h in CHECK_HOSTS}
        snaps["refused"] = {h: tree(roots[h]) for h in {**BAD_HOSTS, **MODULE_HOSTS}}
        journal["refused"] = {h: read_journal(roots[h]) for h in BAD_HOSTS}
        runs["again"] = Run(work, "again", "playbooks/vfio.yml", "-v", inventory=inventory2).wait()
        snaps["again"] = {h: tree(roots[h]) for h in HOSTS}
        files["again"] = {h: texts(roots[h]) for h in HOSTS}
        runs["restore"] = Run(work, "restore", "playbooks/restore.yml", "-v", "--diff", inventory=inventory).wait()
        snaps["restored"] = {h: tree(roots[h]) for h in HOSTS}
        runs["restore2"] = Run(work, "restore2", "playbooks/restore.yml", "-v", inventory=inventory).wait()
        snaps["restored2"] = {h: tree(roots[h]) for h in HOSTS}
    finally:
        _writable_again()
    return {"roots": roots, "runs": runs, "snaps": snaps, "files": files, "journal": journal, "seconds": time.monotonic() - started,
            "prepare": prepared - started}


# ---- helpers for the assertions ---------------------------------------------------------------------------

def counts(lab, run: str, host: str) -> dict:
    got = lab["runs"][run].recap.get(host)
    assert got is not None, f"{host} is not in the recap of {run}: {lab['runs'][run].tail()}"
    return got


def result(lab, run: str, host: str, task: str = TASK) -> tuple:
    got = lab["runs"][run].result(task, host)
    assert got is not None, f"{task!r} did not run on {host} in {run}: {lab['runs'][run].tail()}"
    return got


def edited(lab, host: str, rel: str, run: str = "applied", since: str = "before") -> list:
    """``[(line number, old line, new line)]`` of the lines of ``rel`` that differ; the file must keep its line count."""
    old, new = lab["files"][since][host][rel], lab["files"][run][host][rel]
    a, b = old.split("\n"), new.split("\n")
    assert len(a) == len(b), (rel, old, new)
    return [(i + 1, a[i], b[i]) for i in range(len(a)) if a[i] != b[i]]


def line_of(text: str, start: str) -> tuple:
    """(line number, line) of the one line of ``text`` that starts with ``start``."""
    found = [(i + 1, line) for i, line in enumerate(text.split("\n")) if line.startswith(start)]
    assert len(found) == 1, (start, text)
    return found[0]


def changed_files(res: dict) -> set:
    return {f["path"].lstrip("/") for f in res.get("files") or [] if f["changed"]}


def without_state(snapshot: dict) -> dict:
    return {k: v for k, v in snapshot.items() if not (k == STATE or k.startswith(STATE + "/"))}


def read_journal(root: Path) -> list:
    path = root / JOURNAL
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def stage_journal(lab, host: str, when: str = "applied", stage: str = "bootloader") -> list:
    """The host's journal records of ``stage`` as they were after the run ``when`` (applied, refused)."""
    return [r for r in lab["journal"][when][host] if r.get("stage") == stage]


def debug_msg(lab, run: str, task: str, host: str):
    """The message a debug task printed for ``host`` (-v prints it over several lines), None when it was skipped there."""
    out = lab["runs"][run].stdout
    section = out[out.index(f"TASK [{task}] "):]
    section = section[:section.find("\nTASK [", 1) if "\nTASK [" in section else len(section)]
    start = section.find(f"ok: [{host}] => {{\n")
    if start < 0:
        assert f"skipping: [{host}]" in section, (host, section)
        return None
    body = section[start + len(f"ok: [{host}] => "):]
    return json.loads(body[:body.index("\n}") + 2])["msg"]


def summary_sections(stdout: str) -> dict:
    """host -> its block of the VFIO SUMMARY."""
    text = stdout[stdout.index("VFIO SUMMARY"):].split("\n", 1)[1]
    out = {}
    for block in text.strip("\n").split("\n\n"):
        lines = block.strip("\n").splitlines()
        if lines:
            out[lines[0].strip()] = lines
    return out


def cmdline_of(lab, host: str, rel: str, key: str = "options ") -> str:
    return line_of(lab["files"]["before"][host][rel], key)[1][len(key):].strip()


# ---- the first run: per bootloader, the right file and exactly the expected words ---------------------------

def test_the_first_run_configures_every_host(boot_lab):
    run = boot_lab["runs"]["apply"]
    assert run.returncode == 0, run.tail()
    assert sorted(run.recap) == sorted(HOSTS)
    for host in HOSTS:
        c = counts(boot_lab, "apply", host)
        assert c["failed"] == 0 and c["unreachable"] == 0, (host, c)
    runs = ", ".join(f"{name} {r.seconds:.1f}s" for name, r in boot_lab["runs"].items())
    print(f"\nbootloader-stage lab: {len(HOSTS) + len(CHECK_HOSTS) + len(BAD_HOSTS) + len(MODULE_HOSTS)} hosts in "
          f"{boot_lab['seconds']:.1f}s: build, copies and snapshots {boot_lab['prepare']:.1f}s, runs: {runs}")


@pytest.mark.parametrize("host, bootloader, files", [
    ("grub", "grub", {DEFAULT_GRUB}),
    ("bls", "grubby", {DEFAULT_GRUB, KERNEL_CMDLINE, *BLS_ENTRIES}),
    ("sdboot", "systemd-boot", {KERNEL_CMDLINE, *SDBOOT_ENTRIES}),
    ("kernelstub", "kernelstub", {KERNELSTUB, *POP_ENTRIES}),
    ("proxmox", "proxmox", {DEFAULT_GRUB, KERNEL_CMDLINE}),
])
def test_the_stage_writes_only_the_bootloaders_files_and_its_state(boot_lab, host, bootloader, files):
    status, res = result(boot_lab, "apply", host)
    assert status == "changed" and res["bootloader"] == bootloader, res
    assert changed_files(res) == files | {STATE_FILE}
    journaled = {r["path"].lstrip("/") for r in stage_journal(boot_lab, host)}
    assert journaled == files | {STATE_FILE}  # every write of the stage is journaled
    before, after = boot_lab["files"]["before"][host], boot_lab["files"]["applied"][host]
    assert {p for p in set(before) | set(after) if before.get(p) != after.get(p)} == files | {STATE_FILE}
    # outside the watched directories only the other stages and the journal changed something
    diff = differences(boot_lab["snaps"]["before"][host], boot_lab["snaps"]["applied"][host])
    assert not [p for p in diff if p.startswith("boot") and p not in files], diff


def test_grub_on_debian_appends_to_grub_cmdline_linux_default(boot_lab):
    host = "grub"
    assert edited(boot_lab, host, DEFAULT_GRUB) == [
        (9, 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"', f'GRUB_CMDLINE_LINUX_DEFAULT="quiet {DEBIAN_WORDS}"')]
    _status, res = result(boot_lab, "apply", host)
    root = str(boot_lab["roots"][host])
    assert res["config_path"] == "/etc/default/grub" and res["commands"] == ["update-grub"]
    assert res["not_regenerated"] == CANNOT_RUN.format(tool="update-grub", root=root)
    assert res["regenerated"] is False and res["next_boot_predicted"] is True
    assert res["next_boot_cmdline"] == f"root=UUID=5e0c8f6d-3b2a-4c1e-9d7f-0a1b2c3d4e5f ro quiet {DEBIAN_WORDS}"
    assert res["next_boot_source"] == "/boot/grub/grub.cfg" and res["reboot_required"] is True
    # grub.cfg is what update-grub writes: it could not run, so it is as it was
    assert boot_lab["files"]["applied"][host]["boot/grub/grub.cfg"] == boot_lab["files"]["before"][host]["boot/grub/grub.cfg"]


def test_grubby_edits_every_entry_grub_cmdline_linux_and_etc_kernel_cmdline(boot_lab):
    host = "bls"
    for rel in BLS_ENTRIES:
        old = cmdline_of(boot_lab, host, rel)
        assert edited(boot_lab, host, rel) == [(5, f"options {old}", f"options {old} iommu=pt {FEDORA_IDS}")], rel
    old = 'GRUB_CMDLINE_LINUX="rhgb quiet intel_iommu=on rd.driver.pre=vfio-pci kvm.ignore_msrs=1"'
    assert edited(boot_lab, host, DEFAULT_GRUB) == [(6, old, old[:-1] + f' iommu=pt {FEDORA_IDS}"')]
    cmdline = boot_lab["files"]["before"][host][KERNEL_CMDLINE]
    assert boot_lab["files"]["applied"][host][KERNEL_CMDLINE] == cmdline[:-1] + f" iommu=pt {FEDORA_IDS}\n"
    _status, res = result(boot_lab, "apply", host)
    default = BLS_ENTRIES[1]  # saved_entry in the grubenv: the newer kernel
    assert res["next_boot_source"] == "/" + default and res["config_path"] == "/" + default
    assert res["next_boot_cmdline"] == cmdline_of(boot_lab, host, default) + f" iommu=pt {FEDORA_IDS}"
    assert res["commands"] == [] and "not_regenerated" not in res and "next_boot_predicted" not in res
    assert res["reboot_required"] is True
    # the parameters the host needs: intel_iommu=on (its kernel configuration says default off) and dracut's
    # rd.driver.pre=vfio_pci were on the command line already (vfio-pci and vfio_pci are the same module)
    assert [(p["name"], p["value"], p["state"]) for p in res["params"]] == [
        ("intel_iommu", "on", "present"), ("iommu", "pt", "present"),
        ("vfio-pci.ids", "10de:10f9,10de:1ada,10de:1adb,10de:1f02", "present"), ("rd.driver.pre", "vfio_pci", "present")]


def test_systemd_boot_edits_both_entries_and_creates_etc_kernel_cmdline(boot_lab):
    host = "sdboot"
    for rel in SDBOOT_ENTRIES:
        old = cmdline_of(boot_lab, host, rel)
        assert old == "root=PARTUUID=9d1c5e4a-2b7f-4e3a-8c6d-1f0e2a3b4c5d rw intel_iommu=on"
        n, line = line_of(boot_lab["files"]["before"][host][rel], "options ")
        assert edited(boot_lab, host, rel) == [(n, line, f"{line} {ARCH_WORDS}")], rel
    assert KERNEL_CMDLINE not in boot_lab["files"]["before"][host]
    assert boot_lab["files"]["applied"][host][KERNEL_CMDLINE] == \
        f"root=PARTUUID=9d1c5e4a-2b7f-4e3a-8c6d-1f0e2a3b4c5d rw intel_iommu=on {ARCH_WORDS}\n"
    assert boot_lab["snaps"]["applied"][host][KERNEL_CMDLINE][:2] == ("file", 0o644)
    _status, res = result(boot_lab, "apply", host)
    assert res["next_boot_source"] == "/boot/loader/entries/arch.conf"
    assert res["next_boot_cmdline"] == f"root=PARTUUID=9d1c5e4a-2b7f-4e3a-8c6d-1f0e2a3b4c5d rw intel_iommu=on {ARCH_WORDS}"
    assert res["reboot_required"] is True and res["commands"] == []


def test_kernelstub_edits_user_kernel_options_and_its_two_entries(boot_lab):
    host = "kernelstub"
    before = boot_lab["files"]["before"][host][KERNELSTUB]
    after = boot_lab["files"]["applied"][host][KERNELSTUB]
    # the user's quoted ids (the same two, in another order) already do it: kept as they are, iommu=pt appended
    old = '      "vfio-pci.ids=\\"1002:aaf8,1002:687f\\""\n'
    assert before.count(old) == 1
    assert after == before.replace(old, '      "vfio-pci.ids=\\"1002:aaf8,1002:687f\\"",\n      "iommu=pt"\n')
    assert json.loads(after)["default"] == json.loads(before)["default"]
    for rel in POP_ENTRIES:
        n, line = line_of(boot_lab["files"]["before"][host][rel], "options ")
        assert line.endswith(' amd_iommu=on vfio-pci.ids="1002:aaf8,1002:687f"')
        new = line + " iommu=pt"
        assert edited(boot_lab, host, rel) == [(n, line, new)], rel
    _status, res = result(boot_lab, "apply", host)
    root = str(boot_lab["roots"][host])
    assert res["commands"] == ["kernelstub --preserve-live-mode"]
    assert res["not_regenerated"] == CANNOT_RUN.format(tool="kernelstub", root=root)
    assert res["next_boot_source"] == "/boot/efi/loader/entries/Pop_OS-current.conf"
    assert res["next_boot_cmdline"] == ("root=UUID=486bc510-1589-40ec-b4d3-f85cab587c46 ro quiet loglevel=0 "
                                        'systemd.show_status=false splash amd_iommu=on vfio-pci.ids="1002:aaf8,1002:687f" iommu=pt')
    assert res["reboot_required"] is True
    # the ESP's copy of /proc/cmdline is nothing the boot reads: left alone
    assert not [p for p in differences(boot_lab["snaps"]["before"][host], boot_lab["snaps"]["applied"][host])
                if p.startswith("boot/efi/EFI")]


def test_proxmox_edits_etc_kernel_cmdline_and_grub_when_the_loader_is_not_known(boot_lab):
    host = "proxmox"
    assert edited(boot_lab, host, KERNEL_CMDLINE) == [(1, "root=ZFS=rpool/ROOT/pve-1 boot=zfs",
                                                       f"root=ZFS=rpool/ROOT/pve-1 boot=zfs iommu=pt {PVE_IDS}")]
    assert edited(boot_lab, host, DEFAULT_GRUB) == [
        (9, 'GRUB_CMDLINE_LINUX_DEFAULT="quiet iommu=pt"', f'GRUB_CMDLINE_LINUX_DEFAULT="quiet iommu=pt {PVE_IDS}"')]
    assert boot_lab["files"]["applied"][host]["etc/default/grub.d/proxmox-ve.cfg"] == \
        boot_lab["files"]["before"][host]["etc/default/grub.d/proxmox-ve.cfg"]
    _status, res = result(boot_lab, "apply", host)
    root = str(boot_lab["roots"][host])
    assert res["commands"] == ["proxmox-boot-tool refresh"] and res["config_path"] == "/etc/kernel/cmdline"
    assert res["not_regenerated"] == CANNOT_RUN.format(tool="proxmox-boot-tool", root=root)
    assert res["next_boot_cmdline"] == f"root=ZFS=rpool/ROOT/pve-1 boot=zfs iommu=pt {PVE_IDS}"
    assert res["next_boot_source"] == "/etc/kernel/cmdline" and res["reboot_required"] is True
    out = boot_lab["runs"]["apply"].stdout + boot_lab["runs"]["apply"].stderr  # warnings go to stderr
    assert "both /etc/kernel/cmdline and /etc/default/grub were updated and 'proxmox-boot-tool refresh' applies the one in use" in out


@pytest.mark.parametrize("host", MAIN)
def test_facts_and_the_result_agree(boot_lab, host):
    _status, res = result(boot_lab, "apply", host)
    facts = cached_facts(boot_lab["runs"]["apply"].tmp, host)
    assert res["next_boot_cmdline"] is not None and facts["vfio_next_boot_cmdline"] == res["next_boot_cmdline"]
    assert facts["vfio_reboot_required"] is res["reboot_required"] is True
    plan = facts["vfio_bootloader_plan"]
    assert plan["bootloader"] == res["bootloader"] and plan["params"] == res["params"] and plan["commands"] == res["commands"]
    assert plan["not_regenerated"] == res.get("not_regenerated")
    assert res["current_cmdline"] == (boot_lab["roots"][host] / "proc/cmdline").read_text().strip()


@pytest.mark.parametrize("host", MAIN)
def test_the_state_file_names_the_parameters_the_stage_added(boot_lab, host):
    state = json.loads(boot_lab["files"]["applied"][host][STATE_FILE])
    _status, res = result(boot_lab, "apply", host)
    assert state["version"] == 1 and state["bootloader"] == res["bootloader"]
    words = [p["name"] if p["value"] is None else f"{p['name']}={p['value']}" for p in state["params"]]
    # only what the stage put there: intel_iommu=on (Fedora, Arch) and rd.driver.pre (Fedora) were the user's
    expected = {"grub": DEBIAN_WORDS, "bls": f"iommu=pt {FEDORA_IDS}", "sdboot": ARCH_WORDS,
                "kernelstub": "iommu=pt", "proxmox": f"iommu=pt {PVE_IDS}"}[host]  # Pop's ids were the user's
    assert sorted(words) == sorted(expected.split())


@pytest.mark.parametrize("host", MAIN)
def test_the_summary_has_the_bootloader_section(boot_lab, host):
    lines = summary_sections(boot_lab["runs"]["apply"].stdout)[host]
    _status, res = result(boot_lab, "apply", host)
    present = " ".join(p["name"] if p["value"] is None else f"{p['name']}={p['value']}" for p in res["params"])
    start = lines.index(f"  bootloader {res['bootloader']}: {present}")
    expected = [f"               next boot: {res['next_boot_cmdline']}"]
    if res.get("not_regenerated"):
        expected.append(f"    ~ not regenerated: {res['not_regenerated']} (the next boot above is predicted)")
    expected.append("               REBOOT REQUIRED to use it (vfio_reboot_ok: true lets the playbook reboot and check)")
    assert lines[start + 1:start + 1 + len(expected)] == expected


def test_no_reboot_on_a_sysroot_even_with_vfio_reboot_ok(boot_lab):
    run = boot_lab["runs"]["apply"]
    status, res = result(boot_lab, "apply", "sdboot", REBOOT_TASK)
    assert status == "skipping" and res["false_condition"] == "vfio_root == '/'"
    assert debug_msg(boot_lab, "apply", TELL_TASK, "sdboot") == (
        f"reboot to apply the new kernel command line (root=PARTUUID=9d1c5e4a-2b7f-4e3a-8c6d-1f0e2a3b4c5d rw intel_iommu=on "
        f"{ARCH_WORDS}); run again with -e vfio_reboot_ok=true to let the playbook reboot and check the result")
    for host in MAIN:
        if host != "sdboot":
            status, res = result(boot_lab, "apply", host, REBOOT_TASK)
            assert status == "skipping" and res["false_condition"] == "vfio_reboot_ok | bool"
    assert "RUNNING HANDLER [exliar.vfio.bootloader" not in run.stdout + boot_lab["runs"]["again"].stdout


# ---- user entries ---------------------------------------------------------------------------------------------

def test_user_entries_remove_a_flag_add_a_parameter_and_drop_iommu_pt(boot_lab):
    host = "user-grub"
    assert edited(boot_lab, host, DEFAULT_GRUB) == [
        (9, 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"', 'GRUB_CMDLINE_LINUX_DEFAULT="vfio-pci.ids=1002:67df kvm.ignore_msrs=1"')]
    _status, res = result(boot_lab, "apply", host)
    assert [(p["name"], p["value"], p["state"]) for p in res["params"]] == [
        ("vfio-pci.ids", "1002:67df", "present"), ("quiet", None, "absent"), ("kvm.ignore_msrs", "1", "present")]
    assert res["next_boot_cmdline"] == "root=UUID=5e0c8f6d-3b2a-4c1e-9d7f-0a1b2c3d4e5f ro vfio-pci.ids=1002:67df kvm.ignore_msrs=1"
    lines = summary_sections(boot_lab["runs"]["apply"].stdout)[host]
    assert "  bootloader grub: vfio-pci.ids=1002:67df kvm.ignore_msrs=1, removes quiet" in lines


def test_a_parameter_an_entry_no_longer_asks_for_is_removed_and_a_removed_flag_stays_removed(boot_lab):
    host = "user-grub"
    assert counts(boot_lab, "again", host)["changed"] == 1
    assert edited(boot_lab, host, DEFAULT_GRUB, run="again", since="applied") == [
        (9, 'GRUB_CMDLINE_LINUX_DEFAULT="vfio-pci.ids=1002:67df kvm.ignore_msrs=1"', 'GRUB_CMDLINE_LINUX_DEFAULT="vfio-pci.ids=1002:67df"')]
    assert json.loads(boot_lab["files"]["again"][host][STATE_FILE])["params"] == [{"name": "vfio-pci.ids", "value": "1002:67df"}]


def test_user_entries_override_the_defaults(boot_lab):
    host = "user-bls"
    for rel in BLS_ENTRIES:
        old = cmdline_of(boot_lab, host, rel)
        assert " rhgb quiet intel_iommu=on rd.driver.pre" in old
        new = old.replace(" rhgb quiet intel_iommu=on ", " quiet intel_iommu=on,sm_on ") + f" {FEDORA_IDS}"
        assert edited(boot_lab, host, rel) == [(5, f"options {old}", f"options {new}")], rel
    _status, res = result(boot_lab, "apply", host)
    assert "iommu=pt" not in res["next_boot_cmdline"].split()
    assert [(p["name"], p["value"], p["state"]) for p in res["params"]] == [
        ("vfio-pci.ids", "10de:10f9,10de:1ada,10de:1adb,10de:1f02", "present"), ("rd.driver.pre", "vfio_pci", "present"),
        ("iommu", None, "absent"), ("intel_iommu", "on,sm_on", "present"), ("rhgb", None, "absent")]


def test_vfio_efifb_off_and_then_not(boot_lab):
    host = "efifb"
    assert edited(boot_lab, host, DEFAULT_GRUB) == [
        (9, 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"', f'GRUB_CMDLINE_LINUX_DEFAULT="quiet {DEBIAN_WORDS} video=efifb:off"')]
    # the second run without vfio_efifb_off: the stage's own video=efifb:off goes, the user's quiet and the rest stay
    assert counts(boot_lab, "again", host)["changed"] == 1
    assert edited(boot_lab, host, DEFAULT_GRUB, run="again") == [
        (9, 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"', f'GRUB_CMDLINE_LINUX_DEFAULT="quiet {DEBIAN_WORDS}"')]
    status, res = result(boot_lab, "again", host)
    assert status == "changed" and changed_files(res) == {DEFAULT_GRUB, STATE_FILE}
    assert res["next_boot_cmdline"] == f"root=UUID=5e0c8f6d-3b2a-4c1e-9d7f-0a1b2c3d4e5f ro quiet {DEBIAN_WORDS}"
    assert [p["name"] for p in json.loads(boot_lab["files"]["again"][host][STATE_FILE])["params"]] == ["iommu", "vfio-pci.ids"]


def test_the_users_own_parameters_are_not_the_stages(boot_lab):
    """B550: iommu=pt and the ids are on the command line before the stage runs: nothing to write, nothing recorded, and a
    later run that no longer wants iommu=pt (vfio_iommu_pt: false) leaves the user's iommu=pt alone."""
    host = "own-params"
    for run in ("apply", "again"):
        status, res = result(boot_lab, run, host)
        assert status == "ok" and changed_files(res) == set(), (run, res["files"])
        assert res["reboot_required"] is False
        assert "iommu=pt" in res["next_boot_cmdline"].split()
    assert STATE_FILE not in boot_lab["files"]["applied"][host]
    for run in ("applied", "again"):
        assert boot_lab["files"][run][host][DEFAULT_GRUB] == boot_lab["files"]["before"][host][DEFAULT_GRUB], run
    assert stage_journal(boot_lab, host) == []


def test_vfio_bootloader_stage_false_leaves_the_bootloader_alone(boot_lab):
    host = "stage-off"
    status, res = result(boot_lab, "apply", host)
    assert status == "skipping" and res["false_condition"] == "vfio_bootloader_stage | bool"
    assert debug_msg(boot_lab, "apply", TELL_TASK, host) is None
    assert boot_lab["files"]["applied"][host] == boot_lab["files"]["before"][host]
    assert stage_journal(boot_lab, host) == []
    assert stage_journal(boot_lab, host, stage="bind")  # the other stages did run
    facts = cached_facts(boot_lab["runs"]["apply"].tmp, host)
    assert "vfio_next_boot_cmdline" not in facts and "vfio_bootloader_plan" not in facts
    assert not [line for line in summary_sections(boot_lab["runs"]["apply"].stdout)[host] if line.startswith("  bootloader")]


@pytest.mark.parametrize("host", ["rebooted-grub", "rebooted-pve"])
def test_a_host_booted_with_the_parameters_needs_no_reboot(boot_lab, host):
    """What the running kernel shows differs from the configuration read back (BOOT_IMAGE=, vt.handoff=7 for $vt_handoff,
    root= and ro from grub-mkconfig): the parameters are there, so no reboot, also not with vfio_reboot_ok."""
    for run in ("apply", "again"):
        status, res = result(boot_lab, run, host)
        assert status == "ok" and changed_files(res) == set(), (run, res["files"])
        assert res["reboot_required"] is False, (run, res["next_boot_cmdline"], res["current_cmdline"])
        assert cached_facts(boot_lab["runs"][run].tmp, host)["vfio_reboot_required"] is False
        assert debug_msg(boot_lab, run, TELL_TASK, host) is None
    assert res["next_boot_cmdline"] == {
        "rebooted-grub": f"root=UUID=5e0c8f6d-3b2a-4c1e-9d7f-0a1b2c3d4e5f ro quiet splash $vt_handoff {DEBIAN_WORDS}",
        "rebooted-pve": f"root=ZFS=rpool/ROOT/pve-1 boot=zfs iommu=pt {PVE_IDS}"}[host]
    assert boot_lab["files"]["applied"][host] == boot_lab["files"]["before"][host]
    lines = summary_sections(boot_lab["runs"]["apply"].stdout)[host]
    assert [line.strip() for line in lines if line.strip().startswith(("next boot:", "REBOOT"))] == [
        f"next boot: {res['next_boot_cmdline']}"]


# ---- idempotence ----------------------------------------------------------------------------------------------------

def test_a_second_run_changes_nothing(boot_lab):
    run = boot_lab["runs"]["again"]
    assert run.returncode == 0, run.tail()
    for host in CONVERGED:
        c = counts(boot_lab, "again", host)
        assert c["changed"] == 0 and c["failed"] == 0, (host, c, run.tail())
        assert differences(boot_lab["snaps"]["applied"][host], boot_lab["snaps"]["again"][host]) == [], host
    for host in MAIN:
        status, res = result(boot_lab, "again", host)
        first = result(boot_lab, "apply", host)[1]
        assert status == "ok" and changed_files(res) == set(), (host, res["files"])
        assert (res["next_boot_cmdline"], res["reboot_required"]) == (first["next_boot_cmdline"], True), host


# ---- check mode ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host, twin, files", [
    ("check-grub", "grub", {DEFAULT_GRUB}),
    ("check-bls", "bls", {DEFAULT_GRUB, KERNEL_CMDLINE, *BLS_ENTRIES}),
    ("check-kernelstub", "kernelstub", {KERNELSTUB, *POP_ENTRIES}),
])
def test_check_mode_predicts_the_result_shows_the_diff_and_changes_nothing(boot_lab, host, twin, files):
    run = boot_lab["runs"]["check"]
    assert run.returncode == 0, run.tail()
    assert differences(boot_lab["snaps"]["before"][host], boot_lab["snaps"]["checked"][host]) == []
    status, res = result(boot_lab, "check", host)
    assert status == "changed" and changed_files(res) == files | {STATE_FILE}
    real = result(boot_lab, "apply", twin)[1]  # the same machine, really configured
    assert res["next_boot_cmdline"] == real["next_boot_cmdline"] and res["reboot_required"] is True
    assert res["next_boot_predicted"] is True
    for f in res["files"]:
        rel = f["path"].lstrip("/")
        if rel != STATE_FILE:
            assert f["diff"]["before"] == boot_lab["files"]["before"][twin][rel]
            assert f["diff"]["after"] == boot_lab["files"]["applied"][twin][rel], rel
        assert f"+++ after: /{rel}" in run.stdout
    facts = cached_facts(run.tmp, host)
    assert facts["vfio_next_boot_cmdline"] == real["next_boot_cmdline"]


def test_check_mode_diff_shows_the_edited_lines(boot_lab):
    out = boot_lab["runs"]["check"].stdout
    assert f'-GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n+GRUB_CMDLINE_LINUX_DEFAULT="quiet {DEBIAN_WORDS}"\n' in out
    assert '-      "vfio-pci.ids=\\"1002:aaf8,1002:687f\\""\n+      "vfio-pci.ids=\\"1002:aaf8,1002:687f\\"",\n+      "iommu=pt"\n' in out
    assert f" kvm.ignore_msrs=1 iommu=pt {FEDORA_IDS}\n" in out


# ---- restore ----------------------------------------------------------------------------------------------------------

def test_restore_puts_every_file_back(boot_lab):
    run = boot_lab["runs"]["restore"]
    assert run.returncode == 0, run.tail()
    snaps = boot_lab["snaps"]
    for host in HOSTS:
        c = counts(boot_lab, "restore", host)
        assert c["failed"] == 0 and c["changed"] == 1, (host, c)
        assert differences(without_state(snaps["before"][host]), without_state(snaps["restored"][host])) == [], host
        assert STATE_FILE not in snaps["restored"][host], host
        assert not (boot_lab["roots"][host] / STATE_FILE).exists()
    for host in MAIN:
        _status, res = result(boot_lab, "restore", host, RESTORE_TASK)
        undone = changed_files(res["stages"]["bootloader"])
        assert undone == changed_files(result(boot_lab, "apply", host)[1]), host
    assert f'-GRUB_CMDLINE_LINUX_DEFAULT="quiet {DEBIAN_WORDS}"\n+GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n' in run.stdout


def test_restore_cannot_run_the_tool_in_a_sysroot_and_says_so(boot_lab):
    root = str(boot_lab["roots"]["grub"])
    _status, res = result(boot_lab, "restore", "grub", RESTORE_TASK)
    assert res["stages"]["bootloader"]["not_regenerated"] == CANNOT_RUN.format(tool="update-grub", root=root)
    tell = "exliar.vfio.restore : Tell that a reboot is needed"
    msg = debug_msg(boot_lab, "restore", tell, "grub")
    assert msg == "the kernel command line was restored; reboot to use it (or run again with -e vfio_reboot_ok=true)"
    for host in ("stage-off", "own-params"):  # their command line was never changed
        assert debug_msg(boot_lab, "restore", tell, host) is None
        _status, res = result(boot_lab, "restore", host, RESTORE_TASK)
        assert changed_files(res["stages"]["bootloader"]) == set(), res["stages"]["bootloader"]


def test_a_second_restore_changes_nothing(boot_lab):
    run = boot_lab["runs"]["restore2"]
    assert run.returncode == 0, run.tail()
    for host in HOSTS:
        assert counts(boot_lab, "restore2", host)["changed"] == 0, host
        assert differences(boot_lab["snaps"]["restored"][host], boot_lab["snaps"]["restored2"][host]) == [], host


# ---- bad input: a clear error, and nothing changed ------------------------------------------------------------------------

def test_every_bad_input_host_failed_and_nothing_changed(boot_lab):
    run = boot_lab["runs"]["bad"]
    assert run.returncode == 2, run.tail()
    for host in BAD_HOSTS:
        c = counts(boot_lab, "bad", host)
        assert c["failed"] == 1 and c["changed"] == 0, (host, c)
    for host in {**BAD_HOSTS, **MODULE_HOSTS}:
        changed = differences(boot_lab["snaps"]["before"][host], boot_lab["snaps"]["refused"][host])
        if host == "ro-file":  # what was written before the failing file went back; the journal says so
            assert changed and all(p == STATE or p.startswith(STATE + "/") for p in changed), changed
            assert not (boot_lab["roots"][host] / STATE_FILE).exists()
        else:
            assert changed == [], (host, changed)


@pytest.mark.parametrize("host", sorted(set(BAD_HOSTS) - {"bad-loader"}))
def test_bad_input_is_a_clear_error(boot_lab, host):
    status, res = result(boot_lab, "bad", host)
    assert status == "fatal" and res["changed"] is False, res
    assert res["msg"].startswith(BAD_HOSTS[host]["msg"].format(root=boot_lab["roots"][host])), res["msg"]
    assert "vfio_next_boot_cmdline" not in json.dumps(res)


def test_amd_iommu_on_names_the_reason(boot_lab):
    _status, res = result(boot_lab, "bad", "bad-amd")
    assert res["msg"].endswith("(the AMD IOMMU is on by default when the firmware enables it; it needs no parameter); "
                               "nothing was changed"), res["msg"]


def test_a_file_that_cannot_be_written_puts_back_what_was_written_before_it(boot_lab):
    host = "ro-file"
    _status, res = result(boot_lab, "bad", host)
    assert res["msg"].endswith("The files written before it were put back"), res["msg"]
    assert res["files"] == []
    paths = [r["path"] for r in stage_journal(boot_lab, host, "refused")]
    written = ["/" + p for p in sorted(BLS_ENTRIES)] + ["/etc/default/grub"]
    assert paths == written + written  # each write, then its undo


def test_an_unknown_bootloader_is_an_argument_spec_error(boot_lab):
    status, res = result(boot_lab, "bad", "bad-loader", SPEC_TASK)
    assert status == "fatal"
    assert "value of vfio_bootloader must be one of: , grub, grubby, systemd-boot, kernelstub, refind, limine, proxmox, got: foo" \
        in res["msg"], res["msg"]
    assert boot_lab["runs"]["bad"].result(TASK, "bad-loader") is None


def test_the_module_called_directly(boot_lab):
    run = boot_lab["runs"]["bad"]
    host = "module"
    c = counts(boot_lab, "bad", host)
    assert c["failed"] == 0 and c["ignored"] == 3 and c["changed"] == 1, c
    status, res = result(boot_lab, "bad", host, "module: unknown bootloader")
    assert status == "fatal" and res["msg"] == ("value of bootloader must be one of: grub, grubby, systemd-boot, kernelstub, "
                                                "refind, limine, proxmox, got: foo"), res["msg"]
    status, res = result(boot_lab, "bad", host, "module: a value with a blank")
    assert status == "fatal" and res["msg"].startswith("vfio_kernel_params entry 1 (iommu): value 'pt off' has blanks"), res
    status, res = result(boot_lab, "bad", host, "module: check mode with a diff")
    assert status == "changed" and res["next_boot_predicted"] is True and res["reboot_required"] is True
    assert res["next_boot_cmdline"] == f"root=UUID=5e0c8f6d-3b2a-4c1e-9d7f-0a1b2c3d4e5f ro quiet {DEBIAN_WORDS} video=efifb:off"
    assert f'+GRUB_CMDLINE_LINUX_DEFAULT="quiet {DEBIAN_WORDS} video=efifb:off"' in run.stdout
    status, res = result(boot_lab, "bad", host, "module: verified on a system that was not rebooted")
    assert status == "fatal" and res["msg"] == "after the reboot: /proc/cmdline lacks iommu=pt", res["msg"]
    assert res["drivers"] == {"0000:10:00.0": "vfio-pci"}
