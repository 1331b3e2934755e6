#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: vfio_initramfs
short_description: Put vfio-pci early into the initramfs of every installed kernel, and prove it
version_added: 0.1.0
description:
  - With O(state=configured), configures the initramfs generator in use (initramfs-tools, dracut, mkinitcpio, booster)
    to load the vfio modules early and to carry the binding stage's modprobe file and per-address script, through one
    file the collection owns where the generator reads drop-ins, else by editing its configuration in place
    (comments and unrelated content kept). Every write is atomic and journaled; M(exliar.vfio.vfio_restore) undoes it.
  - With O(state=regenerated), rebuilds the image of every installed kernel with the generator's own command, then lists
    each image's contents (the cpio archive is read directly, early-microcode prefix and gzip, zstd, xz, lz4, bzip2
    included) and fails when vfio-pci or a handed-over file is missing for any kernel. A failed rebuild or check puts the
    previous configuration and images back and fails with the tool's output.
  - With O(state=verified), only checks the images.
  - The C(exliar.vfio.initramfs) role runs O(state=configured) and notifies a handler that runs O(state=regenerated), so
    images are rebuilt only when something changed.
author:
  - Exliar VFIO developers (@exliar)
options:
  root:
    description:
      - Directory that stands for the host's V(/). Outside the running system the generator runs through C(chroot), when the
        root has a shell and the tool; otherwise only the configuration is written.
    type: path
    default: /
  state:
    description: What to do (see the description).
    type: str
    choices: [configured, regenerated, verified]
    default: configured
  generator:
    description: The generator in use; detected below O(root) when omitted.
    type: str
    choices: [initramfs-tools, dracut, mkinitcpio, booster]
  kernels:
    description: Kernel versions to rebuild and check; default every installed kernel.
    type: list
    elements: str
  modules:
    description:
      - Per kernel version, the vfio modules that must be in its image (the binding stage's
        C(ansible_facts.vfio_bind_plan.initramfs.modules)); built-in ones are left out.
    type: dict
    default: {}
  files:
    description: Files that must be in every image (the binding stage's modprobe file and per-address script).
    type: list
    elements: path
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
    support: partial
    details: O(state=regenerated) always rebuilds; the role only runs it from a handler, when the configuration changed.
seealso:
  - module: exliar.vfio.vfio_bind
  - module: exliar.vfio.vfio_restore
  - name: Initramfs guide
    description: What is changed per generator, how to verify by hand, how to undo.
    link: https://github.com/exliar/vfio/blob/main/docs/initramfs.md
"""

EXAMPLES = r"""
- name: Configure the generator for the binding stage's plan
  exliar.vfio.vfio_initramfs:
    modules: "{{ vfio_bind_plan.initramfs.modules }}"
    files: "{{ vfio_bind_plan.initramfs.files }}"
  notify: Regenerate the initramfs

- name: Check every kernel's image by hand
  exliar.vfio.vfio_initramfs:
    state: verified
    modules: "{{ vfio_bind_plan.initramfs.modules }}"
    files: "{{ vfio_bind_plan.initramfs.files }}"
"""

RETURN = r"""
files:
  description: Each configuration file with C(path) and C(changed).
  type: list
  elements: dict
  returned: with state=configured
kernels:
  description: Per kernel version, C(image), C(ok) and what it C(missing).
  type: dict
  returned: with state=regenerated or verified
  sample: {"6.1.0-18-amd64": {"image": "/boot/initrd.img-6.1.0-18-amd64", "ok": true, "missing": []}}
commands:
  description: The regeneration commands run (or that would run).
  type: list
  elements: str
  returned: with state=regenerated
not_rebuilt:
  description: Why the images were not rebuilt (the generator cannot run in O(root)).
  type: str
  returned: when regeneration was not possible
kernel_params:
  description: Kernel parameters the generator needs from the bootloader stage (dracut's C(rd.driver.pre=vfio_pci)).
  type: list
  elements: str
  returned: with state=configured
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_stage as stage
from ansible_collections.exliar.vfio.plugins.module_utils._journal import JournalError


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "default": "/"},
            "state": {"type": "str", "choices": ["configured", "regenerated", "verified"], "default": "configured"},
            "generator": {"type": "str", "choices": ["initramfs-tools", "dracut", "mkinitcpio", "booster"]},
            "kernels": {"type": "list", "elements": "str"},
            "modules": {"type": "dict", "default": {}},
            "files": {"type": "list", "elements": "path", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params
    ctx = stage.host_context(p["root"], p["generator"], p["kernels"])
    handoff = {"modules": p["modules"], "files": p["files"]}
    if not ctx["generator"]:
        module.fail_json(msg="no known initramfs generator (initramfs-tools, dracut, mkinitcpio, booster) found below "
                             f"{p['root']}: report it; nothing was changed")

    def run(argv, binary=False):
        if binary:  # a decompressed image is hundreds of MB: read it in one piece, not in run_command's small chunks
            return stage.run_binary(argv)
        return module.run_command(argv)

    try:
        if p["state"] == "configured":
            result = stage.configure(p["root"], ctx["generator"], handoff, module.check_mode)
            result["kernel_params"] = result.pop("plan").get("kernel_params") or []
            result["diff"] = [f["diff"] for f in result["files"] if f["changed"]]
        elif p["state"] == "regenerated":
            result = stage.regenerate(p["root"], ctx["generator"], ctx["kernels"], ctx["family"], handoff, module.check_mode, run)
        else:
            kernels = stage.verify(p["root"], ctx["generator"], ctx["kernels"], ctx["family"], handoff, run)
            bad = {k: v["missing"] for k, v in kernels.items() if not v["ok"]}
            if bad:
                module.fail_json(msg="images lack what vfio-pci needs: " + "; ".join(f"{k}: {', '.join(m)}" for k, m in sorted(bad.items())),
                                 kernels=kernels)
            result = {"changed": False, "kernels": kernels}
    except stage.StageError as exc:
        for warning in exc.result.get("warnings") or []:
            module.warn(warning)
        module.fail_json(msg=str(exc), **{k: v for k, v in exc.result.items() if k not in ("plan", "warnings")})
    except JournalError as exc:
        module.fail_json(msg=str(exc))
    for warning in result.pop("warnings", []) or []:
        module.warn(warning)
    result["generator"] = ctx["generator"]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
