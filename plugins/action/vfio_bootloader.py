# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller half of vfio_bootloader: the parameters this host needs from its facts and the
earlier stages' plans, the ``on_pre_bootloader_update`` / ``on_post_bootloader_update`` hooks
around the module, and the facts later tasks use (``vfio_next_boot_cmdline``,
``vfio_reboot_required``)."""
from __future__ import annotations

import os

from ansible.plugins.action import ActionBase

from ansible_collections.exliar.vfio.plugins.module_utils import _kernel_params as kp
from ansible_collections.exliar.vfio.plugins.plugin_utils import api
from ansible_collections.exliar.vfio.plugins.plugin_utils._hooks import StageSession, _StageAborted

MODULE = "exliar.vfio.vfio_bootloader"


def planned_params(facts: dict, args: dict) -> dict:
    """``{"params", "warnings"}``: computed defaults merged with the user's entries (ParamError on bad input)."""
    user = kp.validate([{k: v for k, v in e.items() if v is not None} for e in args.get("kernel_params") or []])
    if not args.get("computed_params", True):
        return {"params": user, "warnings": []}
    computed = kp.defaults(facts, {"ids": list(args.get("vfio_ids") or [])},
                           {"kernel_params": list(args.get("extra_params") or [])}, dict(args.get("defaults") or {}))
    return {"params": kp.validate(kp.merge(computed["params"], user)), "warnings": computed["warnings"]}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        facts = (task_vars.get("ansible_facts") or {}).get("vfio")
        root = (args.get("root") or "/").rstrip("/") or "/"
        if args.get("state", "present") != "present" or not facts or os.path.normpath(facts.get("root") or "/") != os.path.normpath(root):
            result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
            return self._with_facts(result)
        try:
            planned = planned_params(facts, args)
        except kp.ParamError as exc:
            result.update(failed=True, changed=False, msg=f"{exc}; nothing was changed")
            return result
        result.setdefault("warnings", []).extend(planned["warnings"])
        detected = facts.get("bootloader") or {}
        config = api.BootloaderConfig(name=args.get("bootloader") or detected.get("name"),
                                      kernel_params=[dict(e) for e in planned["params"]],
                                      evidence=list(detected.get("evidence") or []))
        module_args = dict(args, kernel_params=[{k: e.get(k) for k in ("name", "value", "state")} for e in planned["params"]],
                           computed_params=False)
        try:
            with StageSession(result, task_vars, root, self._templar.template, self) as session:
                if session is not None:
                    session.pre_bootloader(facts, config)
                    if result.get("failed"):
                        return result
                module = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
                warnings = result.pop("warnings", [])
                result.update(module)
                result["warnings"] = warnings + [w for w in module.get("warnings", []) if w not in warnings]
                if session is not None and not module.get("failed"):
                    config.name = module.get("bootloader") or config.name
                    config.config_path = module.get("config_path")
                    config.next_boot_cmdline = module.get("next_boot_cmdline")
                    config.reboot_required = module.get("reboot_required")
                    session.post_bootloader(facts, config)
        except _StageAborted:
            pass
        return self._with_facts(result)

    @staticmethod
    def _with_facts(result: dict) -> dict:
        if result.get("failed"):
            return result
        if "reboot_required" in result:
            result["ansible_facts"] = {
                "vfio_next_boot_cmdline": result.get("next_boot_cmdline"),
                "vfio_reboot_required": bool(result.get("reboot_required")),
                "vfio_bootloader_plan": {"bootloader": result.get("bootloader"), "params": result.get("params") or [],
                                         "commands": result.get("commands") or [],
                                         "not_regenerated": result.get("not_regenerated")},
            }
        elif result.get("problems") == []:  # verified after a reboot
            result["ansible_facts"] = {"vfio_reboot_required": False}
        return result
