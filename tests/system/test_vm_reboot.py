"""End to end with reboots: ``playbooks/vfio.yml`` with ``vfio_reboot_ok: true`` reboots the guest
into the new kernel command line, the devices are on vfio-pci from the start of the new boot, and
``playbooks/restore.yml -e vfio_reboot_ok=true`` reboots it back to what it was.

One guest (layout ``gpu-audio-and-identical-pair``: bochs-display + ich9-intel-hda as one
multifunction slot behind a root port, and two identical QXL cards in their own root ports) is
booted once with ``VM(reboot=True)``: each reboot of the guest ends its QEMU and the harness
starts QEMU again at once with the same disk overlay, UEFI variables, SSH port forward and serial
log (a power cycle). The steps run in order (class-scoped fixture), the guest's state is read over SSH before and
after each (boot id, ``/proc/cmdline``, drivers, ``/etc/default/grub``, ``/boot/grub/grub.cfg``,
the kernel log of the running boot), and the tests compare those snapshots. Each step's wall
time goes to ``record_timing`` (printed at the end of the session).

The selection is the bochs GPU and the *second* QXL, by address: the GPU and its audio function are
the only devices with their ids, so they are claimed at boot by ``vfio-pci.ids=``; the QXL shares its
id with the first one, so it is claimed by address (the ``install vfio-pci`` line and its script,
which the initramfs carries), and the first QXL must stay on its host driver across the reboot.
"""
from __future__ import annotations

import datetime
import difflib
import json
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import vm as vmlib
from _support import TIMINGS, FailureWatch, close_ssh_masters, record_timing
from labrun import REPO, VENV_BIN, ansible_env, cached_facts, recap

pytestmark = pytest.mark.system

LAYOUT = "gpu-audio-and-identical-pair"
HOST = f"vm-{LAYOUT}"
TIMING = f"{LAYOUT} reboot"
GPU_ID = "1234:1111"        # bochs-display
HDA_ID = "8086:293e"        # ich9-intel-hda
QXL_ID = "1b36:0100"        # qxl, twice
VFIO = "vfio-pci"
HOST_DRIVERS = {"gpu": "bochs-drm", "audio": "snd_hda_intel", "qxl1": "qxl", "qxl2": "qxl"}
SELECTED = ("gpu", "audio", "qxl2")     # the GPU brings its audio function; qxl1 stays on the host


def selection(addresses: dict) -> dict:
    """The bochs GPU and the second QXL by address, and the override of the boot-display refusal, as
    test_vm_bind.py: the bochs-display carries efifb; the guest's console is the serial port."""
    return {"vfio_devices": [addresses["gpu"], addresses["qxl2"]], "vfio_allow_boot_display": True}


EXPECTED_PARAMS = ("iommu=pt", f"vfio-pci.ids={GPU_ID},{HDA_ID}")
GRUB_DEFAULT = "/etc/default/grub"
GRUB_CFG = "/boot/grub/grub.cfg"
MODPROBE_CONF = "/etc/modprobe.d/exliar-vfio.conf"
OVERRIDE_SCRIPT = "/usr/local/sbin/exliar-vfio-pci-override"
WATCHED_FILES = (GRUB_DEFAULT, GRUB_CFG, "/var/lib/exliar-vfio/state/bootloader.json",
                 MODPROBE_CONF, OVERRIDE_SCRIPT, "/etc/initramfs-tools/modules")
