#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: vfio_bind
short_description: Bind PCI devices to vfio-pci now and at every boot, safely, and undo it
version_added: 0.1.0
description:
  - Resolves a selection of PCI devices on the host (by address, vendor:device id, name pattern, or every discrete
    GPU except the boot GPU), expands each GPU to every function of its slot, and checks that each IOMMU group is
    covered (bridges excepted).
  - Refuses, changing nothing, when the IOMMU is off, when a device drives the only display, carries the Ansible
    connection, or holds a mounted filesystem or swap, when an address does not exist, when the selection is empty,
    when the hardware at an address bound by an earlier run changed, or when another modprobe.d file already configures
    vfio-pci. Each refusal has its own override option.
  - Binds each device in the running kernel (C(driver_override), unbind, probe) and verifies the C(driver) link and
    C(/dev/vfio/<group>). Writes one file under C(/etc/modprobe.d/) with C(options vfio-pci ids=) for ids that
    no remaining host device shares, C(softdep) lines for every displaced driver, and, when only some devices of
    an id are selected, an C(install) line that runs a script claiming them by address before vfio-pci loads.
  - Every file is written atomically, its original backed up once, and each change recorded in the journal
    C(/var/lib/exliar-vfio/journal.jsonl) below O(root); M(exliar.vfio.vfio_restore) undoes it.
  - Run through the C(exliar.vfio.bind) role, the controller shows the plan, runs the C(on_pre_vfio_bind) and
    C(on_post_vfio_bind) hooks of extension plugins per device, and skips the module when the host already
    matches the plan.
author:
  - Exliar VFIO developers (@exliar)
options:
  root:
    description:
      - Directory that stands for the host's V(/). Files are read and written below it.
      - Devices are bound in the running kernel only when it is the running system's own V(/).
    type: path
    default: /
  devices:
    description:
      - The selection. Each entry is an address string or a mapping with exactly one of C(address)
        (V(0000:01:00.0)), C(id) (vendor:device, V(10de:1e87)), C(name) (a case-insensitive glob over the vendor
        and device names, V(*RTX 3090*)) or C(gpus) (V(discrete_except_boot)); C(exclude=true) removes what the
        entry matches.
      - Required with O(state=present). With O(state=absent), the addresses to give back to their drivers.
    type: list
    elements: raw
    default: []
  state:
    description:
      - V(present) binds the selection. V(absent) puts the given addresses back on the driver they had before
        the first bind (persistent files are undone by M(exliar.vfio.vfio_restore)).
    type: str
    choices: [present, absent]
    default: present
  runtime:
    description:
      - V(auto) binds in the running kernel when O(root) is the running system, V(never) only writes the
        persistent configuration, V(always) fails when O(root) is not the running system.
    type: str
    choices: [auto, always, never]
    default: auto
  connection_address:
    description:
      - The host-side IP address Ansible connects to, to find the network interface that must not be bound.
      - Default is the server address of C(SSH_CONNECTION) in the module's environment.
    type: str
  allow_boot_display:
    description: Bind a GPU that drives the boot display although no other GPU stays with the host.
    type: bool
    default: false
  allow_connection_nic:
    description: Bind the network device that carries the Ansible connection (the host becomes unreachable).
    type: bool
    default: false
  allow_mounted_disk:
    description: Bind a device that holds a mounted filesystem or active swap.
    type: bool
    default: false
  allow_iommu_off:
    description: Write the persistent configuration although the IOMMU is off (groups cannot be checked).
    type: bool
    default: false
  allow_missing_devices:
    description: Skip addresses that do not exist on this host instead of refusing.
    type: bool
    default: false
  allow_empty_selection:
    description: A selection that matches nothing leaves the host alone instead of refusing.
    type: bool
    default: false
  accept_hardware_change:
    description: Plan anew although a device bound by an earlier run was replaced by different hardware.
    type: bool
    default: false
  take_over_vfio_config:
    description:
      - Other files in C(/etc/modprobe.d) that configure vfio-pci (C(options vfio-pci), C(install vfio-pci)) make the host
        refused, since vfio-pci reads one C(ids=) and one install command. With V(true), their lines are commented out
        (journaled; M(exliar.vfio.vfio_restore) brings them back) and their C(ids) and other options are carried into
        the collection's file.
    type: bool
    default: false
  expect:
    description:
      - Internal, set by the action plugin; the addresses the controller planned. The module fails when its own
        plan differs (the host changed since detection).
    type: list
    elements: str
  plugin_records:
    description: Internal, set by the action plugin; extension plugins' operations to record in the journal.
    type: list
    elements: dict
    default: []
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: Shows each managed file's change and each device's driver before and after.
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
seealso:
  - module: exliar.vfio.vfio_restore
  - name: Binding guide
    description: Selection, refusals, ids versus addresses, restore.
    link: https://github.com/exliar/vfio/blob/main/docs/binding.md
