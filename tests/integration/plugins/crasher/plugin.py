"""crasher: raises in on_system_detected and on_gpu_detected, for the integration tests."""
from __future__ import annotations

from ansible_collections.exliar.vfio.plugins.plugin_utils import api


class Crasher(api.VfioPlugin):
    def on_system_detected(self, ctx, system):
        raise RuntimeError("crasher boom in on_system_detected")

    def on_gpu_detected(self, ctx, gpu):
        raise ValueError(f"crasher boom in on_gpu_detected for {gpu.bdf()}")


def create_plugin():
    return Crasher()
