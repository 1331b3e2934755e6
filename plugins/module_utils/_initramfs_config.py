# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The initramfs configuration plan: what each generator's configuration must say so that the
image carries the vfio modules, ``/etc/modprobe.d/exliar-vfio.conf`` and the override script.

Pure functions over the binding stage's handoff and the current text of the files involved
(``inputs(generator)`` names them), so the controller can diff exactly what the target module
writes through the journal. Nothing here reads or writes a file.

The result of :func:`plan_initramfs` is ``{"files": {path: {"content", "mode"} or None}, "warnings",
"errors", "kernel_params"}``. ``None`` means the collection does not want the file (remove it if the
journal says the collection created it). Files that exist keep their mode and owner (the journal
does that); ``mode`` applies when the file is created. With errors, ``files`` is empty: nothing may change.

Edited files that belong to the user (``/etc/initramfs-tools/modules``, ``/etc/mkinitcpio.conf``
when drop-ins are not read, ``/etc/booster.yaml``) carry the collection's lines in marked blocks:

    # exliar.vfio (was): <a user line the block replaces, kept verbatim after the prefix>
    # exliar.vfio: begin
    # <one line saying what the block is and that playbooks/restore.yml removes it>
    ...
    # exliar.vfio: end

:func:`strip_ours` undoes that exactly (the block removed, the ``(was)`` lines put back), so every
plan starts from the file as the user left it: planning is idempotent, and a handoff without
modules or files gives the file back as it was.
"""
from __future__ import annotations

import re

from ansible_collections.exliar.vfio.plugins.module_utils._bindplan import OVERRIDE_SCRIPT

GENERATORS = ("initramfs-tools", "dracut", "mkinitcpio", "booster")
BEGIN = "# exliar.vfio: begin"
END = "# exliar.vfio: end"
WAS = "# exliar.vfio (was): "
OWNED_HEADER = ("# Managed by exliar.vfio (initramfs stage): changes made here are overwritten on the next run.\n"
                "# Undo: ansible-playbook playbooks/restore.yml\n")
# The order the binding stage hands the modules over in (dependencies first).
CANONICAL = ("vfio", "vfio_iommu_type1", "vfio_virqfd", "vfio_pci")
# vfio_virqfd exists only before Linux 6.2 (merged into vfio in 6.2) and is a dependency of
# vfio_pci / vfio_pci_core there (modules.dep), so it enters the image with vfio_pci anyway. A
# configuration shared by all kernels lists it only when every kernel has it: a name missing on
# one kernel makes booster's build fail and prints a modprobe error at every boot of initramfs-tools.
DEPENDENCY_ONLY = ("vfio_virqfd",)
_MODULE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_.+/-]+$")


class HandoffView:
    """The handoff as the generators need it: one module list for all kernels (a generator's
    configuration is shared by every kernel it builds for) and the files split by how they travel."""

    def __init__(self, modules: list, partial: set, kernels: list, files: list):
        self.modules = modules            # names in load order, the same list for every kernel
        self.partial = partial            # names that are not a loadable module on every kernel
        self.kernels = kernels
        self.files = files                # every file the image needs, in handoff order
        self.modprobe_files = [f for f in files if f.startswith("/etc/modprobe.d/")]
        self.other_files = [f for f in files if f not in self.modprobe_files]
        self.script = OVERRIDE_SCRIPT if OVERRIDE_SCRIPT in files else None

    @property
    def empty(self) -> bool:
        return not self.modules and not self.files


def norm_module(name: str) -> str:
    """modprobe treats - and _ alike; mkinitcpio's optional marker ``?`` is not part of the name."""
    return name.rstrip("?").replace("-", "_")


