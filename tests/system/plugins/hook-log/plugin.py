"""hook-log: one JSON line ``{"host", "hook", "detail"}`` per hook call, to the file named by the
``log`` key of its configuration. It changes nothing, so a run with it must do what a run without
it does."""
from __future__ import annotations

import json

from ansible_collections.exliar.vfio.plugins.plugin_utils import api


class HookLog(api.VfioPlugin):
    def _log(self, ctx, hook, detail=None):
        path = ctx.config().get_section("hook-log").get_str("log")
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"host": ctx.host, "hook": hook, "detail": detail}, sort_keys=True) + "\n")

    def on_load(self, ctx):
        self._log(ctx, "on_load")

    def on_system_detected(self, ctx, system):
        self._log(ctx, "on_system_detected", {"distribution": system.distribution, "kernel": system.kernel,
                                              "iommu_enabled": system.iommu_enabled})

    def on_device_enumeration(self, ctx, devices):
        self._log(ctx, "on_device_enumeration", sorted(d.address for d in devices))

    def on_gpu_detected(self, ctx, gpu):
        self._log(ctx, "on_gpu_detected", {"address": gpu.address, "id": f"{gpu.vendor_id}:{gpu.device_id}",
                                           "driver": gpu.driver, "companions": list(gpu.companions)})

    def on_pre_vfio_bind(self, ctx, device):
        self._log(ctx, "on_pre_vfio_bind", {"address": device.address, "driver": device.driver})

    def on_post_vfio_bind(self, ctx, device):
        self._log(ctx, "on_post_vfio_bind", {"address": device.address, "driver": device.driver})

    def on_pre_initramfs_update(self, ctx):
        self._log(ctx, "on_pre_initramfs_update")

    def on_post_initramfs_update(self, ctx):
        self._log(ctx, "on_post_initramfs_update")

    def on_pre_vm_start(self, ctx, vm_config):
        self._log(ctx, "on_pre_vm_start", {"name": vm_config.name, "devices": sorted(d.address for d in vm_config.devices),
                                           "memory_mib": vm_config.memory_mib, "vcpus": vm_config.vcpus})

    def on_post_vm_shutdown(self, ctx, vm_stats):
        self._log(ctx, "on_post_vm_shutdown", {"name": vm_stats.name, "shutdown": vm_stats.shutdown,
                                               "runtime_seconds": vm_stats.runtime_seconds,
                                               "cpu_time_seconds": vm_stats.cpu_time_seconds,
                                               "max_memory_mib": vm_stats.max_memory_mib, "samples": len(vm_stats.samples)})

    def on_cleanup(self, ctx):
        self._log(ctx, "on_cleanup")

    def on_unload(self, ctx):
        self._log(ctx, "on_unload")


def create_plugin():
    return HookLog()
