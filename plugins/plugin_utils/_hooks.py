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


class StageSession:
    """A host's plugin session around one stage task: ``with StageSession(...) as session``.

    ``session`` is None when no plugin is installed or enabled. On leaving, a critical plugin
    failure fails the task, and the plugins' summary, failures and warnings go into the result.
    """

    def __init__(self, result: dict, task_vars: dict, root: str = "/", template=None, action=None):
        self.result = result
        self.task_vars = task_vars
        self.root = root
        self.template = template
        self.action = action
        self.session = None

    def __enter__(self):
        host = self.task_vars.get("inventory_hostname") or "localhost"
        try:
            self.session = open_session(self.task_vars, host, template=self.template)
        except api.PluginError as exc:
            self.result.update(failed=True, msg=f"extension plugins: {exc}")
            raise _StageAborted() from exc
        if self.session is not None and self.action is not None:
            self.session.manager.set_service("target", ActionTarget(self.action, self.root or "/"))
        return self.session

    def __exit__(self, exc_type, exc, tb):
        if self.session is None:
            return exc_type is _StageAborted
        if exc_type is CriticalPluginFailure:
            self.result.update(failed=True, msg=str(exc))
        self.session.pack()
        summary = self.session.summary()
        self.session.save()
        _fold_summary(self.result, summary)
        return exc_type in (CriticalPluginFailure, _StageAborted)


class _StageAborted(Exception):
    """Opening the plugin session failed; the result already says why."""


def _fold_summary(result: dict, summary: dict) -> None:
    result["vfio_plugins"] = summary
    for failure in summary["failures"]:
        result.setdefault("warnings", []).append(
            f"plugin {failure['plugin']} failed in {failure['hook']} on {failure['host']}: {failure['error']}")
    for warning in summary["warnings"]:
        result.setdefault("warnings", []).append(warning)
    for name, reason in summary["rejected"].items():
        result.setdefault("warnings", []).append(f"plugin {name} not loaded: {reason}")


def run_stage_hooks(result: dict, task_vars: dict, stage: str, facts: dict, template=None, action=None) -> dict:
    """Run one stage method of the host's session (``Session.<stage>(facts)``) and fold its outcome in."""
    try:
        with StageSession(result, task_vars, facts.get("root") or "/", template, action) as session:
            if session is not None:
                getattr(session, stage)(facts)
    except _StageAborted:
        pass
    return result
