# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bootloader stage's planning, one module per bootloader, all with the same interface.

Each ``_bootloader_<name>.py`` is pure (text in, text out) and provides:

``inputs(ctx) -> list``
    Paths and globs (absolute, below the root) whose text ``plan`` reads.
``plan(files, entries, ctx) -> dict``
    ``files`` maps each input path to its text (None: absent); ``entries`` are validated
    ``{"name", "value", "state"}`` (``_kernel_params.validate``). Returns ``files`` (path ->
    ``{"content", "mode"}``, or None to remove), ``commands`` (argv lists run in the root after the
    writes, e.g. ``update-grub``), ``config_path`` (the file holding the command line),
    ``errors`` (an unknown or unparsable layout: nothing is written) and ``warnings``.
``outputs(ctx, files) -> list``
    Paths and globs to read after the commands ran, for the read-back.
``next_boot(files, ctx) -> dict``
    From the generated files: ``cmdline`` the next boot's default entry gets, ``source`` (the
    file it was read from), ``entries`` (``[{"title", "cmdline", "source"}]`` for every entry),
    and ``errors`` when it cannot be read.

``ctx`` holds ``esp`` (mount point of the EFI system partition, or None), ``family`` and
``distribution`` (os-release ID), ``kernels`` (installed versions), ``tools`` (the tool names
found in the root's sbin/bin directories) and ``live`` (the root is the running system).
"""
from __future__ import annotations

import glob
import os

from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_bls as bls
from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_grub as grub
from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_kernelstub as kernelstub
from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_limine as limine
from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_proxmox as proxmox
from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_refind as refind
from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_sdboot as sdboot

# Static imports: Ansible ships a module's module_utils by scanning its import statements.
LOADERS = {
    "grub": grub,
    "grubby": bls,
    "systemd-boot": sdboot,
    "kernelstub": kernelstub,
    "refind": refind,
    "limine": limine,
    "proxmox": proxmox,
}
TOOL_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")


def known() -> list:
    return sorted(LOADERS)


def loader(name: str):
    """The planning module of a bootloader; ValueError names the known ones."""
    if name not in LOADERS:
        raise ValueError(f"bootloader {name!r} is not supported (known: {', '.join(known())}); "
                         f"set vfio_bootloader to one of them if detection was wrong, or set vfio_bootloader_stage: false "
                         f"and add the parameters by hand")
    return LOADERS[name]


def read_text(root: str, path: str):
    try:
        with open(os.path.join(root, path.lstrip("/")), encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except (OSError, UnicodeError):
        return None


def read_paths(root: str, patterns) -> dict:
    """Text of each path; a glob expands to the files it matches (sorted)."""
    out = {}
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            for real in sorted(glob.glob(os.path.join(root, pattern.lstrip("/")))):
                if os.path.isfile(real):
                    path = "/" + os.path.relpath(real, root)
                    out[path] = read_text(root, path)
        else:
            out[pattern] = read_text(root, pattern)
    return out


def tools(root: str) -> set:
    """Executable names in the root's sbin/bin directories (for the commands a plan may use)."""
    found = set()
    for d in TOOL_DIRS:
        try:
            names = os.listdir(os.path.join(root, d))
        except OSError:
            continue
        found.update(n for n in names if os.access(os.path.join(root, d, n), os.X_OK))
    return found
