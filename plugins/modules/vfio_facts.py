#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: vfio_facts
short_description: Detect everything GPU/PCI passthrough depends on
version_added: 0.1.0
description:
  - Reads, in one call and without changing anything, what a host needs to be known for VFIO passthrough, namely
    the distribution, kernel, CPU vendor and virtualization flags, boot mode and Secure Boot, chassis,
    the IOMMU state and the exact reason it is off, the bootloader and initramfs generator in use (with
    the evidence), the availability of the vfio modules for every installed kernel, every PCI device,
    every IOMMU group, the GPUs with their companion functions and group verdicts, and the PCI devices the host
    itself uses (mounted filesystems, active swap, the interface carrying the Ansible connection).
  - Every file is read below O(root), so the same call inspects V(/), a chroot, or a host sysroot
    built from a machine profile.
  - The module never fails on unreadable or malformed host files; it returns what it could not read
    in RV(ansible_facts.vfio.warnings) and what it concluded without them.
  - The full contract of the returned facts is documented in C(docs/facts.md) of the collection.
author:
  - Exliar VFIO developers (@exliar)
options:
  root:
    description:
      - Directory that stands for the host's V(/). Every file is read below it.
      - A root that does not exist is reported in RV(ansible_facts.vfio.warnings), not as a failure.
    type: path
    default: /
  names:
    description:
      - Look up vendor and device names in the host's C(pci.ids) database, and in systemd's C(hwdb.bin)
        for the devices C(pci.ids) does not name.
      - Set to V(false) to skip the lookup; RV(ansible_facts.vfio.pci_devices[].vendor_name) is then null.
    type: bool
    default: true
  connection_address:
    description:
      - The host-side IP address (IPv4 or IPv6) Ansible connects to. The network interface that holds it,
        and the PCI device below that interface, are reported in RV(ansible_facts.vfio.host_usage) as in use.
      - Default is the server address of E(SSH_CONNECTION) in the module's environment when O(root) is V(/);
        nothing for another root, whose network is not the one the module runs in, and nothing for a local connection.
      - Set it behind NAT or a jump host, when C(become) drops E(SSH_CONNECTION) from the environment,
        or to check a sysroot.
    type: str
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The module only reads, so check mode gives the same facts.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
    details: The module changes nothing, so there is nothing to show.
  facts:
    description: Action returns an C(ansible_facts) dictionary that will update existing host facts.
    support: full
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
seealso:
  - name: Facts reference
    description: Every returned key, with its meaning and examples.
    link: https://github.com/exliar/vfio/blob/main/docs/facts.md
notes:
  - Runs as any user; without root some firmware files (ACPI tables, EFI variables) may be unreadable,
    which is then listed in the warnings.
"""

EXAMPLES = r"""
- name: Detect the host
  exliar.vfio.vfio_facts:

- name: Inspect a chroot or a lab sysroot instead of the running host
  exliar.vfio.vfio_facts:
    root: /srv/sysroots/workstation

- name: Name the address Ansible reaches the host on, when SSH_CONNECTION does not show it (NAT, jump host)
  exliar.vfio.vfio_facts:
    connection_address: 192.168.1.20

