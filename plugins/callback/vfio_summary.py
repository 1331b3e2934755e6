# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
name: vfio_summary
type: aggregate
short_description: Per-host summary of what exliar.vfio found and did
version_added: 0.1.0
description:
  - At the end of a playbook run, prints for every host the GPUs with their companion functions, the IOMMU
    group verdicts with the devices that block them, the IOMMU state and what to fix, and the bootloader and
    initramfs generator in use.
  - Hosts that failed or were unreachable are listed with their error, so one bad host never hides the others.
author:
  - Exliar VFIO developers (@exliar)
requirements:
  - enable in ansible.cfg with C(callbacks_enabled = exliar.vfio.vfio_summary) (the repository's ansible.cfg does)
"""

from ansible.plugins.callback import CallbackBase

from ansible_collections.exliar.vfio.plugins.plugin_utils._summary import render_summary


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "exliar.vfio.vfio_summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.results: dict = {}

    def _host(self, result) -> dict:
        return self.results.setdefault(result._host.get_name(), {"facts": None, "failed": None})

    def v2_runner_on_ok(self, result) -> None:
        facts = (result._result.get("ansible_facts") or {}).get("vfio")
        if isinstance(facts, dict):
            self._host(result)["facts"] = facts

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        if not ignore_errors:
            self._host(result)["failed"] = f"{result._task.get_name()}: {result._result.get('msg', 'failed')}"

    def v2_runner_on_unreachable(self, result) -> None:
        self._host(result)["failed"] = f"unreachable: {result._result.get('msg', '')}".strip()

    def v2_playbook_on_stats(self, stats) -> None:
        if not self.results:
            return
        self._display.banner("VFIO SUMMARY")
        self._display.display(render_summary(self.results))
