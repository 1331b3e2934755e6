#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: vfio_bootloader
short_description: Put kernel parameters where the bootloader in use reads them, and read back what the next boot gets
version_added: 0.1.0
description:
  - With O(state=present), adds, replaces or removes kernel parameters for the bootloader really in use (detected below
    O(root), or O(bootloader)) - GRUB (C(/etc/default/grub) or the C(/etc/default/grub.d) drop-in that really sets the
    variable, then C(update-grub) / C(grub-mkconfig -o) / C(grub2-mkconfig -o) to the file the firmware reads),
    grubby/BLS (every C(/boot/loader/entries/*.conf), C(kernelopts) in the grubenv, C(/etc/default/grub) and
    C(/etc/kernel/cmdline) for future kernels), systemd-boot (loader entries and C(/etc/kernel/cmdline)), kernelstub
    (C(/etc/kernelstub/configuration)), rEFInd (C(refind_linux.conf) and manual stanzas), limine (C(limine.conf) entries,
    C(/etc/default/limine)) and Proxmox (C(/etc/kernel/cmdline) + C(proxmox-boot-tool refresh)).
  - Parameters not named by an entry are never removed or reordered. Parameters this module added earlier and no entry
    asks for any more are removed (they are remembered in C(/var/lib/exliar-vfio/state/bootloader.json)).
  - After the edit and the bootloader's tool, the command line of the next boot's default entry is read back from the
    generated files and must carry the parameters; otherwise the previous configuration is put back and the module fails.
  - Every write is atomic and journaled; M(exliar.vfio.vfio_restore) undoes it.
  - With O(state=verified) (after a reboot), checks that C(/proc/cmdline) carries the parameters and that O(devices) are
    on vfio-pci, and fails naming each difference.
  - An unknown bootloader layout is reported and nothing is changed. This module never reboots; the
    C(exliar.vfio.bootloader) role does, from a handler, when C(vfio_reboot_ok=true).
author:
  - Exliar VFIO developers (@exliar)
options:
  root:
    description:
      - Directory that stands for the host's V(/). Outside the running system the bootloader's tool runs through C(chroot)
        when the root has it; otherwise only the configuration is written and C(not_regenerated) says so.
    type: path
    default: /
  state:
    description: V(present) edits and reads back; V(verified) checks the running system after a reboot.
    type: str
    choices: [present, verified]
    default: present
  bootloader:
    description: The bootloader in use; detected below O(root) when omitted.
    type: str
    choices: [grub, grubby, systemd-boot, kernelstub, refind, limine, proxmox]
  kernel_params:
    description:
      - Parameters to add (V(present)) or remove (V(absent)). C(value) is one word without blanks, quotes or shell
        characters; omit it (or null) for a flag such as C(quiet). An entry overrides a computed default of the same name.
      - C(root), C(init), C(initrd), C(ro), C(rw) and similar boot-critical parameters are refused.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Parameter name, for example C(iommu) or C(vfio-pci.ids).
        type: str
        required: true
      value:
        description: Value; omitted for a flag.
        type: str
      state:
        description: Whether the parameter must be on the command line.
        type: str
        choices: [present, absent]
        default: present
  computed_params:
    description:
      - Add the parameters this host needs (see O(defaults)) to O(kernel_params). The action plugin computes them on the
        controller from the detection facts and then passes V(false).
    type: bool
    default: true
  defaults:
    description: Which computed parameters to add.
    type: dict
    default: {}
    suboptions:
      iommu:
        description:
          - The vendor's IOMMU switch where this kernel needs it (C(intel_iommu=on) when the kernel is not built with
            C(CONFIG_INTEL_IOMMU_DEFAULT_ON=y)). Nothing for AMD, whose IOMMU is on by default (C(amd_iommu=on) is not a
            value the kernel knows).
        type: bool
        default: true
      iommu_pt:
        description: C(iommu=pt) (passthrough mode for the devices the host keeps).
        type: bool
        default: true
      vfio_ids:
        description: C(vfio-pci.ids=) for O(vfio_ids).
        type: bool
        default: true
      efifb_off:
        description: C(video=efifb:off) (opt-in).
        type: bool
        default: false
      acs_override:
        description:
          - C(pcie_acs_override=) with this value (opt-in, warned; only patched kernels know it), for example
            V(downstream,multifunction).
        type: str
  vfio_ids:
    description: The vendor:device ids the binding stage binds by id (C(vfio_bind_plan.ids)).
    type: list
    elements: str
    default: []
  extra_params:
    description:
      - Parameters other stages need, as C(name=value) words (C(vfio_bind_plan.kernel_params),
        C(vfio_initramfs_plan.kernel_params) such as C(rd.driver.pre=vfio_pci)).
    type: list
    elements: str
    default: []
  devices:
    description: With O(state=verified), PCI addresses that must be on vfio-pci.
    type: list
    elements: str
    default: []
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
  - module: exliar.vfio.vfio_initramfs
  - module: exliar.vfio.vfio_restore
  - name: Bootloader guide
    description: What is changed per bootloader, how to check it, how to undo it.
    link: https://github.com/exliar/vfio/blob/main/docs/bootloaders.md
"""

EXAMPLES = r"""
- name: The parameters this host needs, plus one of our own
  exliar.vfio.vfio_bootloader:
    kernel_params:
      - {name: video, value: "efifb:off"}
      - {name: amd_iommu, value: "on", state: absent}
    vfio_ids: "{{ vfio_bind_plan.ids }}"
  register: bootloader

- name: After a reboot, check the command line and the devices
  exliar.vfio.vfio_bootloader:
    state: verified
    kernel_params: "{{ bootloader.params }}"
    computed_params: false
    devices: ["0000:01:00.0", "0000:01:00.1"]
"""

RETURN = r"""
bootloader:
  description: The bootloader the parameters were written for.
  type: str
  returned: always
  sample: grub
params:
  description: Every parameter entry applied (computed defaults and O(kernel_params)), each with C(name), C(value), C(state).
  type: list
  elements: dict
  returned: with state=present
files:
  description: Each file written, with C(path) and C(changed).
  type: list
  elements: dict
  returned: with state=present
commands:
  description: The bootloader's commands run after the edit (or that would run).
  type: list
  elements: str
  returned: with state=present
not_regenerated:
  description: Why the bootloader's tool did not run (it cannot run in O(root)); the next boot is then predicted.
  type: str
  returned: when the tool could not run
next_boot_cmdline:
  description: The command line the next boot's default entry gets, read back from the generated files.
  type: str
  returned: with state=present
  sample: root=UUID=5e0c8f6d ro quiet intel_iommu=on iommu=pt vfio-pci.ids=10de:1b80,10de:10f0
next_boot_source:
  description: The file C(next_boot_cmdline) was read from.
  type: str
  returned: with state=present
  sample: /boot/grub/grub.cfg
current_cmdline:
  description: C(/proc/cmdline) below O(root).
  type: str
  returned: always
reboot_required:
  description:
    - The running kernel's command line (C(/proc/cmdline) below O(root)) does not carry the parameters yet, or still has
      ones to remove; the next boot applies them. What the bootloader adds or expands itself (C(BOOT_IMAGE=), C(root=) and
      C(ro) from grub-mkconfig, C($vt_handoff)) does not count.
  type: bool
  returned: with state=present
problems:
  description: With O(state=verified), every difference found.
  type: list
  elements: str
  returned: with state=verified
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_stage as stage
from ansible_collections.exliar.vfio.plugins.module_utils import _kernel_params as kp
from ansible_collections.exliar.vfio.plugins.module_utils._journal import JournalError

DEFAULT_OPTIONS = {
    "iommu": {"type": "bool", "default": True},
    "iommu_pt": {"type": "bool", "default": True},
    "vfio_ids": {"type": "bool", "default": True},
    "efifb_off": {"type": "bool", "default": False},
    "acs_override": {"type": "str"},
}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "default": "/"},
            "state": {"type": "str", "choices": ["present", "verified"], "default": "present"},
            "bootloader": {"type": "str", "choices": ["grub", "grubby", "systemd-boot", "kernelstub", "refind", "limine", "proxmox"]},
            "kernel_params": {"type": "list", "elements": "dict", "default": [], "options": {
                "name": {"type": "str", "required": True},
                "value": {"type": "str"},
                "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            }},
            "computed_params": {"type": "bool", "default": True},
            "defaults": {"type": "dict", "default": {}, "options": DEFAULT_OPTIONS},
            "vfio_ids": {"type": "list", "elements": "str", "default": []},
            "extra_params": {"type": "list", "elements": "str", "default": []},
            "devices": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        entries, warnings = resolve_params(p)
    except kp.ParamError as exc:
        module.fail_json(msg=f"{exc}; nothing was changed")
    for warning in warnings:
        module.warn(warning)
    if p["state"] == "verified":
        try:
            result = stage.verify_boot(p["root"], entries, p["devices"])
        except kp.ParamError as exc:
            module.fail_json(msg=str(exc))
        if not result["ok"]:
            module.fail_json(msg="after the reboot: " + "; ".join(result["problems"]), **result)
        module.exit_json(changed=False, current_cmdline=result["cmdline"], **result)

    def run(argv):
        return module.run_command(argv)

    try:
        result = stage.configure(p["root"], p["bootloader"], entries, module.check_mode, run)
    except stage.StageError as exc:
        for warning in exc.result.get("warnings") or []:
            module.warn(warning)
        module.fail_json(msg=str(exc), **{k: v for k, v in exc.result.items() if k != "warnings"})
    except JournalError as exc:
        module.fail_json(msg=str(exc))
    for warning in result.pop("warnings", []) or []:
        module.warn(warning)
    result["diff"] = [f["diff"] for f in result["files"] if f["changed"]]
    module.exit_json(**result)


def resolve_params(p: dict) -> tuple:
    """(entries, warnings): the host's computed defaults (unless the controller already did) merged with the user's."""
    user = kp.validate([{k: v for k, v in e.items() if v is not None} for e in p["kernel_params"]])
    if not p["computed_params"] or p["state"] == "verified":
        return user, []
    from ansible_collections.exliar.vfio.plugins.module_utils._facts import gather_facts  # pylint: disable=import-outside-toplevel
    facts = gather_facts(p["root"], with_names=False)
    extra = {"kernel_params": list(p["extra_params"])}
    computed = kp.defaults(facts, {"ids": p["vfio_ids"]}, extra, p["defaults"])
    return kp.validate(kp.merge(computed["params"], user)), computed["warnings"]


if __name__ == "__main__":
    main()