- name: Show the GPUs whose IOMMU group can be passed through as it is
  ansible.builtin.debug:
    msg: "{{ ansible_facts.vfio.gpus | selectattr('group_viable') | map(attribute='address') }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to ansible_facts.
  returned: always
  type: dict
  contains:
    vfio:
      description: Everything detected. See C(docs/facts.md) for the full contract.
      returned: always
      type: dict
      contains:
        facts_version:
          description: Version of this structure; bumped on incompatible change.
          type: int
          returned: always
          sample: 1
        root:
          description: The root that was read.
          type: str
          returned: always
          sample: /
        system:
          description: Distribution (C(distribution)), kernel (C(kernel.running), C(kernel.installed)),
            CPU (C(cpu.vendor) intel/amd/other, C(cpu.virtualization_flag) vmx/svm/null), firmware boot
            (C(boot.mode) uefi/bios, C(boot.secure_boot)) and machine (C(machine.chassis_type), C(machine.laptop)).
          type: dict
          returned: always
          sample: {"distribution": {"id": "debian", "version_id": "12", "family": "debian"},
                   "kernel": {"running": "6.1.0-18-amd64", "installed": ["6.1.0-18-amd64"]},
                   "cpu": {"vendor": "intel", "virtualization_flag": "vmx", "virtualization_enabled": true},
                   "boot": {"mode": "uefi", "secure_boot": false},
                   "machine": {"chassis_type": 3, "laptop": false}}
        cmdline:
          description: The running kernel's command line, raw and as ordered C({name, value}) parameters.
          type: dict
          returned: always
          sample: {"raw": "ro quiet intel_iommu=on", "params": [{"name": "ro", "value": null}]}
        iommu:
          description:
            - IOMMU state. C(enabled) is true when the kernel created IOMMU groups.
            - When it is off, C(problems) lists each reason with a C(fix) (for example which firmware
              setting to turn on, or C(intel_iommu=on) to add), and C(params_needed) the kernel
              parameters that would turn it on.
          type: dict
          returned: always
          sample: {"enabled": false, "type": "intel", "firmware_table": "DMAR", "firmware_table_present": true,
                   "interrupt_remapping": null, "params_needed": ["intel_iommu=on"],
                   "problems": [{"code": "param_missing", "what": "...", "fix": "add intel_iommu=on to the kernel parameters"}]}
        bootloader:
          description: The bootloader in use (C(name) is one of grub, grubby, systemd-boot, kernelstub, refind,
            limine, proxmox, or null when unknown), the C(evidence) for it, every C(candidates) found, and the ESP.
          type: dict
          returned: always
          sample: {"name": "grub", "evidence": ["/boot/grub/grub.cfg", "/etc/default/grub"], "esp": "/boot/efi"}
        initramfs:
          description: The initramfs generator in use (initramfs-tools, dracut, mkinitcpio, booster, or null)
            with its evidence; C(ambiguous) is true when several are installed and none could be chosen.
          type: dict
          returned: always
          sample: {"name": "initramfs-tools", "evidence": ["/usr/sbin/update-initramfs"], "ambiguous": false}
        vfio_modules:
          description: Per installed kernel, whether C(vfio), C(vfio_pci), C(vfio_iommu_type1) (and C(vfio_virqfd)
            before Linux 6.2) are available as module, built in, or missing; which are loaded now.
          type: dict
          returned: always
          sample: {"ready": true, "loaded": [], "kernels": {"6.1.0-18-amd64": {"ready": true, "builtin": [],
                   "modules": {"vfio": "module", "vfio_pci": "module"}}}}
        pci_devices:
          description: Every PCI function.
          type: list
          elements: dict
          returned: always
          contains:
            address:
              description: Full PCI address
              type: str
              returned: always
              sample: "0000:01:00.0"
            vendor_id:
              description: 4 lowercase hex digits
              type: str
              returned: always
              sample: "10de"
            device_id:
              description: 4 lowercase hex digits
              type: str
              returned: always
              sample: "1e87"
            class:
              description: Class code, 6 lowercase hex digits
              type: str
              returned: always
              sample: "030000"
            subsystem_vendor_id:
              description: 4 lowercase hex digits or null
              type: str
              returned: always
              sample: "1462"
            subsystem_device_id:
              description: 4 lowercase hex digits or null
              type: str
              returned: always
              sample: "3721"
            driver:
              description: Bound driver or null
              type: str
              returned: always
              sample: "nvidia"
            kernel_modules:
              description:
                - Like C(lspci -k)'s "Kernel modules", the modules of the running kernel whose C(modules.alias) patterns
                  match the device's C(modalias), and built-in drivers that match; whatever driver is bound now.
                - Empty when unknown, for example without C(modules.alias) (which gives a warning).
              type: list
              returned: always
              elements: str
              sample: [nouveau, nvidia]
            iommu_group:
              description: IOMMU group number or null
              type: int
              returned: always
              sample: "1"
            boot_vga:
              description: The firmware's boot display device
              type: bool
              returned: always
              sample: "false"
            vendor_name:
              description: From pci.ids, or null
              type: str
              returned: always
              sample: "NVIDIA Corporation"
            device_name:
              description: From pci.ids, or null
              type: str
              returned: always
              sample: "TU104 [GeForce RTX 2080 Rev. A]"
            reset_methods:
              description: The kernel's reset methods
              type: list
              returned: always
              elements: str
              sample: [flr, bus]
            parent_bridge:
              description: Address of the bridge above, or null on a root bus
              type: str
              returned: always
              sample: "0000:00:01.0"
            block_devices:
              description: Block devices below this function
              type: list
              returned: always
              elements: str
              sample: [nvme0n1]
            net_interfaces:
              description: Network interfaces of this function
              type: list
              returned: always
              elements: str
              sample: [enp5s0]
        iommu_groups:
          description: Every IOMMU group with its member addresses.
          type: list
          elements: dict
          returned: always
          sample: [{"id": 1, "devices": ["0000:00:01.0", "0000:01:00.0", "0000:01:00.1"], "type": "DMA-FQ"}]
        gpus:
          description:
            - Every device of class 03xx (VGA 0300, XGA 0301, 3D 0302, display 0380).
            - C(companions) are the other functions of the same slot, whatever their group.
            - C(group_viable) is true iff every member of the GPU's group other than bridges (classes 0600, 0604, 0609) is a function
              of the GPU's own slot (null without groups); C(group_blockers) lists those that are not.
            - C(identical_to) lists other GPUs with the same vendor:device.
          type: list
          elements: dict
          returned: always
          sample: [{"address": "0000:01:00.0", "vendor_id": "10de", "device_id": "1e87", "vendor": "nvidia",
                    "kind": "discrete", "bmc": false, "boot_vga": false, "iommu_group": 1,
                    "companions": ["0000:01:00.1", "0000:01:00.2", "0000:01:00.3"],
                    "group_viable": true, "group_blockers": [], "identical_to": []}]
        host_usage:
          description:
            - The PCI devices the host itself uses; giving one of them to a VM takes it away from the host.
            - C(connection) is C({address, interfaces, pci_addresses}), the interface that holds the host-side address
              of the Ansible connection and the PCI devices below it (none for a virtual interface; a bridge or bond
              stands on its lower interfaces). C(address) is null for a local connection.
            - C(in_use) maps a PCI address to C({kind, block, detail}) entries for mounted filesystems (C(kind=mount))
              and active swap (C(kind=swap)), followed through device-mapper, LVM, LUKS and md to the disks, and
              C({kind, interface, detail}) entries for the connection (C(kind=connection)).
          type: dict
          returned: always
          sample: {"connection": {"address": "192.168.1.20", "interfaces": ["enp7s0"], "pci_addresses": ["0000:07:00.0"]},
                   "in_use": {"0000:01:00.0": [{"kind": "mount", "block": "nvme0n1p3", "detail": "/ (ext4)"}],
                              "0000:07:00.0": [{"kind": "connection", "interface": "enp7s0",
                                                "detail": "carries the Ansible connection to 192.168.1.20"}]}}
        managed:
          description:
            - What exliar.vfio itself left on the host, so that each stage can tell on the controller that nothing needs
              to change. C(files) maps each file the collection owns to C({sha256, mode}) (null when absent); C(bind)
              is the binding plan an earlier run applied (C(/var/lib/exliar-vfio/state/bind.json)); C(foreign_vfio_config)
              lists other modprobe.d lines that configure vfio-pci (C(entries) with C(path), C(line_no), C(line),
              C(directive), C(state) V(active) or V(disabled) by this collection, C(args)) and the C(contents) of those
              files in C(/etc/modprobe.d).
          type: dict
          returned: always
          sample: {"files": {"/etc/modprobe.d/exliar-vfio.conf": {"sha256": "9f2c...", "mode": 420}}, "bind": null,
                   "foreign_vfio_config": {"entries": [], "contents": {}}}
        warnings:
          description: What could not be read or made sense of; detection went on without it.
          type: list
          elements: str
          returned: always
          sample: ["sys/bus/pci/devices/0000:01:00.0/class: unexpected content 'garbage', ignored"]
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.exliar.vfio.plugins.module_utils._facts import gather_facts
from ansible_collections.exliar.vfio.plugins.module_utils._hostuse import effective_connection_address


def main() -> None:
    module = AnsibleModule(
        argument_spec={"root": {"type": "path", "default": "/"}, "names": {"type": "bool", "default": True},
                       "connection_address": {"type": "str"}},
        supports_check_mode=True,
    )
    root = module.params["root"]
    address = effective_connection_address(root, module.params["connection_address"], os.environ)
    facts = gather_facts(root, with_names=module.params["names"], connection_address=address)
    for warning in facts["warnings"]:
        module.warn(warning)
    module.exit_json(changed=False, ansible_facts={"vfio": facts})


if __name__ == "__main__":
    main()
