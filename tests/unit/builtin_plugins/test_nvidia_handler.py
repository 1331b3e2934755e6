"""nvidia-handler, loaded through vfio_builtin_plugins: Code 43 workarounds for NVIDIA GPUs only."""
from __future__ import annotations

import pickle

import pytest

from builtin_helpers import vm_stage

from ansible_collections.exliar.vfio.plugins.plugin_utils import api
from ansible_collections.exliar.vfio.plugins.plugin_utils import _state as store
from ansible_collections.exliar.vfio.plugins.plugin_utils._hooks import run_stage_hooks
from ansible_collections.exliar.vfio.plugins.plugin_utils._manifest import load_manifest
from ansible_collections.exliar.vfio.plugins.plugin_utils._security import Approvals, hash_manifest, plugin_digest

NVIDIA_GPU, NVIDIA_AUDIO, INTEL_IGPU = "0000:01:00.0", "0000:01:00.1", "0000:00:02.0"
WORKAROUNDS = {"hypervisor_hidden": True, "vendor_id": "exliarvfio01", "kvm_hidden": True}


def devices(facts: dict, *addresses) -> list:
    """The VM's devices as the VM stage builds them from the facts."""
    gpus = {g["address"]: g for g in facts["gpus"]}
    pci = {d["address"]: d for d in facts["pci_devices"]}
    return [api.GpuDevice.from_fact(dict(pci[a], **gpus[a])) if a in gpus else api.PciDevice.from_fact(pci[a])
            for a in addresses]


def stored(rdir, key: str):
    blobs = store.load_host_state(rdir, "h1")["storage"]["nvidia-handler"]
    return pickle.loads(blobs[key]) if key in blobs else None


def logs(rdir) -> list:
    return [r["message"] for r in store.load_host_state(rdir, "h1")["log"] if r["plugin"] == "nvidia-handler"]


def test_detection_stores_the_verdict_per_gpu_and_only_for_nvidia(host_vars, desktop_facts, tmp_path):
    result = run_stage_hooks({}, host_vars(["nvidia-handler"]), "detection", desktop_facts)
    assert result["vfio_plugins"]["failures"] == []
    assert stored(tmp_path / "run", f"gpu_{NVIDIA_GPU}_code_43_vulnerable") is True
    assert stored(tmp_path / "run", f"gpu_{INTEL_IGPU}_code_43_vulnerable") is None
    (line,) = logs(tmp_path / "run")
    assert line.startswith("NVIDIA GPU detected: ") and f"at {NVIDIA_GPU}; it needs the Code 43 workaround" in line
    assert "guest's driver version is unknown" in line


def test_the_workarounds_go_to_vms_with_an_nvidia_gpu_only(host_vars, desktop_facts, tmp_path):
    task_vars = host_vars(["nvidia-handler"])
    run_stage_hooks({}, task_vars, "detection", desktop_facts)
    configs = [api.VmConfig("nvidia-vm", devices=devices(desktop_facts, NVIDIA_GPU, NVIDIA_AUDIO)),
               api.VmConfig("intel-vm", devices=devices(desktop_facts, INTEL_IGPU)),
               api.VmConfig("audio-only", devices=devices(desktop_facts, NVIDIA_AUDIO)),
               api.VmConfig("amd-vm", devices=[api.GpuDevice(address="0000:03:00.0", vendor_id="1002",
                                                             device_id="731f", class_code="030000")])]
    result, out = vm_stage(task_vars, desktop_facts, configs)
    assert result["vfio_plugins"]["failures"] == []
    assert out[0].features == WORKAROUNDS
    assert [c.features for c in out[1:]] == [{}, {}, {}], "a VM without an NVIDIA GPU is not touched"
    assert [c.devices for c in out] == [c.devices for c in configs]
    assert f"Applied NVIDIA Code 43 workarounds for GPU {NVIDIA_GPU}" in logs(tmp_path / "run")


def test_without_detection_in_the_run_the_workaround_is_assumed_needed(host_vars, desktop_facts):
    _result, (out,) = vm_stage(host_vars(["nvidia-handler"], {"nvidia-handler": {"vendor_id": "0123456789ab"}}),
                               desktop_facts, [api.VmConfig("vm", devices=devices(desktop_facts, NVIDIA_GPU))])
    assert out.features == dict(WORKAROUNDS, vendor_id="0123456789ab")


@pytest.mark.parametrize("version, needed", [("531.41", False), ("465.89", False), ("461.92", True), ("4xx", True)])
def test_the_guest_driver_version_decides(host_vars, desktop_facts, tmp_path, version, needed):
    task_vars = host_vars(["nvidia-handler"], {"nvidia-handler": {"guest_driver_version": version}})
    run_stage_hooks({}, task_vars, "detection", desktop_facts)
    assert stored(tmp_path / "run", f"gpu_{NVIDIA_GPU}_code_43_vulnerable") is needed
    _result, (out,) = vm_stage(task_vars, desktop_facts, [api.VmConfig("vm", devices=devices(desktop_facts, NVIDIA_GPU))])
    assert out.features == (WORKAROUNDS if needed else {})


CRASHER = '''
from ansible_collections.exliar.vfio.plugins.plugin_utils import api


class Crasher(api.VfioPlugin):
    def on_pre_vm_start(self, ctx, vm_config):
        vm_config.vcpus = 64
        vm_config.add_vendor_id("crasher")
        raise RuntimeError("crasher boom in on_pre_vm_start")


def create_plugin():
    return Crasher()
'''


def test_a_crashing_plugin_next_to_it_changes_nothing(host_vars, desktop_facts, tmp_path):
    pdir = tmp_path / "plugins" / "vm-crasher"
    pdir.mkdir(parents=True)
    (pdir / "plugin.toml").write_text('name = "vm-crasher"\nversion = "1.0.0"\ndescription = "raises"\nauthor = "tests"\n'
                                      'api_version = "1.1"\npermissions = ["vm:modify"]\n')
    (pdir / "plugin.py").write_text(CRASHER)
    meta = load_manifest(pdir)
    Approvals.load(tmp_path / "approvals.json").approve(meta, plugin_digest(hash_manifest(pdir)), meta.permissions)
    task_vars = host_vars(["nvidia-handler"], vfio_plugin_dirs=[str(pdir.parent)])
    config = api.VmConfig("vm", vcpus=4, devices=devices(desktop_facts, NVIDIA_GPU))
    result, (out,) = vm_stage(task_vars, desktop_facts, [config])
    assert sorted(result["vfio_plugins"]["loaded"]) == ["nvidia-handler", "vm-crasher"]
    assert [(f["plugin"], f["error"]) for f in result["vfio_plugins"]["failures"]] == [
        ("vm-crasher", "RuntimeError: crasher boom in on_pre_vm_start")]
    assert (out.vcpus, out.features) == (4, WORKAROUNDS), "the crasher's half-done change is dropped, the handler's kept"


def test_a_bad_vendor_id_fails_the_hook_and_leaves_the_config_unmodified(host_vars, desktop_facts):
    task_vars = host_vars(["nvidia-handler"], {"nvidia-handler": {"vendor_id": "thirteen-chars"}})
    config = api.VmConfig("vm", devices=devices(desktop_facts, NVIDIA_GPU), features={"kvm_hidden": False})
    result, (out,) = vm_stage(task_vars, desktop_facts, [config])
    (failure,) = result["vfio_plugins"]["failures"]
    assert failure["plugin"] == "nvidia-handler" and "vendor_id must be 1 to 12 printable characters" in failure["error"]
    assert out.features == {"kvm_hidden": False}, "hypervisor_hidden was set before the error: it must not stay"
