"""critical-crasher: a critical plugin that raises on the host named by its ``fail_on`` setting."""
from __future__ import annotations

from ansible_collections.exliar.vfio.plugins.plugin_utils import api


class CriticalCrasher(api.VfioPlugin):
    def on_system_detected(self, ctx, system):
        if ctx.host == ctx.config().get_section("critical-crasher").get_str("fail_on"):
            raise RuntimeError(f"critical boom on {ctx.host}")


def create_plugin():
    return CriticalCrasher()
