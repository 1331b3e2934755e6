"""bootloader-crasher: raises in both bootloader hooks, for the integration tests."""
from __future__ import annotations

from ansible_collections.exliar.vfio.plugins.plugin_utils import api


class BootloaderCrasher(api.VfioPlugin):
    def on_pre_bootloader_update(self, ctx, bootloader):
        raise RuntimeError(f"bootloader-crasher boom before {bootloader.name}")

    def on_post_bootloader_update(self, ctx, bootloader):
        raise ValueError(f"bootloader-crasher boom after {bootloader.name}")


def create_plugin():
    return BootloaderCrasher()