REBOOT_HANDLER = "RUNNING HANDLER [exliar.vfio.bootloader : Reboot into the new kernel command line]"
VERIFY_HANDLER = "RUNNING HANDLER [exliar.vfio.bootloader : Check the kernel command line and the devices after the reboot]"
RESTORE_REBOOT = "TASK [exliar.vfio.restore : Reboot into the restored kernel command line (vfio_reboot_ok)]"
PLAYBOOK_TIMEOUT = 3600     # initramfs regeneration and a reboot under TCG, on a loaded machine
REBOOT_BY_HAND = "reboot by hand (the restore did not reboot)"
# What of vfio and of the collection the running kernel's initramfs image holds
INITRAMFS_VFIO = "lsinitramfs /boot/initrd.img-$(uname -r) | grep -e vfio -e exliar | sort"
# Run in the guest with python3: what a user looks at after a reboot, as JSON.
STATE_SCRIPT = r"""
import hashlib, json, os, subprocess
base = "/sys/bus/pci/devices"
out = {"drivers": {}, "groups": {}, "files": {}, "sha256": {}}
for a in sorted(os.listdir(base)):
    try:
        out["drivers"][a] = os.path.basename(os.readlink(f"{base}/{a}/driver"))
    except OSError:
        out["drivers"][a] = None
    try:
        out["groups"][a] = int(os.path.basename(os.readlink(f"{base}/{a}/iommu_group")))
    except OSError:
        out["groups"][a] = None
out["dev_vfio"] = sorted(os.listdir("/dev/vfio")) if os.path.isdir("/dev/vfio") else []
out["boot_id"] = open("/proc/sys/kernel/random/boot_id").read().strip()
out["cmdline"] = open("/proc/cmdline").read().strip()
out["uptime"] = float(open("/proc/uptime").read().split()[0])
for p in FILES:
    try:
        with open(p, "rb") as f:
            data = f.read()
    except OSError:
        out["files"][p] = out["sha256"][p] = None
        continue
    out["files"][p] = data.decode("utf-8", "surrogateescape")
    out["sha256"][p] = hashlib.sha256(data).hexdigest()
out["modules"] = sorted(l.split()[0] for l in open("/proc/modules"))
out["dmesg"] = subprocess.run(["dmesg"], capture_output=True, text=True).stdout.splitlines()
boots = subprocess.run(["journalctl", "--list-boots", "--no-pager"], capture_output=True, text=True)
out["journal_boots"] = boots.stdout.splitlines() if boots.returncode == 0 else None
print(json.dumps(out))
"""


def state_command() -> str:
    return "python3 -c " + shlex.quote(f"FILES = {list(WATCHED_FILES)!r}\n" + STATE_SCRIPT)


def write_inventory(tmp: Path, vm: vmlib.VM) -> Path:
    inv = {"all": {"hosts": {HOST: {
        "ansible_host": "127.0.0.1",
        "ansible_port": vm.port,
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(vm.image.key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
    }}}}
    path = tmp / "inventory.yml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return path


def task_results(output: str, header: str) -> list:
    """The results (``-v`` JSON after ``ok:``/``changed:``/``fatal:``) printed under a task or handler header."""
    out = []
    for block in output.split(header)[1:]:
        block = block.split("\nTASK [", 1)[0].split("\nRUNNING HANDLER [", 1)[0].split("\nPLAY RECAP", 1)[0]
        m = re.search(rf"^(ok|changed|fatal): \[{re.escape(HOST)}\](?:: FAILED!)? => ", block, re.M)
        if m:
            result, _end = json.JSONDecoder().raw_decode(block[m.end():])
            out.append(dict(result, _status=m.group(1)))
    return out


def linux_lines(grub_cfg: str) -> list:
    """The ``linux`` lines of grub.cfg, in order: the first is the default entry's (GRUB_DEFAULT=0)."""
    return [line.strip() for line in (grub_cfg or "").splitlines() if line.strip().startswith("linux")]


def words(cmdline: str) -> list:
    return cmdline.split()


def param_word(p: dict) -> str:
    return p["name"] if p.get("value") is None else f"{p['name']}={p['value']}"


def kernel_lines_about(lines: list, addr: str, *needles: str) -> list:
    return [line for line in lines if addr in line and any(n in line for n in needles)]


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) p=\d+ u=\S+ n=\S+ \w+\| "
                      r"(TASK \[.*?\]|RUNNING HANDLER \[.*?\]|PLAY RECAP)")


def task_times(log_text: str) -> list:
    """(task or handler header, seconds until the next header) from an ANSIBLE_LOG_PATH log."""
    marks = []
    for line in log_text.splitlines():
        m = LOG_LINE.match(line)
        if m:
            marks.append((datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), m.group(2)))
    return [(name, round((marks[i + 1][0] - at).total_seconds(), 1)) for i, (at, name) in enumerate(marks[:-1])]


def first_index(lines: list, pattern: str):
    """Index of the first line matching ``pattern`` (a regular expression), or None."""
    return next((i for i, line in enumerate(lines) if re.search(pattern, line)), None)


def vfio_add_line(ident: str) -> re.Pattern:
    """``vfio_pci: add [1234:1111[ffffffff:ffffffff]] class 0x000000/00000000``: vfio-pci takes an id at load."""
    return re.compile(rf"vfio_pci: add \[{re.escape(ident)}\[ffffffff:ffffffff\]\] class 0x")


