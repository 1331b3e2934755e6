# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
name: plugins
short_description: Query the exliar.vfio extension-plugin registry
version_added: 0.1.0
description:
  - Answers questions about the extension plugins installed for the collection, from the plugin directories
    configured in the host's variables; no plugin code is executed.
author:
  - Exliar VFIO developers (@exliar)
options:
  _terms:
    description:
      - V(list) returns every plugin (as the M(exliar.vfio.vfio_plugin) module's C(list) action does); V(get) followed by a name returns that
        plugin; V(hooks) returns the hook names in lifecycle order; V(permissions) returns the permission vocabulary;
        V(api_version) returns the plugin API version.
    required: true
    type: list
    elements: str
"""

EXAMPLES = r"""
- name: Names of the plugins that can load
  ansible.builtin.debug:
    msg: "{{ lookup('exliar.vfio.plugins', 'list') | selectattr('loadable') | map(attribute='name') }}"

- name: The hook reference, in lifecycle order
  ansible.builtin.debug:
    msg: "{{ lookup('exliar.vfio.plugins', 'hooks') }}"
"""

RETURN = r"""
_raw:
  description: The answer (a list of plugins, one plugin, hook names, or the permission vocabulary).
  type: list
  elements: raw
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.exliar.vfio.plugins.plugin_utils import _admin, api
from ansible_collections.exliar.vfio.plugins.plugin_utils._session import Settings, plugin_vars


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if not terms:
            raise AnsibleLookupError("say what to look up: list, get NAME, hooks, permissions or api_version")
        what = str(terms[0])
        variables = variables or {}
        settings = Settings.from_vars(plugin_vars(variables, self._templar.template if self._templar else None))
        try:
            if what == "list":
                return [_admin.describe(settings)]
            if what == "get":
                if len(terms) < 2:
                    raise AnsibleLookupError("get needs a plugin name: lookup('exliar.vfio.plugins', 'get', 'NAME')")
                rows = [r for r in _admin.describe(settings) if r["name"] == terms[1]]
                if not rows:
                    raise AnsibleLookupError(f"no plugin named {terms[1]!r}")
                return [rows[0]]
            if what == "hooks":
                return [list(api.HOOKS)]
            if what == "permissions":
                return [dict(api.PERMISSIONS)]
            if what == "api_version":
                return [".".join(map(str, api.API_VERSION))]
        except api.PluginError as exc:
            raise AnsibleLookupError(str(exc)) from exc
        raise AnsibleLookupError(f"unknown query {what!r}: use list, get NAME, hooks, permissions or api_version")
