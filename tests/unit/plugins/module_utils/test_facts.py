"""gather_facts(): the whole ansible_facts.vfio, and bad input that must never make it raise."""
from __future__ import annotations

import json


from helpers import (
    CARD_PCI, INTEL_IGPU, NVIDIA_AUDIO, NVIDIA_GPU, ROOT_PORT, SECURE_BOOT, by_address, config_gz, dev_file,
    make_dangling, make_unreadable_dir, remove, write,
)

from ansible_collections.exliar.vfio.plugins.module_utils._facts import gather_facts

TOP_KEYS = {"facts_version", "root", "system", "cmdline", "iommu", "bootloader", "initramfs", "vfio_modules",
            "pci_devices", "iommu_groups", "gpus", "host_usage", "managed", "warnings"}


def test_a_healthy_desktop(desktop_root, desktop_facts):
    f = desktop_facts
    assert set(f) == TOP_KEYS
    assert f["facts_version"] == 1
    assert f["root"] == str(desktop_root)
    assert f["warnings"] == []
    assert f["system"]["distribution"]["id"] == "debian"
    assert f["system"]["kernel"] == {"running": "6.1.0-18-amd64", "installed": ["6.1.0-18-amd64"]}
    assert f["system"]["cpu"]["vendor"] == "intel" and f["system"]["cpu"]["virtualization_flag"] == "vmx"
    assert f["system"]["boot"] == {"mode": "uefi", "secure_boot": False}
    assert f["system"]["machine"]["laptop"] is False
    assert f["cmdline"]["raw"].endswith("intel_iommu=on")
    assert {"name": "intel_iommu", "value": "on"} in f["cmdline"]["params"]
    assert f["iommu"]["enabled"] is True
    assert f["bootloader"]["name"] == "grub"
    assert f["initramfs"]["name"] == "initramfs-tools"
    assert f["vfio_modules"]["ready"] is True
    assert len(f["pci_devices"]) == 11
    assert [g["address"] for g in f["gpus"]] == [INTEL_IGPU, NVIDIA_GPU]


def test_facts_are_plain_json(desktop_facts):
    assert json.loads(json.dumps(desktop_facts)) == desktop_facts


def test_pci_devices_contract(desktop_facts):
    d = by_address(desktop_facts["pci_devices"])[NVIDIA_GPU]
    assert {k: d[k] for k in ("address", "vendor_id", "device_id", "class", "subsystem_vendor_id",
                              "subsystem_device_id", "driver", "iommu_group", "boot_vga", "vendor_name",
                              "device_name", "reset_methods")} == {
        "address": "0000:01:00.0", "vendor_id": "10de", "device_id": "1e87", "class": "030000",
        "subsystem_vendor_id": "1462", "subsystem_device_id": "3721", "driver": "nvidia", "iommu_group": 1,
        "boot_vga": False, "vendor_name": "NVIDIA Corporation", "device_name": "TU104 [GeForce RTX 2080 Rev. A]",
        "reset_methods": ["flr", "bus"]}


def test_iommu_groups_contract(desktop_facts):
    for g in desktop_facts["iommu_groups"]:
        assert isinstance(g["id"], int)
        assert g["devices"] == sorted(g["devices"])
    members = {a for g in desktop_facts["iommu_groups"] for a in g["devices"]}
    assert members == {d["address"] for d in desktop_facts["pci_devices"]}


def test_names_can_be_skipped(desktop_root):
    f = gather_facts(str(desktop_root), with_names=False)
    assert all(d["vendor_name"] is None and d["device_name"] is None for d in f["pci_devices"])
    assert all(g["device_name"] is None for g in f["gpus"])