@dataclass
class Step:
    """One playbook run (or none, for the first snapshot) and the guest's state after it."""
    name: str
    proc: subprocess.CompletedProcess | None
    seconds: float
    state: dict
    facts: dict = field(default_factory=dict)   # the fact cache after the run (vfio_bind_plan, vfio_bootloader_plan...)
    command: list = field(default_factory=list)
    tasks: list = field(default_factory=list)   # (task or handler, seconds) from ansible's log

    @property
    def output(self) -> str:
        return "" if self.proc is None else self.proc.stdout + self.proc.stderr


class Scenario:
    def __init__(self, vm: vmlib.VM, tmp: Path):
        self.vm, self.tmp = vm, tmp
        self.inventory = write_inventory(tmp, vm)
        self.addresses = vm.pci_addresses()
        self.steps: dict = {}
        self.checks: dict = {}              # name -> CompletedProcess of an extra command run in the guest
        self.serial_boots: list = []        # the serial log split at the boot boundaries, at the end
        self.kept: Path | None = None       # the artifact directory written at the end (checked by a test)

    def state(self) -> dict:
        t0 = time.monotonic()
        proc = self.vm.ssh(state_command(), timeout=300, check=True)
        record_timing(f"{TIMING}: guest state reads (ssh)", time.monotonic() - t0)
        return json.loads(proc.stdout)

    def snapshot(self, name: str) -> Step:
        t0 = time.monotonic()
        step = Step(name=name, proc=None, seconds=0.0, state=self.state())
        step.seconds = time.monotonic() - t0
        self.steps[name] = step
        return step

    def play(self, name: str, playbook: str, **extra_vars) -> Step:
        """ansible-playbook -v (the results of the tasks are printed as JSON) with extra vars as JSON."""
        cmd = [str(VENV_BIN / "ansible-playbook"), "-i", str(self.inventory), "-v", playbook]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        env = ansible_env(self.tmp, ANSIBLE_SSH_CONTROL_PATH_DIR=str(self.tmp / "cp"),
                          ANSIBLE_LOG_PATH=str(self.tmp / f"{slug}.ansible.log"))   # a time stamp on every line
        vmlib.log(f"{name}: {shlex.join(cmd[3:])}")
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT, check=False)
        seconds = time.monotonic() - t0
        record_timing(f"{TIMING}: {name}", seconds)
        try:
            facts = cached_facts(self.tmp, HOST)
        except (OSError, ValueError):
            facts = {}
        try:
            tasks = task_times((self.tmp / f"{slug}.ansible.log").read_text(errors="replace"))
        except OSError:
            tasks = []
        step = Step(name=name, proc=proc, seconds=seconds, state=self.state(), facts=facts, command=cmd, tasks=tasks)
        self.vm.note(f"{name}: task wall times (s): " + "; ".join(f"{t} {s}" for t, s in tasks))
        for task, secs in tasks:
            if secs >= 10 and "REBOOT" not in task.upper():
                record_timing(f"{TIMING}: {name}: {task}", secs)
        counts = recap(proc.stdout).get(HOST)
        self.vm.note(f"{name}: rc {proc.returncode} in {seconds:.1f} s; recap {counts}")
        vmlib.log(f"{name}: rc {proc.returncode} in {seconds:.1f} s; recap {counts}")
        self.steps[name] = step
        for result in task_results(proc.stdout, REBOOT_HANDLER) + task_results(proc.stdout, RESTORE_REBOOT):
            if "elapsed" in result:
                record_timing(f"{TIMING}: {name}: the reboot (ansible.builtin.reboot, elapsed)", result["elapsed"])
        return step

    def sh(self, name: str, command: str):
        """Run a command in the guest, keep its result under ``name``."""
        self.checks[name] = self.vm.ssh(command, timeout=300)
        return self.checks[name]

    def reboot(self, name: str) -> Step:
        """Reboot the guest from inside (what a user does when the play asks for a reboot) and read it."""
        t0 = time.monotonic()
        self.vm.reboot_and_wait(timeout=PLAYBOOK_TIMEOUT)
        seconds = time.monotonic() - t0
        record_timing(f"{TIMING}: {name}", seconds)
        vmlib.log(f"{name}: back in {seconds:.1f} s")
        step = Step(name=name, proc=None, seconds=seconds, state=self.state())
        self.steps[name] = step
        return step

    def restored_boot(self) -> Step:
        """The step whose state is the first boot after the restore: the restore's own reboot, or, when
        the restore did not reboot (a failure, reported by its own test), the harness's reboot by hand."""
        return self.steps.get(REBOOT_BY_HAND) or self.steps["restore.yml with reboot"]

    def counts(self, name: str) -> dict:
        step = self.steps[name]
        counts = recap(step.proc.stdout).get(HOST)
        assert counts is not None, f"{name}: no PLAY RECAP line for {HOST}:\n{step.output[-4000:]}"
        return counts

    def keep(self, dest: Path) -> None:
        for i, (name, step) in enumerate(self.steps.items()):
            if step.proc is not None:
                slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
                (dest / f"{i:02d}-{slug}.out").write_text(f"$ {shlex.join(step.command)}\n{step.output}")
                log = self.tmp / f"{slug}.ansible.log"
                if log.exists():
                    shutil.copyfile(log, dest / f"{i:02d}-{slug}.ansible.log")
        (dest / "states.json").write_text(json.dumps({n: s.state for n, s in self.steps.items()}, indent=1))
        (dest / "facts.json").write_text(json.dumps({n: s.facts for n, s in self.steps.items()}, indent=1))
        (dest / "checks.txt").write_text("".join(f"### {n} (rc {p.returncode})\n{p.stdout}{p.stderr}\n"
                                                 for n, p in self.checks.items()))


