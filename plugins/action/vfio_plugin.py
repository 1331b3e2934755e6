# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Manage extension plugins (controller side); documented in plugins/modules/vfio_plugin.py."""
from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.exliar.vfio.plugins.plugin_utils import _admin
from ansible_collections.exliar.vfio.plugins.plugin_utils import api
from ansible_collections.exliar.vfio.plugins.plugin_utils._manager import CriticalPluginFailure
from ansible_collections.exliar.vfio.plugins.plugin_utils._security import SecurityError
from ansible_collections.exliar.vfio.plugins.plugin_utils._session import Settings, open_session, plugin_vars

ACTIONS = ("list", "approve", "revoke", "enable", "disable", "verify", "run", "event", "keygen", "sign")
NEEDS_NAME = ("approve", "revoke", "enable", "disable", "sign")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("action", "name", "critical", "command", "args", "panel", "ui_action", "data", "key"))

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = self._task.args
        action = args.get("action", "list")
        if action not in ACTIONS:
            return dict(result, failed=True, msg=f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
        name = args.get("name")
        if action in NEEDS_NAME and not name:
            return dict(result, failed=True, msg=f"action {action} needs the plugin's name (vfio_plugin_name)")
        try:
            settings = Settings.from_vars(plugin_vars(task_vars, self._templar.template))
        except api.PluginError as exc:
            return dict(result, failed=True, msg=f"plugin settings: {exc}")
        try:
            result.update(self._do(action, name, args, settings, task_vars))
        except (api.PluginError, SecurityError, CriticalPluginFailure) as exc:
            result.update(failed=True, msg=str(exc))
        return result

    def _do(self, action, name, args, settings, task_vars) -> dict:
        check = self._task.check_mode
        if action in ("list", "verify"):
            rows = _admin.verify(settings, name) if action == "verify" else _admin.describe(settings)
            bad = [r for r in rows if not r.get("loadable")]
            out = {"plugins": rows, "changed": False}
            if action == "verify" and bad:
                out.update(failed=True, msg="; ".join(f"{r['name']}: {r['reason']}" for r in bad))
            return out
        if action == "approve":
            if check:
                return {"changed": True, "msg": f"would approve {name}"}
            record = _admin.approve(settings, name, bool(args.get("critical", False)))
            return {"changed": True, "approval": record}
        if action == "revoke":
            changed = check or _admin.revoke(settings, name)
            return {"changed": bool(changed)}
        if action in ("enable", "disable"):
            if check:
                return {"changed": (name in _admin.load_disabled(settings)) == (action == "enable")}
            return {"changed": _admin.set_enabled(settings, name, action == "enable")}
        if action == "keygen":
            key = args.get("key") or ""
            if not key:
                return {"failed": True, "msg": "keygen needs a path for the private key (vfio_plugin_key)"}
            return {"changed": not check, **({} if check else _admin.keygen(key))}
        if action == "sign":
            if not args.get("key"):
                return {"failed": True, "msg": "sign needs the private key's path (vfio_plugin_key)"}
            return {"changed": not check, **({} if check else _admin.sign(settings, name, args["key"]))}
        host = task_vars.get("inventory_hostname", "localhost")
        session = open_session(task_vars, host, template=self._templar.template)
        if session is None:
            return {"failed": True, "msg": "no extension plugin is installed or enabled for this host"}
        try:
            if action == "run":
                if not args.get("command"):
                    return {"failed": True, "msg": "run needs the command's name (vfio_plugin_command)"}
                output = session.run_command(args["command"], args.get("args") or [])
                summary = session.summary()
                out = {"changed": False, "output": output, "vfio_plugins": summary}
                if summary["failures"]:
                    out.update(failed=True, msg=summary["failures"][-1]["error"])
                return out
            session.ui_event(args.get("panel") or "", args.get("ui_action") or "", args.get("data") or {})
            return {"changed": False, "vfio_plugins": session.summary()}
        finally:
            session.save()