notes:
  - Needs root on the host.
"""

EXAMPLES = r"""
- name: Bind the second of two identical GPUs, with its audio function
  exliar.vfio.vfio_bind:
    devices:
      - address: "0000:02:00.0"

- name: Every discrete GPU except the one the firmware boots on
  exliar.vfio.vfio_bind:
    devices:
      - gpus: discrete_except_boot

- name: Give one device back to its host driver
  exliar.vfio.vfio_bind:
    devices: ["0000:02:00.0", "0000:02:00.1"]
    state: absent
"""

RETURN = r"""
plan:
  description:
    - The resolved plan. C(devices) lists every function with C(address), C(ids), C(name), C(iommu_group),
      C(driver) (now), C(driver_before) (the driver it leaves) and C(reason); C(ids) and C(by_address) say how each is
      bound at boot; C(initramfs) and C(kernel_params) are handed to the later stages; C(refusals) and C(errors)
      say why nothing was done.
  type: dict
  returned: with state=present
  sample: {"status": "ok", "ids": ["10de:1e87", "10de:10f8"], "by_address": [], "kernel_params": [],
           "devices": [{"address": "0000:01:00.0", "ids": "10de:1e87", "driver": "nouveau", "driver_before": "nouveau",
                        "iommu_group": 1, "reason": "selected"}]}
files:
  description: Each managed file with C(path) and C(changed).
  type: list
  elements: dict
  returned: with state=present
devices:
  description: Per device, C(address), C(driver_before) and C(changed) (bound in the running kernel by this call).
  type: list
  elements: dict
  returned: always
runtime:
  description: V(applied), or why devices were not bound in the running kernel.
  type: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.exliar.vfio.plugins.module_utils import _bind_stage as stage
from ansible_collections.exliar.vfio.plugins.module_utils._bindplan import OPTION_NAMES
from ansible_collections.exliar.vfio.plugins.module_utils._journal import JournalError
from ansible_collections.exliar.vfio.plugins.module_utils._sysfs_bind import BindError


def main() -> None:
    spec = {
        "root": {"type": "path", "default": "/"},
        "devices": {"type": "list", "elements": "raw", "default": []},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        "runtime": {"type": "str", "choices": ["auto", "always", "never"], "default": "auto"},
        "connection_address": {"type": "str"},
        "expect": {"type": "list", "elements": "str"},
        "plugin_records": {"type": "list", "elements": "dict", "default": []},
    }
    spec.update({name: {"type": "bool", "default": False} for name in OPTION_NAMES})
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params

    def run(argv):
        return module.run_command(argv)

    try:
        if p["state"] == "absent":
            result = stage.release(p["root"], [stage.normalize(a) for a in p["devices"]], module.check_mode, run)
        else:
            result = stage.apply(p["root"], p["devices"], {n: p[n] for n in OPTION_NAMES}, p["runtime"], module.check_mode, run,
                                 connection_address=p["connection_address"], expect=p["expect"], plugin_records=p["plugin_records"])
    except stage.StageError as exc:
        module.fail_json(msg=str(exc), **stage.public(exc.result))
    except (BindError, JournalError, ValueError) as exc:
        module.fail_json(msg=str(exc))
    for warning in result.get("warnings") or []:
        module.warn(warning)
    module.exit_json(**stage.public(result))


if __name__ == "__main__":
    main()