def handoff_view(handoff) -> tuple:
    """(HandoffView, errors). Names and paths end up in shell and YAML files, so anything that is not
    a plain module name or a plain absolute path is refused rather than quoted."""
    errors: list = []
    handoff = handoff or {}
    per_kernel = handoff.get("modules") or {}
    files = list(handoff.get("files") or [])
    if not isinstance(per_kernel, dict) or not all(isinstance(v, list) for v in per_kernel.values()):
        return HandoffView([], set(), [], []), ["initramfs handoff: modules must map each kernel version to a list of module names"]
    for kver, mods in sorted(per_kernel.items()):
        for mod in mods:
            if not isinstance(mod, str) or not _MODULE_NAME.match(mod):
                errors.append(f"initramfs handoff: kernel {kver}: {mod!r} is not a module name")
    for path in files:
        if not isinstance(path, str) or not _SAFE_PATH.match(path):
            errors.append(f"initramfs handoff: {path!r} is not a plain absolute path")
    if errors:
        return HandoffView([], set(), [], []), errors
    kernels = sorted(per_kernel)
    seen: list = []
    for mods in (per_kernel[k] for k in kernels):
        for mod in mods:
            if norm_module(mod) not in seen:
                seen.append(norm_module(mod))
    order = [m for m in CANONICAL if m in seen] + [m for m in seen if m not in CANONICAL]
    everywhere = {m for m in order if all(m in {norm_module(x) for x in per_kernel[k]} for k in kernels)}
    modules = [m for m in order if m in everywhere or m not in DEPENDENCY_ONLY]
    return HandoffView(modules, {m for m in modules if m not in everywhere}, kernels, files), []


# ---- marked blocks in files the user owns ---------------------------------------------------------
def strip_ours(text) -> tuple:
    """(the text as it was before the collection edited it, error). The inverse of :func:`with_block`
    and :func:`replace_with_block`, byte for byte, also for a file without a final newline."""
    if not text:
        return text or "", None
    out: list = []
    pending: list = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(WAS):
            pending.append(line)
            i += 1
            continue
        if line.rstrip("\n") == BEGIN:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip("\n") == END), None)
            if end is None:
                return text, f"'{BEGIN}' on line {i + 1} has no '{END}' after it"
            out.extend(p[len(WAS):] for p in pending)
            pending = []
            if not lines[end].endswith("\n") and out and out[-1].endswith("\n"):
                out[-1] = out[-1][:-1]   # the block ended a file that had no final newline
            i = end + 1
            continue
        out.extend(pending)
        pending = []
        if line.rstrip("\n") == END:
            return text, f"'{END}' on line {i + 1} has no '{BEGIN}' before it"
        out.append(line)
        i += 1
    out.extend(pending)
    return "".join(out), None


def block(note: str, body: list) -> list:
    return [BEGIN + "\n", f"# {note}\n"] + [b + "\n" for b in body] + [END + "\n"]


def with_block(text: str, note: str, body: list) -> str:
    """``text`` with a marked block at its end."""
    lines = block(note, body)
    if text and not text.endswith("\n"):
        lines[-1] = END   # keep the file's lack of a final newline, so that strip_ours restores it
        return text + "\n" + "".join(lines)
    return (text or "") + "".join(lines)


def place_block(previous, base: str, note: str, body: list) -> str:
    """``base`` with a marked block where ``previous`` (the file before stripping) had its own block,
    so that lines the user added after it stay after it; at the end when it had none."""
    lines = (previous or "").splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.rstrip("\n") == BEGIN and not (i and lines[i - 1].startswith(WAS)):
            at = len(strip_ours("".join(lines[:i]))[0].splitlines(keepends=True))
            kept = base.splitlines(keepends=True)
            if at < len(kept):
                return "".join(kept[:at] + block(note, body) + kept[at:])
            break
    return with_block(base, note, body)


def replace_with_block(lines: list, start: int, end: int, note: str, body: list) -> list:
    """``lines[start:end]`` kept as ``(was)`` comments, the marked block right after them."""
    replaced = lines[start:end]
    last_open = not replaced[-1].endswith("\n")
    was = [WAS + (x if x.endswith("\n") else x + "\n") for x in replaced]
    new = block(note, body)
    if last_open:
        new[-1] = END
    return lines[:start] + was + new + lines[end:]


