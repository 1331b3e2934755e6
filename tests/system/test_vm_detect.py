"""Detection on a real kernel: boot the Debian guest in each layout, run the real playbook over SSH.

Every layout is booted once (class-scoped fixture). The facts are checked against what the guest's
own kernel shows (``lspci``, ``/sys/kernel/iommu_groups``, ``/proc``, ``modinfo``, the serial log)
and against what QEMU says it placed where (QMP ``query-pci``: layout id -> guest PCI address).
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import vm as vmlib
from _support import FailureWatch, close_ssh_masters, record_timing
from labrun import cached_facts, recap, run_playbook

pytestmark = pytest.mark.system

GPU_ID = ("1234", "1111")       # bochs-display and VGA
HDA_ID = ("8086", "293e")       # ich9-intel-hda
VFIO_MODULES_61 = ("vfio", "vfio_pci", "vfio_iommu_type1", "vfio_virqfd")  # Linux 6.1 still has vfio_virqfd

GROUND_TRUTH = r"""
echo '### uname'; uname -r
echo '### cmdline'; cat /proc/cmdline
echo '### kernels'; ls -1 /lib/modules
echo '### lspci'; lspci -vmm -nn -k -D
echo '### class'; for d in /sys/bus/pci/devices/*; do echo "${d##*/} $(cat "$d/class")"; done
echo '### sysfs'; for d in /sys/bus/pci/devices/*; do p=$(readlink -f "$d"); p=${p%/*}; p=${p##*/}
  ids=$(cat "$d/revision" "$d/subsystem_vendor" "$d/subsystem_device" | tr '\n' ' ')
  echo "${d##*/} $ids$(cat "$d/boot_vga" 2>/dev/null || echo -) $p $(cat "$d/reset_method" 2>/dev/null)"; done
