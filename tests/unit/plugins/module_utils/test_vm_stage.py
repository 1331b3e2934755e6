"""The VM stage on a sysroot (check mode only there: libvirt is never asked below a root other than /),
and the vfio_vm module the AnsibleModule way. The real libvirt runs are in tests/libvirt."""
from __future__ import annotations

import json
import os

import pytest
from ansible.module_utils.common.warnings import _global_warnings  # pylint: disable=protected-access
from ansible.module_utils.testing import patch_module_args

from ansible_collections.exliar.vfio.plugins.module_utils import _vm_domain as domain
from ansible_collections.exliar.vfio.plugins.module_utils import _vm_stage as stage
from ansible_collections.exliar.vfio.plugins.modules import vfio_vm

GPU, AUDIO, NIC = "0000:01:00.0", "0000:01:00.1", "0000:03:00.0"


def never_run(argv):
    raise AssertionError(f"no command may run on a sysroot: {argv}")


def write(root, path, text=""):
    full = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w", encoding="utf-8") as handle:
        handle.write(text)


def device(root, address, driver):
    """A PCI function in sysfs as the kernel lays it out: devices/<addr>, bus link, driver link."""
    real = os.path.join(root, "sys/devices/pci0000:00", address)
    os.makedirs(real, exist_ok=True)
    os.makedirs(os.path.join(root, "sys/bus/pci/devices"), exist_ok=True)
    os.symlink(f"../../../devices/pci0000:00/{address}", os.path.join(root, "sys/bus/pci/devices", address))
    if driver:
        os.makedirs(os.path.join(root, "sys/bus/pci/drivers", driver), exist_ok=True)
        os.symlink(f"../../../bus/pci/drivers/{driver}", os.path.join(real, "driver"))


@pytest.fixture
def host(tmp_path):
    """A Debian sysroot with OVMF, a GPU + audio on vfio-pci, a NIC on its own driver and a disk image."""
    root = str(tmp_path / "root")
    write(root, "etc/os-release", "ID=debian\nVERSION_ID=12\n")
    write(root, "usr/share/OVMF/OVMF_CODE_4M.fd")
    write(root, "usr/share/OVMF/OVMF_VARS_4M.fd")
    write(root, "usr/share/OVMF/OVMF_CODE.fd")
    write(root, "var/lib/libvirt/images/win11.qcow2")
    device(root, GPU, "vfio-pci")
    device(root, AUDIO, "vfio-pci")
    device(root, NIC, "e1000e")
    return root


def vm(**over):
    base = {"name": "win11", "memory_mib": 8192, "vcpus": 4, "disks": [{"path": "/var/lib/libvirt/images/win11.qcow2"}],
            "devices": [{"address": GPU}, {"address": AUDIO}]}
    base.update(over)
    return base


def preview(root, *vms):
    return stage.apply(root, list(vms), True, never_run)


def error(root, *vms, check_mode=True) -> str:
    with pytest.raises(stage.StageError) as exc:
        stage.apply(root, list(vms), check_mode, never_run)
    assert "Nothing was changed" in str(exc.value)
    return str(exc.value)


def test_check_mode_on_a_sysroot_renders_and_writes_nothing(host):
    before = sorted(os.walk(host))
    result = preview(host, vm())
    assert result["changed"] is True
    out = result["vms"][0]
    assert out["changed"] and out["defined"] and out["started"] is False and out["existed"] is None and out["state"] is None
    assert out["firmware"] == {"type": "efi", "loader": "/usr/share/OVMF/OVMF_CODE_4M.fd",
                               "nvram_template": "/usr/share/OVMF/OVMF_VARS_4M.fd"}
    assert out["devices"] == [GPU, AUDIO] and out["state_file"] == "/var/lib/exliar-vfio/state/vm/win11.xml"
    assert domain.stored_hash(out["xml"]) == out["hash"] and "<uuid>" not in out["xml"]
    assert out["diff"]["before"] == "" and out["diff"]["after"] == out["xml"]
    assert sorted(os.walk(host)) == before


def test_a_real_run_below_a_sysroot_is_refused(host):
    assert "VMs can only be defined on the running system" in error(host, vm(), check_mode=False)
    assert not os.path.exists(os.path.join(host, "var/lib/exliar-vfio"))