def test_host_usage_in_the_facts(desktop_facts, make_sysroot):
    assert desktop_facts["host_usage"] == {"connection": {"address": None, "interfaces": [], "pci_addresses": []},
                                           "in_use": {}}
    root = make_sysroot(mounts=[{"block": "nvme0n1p2", "mountpoint": "/", "fstype": "ext4"}],
                        network={"eno1": ["192.168.1.20/24"]})
    f = gather_facts(str(root), connection_address="192.168.1.20")
    assert f["host_usage"] == {
        "connection": {"address": "192.168.1.20", "interfaces": ["eno1"], "pci_addresses": ["0000:00:1f.6"]},
        "in_use": {
            "0000:00:1f.6": [{"kind": "connection", "interface": "eno1",
                              "detail": "carries the Ansible connection to 192.168.1.20"}],
            "0000:02:00.0": [{"kind": "mount", "block": "nvme0n1p2", "detail": "/ (ext4)"}],
        },
    }
    assert not [w for w in f["warnings"] if w.startswith(("proc/", "sys/dev/", "mount ", "swap ", "connection "))]
    assert json.loads(json.dumps(f["host_usage"])) == f["host_usage"]
    f = gather_facts(str(root), connection_address="10.9.9.9")
    assert f["host_usage"]["connection"]["interfaces"] == []
    assert any("10.9.9.9" in w for w in f["warnings"])


def test_running_kernel_without_modules_is_still_checked(make_sysroot):
    root = make_sysroot(pci=[], os={"kernel": "6.1.0-18-amd64", "kernels": ["6.1.0-21-amd64"]})
    f = gather_facts(str(root))
    assert f["system"]["kernel"]["installed"] == ["6.1.0-21-amd64"]
    assert set(f["vfio_modules"]["kernels"]) == {"6.1.0-18-amd64", "6.1.0-21-amd64"}
    assert f["vfio_modules"]["kernels"]["6.1.0-21-amd64"]["ready"] is True
    assert f["vfio_modules"]["kernels"]["6.1.0-18-amd64"]["ready"] is False
    assert f["vfio_modules"]["ready"] is False


# ---- bad input: never raise, warn, conclude what can be concluded --------------------------

def test_root_that_does_not_exist(tmp_path):
    root = tmp_path / "no-such-host"
    f = gather_facts(str(root))
    assert set(f) == TOP_KEYS
    assert any(str(root) in w for w in f["warnings"])
    assert f["pci_devices"] == [] and f["gpus"] == [] and f["iommu_groups"] == []
    assert f["iommu"]["enabled"] is False
    assert f["system"]["distribution"]["id"] is None
    assert f["system"]["kernel"]["running"] is None
    assert f["bootloader"]["name"] is None and f["initramfs"]["name"] is None
    assert f["vfio_modules"]["ready"] is False


def test_root_that_is_a_file(tmp_path):
    write(tmp_path, "not-a-dir", "x")
    f = gather_facts(str(tmp_path / "not-a-dir"))
    assert f["warnings"] and f["pci_devices"] == []


def test_missing_os_release(make_sysroot):
    root = make_sysroot(pci=CARD_PCI)
    remove(root, "etc/os-release")
    remove(root, "usr/lib/os-release")
    f = gather_facts(str(root))
    assert f["system"]["distribution"]["id"] is None and f["system"]["distribution"]["family"] is None
    assert any("os-release" in w for w in f["warnings"])
    # everything else is still concluded
    assert f["iommu"]["enabled"] is True
    assert f["bootloader"]["name"] == "grub"
    assert by_address(f["gpus"])[NVIDIA_GPU]["group_viable"] is True


def test_kernel_without_iommu_support(make_sysroot):
    root = make_sysroot(pci=CARD_PCI, iommu=None, os={"kernel_config": {"CONFIG_INTEL_IOMMU": "n"}})
    f = gather_facts(str(root))
    assert f["iommu"]["enabled"] is False
    assert [p["code"] for p in f["iommu"]["problems"]] == ["kernel_no_driver"]
    assert f["iommu_groups"] == []
    gpu = by_address(f["gpus"])[NVIDIA_GPU]
    assert gpu["group_viable"] is None and gpu["companions"] == [NVIDIA_AUDIO]


