"""Test plugin: reads /etc/os-release of the host (below vfio_root) and keeps what it saw."""
from __future__ import annotations

from ansible_collections.exliar.vfio.plugins.plugin_utils.api import PermissionDenied, VfioPlugin


class TargetReader(VfioPlugin):
    def on_system_detected(self, ctx, system):
        text = ctx.target().read_file("/etc/os-release")
        ctx.set("os_id", next((line.split("=", 1)[1].strip('"') for line in text.splitlines()
                               if line.startswith("ID=")), None))
        try:
            ctx.target().run(["true"])
            ctx.set("exec", "allowed")
        except PermissionDenied as exc:
            ctx.set("exec", f"denied: {exc}")


def create_plugin():
    return TargetReader()