def test_the_state_file_stands_in_for_libvirt(host):
    """Defined before with the same rendering (same hash): check mode predicts no change; the UUID is kept."""
    first = preview(host, vm())["vms"][0]
    known = first["xml"].replace("<name>win11</name>", "<name>win11</name>\n  <uuid>6f1c4c4e-27a8-4a54-9c54-1b6f4b1c8c11</uuid>")
    write(host, first["state_file"], known)
    again = preview(host, vm())
    assert again["changed"] is False and again["vms"][0]["defined"] is False
    assert "<uuid>6f1c4c4e-27a8-4a54-9c54-1b6f4b1c8c11</uuid>" in again["vms"][0]["xml"]
    assert again["vms"][0]["diff"]["before"] == known
    changed = preview(host, vm(vcpus=8))["vms"][0]
    assert changed["defined"] is True and changed["diff"]["before"] == known and "<vcpu placement=\"static\">8</vcpu>" in changed["xml"]


def test_start_in_check_mode_predicts_a_change(host):
    write(host, "var/lib/exliar-vfio/state/vm/win11.xml", preview(host, vm())["vms"][0]["xml"])
    out = preview(host, vm(start=True))["vms"][0]
    assert out["defined"] is False and out["started"] is True and out["changed"] is True


def test_a_device_not_yet_on_vfio_pci_warns_in_check_mode(host):
    result = preview(host, vm(devices=[{"address": GPU}, {"address": NIC}]))
    assert any(f"{NIC} is on e1000e, not vfio-pci: bind it first with the binding stage" in w for w in result["warnings"])


def test_a_missing_device_is_an_error_even_in_check_mode(host):
    text = error(host, vm(devices=[{"address": "0000:09:00.0"}]))
    assert "there is no PCI device 0000:09:00.0 on this host" in text


def test_device_problems_on_the_running_kernel_layout(host):
    assert stage.device_problems(host, [{"address": GPU}]) == []
    [(address, message, later)] = stage.device_problems(host, [{"address": NIC}])
    assert address == NIC and later is True and "vfio_devices" in message


def test_bad_specs_fail_before_anything_else(host):
    text = error(host, vm(vcpus=0), vm(name="b", memory_mib=1))
    assert "vms[0] (win11).vcpus" in text and "vms[1] (b).memory_mib" in text


def test_every_vm_is_checked_before_anything_changes(host):
    text = error(host, vm(), vm(name="other", devices=[{"address": "0000:09:00.0"}], kernel="/boot/nope", initrd="/boot/nope.img"))
    assert "other: there is no PCI device" in text
    assert not os.path.exists(os.path.join(host, "var/lib/exliar-vfio"))


def test_missing_disks_and_kernels_warn_in_check_mode(host):
    result = preview(host, vm(disks=[{"path": "/var/lib/libvirt/images/none.qcow2"}], kernel="/boot/vmlinuz"))
    texts = " ".join(result["warnings"])
    assert "the disk /var/lib/libvirt/images/none.qcow2 does not exist" in texts and "the kernel /boot/vmlinuz does not exist" in texts


