#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: vfio_restore
short_description: Undo what exliar.vfio changed on a host, from its change journal
version_added: 0.1.0
description:
  - Reads the change journal C(/var/lib/exliar-vfio/journal.jsonl) below O(root) and undoes the given stages,
    newest change first. Every file the stage wrote comes back byte-identical with its mode and owner, or is
    removed when it did not exist before; devices bound in the running kernel go back to the driver they had.
  - Afterwards the stage's journal entries are marked restored, so a second run changes nothing and the
    next apply backs up the then-current files again.
author:
  - Exliar VFIO developers (@exliar)
options:
  root:
    description: Directory that stands for the host's V(/).
    type: path
    default: /
  stages:
    description:
      - The stages to undo. They are always undone in the order bootloader, bind, initramfs, whatever order they are
        given in - the initramfs stage last, so the images it rebuilds no longer carry the binding stage's files.
      - Undoing the bootloader stage runs the bootloader's tool again (C(update-grub), C(proxmox-boot-tool refresh)...) and
        undoing the initramfs stage rebuilds the images, each when the tool can run in O(root).
    type: list
    elements: str
    choices: [bootloader, bind, initramfs]
    default: [bootloader, bind, initramfs]
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
seealso:
  - module: exliar.vfio.vfio_bind
"""

EXAMPLES = r"""
- name: Undo the binding stage
  exliar.vfio.vfio_restore:
    stages: [bind]
"""

RETURN = r"""
stages:
  description: Per stage, the C(files) put back (C(path), C(changed)) and the C(devices) given back to their drivers.
  type: dict
  returned: always
  sample: {"bind": {"changed": true, "files": [{"path": "/etc/modprobe.d/exliar-vfio.conf", "changed": true}], "devices": []}}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.exliar.vfio.plugins.module_utils import _bind_stage, _bootloader_stage, _initramfs_stage
from ansible_collections.exliar.vfio.plugins.module_utils._journal import JournalError
from ansible_collections.exliar.vfio.plugins.module_utils._sysfs_bind import BindError

ORDER = ("bootloader", "bind", "initramfs")
RESTORERS = {"bind": _bind_stage.restore, "initramfs": _initramfs_stage.restore, "bootloader": _bootloader_stage.restore}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "default": "/"},
            "stages": {"type": "list", "elements": "str", "choices": sorted(RESTORERS), "default": ["bootloader", "bind", "initramfs"]},
        },
        supports_check_mode=True,
    )
    done, diffs = {}, []
    try:
        for name in [n for n in ORDER if n in module.params["stages"]]:
            result = _bind_stage.public(RESTORERS[name](module.params["root"], module.check_mode, module.run_command))
            diffs.extend(result.pop("diff"))
            done[name] = result
    except (BindError, JournalError, _initramfs_stage.StageError, _bootloader_stage.StageError) as exc:
        module.fail_json(msg=str(exc), stages=done)
    module.exit_json(changed=any(r["changed"] for r in done.values()), stages=done, diff=diffs)


if __name__ == "__main__":
    main()