echo '### groups'; for d in /sys/kernel/iommu_groups/*/devices/*; do g=${d#/sys/kernel/iommu_groups/}; echo "${g%%/*} ${d##*/}"; done
echo '### group_types'; for g in /sys/kernel/iommu_groups/*; do echo "${g##*/} $(cat "$g/type")"; done
echo '### units'; ls -1 /sys/class/iommu
echo '### irq_remapped'; grep -c ' IR-' /proc/interrupts || true
echo '### vfio'; for m in vfio vfio-pci vfio_iommu_type1 vfio_virqfd; do echo "$m $(modinfo -F filename "$m" 2>/dev/null || echo missing)"; done
echo '### cpu'; sed -n 's/^vendor_id[[:space:]]*: //p' /proc/cpuinfo | head -1
echo '### os'; . /etc/os-release; echo "$ID $VERSION_ID"
echo '### efi'; if [ -d /sys/firmware/efi ]; then echo uefi; else echo bios; fi
echo '### esp'; findmnt -n -o TARGET,FSTYPE /boot/efi
echo '### dmesg'; dmesg | grep -E 'DMAR|IOMMU|iommu' || true
"""


def parse_sections(text: str) -> dict:
    out, cur = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            cur = line[4:].strip()
            out[cur] = []
        elif cur is not None:
            out[cur].append(line)
    return out


def parse_lspci_vmm(lines: list) -> dict:
    devices = {}
    for block in "\n".join(lines).strip().split("\n\n"):
        rec = dict(line.split(":\t", 1) for line in block.splitlines() if ":\t" in line)
        if rec:
            devices[rec["Slot"]] = rec
    return devices


def bracket_id(text: str) -> str:
    """'VGA compatible controller [0300]' -> '0300'."""
    return re.search(r"\[([0-9a-f]{4})\]\s*$", text).group(1)


@dataclass
class GroundTruth:
    raw: str
    kernel: str
    cmdline: str
    kernels: list
    lspci: dict
    classes: dict
    sysfs: dict           # address -> {revision, subsystem ids, boot_vga, parent, reset_methods}
    groups: dict          # id -> sorted addresses
    group_types: dict
    units: list
    irq_remapped: int
    vfio: dict            # module -> filename or 'missing'
    cpu_vendor_id: str
    os: str
    boot_mode: str
    esp: str
    dmesg: str

    @classmethod
    def collect(cls, vm: vmlib.VM) -> "GroundTruth":
        proc = vm.ssh(GROUND_TRUTH, timeout=180, check=True)
        s = parse_sections(proc.stdout)
        groups: dict = {}
        for line in s["groups"]:
            gid, addr = line.split()
            groups.setdefault(int(gid), []).append(addr)
        return cls(
            raw=proc.stdout, kernel=s["uname"][0].strip(), cmdline=s["cmdline"][0].strip(),
            kernels=sorted(x for x in s["kernels"] if x.strip()),
            lspci=parse_lspci_vmm(s["lspci"]),
            classes=dict(line.split() for line in s["class"] if line.strip()),
            sysfs={f[0]: {"revision": f[1], "subsystem_vendor": f[2], "subsystem_device": f[3], "boot_vga": f[4],
                          "parent": f[5], "reset_methods": f[6:]}
                   for f in (line.split() for line in s["sysfs"] if line.strip())},
            groups={g: sorted(a) for g, a in groups.items()},
            group_types={int(line.split()[0]): line.split()[1] for line in s["group_types"] if line.strip()},
            units=sorted(x for x in s["units"] if x.strip()),
            irq_remapped=int(s["irq_remapped"][0].strip() or 0),
            vfio=dict(line.split(None, 1) for line in s["vfio"] if line.strip()),
            cpu_vendor_id=s["cpu"][0].strip(), os=s["os"][0].strip(), boot_mode=s["efi"][0].strip(), esp=" ".join(s["esp"]).strip(),
            dmesg="\n".join(s["dmesg"]))


@dataclass
class Booted:
    layout: str
    host: str
    addresses: dict              # layout id -> guest PCI address (QEMU's view)
    truth: GroundTruth
    proc: object                 # ansible-playbook CompletedProcess
    tmp: Path
    serial: str
    timings: dict = field(default_factory=dict)
    _facts: dict | None = None

    @property
    def output(self) -> str:
        return self.proc.stdout + self.proc.stderr

    @property
    def facts(self) -> dict:
        if self._facts is None:
            try:
                self._facts = cached_facts(self.tmp, self.host)["vfio"]
            except (OSError, KeyError, ValueError) as exc:
                pytest.fail(f"no facts cached for {self.host} ({exc}); ansible-playbook said:\n"
                            f"{self.output[-4000:]}")
        return self._facts

    def gpu(self, layout_id: str) -> dict:
        addr = self.addresses[layout_id]
        gpus = {g["address"]: g for g in self.facts["gpus"]}
        assert addr in gpus, f"{layout_id} at {addr} is not among the detected GPUs {sorted(gpus)}"
        return gpus[addr]

    def device(self, address: str) -> dict:
        return next(d for d in self.facts["pci_devices"] if d["address"] == address)


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


@pytest.fixture(scope="class")
def booted(request, guest_image, tmp_path_factory):
    """Boot the class's LAYOUT once, collect the ground truth, run playbooks/vfio.yml against it."""
    layout = request.cls.LAYOUT
    host = f"vm-{layout}"
    tmp = tmp_path_factory.mktemp(f"vm-{layout}")
    watch = FailureWatch(request)
    t0 = time.monotonic()
    with vmlib.VM(guest_image, layout) as vm:
        vm.wait_ssh()
        t_ssh = time.monotonic()
        addresses = vm.pci_addresses()
        truth = GroundTruth.collect(vm)
        inventory = write_inventory(tmp, host, vm)
        t_play = time.monotonic()
        proc = run_playbook(tmp, "playbooks/vfio.yml", inventory=inventory,
                            ANSIBLE_SSH_CONTROL_PATH_DIR=str(tmp / "cp"))
        t_done = time.monotonic()
        timings = {"boot to SSH": t_ssh - t0, "ground truth (ssh)": t_play - t_ssh,
                   "ansible-playbook": t_done - t_play}
        result = Booted(layout=layout, host=host, addresses=addresses, truth=truth, proc=proc, tmp=tmp,
                        serial=vm.serial_text(), timings=timings)
        vm.note(f"addresses (QMP): {addresses}")
        close_ssh_masters(tmp / "cp")
        try:
            yield result
        finally:
            result.serial = vm.serial_text()
            if watch.failed:
                dest = vm.keep_artifacts(f"a test of layout {layout} failed")
                (dest / "ansible-playbook.out").write_text(result.output)
                (dest / "ground-truth.txt").write_text(truth.raw)
                try:
                    (dest / "facts.json").write_text(json.dumps(cached_facts(tmp, host), indent=1))
                except (OSError, ValueError):
                    pass
    total = time.monotonic() - t0
    for name, seconds in timings.items():
        record_timing(f"{layout}: {name}", seconds)
    record_timing(f"{layout}: total (boot, checks, stop)", total)