@pytest.mark.parametrize("files, loader, template", [
    (["usr/share/OVMF/OVMF_CODE_4M.fd", "usr/share/OVMF/OVMF_VARS_4M.fd"], "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    (["usr/share/OVMF/OVMF_CODE.fd", "usr/share/OVMF/OVMF_VARS.fd"], "/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    (["usr/share/edk2/ovmf/OVMF_CODE.fd", "usr/share/edk2/ovmf/OVMF_VARS.fd"], "/usr/share/edk2/ovmf/OVMF_CODE.fd",
     "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    (["usr/share/edk2/x64/OVMF_CODE.4m.fd", "usr/share/edk2/x64/OVMF_VARS.4m.fd"], "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
     "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),
    (["usr/share/qemu/ovmf-x86_64-code.bin"], "/usr/share/qemu/ovmf-x86_64-code.bin", None),
])
def test_ovmf_per_distribution(tmp_path, files, loader, template):
    for path in files:
        write(str(tmp_path), path)
    assert stage.find_ovmf(str(tmp_path)) == {"loader": loader, "nvram_template": template, "problem": None}


def test_an_explicit_loader_takes_its_vars_sibling(tmp_path):
    write(str(tmp_path), "opt/fw/MY_CODE.fd")
    write(str(tmp_path), "opt/fw/MY_VARS.fd")
    assert stage.find_ovmf(str(tmp_path), "/opt/fw/MY_CODE.fd") == {
        "loader": "/opt/fw/MY_CODE.fd", "nvram_template": "/opt/fw/MY_VARS.fd", "problem": None}
    assert "nvram_template /opt/fw/none.fd does not exist" in stage.find_ovmf(str(tmp_path), "/opt/fw/MY_CODE.fd", "/opt/fw/none.fd")["problem"]
    assert "the loader /opt/fw/none.fd does not exist" in stage.find_ovmf(str(tmp_path), "/opt/fw/none.fd")["problem"]


@pytest.mark.parametrize("os_id, package", [("debian", "apt install ovmf"), ("fedora", "dnf install edk2-ovmf"),
                                            ("arch", "pacman -S edk2-ovmf"), ("opensuse-tumbleweed", "qemu-ovmf-x86_64")])
def test_missing_ovmf_names_the_package_of_the_distribution(tmp_path, os_id, package):
    write(str(tmp_path), "etc/os-release", f"ID={os_id}\n")
    problem = stage.find_ovmf(str(tmp_path))["problem"]
    assert "no OVMF firmware found" in problem and package in problem and "firmware: bios" in problem


def test_missing_ovmf_warns_in_check_mode_and_bios_needs_none(tmp_path):
    root = str(tmp_path)
    write(root, "etc/os-release", "ID=fedora\n")
    result = preview(root, vm(disks=[], devices=[]))
    assert any("dnf install edk2-ovmf" in w for w in result["warnings"])
    bios = preview(root, vm(name="b", disks=[], devices=[], firmware="bios"))["vms"][0]
    assert bios["firmware"]["loader"] is None and "<loader" not in bios["xml"]


def test_auto_domain_type_without_libvirt_follows_the_cpu(host):
    out = preview(host, vm())
    assert out["vms"][0]["domain_type"] == "qemu" and any("runs under QEMU's emulation" in w for w in out["warnings"])
    write(host, "proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu vme de pse vmx ept\n")
    out = preview(host, vm())
    assert out["vms"][0]["domain_type"] == "kvm" and not any("emulation" in w for w in out["warnings"])
    assert preview(host, vm(domain_type="qemu"))["vms"][0]["domain_type"] == "qemu"


# --------------------------------------------------------------------------- the module


def run_module(capsys, args):
    try:
        with patch_module_args(args):
            with pytest.raises(SystemExit) as exc:
                vfio_vm.main()
    finally:
        # AnsibleModule.warn() collects in a process-wide list: keep this module's warnings out of later tests
        _global_warnings.clear()
    return exc.value.code, json.loads(capsys.readouterr().out)


def test_the_module_previews_a_sysroot(capsys, host):
    code, result = run_module(capsys, {"root": host, "vms": [vm(features={"hypervisor_hidden": True})],
                                       "_ansible_check_mode": True, "_ansible_diff": True})
    assert code == 0 and result["changed"] is True
    [out] = result["vms"]
    assert "diff" not in out and result["diff"][0]["after"] == out["xml"]
    assert "<feature policy=\"disable\" name=\"hypervisor\" />" in out["xml"]


def test_the_module_fails_with_the_stage_message(capsys, host):
    code, result = run_module(capsys, {"root": host, "vms": [vm()]})
    assert code != 0 and result["failed"] and "only be defined on the running system" in result["msg"]
    code, result = run_module(capsys, {"root": host, "vms": [vm(devices=[{"address": "1:0.0"}])], "_ansible_check_mode": True})
    assert code != 0 and "must be a full PCI address" in result["msg"]


def test_the_module_argument_spec_matches_the_stage(capsys, host):
    """Ansible's own type checks run first: an unknown suboption is refused by name."""
    code, result = run_module(capsys, {"root": host, "vms": [dict(vm(), memroy=1)], "_ansible_check_mode": True})
    assert code != 0 and "memroy" in result["msg"]


def test_wait_without_start_starts_nothing(host):
    out = preview(host, vm(wait=True))["vms"][0]
    assert out["started"] is False and out["stats"] is None
