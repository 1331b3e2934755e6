"""needs-missing: must never load (its required dependency absent-helper is not installed)."""
from __future__ import annotations

from ansible_collections.exliar.vfio.plugins.plugin_utils import api


class NeedsMissing(api.VfioPlugin):
    def on_load(self, ctx):
        raise RuntimeError("needs-missing must not be loaded")


def create_plugin():
    return NeedsMissing()
