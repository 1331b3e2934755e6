# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller half of vfio_facts: run the module, then the detection hooks of extension plugins.

The hooks run here, on the controller, in the same task as the module: plugins add no task
and no round trip to the host.
"""
from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.exliar.vfio.plugins.plugin_utils._hooks import run_stage_hooks


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("root", "names", "connection_address"))

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        module = self._execute_module(module_name="exliar.vfio.vfio_facts", module_args=self._task.args,
                                      task_vars=task_vars)
        result.update(module)
        if result.get("failed") or result.get("skipped"):
            return result
        facts = (result.get("ansible_facts") or {}).get("vfio") or {}
        return run_stage_hooks(result, task_vars, "detection", facts, template=self._templar.template, action=self)
