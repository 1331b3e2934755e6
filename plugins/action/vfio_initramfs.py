# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller half of vfio_initramfs: the ``on_pre_initramfs_update`` / ``on_post_initramfs_update``
hooks of extension plugins around the regeneration, in the same task."""
from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.exliar.vfio.plugins.plugin_utils._hooks import StageSession, _StageAborted

MODULE = "exliar.vfio.vfio_initramfs"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        if args.get("state", "configured") != "regenerated":
            result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
            if "kernel_params" in result and not result.get("failed"):  # for the bootloader stage
                result["ansible_facts"] = {"vfio_initramfs_plan": {"generator": result.get("generator"),
                                                                   "kernel_params": result["kernel_params"]}}
            return result
        facts = (task_vars.get("ansible_facts") or {}).get("vfio") or {}
        try:
            with StageSession(result, task_vars, args.get("root") or "/", self._templar.template, self) as session:
                if session is not None:
                    session.pre_initramfs(facts)
                module = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
                warnings = result.pop("warnings", [])
                result.update(module)
                result["warnings"] = warnings + [w for w in module.get("warnings", []) if w not in warnings]
                if session is not None and not module.get("failed"):
                    session.post_initramfs(facts)
        except _StageAborted:
            pass
        return result