def drive(sc: Scenario) -> None:
    sc.snapshot("before")
    sc.sh("initramfs before", INITRAMFS_VFIO)
    sc.play("vfio.yml with reboot", "playbooks/vfio.yml", **selection(sc.addresses), vfio_reboot_ok=True)
    sc.sh("initramfs after vfio.yml", INITRAMFS_VFIO)
    sc.sh("sh -n", f"sh -n {OVERRIDE_SCRIPT}")
    sc.sh("modprobe --show-depends", "modprobe --show-depends vfio-pci")
    sc.play("vfio.yml again", "playbooks/vfio.yml", **selection(sc.addresses), vfio_reboot_ok=True)
    restore = sc.play("restore.yml with reboot", "playbooks/restore.yml", vfio_reboot_ok=True)
    sc.sh("initramfs after restore.yml", INITRAMFS_VFIO)
    if restore.state["boot_id"] == sc.steps["vfio.yml again"].state["boot_id"]:
        # test_restore_succeeds_and_reboots fails on this; reboot by hand (what the user would do) so that
        # the checks of the boot after the restore still say what they see
        sc.reboot(REBOOT_BY_HAND)
    sc.play("restore.yml again", "playbooks/restore.yml", vfio_reboot_ok=True)
    sc.serial_boots = sc.vm.serial_boots()
    for n, boot in enumerate(sc.vm.boots(), 1):
        milestones, previous = boot["milestones"], sc.vm.boots()[n - 2] if n > 1 else {}
        if "login prompt" in milestones and "reset" in previous:
            record_timing(f"{TIMING}: boot {n}: reset to login prompt (serial console)", milestones["login prompt"] - previous["reset"])
    # the artifacts the harness keeps on failure, written once here to check that they hold every boot
    sc.kept = sc.vm.keep_artifacts("the reboot scenario's artifact check (no failure)", dest=sc.tmp / "artifact-check")


@pytest.fixture(scope="class")
def scenario(request, guest_image, tmp_path_factory):
    """Boot the layout once (reboots allowed: each is a power cycle of its QEMU) and run the whole scenario against it."""
    tmp = tmp_path_factory.mktemp("vm-reboot")
    watch = FailureWatch(request)
    t0 = time.monotonic()
    with vmlib.VM(guest_image, LAYOUT, name="reboot", reboot=True, timeout=3 * PLAYBOOK_TIMEOUT) as vm:
        vm.wait_ssh()
        record_timing(f"{TIMING}: boot to SSH", time.monotonic() - t0)
        sc = Scenario(vm, tmp)
        vm.note(f"addresses (QMP): {sc.addresses}")
        try:
            drive(sc)
        except BaseException as exc:
            sc.keep(vm.keep_artifacts(f"{LAYOUT} reboot: the scenario stopped: {exc!r}"))
            raise
        finally:
            close_ssh_masters(tmp / "cp")
        try:
            yield sc
        finally:
            if watch.failed:
                sc.keep(vm.keep_artifacts(f"a reboot test of layout {LAYOUT} failed"))
    record_timing(f"{TIMING}: total (boot, playbooks, reboots, checks, stop)", time.monotonic() - t0)
    vmlib.log("wall times: " + ", ".join(f"{k.split(': ', 1)[1]} {v:.1f} s" for k, v in _timings().items()))


