"""The VM stage against a real libvirtd: rendered domains accepted by ``virsh define`` (and
virt-xml-validate), idempotent definition, redefinition of a changed spec, and a real lifecycle of a
tiny guest (direct kernel boot of a Debian kernel with a busybox initramfs) under QEMU's TCG."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from conftest import REPO, TIMINGS, Recorder, run, timed

from ansible_collections.exliar.vfio.plugins.module_utils import _vm_domain as domain
from ansible_collections.exliar.vfio.plugins.module_utils import _vm_stage as stage

pytestmark = pytest.mark.libvirt

DISKS = [{"path": "/var/lib/libvirt/images/exliar-a.qcow2"}, {"path": "/var/lib/libvirt/images/exliar-b.img", "bus": "sata"},
         {"path": "/var/lib/libvirt/images/exliar-c.raw", "bus": "scsi"}, {"path": "/var/lib/libvirt/images/exliar.iso", "device": "cdrom"}]
GPU_SLOT = [{"address": "0000:01:00.0", "vendor_id": "10de", "device_id": "2204", "class": "030000"},
            {"address": "0000:01:00.1"}, {"address": "0000:01:00.2"}, {"address": "0000:01:00.3"}]
HIDDEN = {"hypervisor_hidden": True, "vendor_id": "exliarvfio", "kvm_hidden": True}

# Specs covering every element the renderer writes; host devices and disks need not exist for a definition.
MATRIX = {
    "efi-q35-everything": {"memory_mib": 4096, "vcpus": 4, "disks": DISKS, "devices": GPU_SLOT + [{"address": "0000:05:00.0"}],
                           "features": HIDDEN},
    "efi-q35-plain": {"memory_mib": 1024, "vcpus": 2},
    "bios-i440fx-hostdevs": {"memory_mib": 512, "vcpus": 1, "firmware": "bios", "machine": "pc", "devices": GPU_SLOT[:2] +
                             [{"address": "0000:02:00.0"}], "disks": DISKS[:2]},
    "efi-no-function-0": {"memory_mib": 512, "vcpus": 1, "devices": [{"address": "0000:03:00.1"}, {"address": "0000:03:00.2"}]},
    "bios-kernel-boot": {"memory_mib": 128, "vcpus": 1, "firmware": "bios", "kernel": "/boot/vmlinuz", "initrd": "/boot/initrd.img",
                         "cmdline": "console=ttyS0 quiet a=<b>&c"},
}


def virsh_text(*args) -> str:
    rc, out, err = run(["virsh", "--connect", "qemu:///system"] + list(args))
    assert rc == 0, err
    return out


@pytest.mark.parametrize("domain_type", ["qemu", "kvm"])
@pytest.mark.parametrize("case", sorted(MATRIX))
def test_every_rendering_is_accepted_by_libvirt(virsh, domains, case, domain_type):
    if domain_type == "kvm" and not virsh.kvm_available():
        pytest.skip("libvirt offers no kvm domains on this machine")
    name = domains(f"{case}-{domain_type}")
    vm = domain.validate(dict(MATRIX[case], name=name))
    firmware = stage.find_ovmf("/") if vm["firmware"] == "efi" else {}
    assert not firmware.get("problem"), firmware.get("problem")
    rendered = domain.render(vm, domain_type, firmware)
    if shutil.which("virt-xml-validate"):
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"{name}.xml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(rendered["xml"])
        try:
            proc = subprocess.run(["virt-xml-validate", path, "domain"], capture_output=True, text=True, check=False)
        finally:
            os.unlink(path)
        assert proc.returncode == 0, proc.stderr + proc.stdout
    virsh.define(rendered["xml"])
    dumped = virsh.inactive_xml(name)
    assert domain.stored_hash(dumped) == rendered["hash"]  # libvirt keeps our metadata: the idempotence test works
    tree = ET.fromstring(dumped)
    assert tree.get("type") == domain_type
    hostdevs = tree.findall("devices/hostdev")
    assert len(hostdevs) == len(vm["devices"]) and all(h.get("managed") == "no" for h in hostdevs)
    if case == "efi-q35-everything":  # the multifunction slot and the second card, each on its own root port
        guest = [(h.find("address").get("bus"), h.find("address").get("function"), h.find("address").get("multifunction"))
                 for h in hostdevs]
        assert guest == [("0x01", "0x0", "on"), ("0x01", "0x1", None), ("0x01", "0x2", None), ("0x01", "0x3", None), ("0x02", "0x0", None)]
        ports = {c.get("index") for c in tree.findall("devices/controller[@model='pcie-root-port']")}
        assert {"1", "2"} <= ports


def test_define_is_idempotent_and_a_changed_spec_redefines(virsh, domains, state_root, guest):
    name = domains("idempotent")
    spec = {"name": name, "memory_mib": 128, "vcpus": 1, "kernel": guest["kernel"], "initrd": guest["initrd"]["poweroff"],
            "cmdline": guest["cmdline"]}
    with timed("apply: first definition"):
        first = stage.apply("/", [spec], False, run, state_root=state_root)
    out = first["vms"][0]
    assert first["changed"] and out["defined"] and out["existed"] is False and out["state"] == "shut off"
    assert out["domain_type"] == ("kvm" if virsh.kvm_available() else "qemu")  # auto, from libvirt's capabilities
    assert out["firmware"]["loader"] and os.path.isfile(out["firmware"]["loader"])
    assert domain.stored_hash(virsh.inactive_xml(name)) == out["hash"]
    uuid = domain.domain_uuid(virsh.inactive_xml(name))
    assert uuid and domain.domain_uuid(out["xml"]) == uuid
    state_file = os.path.join(state_root, out["state_file"].lstrip("/"))
    with open(state_file, encoding="utf-8") as handle:
        assert handle.read() == out["xml"]

    recorder = Recorder()
    with timed("apply: converged (no change)"):
        second = stage.apply("/", [spec], False, recorder, state_root=state_root)
    assert second["changed"] is False and second["vms"][0]["defined"] is False
    assert not recorder.virsh("define") and not recorder.virsh("start")
    assert second["vms"][0]["diff"]["before"] == second["vms"][0]["diff"]["after"]

    changed = dict(spec, memory_mib=192)
    recorder = Recorder()
    preview = stage.apply("/", [changed], True, recorder, state_root=state_root)
    assert preview["changed"] and preview["vms"][0]["defined"] and not recorder.virsh("define")
    assert domain.stored_hash(virsh.inactive_xml(name)) == out["hash"]  # check mode changed nothing
    assert preview["vms"][0]["diff"]["before"] == out["xml"]

    with timed("apply: redefinition"):
        third = stage.apply("/", [changed], False, run, state_root=state_root)
    again = third["vms"][0]
    assert third["changed"] and again["defined"] and again["existed"] is True and again["hash"] != out["hash"]
    dumped = virsh.inactive_xml(name)
    assert domain.stored_hash(dumped) == again["hash"] and domain.domain_uuid(dumped) == uuid
    assert ET.fromstring(dumped).find("memory").text == str(192 * 1024)
    assert again["diff"]["before"] == out["xml"] and again["diff"]["after"] == again["xml"]


def test_a_tiny_guest_runs_powers_off_and_is_measured(virsh, domains, state_root, guest):
    name = domains("lifecycle")
    spec = {"name": name, "memory_mib": 128, "vcpus": 1, "firmware": "bios", "domain_type": "qemu",
            "kernel": guest["kernel"], "initrd": guest["initrd"]["poweroff"], "cmdline": guest["cmdline"],
            "features": HIDDEN, "start": True, "wait_timeout": 150, "monitor": {"interval_seconds": 0.5}}
    with timed("lifecycle: define, start, guest powers off (TCG)"):
        result = stage.apply("/", [spec], False, run, state_root=state_root, poll=0.25)
    out = result["vms"][0]
    assert out["defined"] and out["started"] and out["changed"] and out["state"] == "shut off"
    stats = out["stats"]
    assert stats["shutdown"] == "shutdown" and stats["reason"] == "shutdown"
    assert 0 < stats["runtime_seconds"] < 150
    assert stats["cpu_time_seconds"] and 0 < stats["cpu_time_seconds"] < stats["runtime_seconds"] * 2 + 1
    assert stats["max_memory_mib"] and 16 < stats["max_memory_mib"] < 2048
    assert stats["gpu"] == {}
    samples = stats["samples"]
    assert samples and all(set(s) == {"t", "cpu_seconds", "rss_mib", "gpu_busy"} for s in samples)
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    assert max(s["rss_mib"] for s in samples) <= stats["max_memory_mib"]
    TIMINGS["lifecycle guest: runtime_seconds (stats)"] = stats["runtime_seconds"]
    TIMINGS["lifecycle guest: cpu_time_seconds (stats)"] = stats["cpu_time_seconds"]
    log = f"/var/log/libvirt/qemu/{name}.log"
    assert os.path.exists(log)


def test_a_guest_that_does_not_power_off_is_left_running(virsh, domains, state_root, guest):
    name = domains("timeout")
    spec = {"name": name, "memory_mib": 128, "vcpus": 1, "firmware": "bios", "domain_type": "qemu",
            "kernel": guest["kernel"], "initrd": guest["initrd"]["sleep"], "cmdline": guest["cmdline"],
            "start": True, "wait_timeout": 2}
    with timed("timeout: start, 2 s wait, left running"):
        with pytest.raises(stage.StageError) as exc:
            stage.apply("/", [spec], False, run, state_root=state_root, poll=0.25)
    assert f"virsh shutdown {name}" in str(exc.value) and "left running" in str(exc.value)
    out = exc.value.result["vms"][0]
    assert exc.value.result["changed"] and out["started"] and out["stats"]["shutdown"] == "timeout" and out["state"] == "running"
    assert virsh.state(name)[0] == "running"
    recorder = Recorder()
    again = stage.apply("/", [dict(spec, wait=False)], False, recorder, state_root=state_root)
    assert again["changed"] is False and again["vms"][0]["started"] is False and again["vms"][0]["state"] == "running"
    assert not recorder.virsh("start")


def test_an_efi_guest_starts_with_its_own_nvram(virsh, domains, state_root, guest):
    """OVMF under TCG boots too slowly to wait for here: start it, see it run, and cut it."""
    name = domains("efi")
    spec = {"name": name, "memory_mib": 256, "vcpus": 1, "domain_type": "qemu", "kernel": guest["kernel"],
            "initrd": guest["initrd"]["poweroff"], "cmdline": guest["cmdline"], "start": True, "wait": False}
    with timed("efi: define and start"):
        out = stage.apply("/", [spec], False, run, state_root=state_root)["vms"][0]
    assert out["started"] and out["stats"] is None and out["state"] == "running"
    nvram = ET.fromstring(virsh.inactive_xml(name)).find("os/nvram")
    assert nvram.get("template") == out["firmware"]["nvram_template"] and os.path.isfile(nvram.text)


def test_libvirt_not_answering(libvirtd, state_root):
    spec = {"name": "exliar-vfio-test-nolibvirt", "memory_mib": 128, "vcpus": 1, "firmware": "bios"}
    uri = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"
    with pytest.raises(stage.StageError) as exc:
        stage.apply("/", [spec], False, run, uri=uri, state_root=state_root)
    text = str(exc.value)
    assert "libvirt does not answer" in text and "apt install libvirt-daemon-system" in text
    assert "systemctl enable --now libvirtd" in text and "Nothing was changed" in text
    preview = stage.apply("/", [spec], True, run, uri=uri, state_root=state_root)
    assert preview["changed"] and "<domain" in preview["vms"][0]["xml"]
    assert any("rendered without asking libvirt" in w for w in preview["warnings"])
    assert not os.path.exists(state_root)


def test_the_module_through_ansible_in_check_mode(libvirtd, domains, guest, tmp_path):
    """AnsiballZ ships the module with its module_utils (static imports only); check mode asks libvirt, changes nothing."""
    name = domains("ansible")
    args = {"vms": [{"name": name, "memory_mib": 128, "vcpus": 1, "firmware": "bios", "kernel": guest["kernel"]}]}
    env = {k: v for k, v in os.environ.items() if k != "ANSIBLE_CONFIG"}  # no summary callback on stdout: plain JSON
    env.update(ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"), ANSIBLE_STDOUT_CALLBACK="minimal")
    bindir = os.path.dirname(sys.executable)
    with timed("ansible -m exliar.vfio.vfio_vm --check --diff"):
        proc = subprocess.run([os.path.join(bindir, "ansible"), "localhost", "-i", "localhost,", "-c", "local",
                               "-e", f"ansible_python_interpreter={sys.executable}",
                               "-m", "exliar.vfio.vfio_vm", "-a", json.dumps(args), "--check", "--diff"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"+  <name>{name}</name>" in proc.stdout  # the diff, printed before the result
    result = json.loads(proc.stdout[proc.stdout.index("localhost | CHANGED => ") + len("localhost | CHANGED => "):])
    assert result["changed"] and result["vms"][0]["defined"] and result["vms"][0]["existed"] is False
    rc, _out, _err = run(["virsh", "--connect", "qemu:///system", "dominfo", name])
    assert rc != 0  # check mode defined nothing
