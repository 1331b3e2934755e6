#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: vfio_vm
short_description: Define libvirt VMs that receive the vfio-pci devices, run them and report what they used
version_added: 0.1.0
description:
  - Validates each VM of O(vms), checks the host (every passed PCI function is bound to C(vfio-pci), OVMF is installed for
    EFI guests, disks and kernels exist), renders a libvirt domain and defines it with C(virsh define) when its rendering
    changed. Every VM is checked before anything is changed.
  - Each passed PCI function becomes a C(<hostdev managed='no'>) (the devices stay on C(vfio-pci) when the VM stops); the
    functions of one host slot share one guest slot on their own PCIe root port (q35), with the same function numbers.
  - The domain carries a hash of its rendering in its metadata (namespace C(urn:exliar-vfio:domain:1)); a domain whose hash
    matches is not defined again. The XML last defined is kept in C(/var/lib/exliar-vfio/state/vm/NAME.xml), written
    through the change journal; it is the diff's "before".
  - With O(vms[].start), starts the domain (unless it runs already), waits until it powers off and returns its runtime,
    CPU time and peak memory (of the QEMU process), with samples every O(vms[].monitor.interval_seconds).
  - Below a O(root) other than V(/) only check mode is possible (the domains are rendered, libvirt is not asked).
    Without libvirt, check mode warns and still renders.
author:
  - Exliar VFIO developers (@exliar)
