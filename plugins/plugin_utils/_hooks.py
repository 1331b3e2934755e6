# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a stage's plugin hooks from an action plugin and fold the outcome into its result."""
from __future__ import annotations

from ansible_collections.exliar.vfio.plugins.plugin_utils import api
from ansible_collections.exliar.vfio.plugins.plugin_utils._manager import CriticalPluginFailure
from ansible_collections.exliar.vfio.plugins.plugin_utils._session import open_session


def run_stage_hooks(result: dict, task_vars: dict, stage: str, facts: dict, template=None) -> dict:
    host = task_vars.get("inventory_hostname") or "localhost"
    try:
        session = open_session(task_vars, host, template=template)
    except api.PluginError as exc:
        result.update(failed=True, msg=f"extension plugins: {exc}")
        return result
    if session is None:
        return result
    try:
        getattr(session, stage)(facts)
    except CriticalPluginFailure as exc:
        result.update(failed=True, msg=str(exc))
    finally:
        session.pack()
        summary = session.summary()
        session.save()
    result["vfio_plugins"] = summary
    for failure in summary["failures"]:
        result.setdefault("warnings", []).append(
            f"plugin {failure['plugin']} failed in {failure['hook']} on {failure['host']}: {failure['error']}")
    for warning in summary["warnings"]:
        result.setdefault("warnings", []).append(warning)
    for name, reason in summary["rejected"].items():
        result.setdefault("warnings", []).append(f"plugin {name} not loaded: {reason}")
    return result
