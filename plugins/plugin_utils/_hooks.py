# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a stage's plugin hooks from an action plugin and fold the outcome into its result."""
from __future__ import annotations

import posixpath
import shlex

from ansible_collections.exliar.vfio.plugins.plugin_utils import api
from ansible_collections.exliar.vfio.plugins.plugin_utils._manager import CriticalPluginFailure
from ansible_collections.exliar.vfio.plugins.plugin_utils._session import open_session


class ActionTarget:
    """The managed host, for plugins that ask (``ctx.target()``): through the stage's own
    connection, so only a plugin that uses it adds a round trip."""

    def __init__(self, action, root: str = "/", plugin: str | None = None, permissions=()):
        self._action = action
        self._root = root or "/"
        self._plugin = plugin
        self._permissions = frozenset(permissions)

    def for_plugin(self, plugin: str, permissions) -> "ActionTarget":
        return ActionTarget(self._action, self._root, plugin, permissions)

    def _exec(self, argv: list) -> dict:
        res = self._action._low_level_execute_command(" ".join(shlex.quote(str(a)) for a in argv))  # pylint: disable=protected-access
        return {"rc": res.get("rc"), "stdout": res.get("stdout", ""), "stderr": res.get("stderr", "")}

    def read_file(self, path: str) -> str:
        """A file's text, below the stage's root (vfio_root)."""
        full = posixpath.join(self._root, str(path).lstrip("/"))
        res = self._exec(["cat", "--", full])
        if res["rc"] != 0:
            raise api.PluginError(f"cannot read {full} on the host: {res['stderr'].strip()}", plugin=self._plugin)
        return res["stdout"]

    def run(self, argv: list) -> dict:
        """Run a command on the host (``target:exec``, a critical permission): rc, stdout, stderr."""
        if "target:exec" not in self._permissions:
            raise api.PermissionDenied(f"plugin {self._plugin!r} needs the 'target:exec' permission to run commands",
                                       plugin=self._plugin)
        if not isinstance(argv, (list, tuple)) or not argv:
            raise api.PluginError("run() takes the command as a non-empty list of arguments", plugin=self._plugin)
        return self._exec(list(argv))


def run_stage_hooks(result: dict, task_vars: dict, stage: str, facts: dict, template=None, action=None) -> dict:
    host = task_vars.get("inventory_hostname") or "localhost"
    try:
        session = open_session(task_vars, host, template=template)
    except api.PluginError as exc:
        result.update(failed=True, msg=f"extension plugins: {exc}")
        return result
    if session is None:
        return result
    if action is not None:
        session.manager.set_service("target", ActionTarget(action, facts.get("root") or "/"))
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
