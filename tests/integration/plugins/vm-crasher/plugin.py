"""vm-crasher: changes the VmConfig it gets, then raises; none of its changes may reach the domain."""
from __future__ import annotations

from ansible_collections.exliar.vfio.plugins.plugin_utils import api


class VmCrasher(api.VfioPlugin):
    def on_pre_vm_start(self, ctx, vm_config):
        vm_config.add_hypervisor_hidden(True)
        vm_config.add_vendor_id("crasher")
        vm_config.add_kvm_hidden(True)
        vm_config.memory_mib += 1024
        vm_config.devices.clear()
        raise RuntimeError(f"vm-crasher boom in {vm_config.name}")


def create_plugin():
    return VmCrasher()
