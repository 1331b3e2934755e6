"""bootloader-recorder: writes what on_pre/on_post_bootloader_update receive, for the integration tests.

One JSON line per call, ``{"host", "hook", "name", "kernel_params", "config_path", "evidence",
"next_boot_cmdline", "reboot_required"}``, to the file named by the ``log`` key of its
configuration. After recording, the pre hook tampers with its copy (another bootloader name, one
more parameter): the stage must go on with its own.
"""
from __future__ import annotations

import json

from ansible_collections.exliar.vfio.plugins.plugin_utils import api


class BootloaderRecorder(api.VfioPlugin):
    def _record(self, ctx, hook, bootloader):
        line = {"host": ctx.host, "hook": hook, "name": bootloader.name, "kernel_params": bootloader.kernel_params,
                "config_path": bootloader.config_path, "evidence": bootloader.evidence,
                "next_boot_cmdline": bootloader.next_boot_cmdline, "reboot_required": bootloader.reboot_required}
        path = ctx.config().get_section("bootloader-recorder").get_str("log")
        if path:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line, sort_keys=True) + "\n")

    def on_pre_bootloader_update(self, ctx, bootloader):
        self._record(ctx, "on_pre_bootloader_update", bootloader)
        bootloader.name = "tampered"
        bootloader.kernel_params.append({"name": "added_by_a_plugin", "value": "1", "state": "present"})

    def on_post_bootloader_update(self, ctx, bootloader):
        self._record(ctx, "on_post_bootloader_update", bootloader)


def create_plugin():
    return BootloaderRecorder()