# ---- dispatch ---------------------------------------------------------------------------------------
def _module(generator: str):
    """The generator's module, imported here rather than at the top: the generator modules import
    this one for its helpers."""
    if generator == "initramfs-tools":
        from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_tools as mod
    elif generator == "dracut":
        from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_dracut as mod
    elif generator == "mkinitcpio":
        from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_mkinitcpio as mod
    elif generator == "booster":
        from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_booster as mod
    else:
        raise ValueError(f"unknown initramfs generator {generator!r}")
    return mod


def result(files=None, warnings=None, errors=None, kernel_params=None) -> dict:
    errors = list(errors or [])
    return {"files": {} if errors else dict(files or {}), "warnings": list(warnings or []), "errors": errors,
            "kernel_params": [] if errors else list(kernel_params or [])}


def plan_initramfs(generator, handoff, current: dict, tool_version=None) -> dict:
    """The files ``generator`` needs for ``handoff`` (the binding stage's ``initramfs``), from
    ``current`` (path -> text, or None for a missing file; a directory as ``path/`` -> "" when it
    exists). ``tool_version`` is the generator's version when known (``mkinitcpio --version``)."""
    if not generator:
        return result(errors=["no initramfs generator detected on this host (see ansible_facts.vfio.initramfs): "
                              "nothing changed; the vfio modules and /etc/modprobe.d/exliar-vfio.conf must be put in the image by hand"])
    if generator not in GENERATORS:
        return result(errors=[f"unknown initramfs generator {generator!r} (known: {', '.join(GENERATORS)}): report it, nothing changed"])
    view, errors = handoff_view(handoff)
    if errors:
        return result(errors=errors)
    return _module(generator).plan(view, dict(current or {}), tool_version)


def inputs(generator: str) -> list:
    """Paths (and globs) whose text :func:`plan_initramfs` wants in ``current``; ``dir/`` is a directory."""
    return list(_module(generator).INPUTS)


def regenerate_commands(generator: str, kernels, root_is_live: bool, distro_family=None) -> list:
    """argv lists that rebuild the images of ``kernels`` after the configuration changed, to run in
    the root (the caller prefixes ``chroot <root>`` when it is not the running system).

    ``root_is_live`` False (a chroot, or a lab sysroot): dracut gets ``--no-hostonly``, because its
    host-only mode probes the machine that runs the command (devices, and on openSUSE, where
    ``hostonly_cmdline=yes``, the root device written into the image), which need not be the one
    that boots this root. mkinitcpio's autodetect hook and booster's host mode probe it too but have
    no such switch under ``-P`` / ``regenerate_images``: see their modules.
    """
    return _module(generator).regenerate_commands(list(kernels or []), bool(root_is_live), distro_family)


def image_candidates(generator: str, kernel: str, distro_family=None) -> dict:
    """``{"paths": [...], "by_version": bool, "note": str}``: where the image of ``kernel`` is.
    ``by_version`` is False where the image is named after a preset or package rather than the
    kernel version (mkinitcpio, booster on Arch): ``paths`` are then the likely names, best first."""
    return _module(generator).image_candidates(kernel, distro_family)


def image_paths(generator: str, kernels, distro_family=None) -> dict:
    """``{kernel: path}``, the first candidate of :func:`image_candidates` for each kernel."""
    return {k: image_candidates(generator, k, distro_family)["paths"][0] for k in kernels or []}


def list_command(generator: str, image: str) -> list:
    """argv that lists the files inside ``image`` with the generator's own tool."""
    return _module(generator).list_command(image)


def arch_pkgbase(kernel: str) -> str:
    """The Arch package base of a kernel version, which names its mkinitcpio preset and its images:
    6.8.9-arch1-1 is ``linux``, 6.6.30-1-lts ``linux-lts``, 6.8.9-zen1-1-zen ``linux-zen``. A guess:
    /usr/lib/modules/<version>/pkgbase says it."""
    last = kernel.rsplit("-", 1)[-1]
    return f"linux-{last}" if last.isalpha() and "-" in kernel else "linux"


def version_tuple(version) -> tuple:
    """``"v39.2"``, ``"mkinitcpio 39.2"`` or ``39`` -> (39, 2); () when there is no number."""
    m = re.search(r"(\d+(?:\.\d+)*)", str(version)) if version is not None else None
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()
