"""Helpers of the built-in plugins' tests: a stand-in connection for ``ctx.target()`` and the VM stage's hook calls
(the way ``plugins/action/vfio_vm.py`` makes them)."""
from __future__ import annotations

import subprocess

from ansible_collections.exliar.vfio.plugins.plugin_utils._hooks import StageSession


class LocalShell:
    """Stands in for an action plugin's connection: runs the command here (``ctx.target()`` reads a sysroot)."""

    def _low_level_execute_command(self, cmd):  # pylint: disable=invalid-name
        done = subprocess.run(cmd, shell=True, capture_output=True, text=True, check=False)  # noqa: S602
        return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def vm_stage(task_vars: dict, facts: dict, configs: list) -> tuple:
    """What the VM stage's action does around its module: ``on_pre_vm_start`` per VM; returns (result, configs)."""
    result: dict = {}
    out = list(configs)
    with StageSession(result, task_vars, facts.get("root") or "/") as session:
        if session is not None:
            out = [session.pre_vm_start(facts, config) for config in configs]
    return result, out


def vm_shutdown(task_vars: dict, facts: dict, stats: list) -> dict:
    """``on_post_vm_shutdown`` for each ``VmStats``, as the VM stage calls it after its module ran."""
    result: dict = {}
    with StageSession(result, task_vars, facts.get("root") or "/") as session:
        if session is not None:
            for one in stats:
                session.post_vm_shutdown(facts, one)
    return result
