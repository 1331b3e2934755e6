# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller half of vfio_vm: ``vfio_vms`` entries become ``VmConfig`` objects with the devices
the binding stage selected, ``on_pre_vm_start`` may change them (a change is kept only when the
plugin returned cleanly), the module defines (and, on request, runs) the domains, and
``on_post_vm_shutdown`` gets each run's ``VmStats``."""
from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.exliar.vfio.plugins.plugin_utils import _vm_config as vmc
from ansible_collections.exliar.vfio.plugins.plugin_utils._hooks import StageSession, _StageAborted

MODULE = "exliar.vfio.vfio_vm"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        facts = (task_vars.get("ansible_facts") or {}).get("vfio") or {}
        plan = task_vars.get("vfio_bind_plan") or (task_vars.get("ansible_facts") or {}).get("vfio_bind_plan")
        root = (args.get("root") or "/").rstrip("/") or "/"
        try:
            configs = vmc.vm_configs(args.get("vms") or [], facts, plan)
        except vmc.VmSpecError as exc:
            result.update(failed=True, changed=False, msg=f"{exc}; nothing was changed")
            return result
        declared = {c.name: dict(c.features) for c, _rest in configs}
        try:
            with StageSession(result, task_vars, root, self._templar.template, self) as session:
                if session is not None:
                    configs = [(session.pre_vm_start(facts, config), rest) for config, rest in configs]
                    if result.get("failed"):
                        return result
                module_args = dict(args, vms=[vmc.module_spec(config, rest) for config, rest in configs])
                module = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
                warnings = result.pop("warnings", [])
                result.update(module)
                result["warnings"] = warnings + [w for w in module.get("warnings", []) if w not in warnings]
                result["vm_configs"] = [{"name": c.name, "memory_mib": c.memory_mib, "vcpus": c.vcpus,
                                         "devices": [d.address for d in c.devices], "features": dict(c.features),
                                         "monitor": dict(c.monitor)} for c, _rest in configs]
                if session is not None:
                    for vm in module.get("vms") or []:
                        if vm.get("stats"):
                            session.post_vm_shutdown(facts, vmc.vm_stats(vm["name"], vm["stats"]))
        except _StageAborted:
            pass
        if "vms" in result:
            final = {c.name: dict(c.features) for c, _rest in configs}
            result["ansible_facts"] = {"vfio_vm_results": [
                _summary(vm, declared.get(vm.get("name"), {}), final.get(vm.get("name"), {}), self._play_context.check_mode)
                for vm in result["vms"]]}
        return result


def _summary(vm: dict, declared: dict, features: dict, check_mode: bool) -> dict:
    """What the run summary shows of one VM; ``plugin_features`` are the ones the hooks added or changed."""
    return {"name": vm.get("name"), "defined": vm.get("defined"), "changed": vm.get("changed"), "preview": bool(check_mode),
            "devices": vm.get("devices") or [], "domain_type": vm.get("domain_type"), "started": vm.get("started"),
            "state": vm.get("state"), "stats": vm.get("stats"), "features": features,
            "plugin_features": sorted(k for k, v in features.items() if declared.get(k) != v)}