class DetectChecks:
    """What holds on every layout. Subclasses set LAYOUT and add the layout's own checks."""

    LAYOUT = ""

    def test_playbook_runs_and_changes_nothing(self, booted):
        assert booted.proc.returncode == 0, booted.output[-4000:]
        counts = recap(booted.proc.stdout)[booted.host]
        assert counts["ok"] >= 1 and counts["changed"] == 0, counts
        assert counts["failed"] == 0 and counts["unreachable"] == 0, counts

    def test_summary_names_the_host_and_its_gpus(self, booted):
        out = booted.proc.stdout
        assert "VFIO SUMMARY" in out, out[-3000:]
        summary = out[out.index("VFIO SUMMARY"):]
        assert re.search(rf"^{re.escape(booted.host)}$", summary, re.M), summary
        for gpu in booted.facts["gpus"]:
            assert gpu["address"] in summary
        assert "iommu      on (intel" in summary, summary

    def test_pci_devices_are_what_lspci_shows(self, booted):
        seen = booted.truth.lspci
        facts = {d["address"]: d for d in booted.facts["pci_devices"]}
        assert sorted(facts) == sorted(seen)
        for addr, rec in seen.items():
            d = facts[addr]
            assert bracket_id(rec["Vendor"]) == d["vendor_id"], (addr, rec, d)
            assert bracket_id(rec["Device"]) == d["device_id"], (addr, rec, d)
            assert bracket_id(rec["Class"]) == d["class"][:4], (addr, rec, d)
            assert "0x" + d["class"] == booted.truth.classes[addr], (addr, d)
            assert rec.get("Driver") == d["driver"], (addr, rec, d)
            assert rec.get("IOMMUGroup") == str(d["iommu_group"]), (addr, rec, d)
            assert d["is_bridge"] == d["class"].startswith(("0600", "0604", "0609")), addr  # docs/facts.md

    def test_pci_attributes_are_the_kernels(self, booted):
        for d in booted.facts["pci_devices"]:
            t = booted.truth.sysfs[d["address"]]
            assert "0x" + d["revision"] == t["revision"], d["address"]
            assert ("0x" + d["subsystem_vendor_id"], "0x" + d["subsystem_device_id"]) == (
                t["subsystem_vendor"], t["subsystem_device"]), d["address"]
            assert d["boot_vga"] is (t["boot_vga"] == "1"), (d["address"], t)
            parent = t["parent"] if re.match(r"^[0-9a-f]{4}:[0-9a-f]{2}:", t["parent"]) else None
            assert d["parent_bridge"] == parent, (d["address"], t)
            assert d["reset_methods"] == t["reset_methods"], (d["address"], t)

    def test_layout_devices_are_where_qemu_put_them(self, booted):
        facts = {d["address"]: d for d in booted.facts["pci_devices"]}
        for layout_id, addr in booted.addresses.items():
            assert addr in facts, f"{layout_id}: QEMU placed it at {addr}, the detection does not list it"

    def test_iommu_groups_are_the_kernels(self, booted):
        groups = {g["id"]: g for g in booted.facts["iommu_groups"]}
        assert sorted(groups) == sorted(booted.truth.groups)
        for gid, devices in booted.truth.groups.items():
            assert sorted(groups[gid]["devices"]) == devices, gid
            assert groups[gid]["type"] == booted.truth.group_types[gid], gid
        for d in booted.facts["pci_devices"]:
            assert d["address"] in booted.truth.groups[d["iommu_group"]]

    def test_iommu_is_on_intel_with_interrupt_remapping(self, booted):
        io = booted.facts["iommu"]
        assert booted.truth.units == ["dmar0"] and booted.truth.irq_remapped > 0  # the kernel's view
        assert io["enabled"] is True
        assert io["type"] == "intel", io
        assert io["units"] == booted.truth.units
        assert io["groups_count"] == len(booted.truth.groups)
        assert io["interrupt_remapping"] is True
        assert io["firmware_table"] == "DMAR" and io["firmware_table_present"] is True, io
        assert io["problems"] == [] and io["reason"] is None, io["problems"]
        assert io["passthrough_mode"] is False
        assert io["default_domain_type"] == booted.truth.group_types[min(booted.truth.groups)]

    def test_serial_log_shows_the_kernels_iommu_lines(self, booted):
        serial = booted.serial
        assert "DMAR: IOMMU enabled" in serial, "serial log tail:\n" + serial[-3000:]
        assert "DMAR-IR: Enabled IRQ remapping" in serial
        assert re.search(r"iommu: Default domain type: Translated", serial)
        assert "DMAR: IOMMU enabled" in booted.truth.dmesg

    def test_system_kernel_and_cmdline(self, booted):
        f, t = booted.facts, booted.truth
        assert f["system"]["distribution"]["id"] == "debian" and f["system"]["distribution"]["version_id"] == "12"
        assert t.os == "debian 12"
        assert f["system"]["distribution"]["family"] == "debian"
        assert f["system"]["cpu"]["vendor_id"] == t.cpu_vendor_id
        assert f["system"]["kernel"]["running"] == t.kernel
        assert f["system"]["kernel"]["installed"] == t.kernels
        assert f["system"]["boot"]["mode"] == t.boot_mode == "uefi"
        assert f["cmdline"]["raw"].strip() == t.cmdline
        params = {(p["name"], p["value"]) for p in f["cmdline"]["params"]}
        assert {("intel_iommu", "on"), ("no_timer_check", None), ("console", "ttyS0")} <= params
        assert f["root"] == "/"

    def test_boot_stack_is_grub_and_initramfs_tools(self, booted):
        f = booted.facts
        assert f["bootloader"]["name"] == "grub", f["bootloader"]
        assert "/boot/grub/grub.cfg" in f["bootloader"]["evidence"]
        assert f["bootloader"]["esp"] == "/boot/efi" and booted.truth.esp == "/boot/efi vfat"
        assert f["initramfs"]["name"] == "initramfs-tools", f["initramfs"]
        assert f["initramfs"]["ambiguous"] is False

    def test_vfio_modules_ready_for_the_installed_kernel(self, booted):
        vm_ = booted.facts["vfio_modules"]
        kernel = booted.truth.kernel
        assert vm_["ready"] is True
        assert sorted(vm_["kernels"]) == booted.truth.kernels
        per = vm_["kernels"][kernel]
        assert per["ready"] is True and per["builtin"] == []
        for mod in VFIO_MODULES_61:
            on_disk = booted.truth.vfio[mod.replace("_pci", "-pci")]
            assert on_disk.endswith(".ko"), (mod, on_disk)
            assert per["modules"][mod] == "module", (mod, per)
        assert vm_["loaded"] == []  # nothing binds to vfio yet

    def test_gpus_are_the_display_class_devices(self, booted):
        display = sorted(a for a, c in booted.truth.classes.items() if c.startswith("0x03"))
        assert [g["address"] for g in booted.facts["gpus"]] == display
        for g in booted.facts["gpus"]:
            assert (g["vendor_id"], g["device_id"]) == GPU_ID
            assert g["vendor"] == "other" and g["bmc"] is False
            assert g["driver"] == booted.truth.lspci[g["address"]].get("Driver") == "bochs-drm"

    def test_no_warnings_on_a_real_kernel(self, booted):
        assert booted.facts["warnings"] == []


