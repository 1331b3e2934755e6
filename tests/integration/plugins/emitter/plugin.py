"""emitter: emits a ``GpuSeen`` event for every GPU, for the integration tests."""
from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.exliar.vfio.plugins.plugin_utils import api


@dataclass
class GpuSeen(api.Event):
    event_type = "gpu_seen"
    address: str = ""
    source: str = "emitter"


class Emitter(api.VfioPlugin):
    def on_gpu_detected(self, ctx, gpu):
        ctx.emit(GpuSeen(address=gpu.bdf()))


def create_plugin():
    return Emitter()
