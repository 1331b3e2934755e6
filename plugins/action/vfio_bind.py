# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller half of vfio_bind: plan from the host's facts, refuse early, run the per-device
hooks around the module, and skip the module when the host already matches the plan."""
from __future__ import annotations

import os

from ansible.plugins.action import ActionBase

from ansible_collections.exliar.vfio.plugins.module_utils._bindplan import OPTION_NAMES, make_plan
from ansible_collections.exliar.vfio.plugins.module_utils._managed import digest
from ansible_collections.exliar.vfio.plugins.plugin_utils._hooks import StageSession, _StageAborted

MODULE = "exliar.vfio.vfio_bind"


def converged(plan: dict, facts: dict, live: bool) -> bool:
    """True when the facts show every planned file and device already as the plan wants them."""
    current = (facts.get("managed") or {}).get("files") or {}
    for path, spec in plan["files"].items():
        have = current.get(path)
        if spec is None:
            if have is not None:
                return False
        elif have is None or have.get("sha256") != digest(spec["content"]) or have.get("mode") != spec["mode"]:
            return False
    return not live or all(d["driver"] == "vfio-pci" for d in plan["devices"])


def plan_summary(plan: dict) -> dict:
    """What later stages and the run summary need (``ansible_facts.vfio_bind_plan``)."""
    keep = ("status", "devices", "ids", "by_address", "initramfs", "kernel_params", "refusals", "errors", "warnings")
    return {k: plan.get(k) for k in keep}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        if args.get("state", "present") == "absent":
            result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
            return result
        facts = (task_vars.get("ansible_facts") or {}).get("vfio")
        if not facts or os.path.normpath(facts.get("root") or "/") != os.path.normpath(_root(args)):
            result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
            return result  # no facts for this root: the module plans alone (no hooks without a plan)
        options = {k: args.get(k) for k in OPTION_NAMES}
        plan = make_plan(facts, args.get("devices") or [], options, recorded=(facts.get("managed") or {}).get("bind"))
        result["ansible_facts"] = {"vfio_bind_plan": plan_summary(plan)}
        for warning in plan["warnings"]:
            result.setdefault("warnings", []).append(warning)
        if plan["status"] == "refused":
            result.update(failed=True, changed=False, errors=plan["errors"], refusals=plan["refusals"],
                          msg="refused, nothing changed: " + " | ".join(plan["errors"] + [r["message"] for r in plan["refusals"]]))
            return result
        if plan["status"] == "empty":
            result.update(changed=False, msg="nothing to bind on this host: the selection matches no device here")
            return result
        live = _root(args) == "/" and args.get("runtime", "auto") != "never"
        try:
            with StageSession(result, task_vars, _root(args), self._templar.template, self) as session:
                if session is not None:
                    session.pre_bind(facts, plan)
                    if result.get("failed"):
                        return result
                records = session.unjournaled_records() if session is not None else []
                if converged(plan, facts, live) and not records:
                    result.update(changed=False, msg="the host already matches the plan")
                else:
                    args.update(expect=[d["address"] for d in plan["devices"]], plugin_records=records)
                    module = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
                    module.pop("plan", None)
                    warnings = result.pop("warnings", [])
                    result.update(module)
                    result["warnings"] = warnings + [w for w in module.get("warnings", []) if w not in warnings]
                    if module.get("failed"):
                        return result
                    if session is not None:
                        session.mark_journaled()
                if session is not None:
                    session.post_bind(facts, plan)
        except _StageAborted:
            pass
        return result


def _root(args: dict) -> str:
    return (args.get("root") or "/").rstrip("/") or "/"
