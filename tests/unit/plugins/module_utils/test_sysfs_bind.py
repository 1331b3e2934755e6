"""The runtime bind sequence against a sysfs-shaped tree whose "kernel" never reacts.

The real kernel's behaviour is proven in the VM tier (tests/system/test_vm_bind.py); here we check
what our code does when the kernel does NOT bind: it must say so, and put the device back.
"""
from __future__ import annotations

import os

import pytest

from ansible_collections.exliar.vfio.plugins.module_utils import _sysfs_bind as sysfs
from ansible_collections.exliar.vfio.plugins.module_utils._bind_stage import public, runtime_applies

ADDR = "0000:01:00.0"


def _tree(tmp_path, driver="nouveau", vfio_loaded=True):
    root = tmp_path
    dev = root / "sys/devices/pci0000:00/0000:00:01.0" / ADDR
    dev.mkdir(parents=True)
    (dev / "driver_override").write_text("(null)\n")
    bus = root / "sys/bus/pci"
    (bus / "devices").mkdir(parents=True)
    os.symlink(os.path.relpath(dev, bus / "devices"), bus / "devices" / ADDR)
    (bus / "drivers_probe").write_text("")
    for name in [driver, "vfio-pci" if vfio_loaded else None]:
        if name:
            (bus / "drivers" / name).mkdir(parents=True, exist_ok=True)
            (bus / "drivers" / name / "unbind").write_text("")
    if driver:
        os.symlink(os.path.relpath(bus / "drivers" / driver, dev), dev / "driver")
    return str(root), dev


def _no_commands(argv):
    raise AssertionError(f"unexpected command {argv}")


def test_a_device_already_on_vfio_pci_is_left_alone(tmp_path):
    root, _dev = _tree(tmp_path, driver="vfio-pci")
    assert sysfs.bind(root, ADDR, 1, _no_commands) is False


def test_the_kernel_refusing_is_reported_and_the_override_cleared(tmp_path):
    root, dev = _tree(tmp_path)
    with pytest.raises(sysfs.BindError) as err:
        sysfs.bind(root, ADDR, 1, _no_commands, timeout=0.1)
    msg = str(err.value)
    assert ADDR in msg and "did not bind it to vfio-pci" in msg and "dmesg" in msg
    assert (dev / "driver_override").read_text() == "\n"  # cleared: the host driver may take it again
    assert (tmp_path / "sys/bus/pci/drivers/nouveau/unbind").read_text() == ADDR


def test_vfio_pci_is_loaded_first_and_a_failing_modprobe_is_clear(tmp_path):
    root, _dev = _tree(tmp_path, vfio_loaded=False)
    calls = []

    def modprobe(argv):
        calls.append(argv)
        return 1, "", "modprobe: FATAL: Module vfio-pci not found in directory /lib/modules/6.1.0"

    with pytest.raises(sysfs.BindError, match="modprobe vfio-pci failed .*not found"):
        sysfs.bind(root, ADDR, 1, modprobe)
    assert calls == [["modprobe", "vfio-pci"]]


def test_a_missing_device_is_named(tmp_path):
    root, _dev = _tree(tmp_path)
    with pytest.raises(sysfs.BindError, match="0000:09:00.0: no such PCI device"):
        sysfs.bind(root, "0000:09:00.0", 1, _no_commands)


def test_release_of_a_device_on_its_driver_is_no_change(tmp_path):
    root, _dev = _tree(tmp_path)
    assert sysfs.release(root, ADDR, "nouveau", "nouveau", _no_commands) is False


def test_runtime_binding_only_on_the_running_system(tmp_path):
    assert runtime_applies("/", "auto") == (True, None)
    live, why = runtime_applies(str(tmp_path), "auto")
    assert live is False and "not the running system" in why
    assert runtime_applies("/", "never")[0] is False
    with pytest.raises(ValueError, match="always needs root"):
        runtime_applies(str(tmp_path), "always")


def test_the_diff_shows_changed_files_and_moved_devices():
    out = public({"changed": True, "warnings": ["w"], "files": [
        {"changed": True, "path": "/a", "diff": {"before": "", "after": "x\n"}},
        {"changed": False, "path": "/b", "diff": {"before": "y", "after": "y"}}],
        "devices": [{"address": ADDR, "driver_before": "nouveau", "changed": True}]})
    assert "warnings" not in out
    assert out["diff"][0] == {"before": "", "after": "x\n"}
    assert out["diff"][1]["before"] == f"{ADDR} nouveau\n" and out["diff"][1]["after"] == f"{ADDR} vfio-pci\n"
    assert len(out["diff"]) == 2
