"""sleeper: sleeps longer than its timeout in on_device_enumeration, for the integration tests."""
from __future__ import annotations

import time

from ansible_collections.exliar.vfio.plugins.plugin_utils import api


class Sleeper(api.VfioPlugin):
    def on_device_enumeration(self, ctx, devices):
        time.sleep(3)


def create_plugin():
    return Sleeper()