options:
  root:
    description: Directory that stands for the host's V(/); devices, firmware and disks are looked up below it.
    type: path
    default: /
  uri:
    description: The libvirt connection URI.
    type: str
    default: qemu:///system
  vms:
    description: The VMs.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Domain name, 1 to 64 characters of C(A-Z a-z 0-9 _ . + -), not starting with C(-).
        type: str
        required: true
      memory_mib:
        description: Memory in MiB (at least 64).
        type: int
        required: true
      vcpus:
        description: Virtual CPUs (at least 1).
        type: int
        required: true
      firmware:
        description:
          - V(efi) boots OVMF (found below O(root) at the known Debian, Fedora, Arch and openSUSE locations unless
            O(vms[].loader) is given); V(bios) boots SeaBIOS.
        type: str
        choices: [efi, bios]
        default: efi
      loader:
        description: Path of the OVMF code image (C(OVMF_CODE*.fd)); its C(VARS) sibling is the default template.
        type: path
      nvram_template:
        description: Path of the OVMF variables template copied for the VM.
        type: path
      machine:
        description: QEMU machine type.
        type: str
        default: q35
      domain_type:
        description:
          - V(kvm), V(qemu) (emulation, no acceleration), or V(auto), which picks V(kvm) when libvirt offers it for
            x86_64 guests and otherwise V(qemu) with a warning.
        type: str
        choices: [kvm, qemu, auto]
        default: auto
      disks:
        description: Disk images; a path that does not exist fails (in check mode, warns).
        type: list
        elements: dict
        suboptions:
          path:
            description: Image path on the host.
            type: path
            required: true
          format:
            description: Image format; default V(qcow2) for C(.qcow2) files, else V(raw).
            type: str
            choices: [qcow2, raw]
          bus:
            description: Disk bus; default V(virtio) (V(sata) for a cdrom).
            type: str
            choices: [virtio, sata, scsi]
          device:
            description: Device kind.
            type: str
            choices: [disk, cdrom]
            default: disk
          readonly:
            description: Read-only (always for a cdrom).
            type: bool
            default: false
      kernel:
        description: Kernel image for direct kernel boot (no boot loader in the guest).
        type: path
      initrd:
        description: Initramfs for direct kernel boot.
        type: path
      cmdline:
        description: Kernel command line for direct kernel boot.
        type: str
      devices:
        description:
          - The host PCI functions to pass through, each already bound to C(vfio-pci) (the binding stage). A function on
            another driver fails the task, or warns in check mode, where the binding stage of the same run binds it.
        type: list
        elements: dict
        suboptions:
          address:
            description: Full PCI address C(DDDD:BB:DD.F), e.g. C(0000:01:00.0).
            type: str
            required: true
          vendor_id:
            description: Vendor id (4 hex digits), for the record.
            type: str
          device_id:
            description: Device id (4 hex digits), for the record.
            type: str
          class:
            description: PCI class (6 hex digits), for the record.
            type: str
      features:
        description: Hide the hypervisor from guest drivers that refuse to run in a VM (NVIDIA's Code 43 before driver 465).
        type: dict
        suboptions:
          hypervisor_hidden:
            description: Clear the CPUID hypervisor bit.
            type: bool
            default: false
          vendor_id:
            description: Hyper-V vendor id shown to the guest (1 to 12 visible characters, no commas).
            type: str
          kvm_hidden:
            description: Hide the KVM signature.
            type: bool
            default: false
      monitor:
        description: Sampling while waiting for the VM to power off.
        type: dict
        suboptions:
          interval_seconds:
            description: Seconds between samples (at least 0.1).
            type: float
      start:
        description: Start the domain (unless it is running) after defining it.
        type: bool
        default: false
      wait:
        description:
          - Wait until the domain powers off and collect its statistics (also for a domain that was running already);
            default O(vms[].start).
        type: bool
      wait_timeout:
        description: Seconds to wait; the VM is left running when they pass, and the task fails saying how to stop it.
        type: float
        default: 600
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: partial
    details: A VM with O(vms[].start=true) is started again on every run.
seealso:
  - module: exliar.vfio.vfio_bind
  - name: libvirt domain XML format
    description: The elements the rendered domains use.
    link: https://libvirt.org/formatdomain.html
"""

EXAMPLES = r"""
- name: Define a Windows guest with the bound GPU and its audio function
  exliar.vfio.vfio_vm:
    vms:
      - name: win11
        memory_mib: 16384
        vcpus: 8
        disks:
          - path: /var/lib/libvirt/images/win11.qcow2
        devices:
          - address: "0000:01:00.0"
          - address: "0000:01:00.1"
        features:
          hypervisor_hidden: true
          vendor_id: exliarvfio
          kvm_hidden: true

- name: Run a benchmark guest once and report what it used
  exliar.vfio.vfio_vm:
    vms:
      - name: bench
        memory_mib: 4096
        vcpus: 4
        disks:
          - path: /var/lib/libvirt/images/bench.qcow2
        devices:
          - address: "0000:01:00.0"
        start: true
        wait_timeout: 3600
        monitor:
          interval_seconds: 5
  register: bench

- name: Preview a sysroot's domains without libvirt
  exliar.vfio.vfio_vm:
    root: /srv/sysroots/desktop
    vms:
      - name: win11
        memory_mib: 16384
        vcpus: 8
  check_mode: true
  diff: true
"""

RETURN = r"""
vms:
  description: Per VM, in the order given.
  type: list
  elements: dict
  returned: always
  contains:
    name:
      description: Domain name.
      type: str
    changed:
      description: The domain was (or would be) defined, its state file written, or the VM started.
      type: bool
    defined:
      description: The rendering differed from what libvirt holds, so the domain was (or would be) defined.
      type: bool
    existed:
      description: A domain of that name existed before; null when libvirt was not asked.
      type: bool
    hash:
      description: sha256 of the rendering (without metadata and UUID), stored in the domain's metadata.
      type: str
    domain_type:
      description: V(kvm) or V(qemu), O(vms[].domain_type=auto) resolved.
      type: str
    firmware:
      description: C(type) (efi or bios), C(loader) and C(nvram_template).
      type: dict
    devices:
      description: The passed PCI addresses.
      type: list
      elements: str
    xml:
      description: The rendered domain XML.
      type: str
    state_file:
      description: Where the defined XML is kept.
      type: str
      sample: /var/lib/exliar-vfio/state/vm/win11.xml
    started:
      description: The VM was (or would be) started by this task.
      type: bool
    state:
      description: libvirt's state of the domain at the end (C(shut off), C(running)...); null when libvirt was not asked.
      type: str
    stats:
      description:
        - After waiting, C(runtime_seconds), C(cpu_time_seconds) (of the QEMU process), C(max_memory_mib) (its peak resident
          set), C(gpu) (per device what the host could read, usually nothing for a vfio-pci device), C(samples) (each with
          C(t), C(cpu_seconds), C(rss_mib), C(gpu_busy)), C(shutdown) (V(shutdown), V(crashed) or V(timeout)) and
          C(reason) (libvirt's); null when the task did not wait.
      type: dict
      sample: {"runtime_seconds": 12.5, "cpu_time_seconds": 10.9, "max_memory_mib": 180.4, "gpu": {}, "samples": [],
               "shutdown": "shutdown", "reason": "shutdown"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.exliar.vfio.plugins.module_utils import _vm_stage as stage

DISK = {
    "path": {"type": "path", "required": True},
    "format": {"type": "str", "choices": ["qcow2", "raw"]},
    "bus": {"type": "str", "choices": ["virtio", "sata", "scsi"]},
    "device": {"type": "str", "choices": ["disk", "cdrom"], "default": "disk"},
    "readonly": {"type": "bool", "default": False},
}
DEVICE = {
    "address": {"type": "str", "required": True},
    "vendor_id": {"type": "str"},
    "device_id": {"type": "str"},
    "class": {"type": "str"},
}
VM = {
    "name": {"type": "str", "required": True},
    "memory_mib": {"type": "int", "required": True},
    "vcpus": {"type": "int", "required": True},
    "firmware": {"type": "str", "choices": ["efi", "bios"], "default": "efi"},
    "loader": {"type": "path"},
    "nvram_template": {"type": "path"},
    "machine": {"type": "str", "default": "q35"},
    "domain_type": {"type": "str", "choices": ["kvm", "qemu", "auto"], "default": "auto"},
    "disks": {"type": "list", "elements": "dict", "options": DISK},
    "kernel": {"type": "path"},
    "initrd": {"type": "path"},
    "cmdline": {"type": "str"},
    "devices": {"type": "list", "elements": "dict", "options": DEVICE},
    "features": {"type": "dict", "options": {
        "hypervisor_hidden": {"type": "bool", "default": False},
        "vendor_id": {"type": "str"},
        "kvm_hidden": {"type": "bool", "default": False},
    }},
    "monitor": {"type": "dict", "options": {"interval_seconds": {"type": "float"}}},
    "start": {"type": "bool", "default": False},
    "wait": {"type": "bool"},
    "wait_timeout": {"type": "float", "default": 600},
}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "default": "/"},
            "uri": {"type": "str", "default": "qemu:///system"},
            "vms": {"type": "list", "elements": "dict", "required": True, "options": VM},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = stage.apply(p["root"], p["vms"], module.check_mode, module.run_command, uri=p["uri"])
    except stage.StageError as exc:
        for warning in exc.result.pop("warnings", None) or []:
            module.warn(warning)
        for vm in exc.result.get("vms") or []:
            vm.pop("diff", None)
        module.fail_json(msg=str(exc), **exc.result)
    for warning in result.pop("warnings", None) or []:
        module.warn(warning)
    diffs = [vm.pop("diff") for vm in result["vms"]]
    result["diff"] = [d for d, vm in zip(diffs, result["vms"]) if vm["defined"]]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
