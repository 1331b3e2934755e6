"""unapproved: must never load (the tests do not approve it)."""
from __future__ import annotations

from ansible_collections.exliar.vfio.plugins.plugin_utils import api


class Unapproved(api.VfioPlugin):
    def on_load(self, ctx):
        raise RuntimeError("unapproved must not be loaded")


def create_plugin():
    return Unapproved()