def _timings() -> dict:
    return {k: v for k, v in TIMINGS.items() if k.startswith(f"{TIMING}: ")}


class TestRebootIntoVfio:
    """Bind the GPU with its audio function, and the second of two identical QXL cards, with
    ``vfio_reboot_ok: true``, check the new boot, run again (nothing to do, no reboot), restore with
    a reboot, check the old boot is back."""

    # -- before ---------------------------------------------------------------------------------
    def test_before_the_devices_are_on_their_host_drivers(self, scenario):
        before = scenario.steps["before"].state
        for dev, driver in HOST_DRIVERS.items():
            assert before["drivers"][scenario.addresses[dev]] == driver, (dev, before["drivers"])
        words_before = words(before["cmdline"])
        assert not any(w.startswith(("vfio-pci.", "vfio_pci.")) for w in words_before), before["cmdline"]
        assert "iommu=pt" not in words_before and "intel_iommu=on" in words_before, before["cmdline"]
        assert not [line for line in before["dmesg"] if "vfio_pci: add" in line]

    # -- vfio.yml with vfio_reboot_ok -------------------------------------------------------------
    def test_the_play_succeeds_and_selects_the_gpu_its_audio_and_the_second_qxl(self, scenario):
        step = scenario.steps["vfio.yml with reboot"]
        assert step.proc.returncode == 0, step.output[-6000:]
        counts = scenario.counts(step.name)
        assert counts["failed"] == 0 and counts["unreachable"] == 0 and counts["changed"] > 0, counts
        plan = step.facts["vfio_bind_plan"]
        assert plan["status"] == "ok", plan
        assert sorted(d["address"] for d in plan["devices"]) == sorted(scenario.addresses[d] for d in SELECTED)
        # by id only where every device of the id is selected: not the QXL, whose twin stays
        assert sorted(plan["ids"]) == sorted([GPU_ID, HDA_ID]), plan["ids"]

    def test_the_guest_really_rebooted_once(self, scenario):
        before, step = scenario.steps["before"], scenario.steps["vfio.yml with reboot"]
        assert step.state["boot_id"] != before.state["boot_id"]
        assert step.output.count(REBOOT_HANDLER) == 1, step.output[-6000:]
        (reboot,) = task_results(step.output, REBOOT_HANDLER)
        assert reboot["_status"] == "changed" and reboot.get("rebooted") is True, reboot
        # the handler after the reboot checked /proc/cmdline and the drivers itself
        (verified,) = task_results(step.output, VERIFY_HANDLER)
        assert verified["_status"] == "ok" and verified["problems"] == [], verified
        assert "rebooted: /proc/cmdline has the parameters and the devices are on vfio-pci" in step.proc.stdout

    def test_after_the_reboot_the_command_line_carries_the_parameters(self, scenario):
        before, step = scenario.steps["before"].state, scenario.steps["vfio.yml with reboot"]
        plan = step.facts["vfio_bootloader_plan"]
        assert plan["bootloader"] == "grub", plan
        present = [param_word(p) for p in plan["params"] if p.get("state", "present") == "present"]
        absent = [param_word(p) for p in plan["params"] if p.get("state") == "absent"]
        for word in EXPECTED_PARAMS:
            assert word in present, (word, plan["params"])
        cmdline = words(step.state["cmdline"])
        assert not [w for w in cmdline if QXL_ID in w], step.state["cmdline"]   # by id it would take both QXL
        for word in present:
            assert word in cmdline, (word, step.state["cmdline"])
        assert not [w for w in absent if w in cmdline], (absent, step.state["cmdline"])
        # intel_iommu=on: the module adds it when the guest kernel needs it (CONFIG_INTEL_IOMMU_DEFAULT_ON
        # is not set in Debian's), and the image's own command line already had it: once, in either case
        assert cmdline.count("intel_iommu=on") == 1, step.state["cmdline"]
        # nothing the command line had before is lost; only the parameters were added
        assert [w for w in cmdline if w in words(before["cmdline"])] == words(before["cmdline"])
        assert sorted(set(cmdline) - set(words(before["cmdline"]))) == sorted(set(present) - set(words(before["cmdline"])))
        # what the module read back from grub.cfg as the next boot is what the kernel got
        next_boot = [w for w in words(step.facts["vfio_next_boot_cmdline"]) if not w.startswith("/")]
        assert next_boot == [w for w in cmdline if not w.startswith("BOOT_IMAGE=")], (next_boot, cmdline)

    def test_both_functions_are_on_vfio_pci_from_the_start_of_the_boot(self, scenario):
        step = scenario.steps["vfio.yml with reboot"]
        after, kernel = step.state, step.state["dmesg"]
        gpu, audio = scenario.addresses["gpu"], scenario.addresses["audio"]
        assert after["drivers"][gpu] == VFIO and after["drivers"][audio] == VFIO, after["drivers"]
        assert str(after["groups"][gpu]) in after["dev_vfio"], after["dev_vfio"]
        assert kernel[0].find("Linux version") >= 0, kernel[:3]          # the whole log of this boot
        for ident in (GPU_ID, HDA_ID):
            assert [line for line in kernel if vfio_add_line(ident).search(line)], f"no vfio_pci add line for {ident}"
        # the initramfs loaded vfio-pci: its lines come before the root file system is mounted
        root_mount = next(i for i, line in enumerate(kernel) if "EXT4-fs" in line and "mounted filesystem" in line)
        first_add = next(i for i, line in enumerate(kernel) if "vfio_pci: add" in line)
        assert first_add < root_mount, (kernel[first_add], kernel[root_mount])
        # no host driver touched the two functions in this boot
        assert not kernel_lines_about(kernel, gpu, "bochs", "drm"), kernel_lines_about(kernel, gpu, "bochs", "drm")
        assert not kernel_lines_about(kernel, audio, "snd_hda", "hda"), kernel_lines_about(kernel, audio, "snd_hda", "hda")
        # the boot before had them on the host drivers
        before = scenario.steps["before"].state["dmesg"]
        assert kernel_lines_about(before, gpu, "bochs-drm"), "the first boot shows no bochs-drm line for the GPU"

    def test_the_second_qxl_is_on_vfio_pci_from_boot_and_its_twin_kept_qxl(self, scenario):
        step = scenario.steps["vfio.yml with reboot"]
        after, kernel = step.state, step.state["dmesg"]
        one, two = scenario.addresses["qxl1"], scenario.addresses["qxl2"]
        assert after["drivers"][two] == VFIO, after["drivers"]
        assert after["drivers"][one] == "qxl", after["drivers"]
        assert str(after["groups"][two]) in after["dev_vfio"] and str(after["groups"][one]) not in after["dev_vfio"]
        # in this boot the qxl driver initialized the first card only; the second never saw it
        assert [line for line in kernel if re.search(r"Initialized qxl .* for " + re.escape(one), line)], "qxl1 has no qxl line"
        assert not kernel_lines_about(kernel, two, "qxl", "drm"), kernel_lines_about(kernel, two, "qxl", "drm")
        assert not [line for line in kernel if vfio_add_line(QXL_ID).search(line)], "the QXL id was given to vfio-pci"

    def test_the_qxl_is_claimed_by_address_through_the_install_line_and_its_script(self, scenario):
        after = scenario.steps["vfio.yml with reboot"].state
        lines = [line for line in (after["files"][MODPROBE_CONF] or "").splitlines() if line and not line.startswith("#")]
        assert f"install vfio-pci {OVERRIDE_SCRIPT} $CMDLINE_OPTS" in lines, lines
        assert not [line for line in lines if QXL_ID in line and "ids=" in line], lines
        show = scenario.checks["modprobe --show-depends"]
        assert show.returncode == 0 and f"install {OVERRIDE_SCRIPT}" in show.stdout, show.stdout + show.stderr
        assert scenario.checks["sh -n"].returncode == 0, scenario.checks["sh -n"].stderr
        script = after["files"][OVERRIDE_SCRIPT]
        assert script is not None and script.startswith("#!/bin/sh\n"), script
        devs = re.search(r'^DEVS="([^"]*)"$', script, re.M)
        assert devs and devs.group(1).split() == [scenario.addresses["qxl2"]], script

    def test_the_initramfs_carries_vfio_pci_its_configuration_and_the_script(self, scenario):
        before, after = scenario.checks["initramfs before"].stdout, scenario.checks["initramfs after vfio.yml"].stdout
        assert "vfio-pci.ko" not in before and "exliar-vfio" not in before, before
        assert "/vfio-pci.ko" in after and "etc/modprobe.d/exliar-vfio.conf" in after, after
        assert OVERRIDE_SCRIPT.lstrip("/") in after, after

    def test_grub_cfg_has_the_parameters(self, scenario):
        step = scenario.steps["vfio.yml with reboot"]
        default_entry = words(linux_lines(step.state["files"][GRUB_CFG])[0])
        for p in step.facts["vfio_bootloader_plan"]["params"]:
            if p.get("state", "present") == "present":
                assert param_word(p) in default_entry, (param_word(p), default_entry)
        before_entry = words(linux_lines(scenario.steps["before"].state["files"][GRUB_CFG])[0])
        assert default_entry[:len(before_entry)] == before_entry    # the parameters come after what was there

    def test_etc_default_grub_differs_only_in_the_default_command_line(self, scenario):
        old = scenario.steps["before"].state["files"][GRUB_DEFAULT].splitlines()
        new = scenario.steps["vfio.yml with reboot"].state["files"][GRUB_DEFAULT].splitlines()
        changed = [line for line in difflib.ndiff(old, new) if line.startswith(("- ", "+ "))]
        assert len(changed) == 2, changed
        assert changed[0].startswith("- GRUB_CMDLINE_LINUX_DEFAULT=") and changed[1].startswith("+ GRUB_CMDLINE_LINUX_DEFAULT="), changed
        value = re.match(r'\+ GRUB_CMDLINE_LINUX_DEFAULT="([^"]*)"$', changed[1])
        assert value, changed[1]
        for word in EXPECTED_PARAMS:
            assert word in value.group(1).split(), changed[1]

    # -- vfio.yml again ---------------------------------------------------------------------------
    def test_second_run_changes_nothing_and_does_not_reboot(self, scenario):
        first, step = scenario.steps["vfio.yml with reboot"], scenario.steps["vfio.yml again"]
        assert step.proc.returncode == 0, step.output[-6000:]
        counts = scenario.counts(step.name)
        assert counts["changed"] == 0 and counts["failed"] == 0, counts
        assert REBOOT_HANDLER not in step.output
        assert step.state["boot_id"] == first.state["boot_id"]
        assert step.state["cmdline"] == first.state["cmdline"]
        assert step.state["sha256"] == first.state["sha256"]
        assert step.state["drivers"] == first.state["drivers"]
        assert step.facts["vfio_reboot_required"] is False

    # -- restore.yml with vfio_reboot_ok -------------------------------------------------------------
    def test_restore_succeeds_and_reboots(self, scenario):
        again, step = scenario.steps["vfio.yml again"].state, scenario.steps["restore.yml with reboot"]
        assert step.proc.returncode == 0, step.output[-6000:]
        counts = scenario.counts(step.name)
        assert counts["changed"] > 0 and counts["failed"] == 0 and counts["unreachable"] == 0, counts
        (reboot,) = task_results(step.output, RESTORE_REBOOT)
        assert reboot["_status"] == "changed" and reboot.get("rebooted") is True, reboot
        assert step.state["boot_id"] != again["boot_id"]

    def test_restore_gives_back_the_files_byte_for_byte(self, scenario):
        before, after = scenario.steps["before"].state, scenario.steps["restore.yml with reboot"].state
        assert after["sha256"][GRUB_DEFAULT] == before["sha256"][GRUB_DEFAULT]
        assert after["files"][GRUB_DEFAULT] == before["files"][GRUB_DEFAULT]
        assert linux_lines(after["files"][GRUB_CFG]) == linux_lines(before["files"][GRUB_CFG])
        assert after["sha256"] == before["sha256"], {p: (before["sha256"][p], after["sha256"][p]) for p in WATCHED_FILES}

    def test_the_restored_initramfs_is_without_vfio(self, scenario):
        """The image the restore left (and the next boot used) holds no more of vfio or the collection than before:
        the initramfs stage is undone after the bind stage, whose /etc/modprobe.d/exliar-vfio.conf mkinitramfs would copy."""
        before, after = scenario.checks["initramfs before"].stdout, scenario.checks["initramfs after restore.yml"].stdout
        assert after == before

    def test_after_the_restore_boot_the_command_line_is_the_one_before(self, scenario):
        before, again = scenario.steps["before"].state, scenario.steps["vfio.yml again"].state
        after = scenario.restored_boot().state
        assert after["boot_id"] not in (again["boot_id"], before["boot_id"])
        assert after["cmdline"] == before["cmdline"]
        assert after["sha256"] == before["sha256"]

    def test_after_the_restore_boot_the_host_drivers_have_them_again(self, scenario):
        before, after = scenario.steps["before"].state, scenario.restored_boot().state
        for dev, driver in HOST_DRIVERS.items():
            assert after["drivers"][scenario.addresses[dev]] == driver, (dev, after["drivers"])
        assert after["drivers"] == before["drivers"]
        assert after["dev_vfio"] == before["dev_vfio"]
        assert not [line for line in after["dmesg"] if "vfio_pci: add" in line]
        assert kernel_lines_about(after["dmesg"], scenario.addresses["gpu"], "bochs-drm")
        for qxl in ("qxl1", "qxl2"):
            assert [line for line in after["dmesg"] if re.search(r"Initialized qxl .* for " + re.escape(scenario.addresses[qxl]), line)], qxl

    def test_second_restore_changes_nothing_and_does_not_reboot(self, scenario):
        first, step = scenario.restored_boot(), scenario.steps["restore.yml again"]
        assert step.proc.returncode == 0, step.output[-6000:]
        counts = scenario.counts(step.name)
        assert counts["changed"] == 0 and counts["failed"] == 0, counts
        assert step.state["boot_id"] == first.state["boot_id"]
        assert all(r["_status"] != "changed" for r in task_results(step.output, RESTORE_REBOOT))
        assert step.state["drivers"] == first.state["drivers"] and step.state["sha256"] == first.state["sha256"]

    # -- the serial log across the reboots --------------------------------------------------------
    def test_the_serial_log_keeps_every_boot(self, scenario):
        boots = scenario.serial_boots
        assert len(boots) == 3, [b[:2] for b in boots]
        for n, lines in enumerate(boots, 1):
            assert any("Linux version" in line for line in lines), f"boot {n}: no kernel banner"
        for n in (1, 2):
            assert any(vmlib.RESET_MARKER in line for line in boots[n - 1]), f"boot {n} does not end in a reset"
        one, two, three = boots
        for ident in (GPU_ID, HDA_ID):
            # boot 1: vfio-pci only comes with the bind stage's runtime bind, after the boot (the login prompt)
            add = first_index(one, vfio_add_line(ident).pattern)
            assert add is not None and add > first_index(one, re.escape(f"{vmlib.GUEST_HOSTNAME} login:")), f"boot 1: {ident}"
            # boot 2: in the initramfs, before the real root's systemd starts
            add = first_index(two, vfio_add_line(ident).pattern)
            assert add is not None and add < first_index(two, re.escape("systemd[1]: systemd ")), f"boot 2: {ident}"
        assert first_index(three, r"vfio_pci: add") is None, "boot 3 has vfio-pci"
        assert first_index(one, r"Initialized bochs-drm .* for " + re.escape(scenario.addresses["gpu"])) is not None
        # boot 2 up to its login prompt: no bochs-drm for the GPU (later the restore gives it back at run time)
        booting = two[:first_index(two, re.escape(f"{vmlib.GUEST_HOSTNAME} login:"))]
        assert first_index(booting, r"bochs-drm .*" + re.escape(scenario.addresses["gpu"])) is None
        # the qxl driver took the first QXL in boot 2, and not the second (until the restore gives it back)
        assert first_index(two, r"Initialized qxl .* for " + re.escape(scenario.addresses["qxl1"])) is not None
        assert first_index(booting, r"qxl .*" + re.escape(scenario.addresses["qxl2"])) is None
        assert first_index(three, r"Initialized bochs-drm .* for " + re.escape(scenario.addresses["gpu"])) is not None
        harness_boots = scenario.vm.boots()
        assert len(harness_boots) == 3, harness_boots
        for boot in harness_boots:       # sshd's line can drown in systemd's progress output; these do not
            assert {"firmware done", "kernel started", "login prompt"} <= set(boot["milestones"]), harness_boots

    def test_the_kept_artifacts_hold_every_boot(self, scenario):
        kept = scenario.kept
        serial = (kept / "serial.log").read_text(errors="replace")
        assert len(vmlib.split_boots(serial)) == 3
        timed = (kept / "serial.timed.log").read_text(errors="replace")
        assert timed.count("===== [harness] boot ") == 2, "serial.timed.log lacks the boot boundaries"
        notes = (kept / "notes.txt").read_text()
        assert all(f"boot {n}: serial.log from line" in notes for n in (1, 2, 3)), notes
