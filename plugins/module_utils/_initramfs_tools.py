# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""initramfs-tools (Debian, Ubuntu): the vfio modules in ``/etc/initramfs-tools/modules``, the
override script through an owned hook.

What initramfs-tools does by itself (initramfs-tools 0.142, Debian 12; the same in 0.140, Ubuntu 22.04):

- ``mkinitramfs`` copies every ``/etc/modprobe.d/*.conf`` and ``/lib/modprobe.d/*.conf`` into the
  image (``for file in /etc/modprobe.d/*.conf /lib/modprobe.d/*.conf ; do ... copy_file config``,
  after ``copy_exec /sbin/modprobe``), so ``exliar-vfio.conf`` needs nothing here.
- ``/etc/initramfs-tools/modules`` is read by ``add_modules_from_file`` -> ``force_load``: each
  module and its dependencies are copied in and ``/conf/modules`` lists it, loaded at boot in file
  order by ``load_modules`` (scripts/functions) with ``/sbin/modprobe $m``.
- The file is shared by every kernel. A name the kernel does not have is skipped silently when the
  image is built (``manual_add_modules`` runs ``modprobe --quiet --show-depends``) and makes
  ``modprobe`` print an error at boot, which does not stop the boot; a built-in module loads
  silently. ``vfio_virqfd`` (before 6.2 only) is therefore listed only when every kernel has it.
- ``manual_add_modules`` skips modprobe's ``install`` lines, so the script that the ``install
  vfio-pci`` line runs is not copied: the hook below copies it (``copy_exec``, as
  docs/example_hook does). Hooks in ``/etc/initramfs-tools/hooks`` run only when executable.

Our modules go at the end of the user's file: the ``softdep <driver> pre: vfio-pci`` lines of the
modprobe file load vfio-pci before a GPU driver listed above them.
"""
from __future__ import annotations

from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_config as cfg

MODULES_FILE = "/etc/initramfs-tools/modules"
HOOK = "/etc/initramfs-tools/hooks/exliar-vfio"
INPUTS = (MODULES_FILE, HOOK)
NOTE = "vfio modules added by exliar.vfio (initramfs stage); ansible-playbook playbooks/restore.yml removes this block"


def user_modules(text: str) -> set:
    """Module names of the active lines (``grep '^[^#]'`` then ``read -r module args``, as add_modules_from_file)."""
    names = set()
    for line in text.splitlines():
        if line[:1] != "#" and line.split():
            names.add(cfg.norm_module(line.split()[0]))
    return names


def render_hook(view) -> str:
    copies = []
    for path in view.other_files:
        how = "copy_exec" if path == view.script else "copy_file config"
        copies.append(f'if [ -e "{path}" ]; then\n\t{how} "{path}"\nfi\n')
    return ("#!/bin/sh\n" + cfg.OWNED_HEADER + "#\n"
            "# mkinitramfs copies /etc/modprobe.d itself but not the program that an install line there runs:\n"
            "# this hook copies it. A file that is gone is skipped, so the hook never fails a build.\n"
            'PREREQ=""\n\nprereqs()\n{\n\techo "$PREREQ"\n}\n\n'
            "case $1 in\nprereqs)\n\tprereqs\n\texit 0\n\t;;\nesac\n\n"
            ". /usr/share/initramfs-tools/hook-functions\n\n" + "".join(copies) + "exit 0\n")


def plan(view, current: dict, tool_version=None) -> dict:
    text = current.get(MODULES_FILE)
    base, error = cfg.strip_ours(text)
    if error:
        return cfg.result(errors=[f"{MODULES_FILE}: {error}: fix or remove the marked block by hand, nothing changed"])
    theirs = user_modules(base)
    ours = [m for m in view.modules if m not in theirs]
    files: dict = {}
    if ours:
        files[MODULES_FILE] = {"content": cfg.place_block(text, base, NOTE, ours), "mode": 0o644}
    elif text is None:
        files[MODULES_FILE] = None
    else:
        files[MODULES_FILE] = {"content": base, "mode": 0o644}
    files[HOOK] = {"content": render_hook(view), "mode": 0o755} if view.other_files else None
    return cfg.result(files=files)


def regenerate_commands(kernels: list, root_is_live: bool, distro_family=None) -> list:
    """``update-initramfs -u -k <version>`` per kernel: builds /boot/initrd.img-<version> also when it
    does not exist yet (``-k all`` would only update images that exist). A host with
    ``update_initramfs=no`` in /etc/initramfs-tools/update-initramfs.conf builds nothing."""
    return [["update-initramfs", "-u", "-k", k] for k in kernels]


def image_candidates(kernel: str, distro_family=None) -> dict:
    return {"paths": [f"/boot/initrd.img-{kernel}"], "by_version": True,
            "note": "update-initramfs writes ${BOOTDIR}/initrd.img-<version> (BOOTDIR=/boot)"}


def list_command(image: str) -> list:
    return ["lsinitramfs", image]
