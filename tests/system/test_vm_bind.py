"""Binding on a real kernel: boot the Debian guest, run playbooks/vfio.yml (detect, then bind) and
playbooks/restore.yml over SSH, and check in the guest what a user would check.

Each class boots its layout once (class-scoped fixture) and drives its whole scenario there, in
order: the state of the guest is read over SSH before anything runs and after every playbook
run (the ``driver`` link and ``driver_override`` of every PCI function, ``/dev/vfio``, every
file below ``/etc/modprobe.d``, ``/usr/local/sbin`` and ``/var/lib/exliar-vfio`` with its mode
and sha256, modprobe's own view of its configuration, the kernel log). The tests then compare
those snapshots. Device addresses come from QEMU (QMP ``query-pci``) and are checked against
``lspci`` in the guest; nothing about the guest's PCI numbering is hard-coded.
"""
from __future__ import annotations

import html
import json
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import vm as vmlib
from _support import FailureWatch, close_ssh_masters, record_timing
from labrun import cached_facts, recap, run_playbook
from plugin_install import install_plugins

pytestmark = pytest.mark.system

GPU_ID = "1234:1111"        # bochs-display and VGA
HDA_ID = "8086:293e"        # ich9-intel-hda
VFIO = "vfio-pci"
MODPROBE_CONF = "/etc/modprobe.d/exliar-vfio.conf"
OVERRIDE_SCRIPT = "/usr/local/sbin/exliar-vfio-pci-override"
PLAN_RECORD = "/var/lib/exliar-vfio/state/bind.json"
JOURNAL = "/var/lib/exliar-vfio/journal.jsonl"
OWNED = (MODPROBE_CONF, OVERRIDE_SCRIPT, PLAN_RECORD)
WATCHED_DIRS = ("/etc/modprobe.d", "/usr/local/sbin", "/var/lib/exliar-vfio")
PLUGIN_SOURCES = Path(__file__).resolve().parent / "plugins"
TINY_GUEST = Path(__file__).resolve().parents[1] / "lib" / "tiny_guest.py"
# The VM stage in the guest: a nested guest (the guest's own kernel, a busybox initramfs) gets the bound GPU slot
NESTED_VM = "exliar-nested"
NESTED_DIR = "/var/lib/libvirt/images"
NESTED_KERNEL = f"{NESTED_DIR}/{NESTED_VM}-vmlinuz"
NESTED_INITRD = f"{NESTED_DIR}/{NESTED_VM}-initrd.gz"
# The nested guest's /init powers off only when it finds the two functions where the VM stage put them: the
# GPU and its audio as functions 0 and 1 of one slot on the domain's first root port (guest bus 01). Else it
# waits, and the VM stage reports that the guest did not power off.
NESTED_INIT = r"""/bin/busybox --install -s /bin
mount -t sysfs sysfs /sys
found() { cat /sys/bus/pci/devices/0000:01:00.$1/vendor /sys/bus/pci/devices/0000:01:00.$1/device 2>/dev/null | tr '\n' ' '; }
echo "exliar-vfio nested guest: 01:00.0 $(found 0), 01:00.1 $(found 1)"
if [ "$(found 0)" = "0x1234 0x1111 " ] && [ "$(found 1)" = "0x8086 0x293e " ]; then poweroff -f; fi
echo "exliar-vfio nested guest: the passed-through functions are not at 01:00.0 and 01:00.1"
sleep 100000
"""
NESTED_WAIT = 1200   # seconds: the nested guest's kernel boots under TCG inside TCG (about 330 s)
BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")

# Run in the guest with python3 (part of the image): everything a user would look at, as JSON.
STATE_SCRIPT = r"""
import hashlib, json, os, subprocess
base = "/sys/bus/pci/devices"
out = {"drivers": {}, "driver_modules": {}, "overrides": {}, "groups": {}, "tree": {}, "files": {}}
for a in sorted(os.listdir(base)):
    try:
        out["drivers"][a] = os.path.basename(os.readlink(f"{base}/{a}/driver"))
    except OSError:
        out["drivers"][a] = None
    try:
        out["driver_modules"][a] = os.path.basename(os.readlink(f"{base}/{a}/driver/module"))
    except OSError:
        out["driver_modules"][a] = None
    try:
        with open(f"{base}/{a}/driver_override") as f:
            out["overrides"][a] = f.read().strip()
    except OSError:
        out["overrides"][a] = None
    try:
        out["groups"][a] = int(os.path.basename(os.readlink(f"{base}/{a}/iommu_group")))
    except OSError:
        out["groups"][a] = None
out["dev_vfio"] = sorted(os.listdir("/dev/vfio")) if os.path.isdir("/dev/vfio") else []
for top in WATCHED:
    for dirpath, dirnames, filenames in os.walk(top):
        for d in dirnames:
            out["tree"][os.path.join(dirpath, d) + "/"] = None
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            with open(p, "rb") as f:
                data = f.read()
            out["tree"][p] = {"mode": "%04o" % (st.st_mode & 0o7777), "sha256": hashlib.sha256(data).hexdigest(),
                              "executable": os.access(p, os.X_OK)}
            if p in OWNED or p == JOURNAL:
                out["files"][p] = data.decode("utf-8", "replace")
conf = subprocess.run(["modprobe", "-c"], capture_output=True, text=True).stdout
out["modprobe_config"] = [l for l in conf.splitlines() if l.startswith(("options ", "softdep ", "install "))]
out["modules"] = sorted(l.split()[0] for l in open("/proc/modules"))
out["dmesg"] = subprocess.run(["dmesg"], capture_output=True, text=True).stdout.splitlines()
print(json.dumps(out))
"""


