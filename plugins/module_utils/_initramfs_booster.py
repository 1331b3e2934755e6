# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""booster (Arch, and its own CentOS packaging): the vfio modules in ``modules_force_load`` of
``/etc/booster.yaml``, edited line by line (no YAML library on the target).

booster's behaviour this rests on (github.com/anatol/booster, commit 57b030b; docs/manpage.md,
generator/*.go, init/*.go):

- ``modules_force_load``: "list of module names that are forcibly loaded during the boot process
  before switching into user-space. Any module in this list automatically added to the image"
  (manpage, CONFIG FILE). A comma-separated string (``ModulesForceLoad string
  `yaml:"modules_force_load"```, split by parseCommaList); since booster 0.4. booster.yaml is
  shared by every kernel: a built-in module is fine (modules.builtin is read, built-ins are not
  loaded), a missing one fails the build ("module %s does not exist"), so ``vfio_virqfd`` is listed
  only when every kernel has it (it comes with vfio_pci as a dependency anyway).
- modprobe.d: the generator reads /lib, /etc and /run/modprobe.d and keeps only ``options`` lines,
  for the modules in the image (readModprobeOptions, parseModprobe), and the init passes them when
  it loads a module. So ``options vfio-pci ids=...`` travels, and no ``vfio-pci.ids=`` kernel
  parameter is needed. ``install`` and ``softdep`` lines do not: the image has no shell and no
  modprobe (init loads modules itself; only the kernel's modules.softdep is read).
- Devices bound by address need the override script that ``install vfio-pci`` runs. It cannot run in
  the image, and once vfio_pci is loaded, modprobe in the root file system skips it, install command
  included (kmod, libkmod-module.c: "Ignoring module '%s': already loaded"). So when the handoff has
  the script, vfio_pci is not force-loaded: after the switch to the root file system the host
  driver's ``softdep ... pre: vfio-pci`` runs the script as it should. That holds while the host
  driver of those devices is not in the booster image (``modules``, ``enable_plymouth``): warned.
- /etc/modprobe.d/exliar-vfio.conf itself is not in the image: booster compiles the options it
  keeps into the init's configuration (``ModprobeOptions``).
- Images: /usr/lib/booster/regenerate_images (Arch) builds ``/boot/booster-<pkgbase>.img`` for every
  kernel whose modules directory belongs to a package (``booster build --force --kernel-version``);
  the CentOS packaging builds ``/boot/booster-<version>.img``.
"""
from __future__ import annotations

import re

from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_config as cfg

CONFIG = "/etc/booster.yaml"
INPUTS = (CONFIG,)
KEY = "modules_force_load"
NOTE = "vfio modules force-loaded by exliar.vfio (initramfs stage); ansible-playbook playbooks/restore.yml puts back the line above"
NOTE_NEW = "vfio modules force-loaded by exliar.vfio (initramfs stage); ansible-playbook playbooks/restore.yml removes this block"
_KEY_LINE = re.compile(rf"^({KEY})[ \t]*:(.*)$")
_PLYMOUTH = re.compile(r"^enable_plymouth[ \t]*:[ \t]*(true|True|TRUE)[ \t]*(#.*)?$")


def _scalar(raw: str):
    """The value of a one-line YAML scalar (plain, or single/double-quoted without escapes), with a
    trailing comment removed; None for anything else (block scalars, flow lists, anchors, tags)."""
    raw = raw.strip()
    if not raw or raw.startswith("#"):
        return ""
    if raw[0] in "\"'":
        close = raw.find(raw[0], 1)
        rest = raw[close + 1:].strip() if close > 0 else "x"
        if close < 0 or (rest and not rest.startswith("#")) or (raw[0] == '"' and "\\" in raw[1:close]):
            return None
        return raw[1:close]
    if raw[0] in "|>[]{}&*!%@`":
        return None
    return re.split(r"[ \t]#", raw, maxsplit=1)[0].strip()


def _find_key(lines: list) -> tuple:
    """(index, items, error) of the top-level modules_force_load line; index None when absent."""
    hits = [i for i, line in enumerate(lines) if _KEY_LINE.match(line)]
    if len(hits) > 1:
        return None, [], f"{CONFIG} sets {KEY} on lines {', '.join(str(i + 1) for i in hits)}: YAML allows a key once"
    if not hits:
        return None, [], None
    i = hits[0]
    value = _scalar(_KEY_LINE.match(lines[i]).group(2))
    nxt = lines[i + 1] if i + 1 < len(lines) else ""
    if value is None or (nxt[:1] in (" ", "\t") and nxt.strip() and not nxt.strip().startswith("#")):
        return None, [], f"{CONFIG}:{i + 1}: {KEY} is not a one-line comma-separated string, so it cannot be edited safely"
    return i, [x.strip() for x in value.split(",") if x.strip()], None


def force_load(view) -> list:
    """What to force-load: every vfio module, but not vfio_pci when devices are bound by address."""
    return [m for m in view.modules if not (view.script and m == "vfio_pci")]


def _warnings(view, base: str) -> list:
    warnings = []
    if view.script:
        warnings.append(f"booster images have no shell and no modprobe, so {view.script} (run by the install line for vfio-pci, "
                        f"for the devices bound by address) cannot run there: vfio_pci is not force-loaded, and those devices "
                        f"are claimed after the switch to the root file system, through the softdep lines. Keep their host "
                        f"drivers out of the booster image (modules, enable_plymouth in {CONFIG})")
    if any(_PLYMOUTH.match(line) for line in base.splitlines()):
        warnings.append(f"{CONFIG} enables Plymouth, which puts the GPU driver in modules_force_load; booster loads those "
                        f"modules at the same time and ignores the softdep lines of /etc/modprobe.d, so that driver may take "
                        f"a selected GPU before vfio-pci does. Check the binding after a reboot")
    return warnings


def plan(view, current: dict, tool_version=None) -> dict:
    text = current.get(CONFIG)
    base, error = cfg.strip_ours(text)
    if error:
        return cfg.result(errors=[f"{CONFIG}: {error}: fix or remove the marked block by hand, nothing changed"])
    if view.empty:
        return cfg.result(files={CONFIG: None if text is None else {"content": base, "mode": 0o644}})
    lines = base.splitlines(keepends=True)
    index, theirs, error = _find_key(lines)
    if error:
        return cfg.result(errors=[error + "; put " + ",".join(force_load(view)) + " in it yourself, or report it; nothing changed"])
    ours = force_load(view)
    merged = ours + [m for m in theirs if cfg.norm_module(m) not in {cfg.norm_module(o) for o in ours}]
    warnings = _warnings(view, base)
    if view.script and any(cfg.norm_module(m) == "vfio_pci" for m in merged):
        # A force-loaded vfio_pci would make modprobe skip the install line: the per-address script never runs.
        merged = [m for m in merged if cfg.norm_module(m) != "vfio_pci"]
        warnings.append(f"{CONFIG}: your {KEY} force-loads vfio_pci; it is taken out while devices are bound by address "
                        f"(playbooks/restore.yml puts your line back)")
    if index is None:
        if not ours:
            return cfg.result(files={CONFIG: None if text is None else {"content": base, "mode": 0o644}}, warnings=warnings)
        content = cfg.place_block(text, base, NOTE_NEW, [f"{KEY}: {','.join(merged)}"])
    elif merged == theirs:
        content = base
    else:
        content = "".join(cfg.replace_with_block(lines, index, index + 1, NOTE, [f"{KEY}: {','.join(merged)}"]))
    return cfg.result(files={CONFIG: {"content": content, "mode": 0o644}}, warnings=warnings)


def regenerate_commands(kernels: list, root_is_live: bool, distro_family=None) -> list:
    """Arch: booster's own /usr/lib/booster/regenerate_images (every packaged kernel, the images its
    pacman hook makes). Elsewhere: ``booster build --force --kernel-version <v> /boot/booster-<v>.img``
    per kernel, as booster's CentOS packaging does. Host mode (the default) probes the machine that
    runs it; ``universal: true`` in booster.yaml makes images that do not depend on it."""
    if distro_family == "arch":
        return [["/usr/lib/booster/regenerate_images"]]
    return [["booster", "build", "--force", "--kernel-version", k, f"/boot/booster-{k}.img"] for k in kernels]


def image_candidates(kernel: str, distro_family=None) -> dict:
    if distro_family != "arch":
        return {"paths": [f"/boot/booster-{kernel}.img"], "by_version": True,
                "note": "booster build writes where it is told; booster's CentOS packaging uses /boot/booster-<version>.img"}
    pkgbase = cfg.arch_pkgbase(kernel)
    paths = [f"/boot/booster-{pkgbase}.img"] + ([] if pkgbase == "linux" else ["/boot/booster-linux.img"])
    return {"paths": paths, "by_version": False,
            "note": "regenerate_images names images after the kernel's package (/usr/lib/modules/<version>/pkgbase), "
                    "not its version: /boot/booster-<pkgbase>.img; these are the usual names"}


def list_command(image: str) -> list:
    return ["booster", "ls", image]