def test_a_host_full_of_bad_files(make_sysroot):
    root = make_sysroot(pci=CARD_PCI)
    write(root, dev_file(NVIDIA_AUDIO, "class"), "0xZZZZZZ\n")                   # garbage
    write(root, dev_file(ROOT_PORT, "vendor"), "\x00\x01\x02")                   # binary garbage
    make_unreadable_dir(root, dev_file(INTEL_IGPU, "device"))                   # unreadable
    make_dangling(root, dev_file(NVIDIA_GPU, "subsystem_vendor"))              # dangling
    make_unreadable_dir(root, "proc/cmdline")
    make_unreadable_dir(root, "proc/cpuinfo")
    write(root, "sys/class/dmi/id/chassis_type", "Desktop\n")
    write(root, SECURE_BOOT, b"\x06")
    make_dangling(root, "etc/os-release")
    remove(root, "usr/lib/os-release")
    f = gather_facts(str(root))
    w = "\n".join(f["warnings"])
    for fragment in (f"{NVIDIA_AUDIO}/class", f"{ROOT_PORT}/vendor", f"{INTEL_IGPU}/device", "proc/cmdline",
                     "proc/cpuinfo", "chassis_type", "SecureBoot", "os-release"):
        assert fragment in w, fragment
    devs = by_address(f["pci_devices"])
    assert devs[NVIDIA_AUDIO]["class"] is None
    assert devs[ROOT_PORT]["vendor_id"] is None
    assert devs[INTEL_IGPU]["device_id"] is None
    # still concluded: the GPU, its companion and its group (the IOMMU is on)
    gpu = by_address(f["gpus"])[NVIDIA_GPU]
    assert gpu["kind"] == "discrete" and gpu["companions"] == [NVIDIA_AUDIO]
    assert f["iommu"]["enabled"] is True
    assert f["system"]["boot"] == {"mode": "uefi", "secure_boot": None}
    assert f["system"]["machine"]["laptop"] is None
    assert f["cmdline"] == {"raw": None, "params": []}
    json.dumps(f)


def test_pci_bus_directory_unreadable(make_sysroot):
    root = make_sysroot(pci=CARD_PCI)
    remove(root, "sys/bus/pci/devices")
    write(root, "sys/bus/pci/devices", "garbage")
    f = gather_facts(str(root))
    assert f["pci_devices"] == [] and f["gpus"] == []
    assert any("sys/bus/pci/devices" in w for w in f["warnings"])
    assert f["iommu"]["enabled"] is True  # the groups are still there


def test_broken_sysfs_symlinks(make_sysroot):
    root = make_sysroot(pci=CARD_PCI)
    make_dangling(root, f"sys/bus/pci/devices/{NVIDIA_AUDIO}")
    make_dangling(root, dev_file(NVIDIA_GPU, "driver"))
    f = gather_facts(str(root))
    devs = by_address(f["pci_devices"])
    assert NVIDIA_GPU in devs
    assert any(NVIDIA_AUDIO in w for w in f["warnings"])


def test_corrupt_proc_config_gz(make_sysroot):
    root = make_sysroot(pci=CARD_PCI, iommu=None, os={"cmdline": "ro quiet"})
    remove(root, "boot/config-6.1.0-18-amd64")
    good = config_gz("CONFIG_INTEL_IOMMU=y\n" * 100)
    write(root, "proc/config.gz", good[:10] + b"\xff" * 16 + good[-8:])
    f = gather_facts(str(root))
    assert any("proc/config.gz" in w for w in f["warnings"])
    assert f["iommu"]["params_needed"] == ["intel_iommu=on"]


def test_relative_root_is_reported_absolute(desktop_root, monkeypatch):
    monkeypatch.chdir(desktop_root.parent)
    f = gather_facts(desktop_root.name)
    assert f["root"] == str(desktop_root)
    assert f["iommu"]["enabled"] is True


def test_nul_filled_osrelease(make_sysroot):
    root = make_sysroot(pci=CARD_PCI)
    write(root, "proc/sys/kernel/osrelease", b"\x00" * 16)
    f = gather_facts(str(root))
    assert f["iommu"]["enabled"] is True
    assert f["gpus"]


def test_chassis_type_with_a_non_decimal_digit(make_sysroot):
    root = make_sysroot(pci=CARD_PCI)
    write(root, "sys/devices/virtual/dmi/id/chassis_type", "\u00b2\n")
    f = gather_facts(str(root))
    assert f["system"]["machine"]["chassis_type"] is None
    assert any("chassis_type" in w for w in f["warnings"])
