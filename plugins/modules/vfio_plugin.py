#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: vfio_plugin
short_description: Manage exliar.vfio extension plugins
version_added: 0.1.0
description:
  - Lists the extension plugins found in the plugin directories with their version, source, API compatibility,
    signature status, permissions and hooks; approves, revokes, enables and disables them; verifies them; makes
    signing keys and signs plugins; runs a command a plugin registered, and delivers UI events to plugins.
  - Runs on the controller (an action plugin); listing reads plugins without executing their code.
  - C(playbooks/plugins.yml) wraps it; see C(docs/plugins/) in the collection.
author:
  - Exliar VFIO developers (@exliar)
options:
  action:
    description:
      - V(list) every plugin; V(verify) checks them (or O(name)) and fails if one cannot load.
      - V(approve) records the user's approval of the plugin's files, version and permissions; V(revoke) forgets it.
      - V(enable) and V(disable) switch a plugin on or off for every host.
      - V(run) runs the command O(command) a plugin registered; V(event) sends a UI event to the plugin owning O(panel).
      - V(keygen) makes an ed25519 key pair at O(key) and O(key).pub; V(sign) signs plugin O(name) with O(key).
    type: str
    choices: [list, approve, revoke, enable, disable, verify, run, event, keygen, sign]
    default: list
  name:
    description: The plugin (its C(name) in C(plugin.toml)).
    type: str
  critical:
    description: With O(action=approve), also approve the plugin's critical permissions (C(vfio:manage), C(target:exec)).
    type: bool
    default: false
  command:
    description: With O(action=run), the command to run.
    type: str
  args:
    description: With O(action=run), the command's arguments.
    type: list
    elements: str
    default: []
  panel:
    description: With O(action=event), the panel (C(plugin:panel)) whose plugin receives the event.
    type: str
  ui_action:
    description: With O(action=event), what happened (free text the plugin interprets).
    type: str
  data:
    description: With O(action=event), data carried by the event.
    type: dict
    default: {}
  key:
    description: With O(action=keygen) or O(action=sign), the path of the ed25519 private key.
    type: path
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: partial
    details: V(approve) records a new approval time on every run.
notes:
  - Plugin settings come from the host's variables (C(vfio_plugin_dirs), C(vfio_plugin_approvals_file), ...).
"""

EXAMPLES = r"""
- name: List the plugins
  exliar.vfio.vfio_plugin:
    action: list
  register: plugins

- name: Approve a plugin after reviewing it
  exliar.vfio.vfio_plugin:
    action: approve
    name: gpu-inventory
"""

RETURN = r"""
plugins:
  description: With O(action=list) or O(action=verify), every plugin found.
  returned: when action is list or verify
  type: list
  elements: dict
  sample: [{"name": "gpu-inventory", "version": "0.1.0", "source": "directory", "api": "compatible",
            "signature": "unsigned", "permissions": ["system:read"], "hooks": ["on_load"], "loadable": true,
            "reason": null, "enabled": true}]
approval:
  description: The approval recorded.
  returned: when action is approve
  type: dict
  sample: {"name": "gpu-inventory", "version": "0.1.0", "digest": "12c4...", "permissions": ["system:read"], "critical": false}
output:
  description: What the command returned.
  returned: when action is run
  type: str
  sample: "2 GPU(s)"
"""