class TestGpuAudio(DetectChecks):
    LAYOUT = "gpu-audio"

    def test_gpu_with_its_audio_companion_in_a_viable_group(self, booted):
        gpu = booted.gpu("gpu")
        audio_addr = booted.addresses["audio"]
        audio = booted.device(audio_addr)
        assert gpu["class"] == "038000"                       # bochs-display: display controller
        assert (audio["vendor_id"], audio["device_id"]) == HDA_ID and audio["class"] == "040300"
        assert audio["driver"] == "snd_hda_intel"
        assert gpu["companions"] == [audio_addr]
        assert gpu["address"][:-1] == audio_addr[:-1]        # same slot, functions 0 and 1
        assert gpu["iommu_group"] == audio["iommu_group"]
        assert gpu["slot_groups"] == [gpu["iommu_group"]]
        assert gpu["group_viable"] is True and gpu["group_blockers"] == []
        assert gpu["identical_to"] == []
        assert booted.truth.groups[gpu["iommu_group"]] == sorted([gpu["address"], audio_addr])
        assert gpu["kind"] == "discrete"

    def test_summary_shows_the_companion_and_the_verdict(self, booted):
        out = booted.proc.stdout
        summary = out[out.index("VFIO SUMMARY"):]
        gpu = booted.gpu("gpu")
        assert f"+ {booted.addresses['audio']}" in summary
        assert f"group {gpu['iommu_group']}: viable for passthrough" in summary