def state_command() -> str:
    prelude = (f"WATCHED = {list(WATCHED_DIRS)!r}\nOWNED = {list(OWNED)!r}\nJOURNAL = {JOURNAL!r}\n")
    return "python3 -c " + shlex.quote(prelude + STATE_SCRIPT)


def write_inventory(tmp: Path, host: str, vm: vmlib.VM) -> Path:
    inv = {"all": {"hosts": {host: {
        "ansible_host": "127.0.0.1",
        "ansible_port": vm.port,
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(vm.image.key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
    }}}}
    path = tmp / "inventory.yml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return path


@dataclass
class Step:
    """One playbook run (or none, for the first snapshot) and the guest's state after it."""
    name: str
    proc: object | None          # ansible-playbook CompletedProcess
    seconds: float
    state: dict
    facts: dict | None = None    # ansible_facts.vfio from the fact cache after the run (None: no vfio.yml)
    command: list = field(default_factory=list)

    @property
    def output(self) -> str:
        return "" if self.proc is None else self.proc.stdout + self.proc.stderr


class Scenario:
    """A booted layout, its inventory, and the steps run against it so far."""

    def __init__(self, layout: str, vm: vmlib.VM, tmp: Path, host: str):
        self.layout, self.vm, self.tmp, self.host = layout, vm, tmp, host
        self.inventory = write_inventory(tmp, host, vm)
        self.addresses = vm.pci_addresses()
        self.steps: dict = {}
        self.checks: dict = {}     # name -> CompletedProcess of an extra command run in the guest
        self.lspci: dict = {}      # vendor:device -> the addresses lspci shows for it
        self.connection: dict = {}  # the SSH connection's address, interface and PCI function (as the guest shows it)
        self.hook_log: Path | None = None   # the hook-log plugin's JSON lines, for the run that loads it
        self.vm_hook_log: Path | None = None  # the same, for the run with the VM stage
        self.vm_results: dict = {}  # step name -> the fact vfio_vm_results after it

    # -- reading the guest ------------------------------------------------------------------
    def state(self) -> dict:
        t0 = time.monotonic()
        proc = self.vm.ssh(state_command(), timeout=180, check=True)
        record_timing(f"{self.layout} bind: guest state reads (ssh)", time.monotonic() - t0)
        return json.loads(proc.stdout)

    def sh(self, name: str, command: str):
        """Run a command in the guest, keep its result under ``name``."""
        self.checks[name] = self.vm.ssh(command, timeout=180)
        return self.checks[name]

    def lspci_by_id(self, ident: str) -> list:
        out = self.vm.ssh(f"lspci -D -n -d {ident}", check=True).stdout
        return sorted(line.split()[0] for line in out.splitlines() if line.strip())

    # -- steps ------------------------------------------------------------------------------
    def snapshot(self, name: str) -> Step:
        t0 = time.monotonic()
        step = Step(name=name, proc=None, seconds=0.0, state=self.state())
        step.seconds = time.monotonic() - t0
        self.steps[name] = step
        return step

    def play(self, name: str, playbook: str, *args: str, env: dict | None = None, timeout: float = 900, **extra_vars) -> Step:
        cmd = [playbook, *args]
        if playbook.endswith("vfio.yml"):
            # the binding stage alone: the initramfs and bootloader stages (an initramfs rebuild takes 3 to 5 min
            # under TCG, and as long again to undo) are the subject of test_vm_reboot.py
            extra_vars.setdefault("vfio_initramfs", False)
            extra_vars.setdefault("vfio_bootloader_stage", False)
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        t0 = time.monotonic()
        proc = run_playbook(self.tmp, *cmd, inventory=self.inventory, timeout=timeout,
                            ANSIBLE_SSH_CONTROL_PATH_DIR=str(self.tmp / "cp"), **(env or {}))
        seconds = time.monotonic() - t0
        record_timing(f"{self.layout} bind: {name}", seconds)
        facts = None
        if playbook.endswith("vfio.yml"):
            try:
                cached = cached_facts(self.tmp, self.host)
            except (OSError, ValueError):
                cached = {}
            facts = cached.get("vfio")
            if extra_vars.get("vfio_vms"):
                self.vm_results[name] = cached.get("vfio_vm_results")
        step = Step(name=name, proc=proc, seconds=seconds, state=self.state(), facts=facts,
                    command=["ansible-playbook", *cmd])
        self.vm.note(f"{name}: rc {proc.returncode} in {seconds:.1f} s; recap {recap(proc.stdout).get(self.host)}")
        self.steps[name] = step
        return step

    # -- reading the results ----------------------------------------------------------------
    def counts(self, name: str) -> dict:
        step = self.steps[name]
        counts = recap(step.proc.stdout).get(self.host)
        assert counts is not None, f"{name}: no PLAY RECAP line for {self.host}:\n{step.output[-4000:]}"
        return counts

    def failure(self, name: str) -> dict:
        """The result ansible printed for the failed task (``fatal: [host]: FAILED! => {...}``)."""
        step = self.steps[name]
        marker = f"fatal: [{self.host}]: FAILED! => "
        for line in step.proc.stdout.splitlines():
            if line.startswith(marker):
                return json.loads(line[len(marker):])
        pytest.fail(f"{name}: no failed task for {self.host}:\n{step.output[-4000:]}")

    def keep(self, dest: Path) -> None:
        for i, (name, step) in enumerate(self.steps.items()):
            if step.proc is not None:
                slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
                (dest / f"{i:02d}-{slug}.out").write_text(f"$ {shlex.join(step.command)}\n{step.output}")
        (dest / "states.json").write_text(json.dumps({n: s.state for n, s in self.steps.items()}, indent=1))
        (dest / "checks.txt").write_text("".join(f"### {n} (rc {p.returncode})\n{p.stdout}{p.stderr}\n"
                                                 for n, p in self.checks.items()))
        facts = {n: s.facts for n, s in self.steps.items() if s.facts is not None}
        (dest / "facts.json").write_text(json.dumps(facts, indent=1))


@pytest.fixture(scope="class")
def scenario(request, guest_image, tmp_path_factory):
    """Boot the class's LAYOUT once and run its whole scenario (``drive``) against it."""
    layout = request.cls.LAYOUT
    host = f"vm-{layout}"
    tmp = tmp_path_factory.mktemp(f"vm-bind-{layout}")
    watch = FailureWatch(request)
    t0 = time.monotonic()
    # QEMU's own time limit: the whole scenario, with room for a VM stage that waits out its timeout
    with vmlib.VM(guest_image, layout, name=f"{layout}-bind", timeout=getattr(request.cls, "QEMU_TIMEOUT", 1800)) as vm:
        vm.wait_ssh()
        record_timing(f"{layout} bind: boot to SSH", time.monotonic() - t0)
        sc = Scenario(layout, vm, tmp, host)
        vm.note(f"addresses (QMP): {sc.addresses}")
        try:
            request.cls.drive(sc)
        except BaseException as exc:
            sc.keep(vm.keep_artifacts(f"{layout}: the scenario stopped: {exc!r}"))
            raise
        finally:
            close_ssh_masters(tmp / "cp")
        try:
            yield sc
        finally:
            if watch.failed:
                sc.keep(vm.keep_artifacts(f"a bind test of layout {layout} failed"))
    record_timing(f"{layout} bind: total (boot, playbooks, checks, stop)", time.monotonic() - t0)


# ----------------------------------------------------------------------------------------------
# helpers over snapshots
# ----------------------------------------------------------------------------------------------

def conf_lines(text: str) -> list:
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def softdeps_expected(facts: dict, addresses: list) -> list:
    """``softdep <module> pre: vfio-pci`` for every module the facts (before the bind) name for the devices:
    the module of the driver in use and every module whose alias matches the device."""
    devices = {d["address"]: d for d in facts["pci_devices"]}
    modules = set()
    for addr in addresses:
        d = devices[addr]
        modules |= set(d.get("kernel_modules") or [])
        if d.get("driver_module"):
            modules.add(d["driver_module"])
    modules.discard("vfio_pci")
    return [f"softdep {m} pre: vfio-pci" for m in sorted(modules)]


def prepare_nested_guest() -> str:
    """The command that puts the nested guest's kernel (the guest's own) and initramfs (built by the guest's
    python3 from its busybox) where libvirt's QEMU user can read them."""
    build = "python3 -c " + shlex.quote(TINY_GUEST.read_text())
    return (f"set -e; install -d -m 0755 {NESTED_DIR}; install -m 0644 /boot/vmlinuz-$(uname -r) {NESTED_KERNEL}; "
            f"{build} {NESTED_INITRD} <<'EOF'\n{NESTED_INIT}EOF\nchmod 0644 {NESTED_INITRD}; ls -l {NESTED_DIR}")


def new_kernel_lines(before: dict, after: dict) -> list:
    seen = set(before["dmesg"])
    return [line for line in after["dmesg"] if line not in seen]


def assert_unchanged(before: dict, after: dict, what: str) -> None:
    """The guest shows the same drivers, overrides, /dev/vfio nodes and files as before."""
    assert after["drivers"] == before["drivers"], f"{what}: drivers changed"
    assert after["overrides"] == before["overrides"], f"{what}: driver_override changed"
    assert after["dev_vfio"] == before["dev_vfio"], f"{what}: /dev/vfio changed"
    added = sorted(set(after["tree"]) - set(before["tree"]))
    removed = sorted(set(before["tree"]) - set(after["tree"]))
    modified = sorted(p for p in set(after["tree"]) & set(before["tree"]) if after["tree"][p] != before["tree"][p])
    assert (added, removed, modified) == ([], [], []), f"{what}: files added {added}, removed {removed}, modified {modified}"
    assert after["modprobe_config"] == before["modprobe_config"], f"{what}: modprobe's configuration changed"


# ----------------------------------------------------------------------------------------------
# 1. gpu-audio: bind the GPU (its audio function comes along), run again, restore
# ----------------------------------------------------------------------------------------------

class TestBindGpuWithAudio:
    """The GPU + HDMI audio slot of gpu-audio: select the GPU by address, run the play twice, then
    ``restore.yml`` in check mode, for real, and again.

    The emulated GPU is the guest's only GPU and hosts the firmware framebuffer (``efifb``, then
    ``bochs-drm``'s fb0), so the play first refuses it (boot display) and the run that binds sets
    ``vfio_allow_boot_display: true`` (the guest's console is the serial port)."""

    LAYOUT = "gpu-audio"
    QEMU_TIMEOUT = 3600   # about 12 min in all, of which the nested guest runs about 6; NESTED_WAIT bounds it

    @staticmethod
    def drive(sc: Scenario) -> None:
        gpu = sc.addresses["gpu"]
        sc.lspci = {GPU_ID: sc.lspci_by_id(GPU_ID), HDA_ID: sc.lspci_by_id(HDA_ID)}
        sc.snapshot("before")
        sc.play("bind refused (only display)", "playbooks/vfio.yml", vfio_devices=[gpu])
        # the binding run carries an extension plugin (tests/system/plugins/hook-log): its hooks fire in the real run
        pdir, approvals = install_plugins(sc.tmp, ["hook-log"], sources=PLUGIN_SOURCES)
        sc.hook_log = sc.tmp / "hooks.jsonl"
        sc.play("bind", "playbooks/vfio.yml", vfio_devices=[gpu], vfio_allow_boot_display=True,
                vfio_plugin_dirs=[str(pdir)], vfio_plugin_approvals_file=str(approvals), vfio_plugin_default_dirs=False,
                vfio_plugins={"hook-log": {"config": {"log": str(sc.hook_log)}}})
        sc.play("bind again", "playbooks/vfio.yml", vfio_devices=[gpu], vfio_allow_boot_display=True)
        # the VM stage: libvirt in the guest defines and runs a nested guest with the bound slot, the built-in
        # performance monitor samples it, hook-log records the VM hooks
        sc.sh("nested guest files", prepare_nested_guest())
        sc.vm_hook_log = sc.tmp / "vm-hooks.jsonl"
        nested = {"name": NESTED_VM, "memory_mib": 192, "vcpus": 1, "firmware": "bios", "kernel": NESTED_KERNEL,
                  "initrd": NESTED_INITRD, "cmdline": "console=ttyS0 quiet panic=-1", "devices": [gpu],
                  "start": True, "wait_timeout": NESTED_WAIT}
        sc.play("vm", "playbooks/vfio.yml", vfio_devices=[gpu], vfio_allow_boot_display=True, vfio_vms=[nested],
                vfio_builtin_plugins=["performance-monitor"], vfio_plugin_dirs=[str(pdir)],
                vfio_plugin_approvals_file=str(approvals), vfio_plugin_default_dirs=False,
                vfio_plugins={"hook-log": {"config": {"log": str(sc.vm_hook_log)}},
                              "performance-monitor": {"config": {"interval_seconds": 2}}},
                env={"EXLIAR_VFIO_REPORT_DIR": str(sc.tmp / "report-vm")}, timeout=NESTED_WAIT + 900)
        # a nested guest left running (the stage timed out) would hold the devices and block the restore
        sc.sh("nested guest stopped", f"virsh destroy {NESTED_VM} >/dev/null 2>&1; virsh domstate {NESTED_VM}")
        sc.sh("nested guest QEMU log", f"cat /var/log/libvirt/qemu/{NESTED_VM}.log")
        sc.sh("nested guest domain", f"virsh dumpxml --inactive {NESTED_VM}")
        sc.play("vm again", "playbooks/vfio.yml", vfio_devices=[gpu], vfio_allow_boot_display=True,
                vfio_vms=[dict(nested, start=False)])
        sc.play("restore --check --diff", "playbooks/restore.yml", "--check", "--diff")
        sc.play("restore", "playbooks/restore.yml")
        sc.play("restore again", "playbooks/restore.yml")

    # -- where the devices are ------------------------------------------------------------------
    def test_gpu_and_audio_are_where_qemu_put_them(self, scenario):
        gpu, audio = scenario.addresses["gpu"], scenario.addresses["audio"]
        assert scenario.lspci[GPU_ID] == [gpu]
        assert scenario.lspci[HDA_ID] == [audio]
        assert gpu[:-1] == audio[:-1]                      # one slot, functions 0 and 1
        before = scenario.steps["before"].state
        assert before["groups"][gpu] == before["groups"][audio]

    def test_before_the_run_the_host_drivers_have_them(self, scenario):
        before = scenario.steps["before"].state
        gpu, audio = scenario.addresses["gpu"], scenario.addresses["audio"]
        assert before["drivers"][gpu] not in (None, VFIO)
        assert before["drivers"][audio] not in (None, VFIO)
        assert str(before["groups"][gpu]) not in before["dev_vfio"]
        assert not any(p in before["tree"] for p in OWNED)
        facts = scenario.steps["bind refused (only display)"].facts
        devices = {d["address"]: d for d in facts["pci_devices"]}
        assert devices[gpu]["driver"] == before["drivers"][gpu]
        assert devices[audio]["driver"] == before["drivers"][audio]

    # -- the refusal without the override -------------------------------------------------------
    def test_the_only_display_is_refused_and_nothing_changes(self, scenario):
        step = scenario.steps["bind refused (only display)"]
        assert step.proc.returncode != 0, step.output[-3000:]
        counts = scenario.counts(step.name)
        assert counts["failed"] == 1 and counts["changed"] == 0 and counts["unreachable"] == 0, counts
        failure = scenario.failure(step.name)
        assert [r["code"] for r in failure["refusals"]] == ["boot_display"], failure
        assert scenario.addresses["gpu"] in failure["msg"] and "vfio_allow_boot_display" in failure["msg"]
        assert_unchanged(scenario.steps["before"].state, step.state, step.name)

    # -- the run that binds ---------------------------------------------------------------------
    def test_bind_run_reports_changes(self, scenario):
        step = scenario.steps["bind"]
        assert step.proc.returncode == 0, step.output[-4000:]
        counts = scenario.counts("bind")
        assert counts["changed"] > 0 and counts["failed"] == 0 and counts["unreachable"] == 0, counts
        summary = step.proc.stdout[step.proc.stdout.index("VFIO SUMMARY"):]
        assert "bind       plan" in summary, summary
        for addr in (scenario.addresses["gpu"], scenario.addresses["audio"]):
            assert addr in summary

    def test_gpu_and_audio_are_on_vfio_pci(self, scenario):
        before, after = scenario.steps["before"].state, scenario.steps["bind"].state
        gpu, audio = scenario.addresses["gpu"], scenario.addresses["audio"]
        assert after["drivers"][gpu] == VFIO
        assert after["drivers"][audio] == VFIO
        others = {a: d for a, d in after["drivers"].items() if a not in (gpu, audio)}
        assert others == {a: d for a, d in before["drivers"].items() if a not in (gpu, audio)}
        assert "vfio_pci" in after["modules"]

    def test_their_group_has_a_vfio_device_node(self, scenario):
        after = scenario.steps["bind"].state
        group = after["groups"][scenario.addresses["gpu"]]
        assert str(group) in after["dev_vfio"], after["dev_vfio"]
        assert str(group) not in scenario.steps["before"].state["dev_vfio"]

    def test_kernel_log_shows_vfio_pci_taking_them(self, scenario):
        lines = new_kernel_lines(scenario.steps["before"].state, scenario.steps["bind"].state)
        vfio_lines = [line for line in lines if re.search(r"vfio[-_]pci", line)]
        for ident, addr in ((GPU_ID, scenario.addresses["gpu"]), (HDA_ID, scenario.addresses["audio"])):
            assert any(f"[{ident}" in line or addr in line for line in vfio_lines), (
                f"no vfio-pci kernel line for {ident} at {addr}; new kernel lines:\n" + "\n".join(lines))

    def test_modprobe_conf_binds_both_ids_and_softdeps_their_drivers(self, scenario):
        after = scenario.steps["bind"].state
        assert MODPROBE_CONF in after["files"], sorted(after["tree"])
        lines = conf_lines(after["files"][MODPROBE_CONF])
        options = [line for line in lines if line.startswith("options vfio-pci ")]
        assert len(options) == 1, lines
        ids = options[0].split("ids=", 1)[1].split()[0].split(",")
        assert sorted(ids) == sorted([GPU_ID, HDA_ID]), options
        assert options[0] == f"options vfio-pci ids={','.join(ids)}"
        facts = scenario.steps["bind refused (only display)"].facts     # detected before anything changed
        wanted = softdeps_expected(facts, [scenario.addresses["gpu"], scenario.addresses["audio"]])
        assert sorted(line for line in lines if line.startswith("softdep ")) == wanted
        assert not [line for line in lines if line.startswith("install ")], lines
        assert after["tree"][MODPROBE_CONF]["mode"] == "0644"
        # modprobe itself reads it so
        assert f"options vfio_pci ids={','.join(ids)}" in after["modprobe_config"], after["modprobe_config"]
        for line in wanted:
            assert line in after["modprobe_config"], (line, after["modprobe_config"])

    def test_softdeps_name_the_drivers_they_had(self, scenario):
        """The softdep lines cover the modules of the drivers the two devices had before the run, as the
        guest showed them (``readlink /sys/bus/pci/devices/<addr>/driver/module``)."""
        before = scenario.steps["before"].state
        lines = conf_lines(scenario.steps["bind"].state["files"][MODPROBE_CONF])
        record = json.loads(scenario.steps["bind"].state["files"][PLAN_RECORD])
        by_addr = {d["address"]: d for d in record["devices"]}
        for addr in (scenario.addresses["gpu"], scenario.addresses["audio"]):
            module = before["driver_modules"][addr]
            assert module, f"{addr}: its driver {before['drivers'][addr]} shows no module"
            assert f"softdep {module} pre: vfio-pci" in lines, (addr, module, lines)
            assert by_addr[addr]["driver_before"] == before["drivers"][addr]
            assert by_addr[addr]["module_before"] == module

    def test_no_override_script_when_every_device_of_the_ids_is_selected(self, scenario):
        after = scenario.steps["bind"].state
        assert OVERRIDE_SCRIPT not in after["tree"]
        assert PLAN_RECORD in after["tree"] and JOURNAL in after["tree"]

    # -- idempotence -----------------------------------------------------------------------------
    def test_the_plugin_hooks_fire_in_the_real_run(self, scenario):
        """hook-log (tests/system/plugins) was loaded for the binding run: every stage's hooks got what the guest has."""
        calls = [json.loads(line) for line in scenario.hook_log.read_text().splitlines()]
        assert {c["host"] for c in calls} == {scenario.host}
        hooks = [c["hook"] for c in calls]
        gpu, audio = scenario.addresses["gpu"], scenario.addresses["audio"]
        order = ["on_load", "on_system_detected", "on_device_enumeration", "on_gpu_detected",
                 "on_pre_vfio_bind", "on_post_vfio_bind", "on_cleanup", "on_unload"]
        assert [h for h in hooks if h in order] == sorted((h for h in hooks if h in order), key=order.index), hooks
        assert hooks.count("on_load") == 1 and hooks[-2:] == ["on_cleanup", "on_unload"], hooks
        facts = scenario.steps["bind"].facts
        (system,) = [c["detail"] for c in calls if c["hook"] == "on_system_detected"]
        assert system == {"distribution": "debian", "kernel": facts["system"]["kernel"]["running"], "iommu_enabled": True}
        (devices,) = [c["detail"] for c in calls if c["hook"] == "on_device_enumeration"]
        assert {gpu, audio} <= set(devices) and set(devices) <= {d["address"] for d in facts["pci_devices"]}
        (found,) = [c["detail"] for c in calls if c["hook"] == "on_gpu_detected"]
        assert found == {"address": gpu, "id": GPU_ID, "driver": "bochs-drm", "companions": [audio]}
        pre = [c["detail"] for c in calls if c["hook"] == "on_pre_vfio_bind"]
        post = [c["detail"] for c in calls if c["hook"] == "on_post_vfio_bind"]
        assert sorted(d["address"] for d in pre) == sorted(d["address"] for d in post) == sorted([gpu, audio])
        assert {d["address"]: d["driver"] for d in pre} == {gpu: "bochs-drm", audio: "snd_hda_intel"}
        assert {d["driver"] for d in post} == {VFIO}
        # the initramfs stage is off in these runs (test_vm_reboot.py runs it): its hooks did not fire
        assert "on_pre_initramfs_update" not in hooks and "on_post_initramfs_update" not in hooks, hooks
        # and the plugin, which changes nothing, changed nothing: the run did what test_bind_run_reports_changes checks
        assert "plugins    hook-log 1.0.0" in scenario.steps["bind"].proc.stdout

    def test_second_run_changes_nothing(self, scenario):
        step = scenario.steps["bind again"]
        assert step.proc.returncode == 0, step.output[-4000:]
        counts = scenario.counts("bind again")
        assert counts["changed"] == 0 and counts["failed"] == 0, counts
        assert_unchanged(scenario.steps["bind"].state, step.state, "second run")

    # -- the VM stage: a nested guest with the bound slot --------------------------------------------
    def test_the_vm_stage_runs_the_nested_guest_to_its_own_power_off(self, scenario):
        """The nested guest's /init powers off only when it sees the GPU and its audio at 01:00.0 and 01:00.1:
        a shutdown (not a timeout) is the nested guest's own word that the passthrough reached it."""
        step = scenario.steps["vm"]
        assert scenario.checks["nested guest files"].returncode == 0, scenario.checks["nested guest files"].stderr
        assert step.proc.returncode == 0, step.output[-6000:]
        counts = scenario.counts("vm")
        assert counts["changed"] >= 1 and counts["failed"] == 0, counts
        gpu, audio = scenario.addresses["gpu"], scenario.addresses["audio"]
        (result,) = scenario.vm_results["vm"]
        assert result["name"] == NESTED_VM and result["defined"] and result["started"], result
        assert result["domain_type"] == "qemu", result            # no /dev/kvm in a TCG guest: auto chose qemu
        assert result["devices"] == [gpu, audio], result          # the GPU brought its audio function
        stats = result["stats"]
        assert stats["shutdown"] == "shutdown", stats
        assert 0 < stats["runtime_seconds"] < NESTED_WAIT and stats["cpu_time_seconds"] > 0, stats
        assert stats["max_memory_mib"] > 16 and stats["samples"], stats
        assert f"vm         {NESTED_VM}: defined, qemu, devices {gpu}, {audio}" in step.proc.stdout, step.output[-4000:]
        assert scenario.checks["nested guest stopped"].stdout.strip() == "shut off"
        record_timing("gpu-audio bind: nested guest runtime (stats)", stats["runtime_seconds"])

    def test_qemu_in_the_guest_took_both_functions_through_vfio(self, scenario):
        """libvirt's QEMU log in the guest: one vfio-pci device per function, on the guest slot the domain gives them."""
        log = scenario.checks["nested guest QEMU log"].stdout
        for addr in (scenario.addresses["gpu"], scenario.addresses["audio"]):
            assert re.search(rf'"driver":"vfio-pci","host":"{re.escape(addr)}"', log) or f"vfio-pci,host={addr}" in log, log[-4000:]
        assert "shutting down, reason=shutdown" in log, log[-3000:]
        xml = scenario.checks["nested guest domain"].stdout
        hostdevs = re.findall(r"<hostdev mode='subsystem' type='pci' managed='no'>.*?</hostdev>", xml, re.S)
        assert len(hostdevs) == 2, xml
        assert "bus='0x01' slot='0x00' function='0x0' multifunction='on'" in hostdevs[0], hostdevs[0]
        assert "bus='0x01' slot='0x00' function='0x1'" in hostdevs[1], hostdevs[1]

    def test_the_vm_hooks_get_the_vm_and_its_measured_run(self, scenario):
        calls = [json.loads(line) for line in scenario.vm_hook_log.read_text().splitlines()]
        hooks = [c["hook"] for c in calls]
        assert hooks[0] == "on_load" and hooks[-2:] == ["on_cleanup", "on_unload"], hooks
        assert hooks.index("on_gpu_detected") < hooks.index("on_pre_vm_start") < hooks.index("on_post_vm_shutdown"), hooks
        (pre,) = [c["detail"] for c in calls if c["hook"] == "on_pre_vm_start"]
        assert pre == {"name": NESTED_VM, "devices": sorted([scenario.addresses["gpu"], scenario.addresses["audio"]]),
                       "memory_mib": 192, "vcpus": 1}
        (post,) = [c["detail"] for c in calls if c["hook"] == "on_post_vm_shutdown"]
        stats = scenario.vm_results["vm"][0]["stats"]
        assert post["name"] == NESTED_VM and post["shutdown"] == "shutdown" and post["samples"] == len(stats["samples"])
        assert post["runtime_seconds"] == stats["runtime_seconds"]
        # the built-in performance monitor got the same figures: its panel in the run report
        (report,) = (scenario.tmp / "report-vm").glob("run-*.html")
        text = html.unescape(report.read_text())
        assert "<h3>Performance</h3>" in text and NESTED_VM in text, text[-4000:]
        assert re.search(r"Runtime: \d+s, Avg GPU Usage: [^,]+, Avg CPU: \d+(\.\d+)?%, Max Memory: \d+MB, \d+ samples, "
                         r"ended: shutdown", text), text[-4000:]

    def test_vm_stage_again_changes_nothing(self, scenario):
        step = scenario.steps["vm again"]
        assert step.proc.returncode == 0, step.output[-4000:]
        counts = scenario.counts("vm again")
        assert counts["changed"] == 0 and counts["failed"] == 0, counts
        (result,) = scenario.vm_results["vm again"]
        assert not result["defined"] and not result["started"], result
        assert f"vm         {NESTED_VM}: unchanged, qemu" in step.proc.stdout
        assert_unchanged(scenario.steps["vm"].state, step.state, "the VM stage again")

    # -- restore -----------------------------------------------------------------------------------
    def test_restore_in_check_mode_shows_the_diff_and_changes_nothing(self, scenario):
        step = scenario.steps["restore --check --diff"]
        assert step.proc.returncode == 0, step.output[-4000:]
        assert scenario.counts(step.name)["failed"] == 0
        assert f"--- before: {MODPROBE_CONF}" in step.proc.stdout, step.output[-4000:]
        for addr in (scenario.addresses["gpu"], scenario.addresses["audio"]):
            old = scenario.steps["before"].state["drivers"][addr]
            assert re.search(rf"^\+{re.escape(addr)} {re.escape(old)}$", step.proc.stdout, re.M), step.output[-4000:]
        assert_unchanged(scenario.steps["vm again"].state, step.state, "restore --check --diff")

    def test_restore_gives_the_devices_back_and_removes_the_file(self, scenario):
        step = scenario.steps["restore"]
        assert step.proc.returncode == 0, step.output[-4000:]
        counts = scenario.counts("restore")
        assert counts["changed"] > 0 and counts["failed"] == 0, counts
        before, after = scenario.steps["before"].state, step.state
        for addr in (scenario.addresses["gpu"], scenario.addresses["audio"]):
            assert after["drivers"][addr] == before["drivers"][addr], addr
            assert after["overrides"][addr] == before["overrides"][addr], addr
        assert after["drivers"] == before["drivers"]
        assert MODPROBE_CONF not in after["tree"] and PLAN_RECORD not in after["tree"]
        assert after["modprobe_config"] == before["modprobe_config"]
        assert str(after["groups"][scenario.addresses["gpu"]]) not in after["dev_vfio"]
        modprobe_d = {p: v for p, v in after["tree"].items() if p.startswith("/etc/modprobe.d")}
        assert modprobe_d == {p: v for p, v in before["tree"].items() if p.startswith("/etc/modprobe.d")}

    def test_second_restore_changes_nothing(self, scenario):
        step = scenario.steps["restore again"]
        assert step.proc.returncode == 0, step.output[-4000:]
        counts = scenario.counts("restore again")
        assert counts["changed"] == 0 and counts["failed"] == 0, counts
        assert_unchanged(scenario.steps["restore"].state, step.state, "second restore")


# ----------------------------------------------------------------------------------------------
# 2 and 3. shared-group: refusals (a shared IOMMU group, the connection's NIC) change nothing
# ----------------------------------------------------------------------------------------------

class TestRefusalsChangeNothing:
    """shared-group: the GPU shares its IOMMU group with an e1000 that is not selected; and the
    virtio-net NIC carries the SSH connection. Both selections fail the host, name why, and leave
    the guest exactly as it was (and reachable)."""

    LAYOUT = "shared-group"

    @staticmethod
    def drive(sc: Scenario) -> None:
        # the NIC of the SSH connection, the way a user finds it: the server address of
        # SSH_CONNECTION, its interface, the PCI function below that interface
        proc = sc.vm.ssh('set -- $SSH_CONNECTION; i=$(ip -o -4 addr show to "$3" | cut -d" " -f2); '
                         'echo "$3 $i $(readlink -f /sys/class/net/$i/device)"', check=True)
        address, iface, path = proc.stdout.split()
        bdfs = [p for p in path.split("/") if BDF.match(p)]
        sc.connection = {"address": address, "interface": iface, "pci": bdfs[-1] if bdfs else None}
        sc.snapshot("before")
        # the display override isolates the group refusal (the VGA is the guest's only GPU)
        sc.play("shared group refused", "playbooks/vfio.yml", vfio_devices=[sc.addresses["gpu"]],
                vfio_allow_boot_display=True)
        sc.play("connection NIC refused", "playbooks/vfio.yml", vfio_devices=[sc.connection["pci"]])
        sc.sh("reachable", f"ip -o link show {iface}")

    def test_gpu_shares_its_group_with_the_nic(self, scenario):
        before = scenario.steps["before"].state
        gpu, nic = scenario.addresses["gpu"], scenario.addresses["nic"]
        assert before["groups"][gpu] == before["groups"][nic]
        assert before["drivers"][nic] == "e1000"

    def test_shared_group_fails_the_host_naming_the_other_device(self, scenario):
        step = scenario.steps["shared group refused"]
        assert step.proc.returncode != 0, step.output[-4000:]
        counts = scenario.counts(step.name)
        assert counts["failed"] == 1 and counts["changed"] == 0 and counts["unreachable"] == 0, counts
        failure = scenario.failure(step.name)
        nic = scenario.addresses["nic"]
        assert nic in failure["msg"], failure["msg"]
        group = scenario.steps["before"].state["groups"][scenario.addresses["gpu"]]
        assert any(nic in e and f"IOMMU group {group}" in e for e in failure["errors"]), failure["errors"]

    def test_shared_group_refusal_changes_nothing(self, scenario):
        before, after = scenario.steps["before"].state, scenario.steps["shared group refused"].state
        assert_unchanged(before, after, "shared group refused")
        assert MODPROBE_CONF not in after["tree"]
        assert after["drivers"][scenario.addresses["gpu"]] == before["drivers"][scenario.addresses["gpu"]]

    def test_connection_nic_found_in_the_guest_and_in_the_facts(self, scenario):
        conn = scenario.connection
        assert conn["pci"] is not None, conn
        assert scenario.steps["before"].state["drivers"][conn["pci"]] == "virtio-pci"
        facts = scenario.steps["shared group refused"].facts
        assert facts["host_usage"]["connection"]["pci_addresses"] == [conn["pci"]]
        assert facts["host_usage"]["connection"]["interfaces"] == [conn["interface"]]
        assert conn["pci"] != scenario.addresses["nic"]   # the e1000 is not the connection

    def test_connection_nic_is_refused_naming_the_ansible_connection(self, scenario):
        step = scenario.steps["connection NIC refused"]
        assert step.proc.returncode != 0, step.output[-4000:]
        counts = scenario.counts(step.name)
        assert counts["failed"] == 1 and counts["changed"] == 0 and counts["unreachable"] == 0, counts
        failure = scenario.failure(step.name)
        assert [r["code"] for r in failure["refusals"]] == ["connection_nic"], failure
        assert "Ansible connection" in failure["msg"] and scenario.connection["pci"] in failure["msg"]
        assert "vfio_allow_connection_nic" in failure["msg"]

    def test_connection_nic_refusal_changes_nothing_and_the_guest_stays_reachable(self, scenario):
        before, after = scenario.steps["before"].state, scenario.steps["connection NIC refused"].state
        assert_unchanged(before, after, "connection NIC refused")   # read over SSH after the run
        link = scenario.checks["reachable"]
        assert link.returncode == 0 and "state UP" in link.stdout, link.stdout + link.stderr
        assert scenario.vm.ssh("true").returncode == 0