class TestIdenticalGpus(DetectChecks):
    LAYOUT = "identical-gpus"

    def test_each_gpu_points_at_the_other(self, booted):
        one, two = booted.gpu("gpu1"), booted.gpu("gpu2")
        assert one["identical_to"] == [two["address"]]
        assert two["identical_to"] == [one["address"]]
        assert one["iommu_group"] != two["iommu_group"]
        for g in (one, two):
            assert g["class"] == "038000" and g["companions"] == []
            assert g["group_viable"] is True and g["group_blockers"] == []
            assert booted.truth.groups[g["iommu_group"]] == [g["address"]]

    def test_summary_says_select_by_address(self, booted):
        out = booted.proc.stdout
        summary = out[out.index("VFIO SUMMARY"):]
        assert summary.count("select by address") == 2


class TestSharedGroup(DetectChecks):
    LAYOUT = "shared-group"

    def test_gpu_behind_a_conventional_bridge_is_not_viable(self, booted):
        gpu = booted.gpu("gpu")
        nic_addr = booted.addresses["nic"]
        nic = booted.device(nic_addr)
        assert gpu["class"] == "030000"                        # VGA: VGA compatible controller
        assert nic["driver"] == "e1000" and nic["class"] == "020000"
        assert gpu["iommu_group"] == nic["iommu_group"]
        group = booted.truth.groups[gpu["iommu_group"]]
        assert gpu["address"] in group and nic_addr in group
        assert gpu["group_viable"] is False
        assert gpu["group_blockers"] == [nic_addr]
        # the bridges are in the group too but never block it
        bridges = [a for a in group if booted.truth.classes[a].startswith("0x0604")]
        assert {booted.addresses["pcibridge"], booted.addresses["pcie2pci"]} <= set(bridges)
        assert booted.device(gpu["address"])["parent_bridge"] == booted.addresses["pcibridge"]
        assert booted.device(booted.addresses["pcibridge"])["parent_bridge"] == booted.addresses["pcie2pci"]

    def test_summary_names_the_blocker(self, booted):
        out = booted.proc.stdout
        summary = out[out.index("VFIO SUMMARY"):]
        gpu = booted.gpu("gpu")
        assert f"group {gpu['iommu_group']}: NOT viable, shared with:" in summary
        assert f"- {booted.addresses['nic']}" in summary


class TestAmdCpuWithIntelIommu(TestGpuAudio):
    """gpu-audio's slot in a VM whose CPU says AuthenticAMD (QEMU/KVM on an AMD host with intel-iommu)."""

    LAYOUT = "amd-host-intel-iommu"

    def test_the_kernel_runs_intel_vt_d_on_an_amd_cpu(self, booted):
        assert booted.truth.cpu_vendor_id == "AuthenticAMD"
        assert booted.facts["system"]["cpu"]["vendor"] == "amd"
        assert booted.truth.units == ["dmar0"] and "DMAR: IOMMU enabled" in booted.serial
        io = booted.facts["iommu"]
        assert io["enabled"] is True and io["units"] == ["dmar0"] and io["interrupt_remapping"] is True
