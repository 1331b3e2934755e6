# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""mkinitcpio (Arch and derivatives): the vfio modules first in MODULES, the override script in
FILES, and a check that HOOKS has ``modconf``.

mkinitcpio's behaviour this rests on (github.com/archlinux/mkinitcpio, v41; v23 and v35 where noted):

- Drop-ins: since v36 ("mkinitcpio can now be configured from the drop-in directory
  /etc/mkinitcpio.conf.d/", CHANGELOG) mkinitcpio concatenates /etc/mkinitcpio.conf and
  ``/etc/mkinitcpio.conf.d/*.conf`` (``sort -V``) into one file and sources it, when that directory
  exists; the package creates it since v36 (Makefile DIRS, later meson ``install_emptydir``). But
  ``-c <file>`` turns drop-ins off (``_optconfd=0``), and ``mkinitcpio -P`` passes ``-c`` for a
  preset's ``ALL_config`` / ``<preset>_config``: presets created before v36 (hook.preset had
  ``ALL_config="/etc/mkinitcpio.conf"`` uncommented, and libalpm/scripts/mkinitcpio never rewrites an
  existing preset) still do. Decision: the drop-in is used when ``tool_version`` is 36 or later (or,
  with no version, when /etc/mkinitcpio.conf.d exists) and no preset sets a config file; otherwise
  /etc/mkinitcpio.conf is edited in place. A preset pointing at another file is an error.
- MODULES: loaded at boot in array order before the hooks run (init: ``modprobe -qab ... $MODULES``).
  The Arch wiki (PCI passthrough via OVMF, "Loading vfio-pci early") lists ``vfio_pci vfio
  vfio_iommu_type1`` in that order and says all of them must precede any early-KMS GPU driver
  (nouveau, radeon, amdgpu, i915) in MODULES, and that HOOKS must contain ``modconf``. A name ending
  in ``?`` is optional (add_module: ``ign_errors``, since at least v20): MODULES is shared by every
  kernel, so a module that is not a loadable module on all of them gets the ``?`` (a built-in or
  missing name is otherwise "module not found").
- The legacy string syntax (``MODULES="a b"``, up to v23; still accepted: ``arrayize_config`` splits
  strings into arrays) is kept when editing in place, and split by the drop-in before it prepends.
- HOOKS: ``modconf`` is the hook that adds /etc/modprobe.d/*.conf (install/modconf ``add_full_dir
  /etc/modprobe.d '*.conf'``); without it the image has neither the ids nor the softdep lines.
  The ``systemd`` hook adds no /bin/sh (``base`` brings busybox), which the install line's script needs.
- FILES are added as is (``add_file``), so the script keeps its mode.
"""
from __future__ import annotations

import re

from ansible_collections.exliar.vfio.plugins.module_utils import _initramfs_config as cfg

MAIN = "/etc/mkinitcpio.conf"
DROPIN_DIR = "/etc/mkinitcpio.conf.d/"
DROPIN = "/etc/mkinitcpio.conf.d/exliar-vfio.conf"
INPUTS = (MAIN, DROPIN_DIR, DROPIN, "/etc/mkinitcpio.conf.d/*.conf", "/etc/mkinitcpio.d/*.preset")
DROPINS_SINCE = (36,)
WIKI_ORDER = ("vfio_pci", "vfio", "vfio_iommu_type1")
NOTE_MODULES = "the vfio modules first, for vfio-pci (exliar.vfio); ansible-playbook playbooks/restore.yml puts back the line(s) above"
NOTE_FILES = "the program the vfio-pci install line runs (exliar.vfio); ansible-playbook playbooks/restore.yml puts back the line(s) above"
_ASSIGN = re.compile(r"^([ \t]*)([A-Za-z_][A-Za-z0-9_]*)(\+?)=")
_PRESET_CONFIG = re.compile(r"^\s*([A-Za-z0-9_]+)_config=(.*)$")


class Assignment:
    """One ``NAME=value`` / ``NAME+=value`` statement of a shell configuration file."""

    def __init__(self, name, append, indent, start, end, syntax, items, tail_ok):
        self.name, self.append, self.indent = name, append, indent
        self.start, self.end = start, end          # line indices, end exclusive
        self.syntax = syntax                       # "array" or "string"
        self.items = items                         # None: shell expansions, not a literal list
        self.tail_ok = tail_ok                     # nothing but a comment follows the value


def _word(text: str, pos: int, stops: str) -> tuple:
    """(word, end, dynamic): one shell word with its quotes removed; dynamic when it expands something."""
    out: list = []
    dynamic = False
    n = len(text)
    while pos < n and text[pos] not in stops:
        ch = text[pos]
        if ch == "'":
            close = text.find("'", pos + 1)
            close = n if close < 0 else close
            out.append(text[pos + 1:close])
            pos = close + 1
        elif ch == '"':
            pos += 1
            while pos < n and text[pos] != '"':
                if text[pos] == "\\" and pos + 1 < n:
                    pos += 1
                elif text[pos] in "$`":
                    dynamic = True
                out.append(text[pos])
                pos += 1
            pos += 1
        elif ch == "\\" and pos + 1 < n:
            if text[pos + 1] != "\n":
                out.append(text[pos + 1])
            pos += 2
        else:
            dynamic = dynamic or ch in "$`"
            out.append(ch)
            pos += 1
    return "".join(out), min(pos, n), dynamic


def _value(text: str, pos: int) -> tuple:
    """(end, syntax, items or None) of the value starting at ``pos``."""
    n = len(text)
    if pos < n and text[pos] == "(":
        items: list = []
        dynamic = False
        pos += 1
        while True:
            while pos < n and text[pos] in " \t\n":
                pos += 1
            if pos >= n:
                return n, "array", None
            if text[pos] == "#":
                eol = text.find("\n", pos)
                pos = n if eol < 0 else eol
                continue
            if text[pos] == ")":
                return pos + 1, "array", None if dynamic else items
            word, pos, dyn = _word(text, pos, " \t\n)")
            dynamic = dynamic or dyn
            items.append(word)
    word, pos, dynamic = _word(text, pos, " \t\n;&|")
    return pos, "string", None if dynamic else word.split()


def parse(text: str) -> list:
    """Every top-level assignment of ``text`` in order (values spanning lines included)."""
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    found = []
    i = 0
    while i < len(lines):
        m = _ASSIGN.match(lines[i])
        if not m:
            i += 1
            continue
        end, syntax, items = _value(text, starts[i] + m.end())
        last = i
        while last + 1 < len(lines) and starts[last + 1] < end:
            last += 1
        tail = text[end:starts[last + 1]].strip()
        found.append(Assignment(m.group(2), bool(m.group(3)), m.group(1), i, last + 1, syntax, items,
                                tail == "" or tail.startswith("#")))
        i = last + 1
    return found


def evaluate(texts: list, name: str):
    """The items of ``name`` after sourcing ``texts`` in order; None when an expansion hides them."""
    value: list = []
    for text in texts:
        for a in parse(text):
            if a.name != name:
                continue
            if a.items is None:
                value = None
            elif not a.append:
                value = list(a.items)
            elif value is not None:
                value = value + list(a.items)
    return value


def _version_key(name: str) -> list:
    """Close to ``sort -V`` for drop-in names: digit runs compare as numbers."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|\D+", name)]


def _dropins(current: dict) -> list:
    """(path, text) of the drop-ins other than ours, in the order mkinitcpio reads them."""
    found = [(p, t) for p, t in current.items()
             if p.startswith(DROPIN_DIR) and p.endswith(".conf") and p != DROPIN and "/" not in p[len(DROPIN_DIR):] and t is not None]
    return sorted(found, key=lambda pt: _version_key(pt[0][len(DROPIN_DIR):]))


def _preset_configs(current: dict) -> dict:
    """{preset path: [config files it passes with -c]} of /etc/mkinitcpio.d/*.preset."""
    out = {}
    for path, text in sorted(current.items()):
        if not (path.startswith("/etc/mkinitcpio.d/") and path.endswith(".preset")) or not text:
            continue
        for line in text.splitlines():
            m = _PRESET_CONFIG.match(line)
            if m:
                value, _end, _dyn = _word(m.group(2).strip(), 0, " \t#;")
                if value:
                    out.setdefault(path, []).append(value)
    return out


def module_tokens(view) -> list:
    order = [m for m in WIKI_ORDER if m in view.modules] + [m for m in view.modules if m not in WIKI_ORDER]
    return [m + "?" if m in view.partial else m for m in order]


def _quoted(items: list) -> str:
    """Array items for bash: ``name?`` quoted, or a file named like it in the working directory would replace it."""
    return " ".join(f'"{x}"' if "?" in x else x for x in items)


def _mode(current: dict, tool_version) -> tuple:
    """("dropin" or "inplace", why, warnings, errors)."""
    version = cfg.version_tuple(tool_version)
    if version:
        reads, why = version >= DROPINS_SINCE, f"mkinitcpio {tool_version}"
    else:
        reads = current.get(DROPIN_DIR) is not None
        why = f"{DROPIN_DIR} {'exists' if reads else 'does not exist'} (the package creates it since mkinitcpio 36)"
    presets = _preset_configs(current)
    other = {p: [c for c in cs if c != MAIN] for p, cs in presets.items()}
    other = {p: cs for p, cs in other.items() if cs}
    if other:
        names = "; ".join(f"{p} uses {', '.join(cs)}" for p, cs in sorted(other.items()))
        return "inplace", why, [], [f"mkinitcpio presets build from another configuration file ({names}), which exliar.vfio "
                                    f"does not edit: report it, nothing changed"]
    if reads and presets:
        return "inplace", why, [f"{', '.join(sorted(presets))} pass -c {MAIN} to mkinitcpio, which makes it ignore {DROPIN_DIR}: "
                                f"{MAIN} is edited in place (comment out ALL_config in the preset to use drop-ins)"], []
    return ("dropin" if reads else "inplace"), why, [], []


def render_dropin(view, tokens: list) -> str:
    lines = [cfg.OWNED_HEADER.rstrip("\n"), "#",
             "# mkinitcpio (36 and later) reads this after /etc/mkinitcpio.conf. The vfio modules go first, so that",
             "# vfio-pci is loaded before any GPU driver in the image; the modconf hook brings /etc/modprobe.d.",
             '# A value still in the old string syntax (MODULES="a b") is split first, as mkinitcpio does.']
    if tokens:
        lines += ["if [[ ${MODULES@a} != *a* ]]; then read -r -d '' -a MODULES <<< \"${MODULES-}\" || true; fi",
                  f'MODULES=({_quoted(tokens)} "${{MODULES[@]}}")']
    if view.other_files:
        lines += ["if [[ ${FILES@a} != *a* ]]; then read -r -d '' -a FILES <<< \"${FILES-}\" || true; fi",
                  f"FILES+=({' '.join(view.other_files)})"]
    return "\n".join(lines) + "\n"


def _render_value(name: str, indent: str, syntax: str, items: list) -> str:
    if syntax == "array":
        return f"{indent}{name}=({_quoted(items)})"
    return f'{indent}{name}="{" ".join(items)}"'


def _edit(text: str, name: str, merge, note: str) -> tuple:
    """(text, error): the last plain ``name=`` assignment replaced by ``merge(items)`` in a marked block,
    or a new assignment when there is none. Unchanged when ``merge`` returns the same items."""
    assigns = [a for a in parse(text) if a.name == name]
    plain = [a for a in assigns if not a.append]
    lines = text.splitlines(keepends=True)
    if not plain:
        items = merge([])
        if not items:
            return text, None
        body = [_render_value(name, "", "array", items)]
        if assigns:   # only NAME+= lines: ours must come before them
            return "".join(cfg.block(note, body) + lines), None
        return cfg.with_block(text, note, body), None
    target = plain[-1]
    where = f"{MAIN}:{target.start + 1}"
    if target.items is None:
        return text, f"{where}: {name} uses shell expansions, so it cannot be edited safely"
    if not target.tail_ok:
        return text, f"{where}: more follows the {name} value on its last line, so it cannot be edited safely"
    items = merge(target.items)
    if items == target.items:
        return text, None
    body = [_render_value(name, target.indent, target.syntax, items)]
    return "".join(cfg.replace_with_block(lines, target.start, target.end, note, body)), None


def _edit_in_place(base: str, view, tokens: list) -> tuple:
    ours = {cfg.norm_module(t) for t in tokens}
    text, error = _edit(base, "MODULES", lambda items: list(tokens) + [x for x in items if cfg.norm_module(x) not in ours], NOTE_MODULES)
    if error is None and view.other_files:
        text, error = _edit(text, "FILES", lambda items: list(items) + [f for f in view.other_files if f not in items], NOTE_FILES)
    return text, error


def _hook_checks(view, texts: list, where: str) -> tuple:
    """(warnings, errors) about HOOKS as mkinitcpio will see it."""
    if not view.files:
        return [], []
    hooks = evaluate(texts, "HOOKS")
    if hooks is None:
        return [f"HOOKS ({where}) uses shell expansions: check that it contains modconf, which puts /etc/modprobe.d in the image"], []
    errors, warnings = [], []
    if view.modprobe_files and "modconf" not in hooks:
        errors.append(f"HOOKS ({where}) has no modconf: without it /etc/modprobe.d is not in the image, so vfio-pci gets neither "
                      f"its ids nor the softdep lines at boot. Add modconf to HOOKS (mkinitcpio's default: base udev autodetect "
                      f"microcode modconf kms ...), then run again; nothing changed")
    if view.script and "base" not in hooks and "systemd" in hooks:
        warnings.append(f"HOOKS ({where}) has systemd but not base: the image has no /bin/sh, so {view.script} (run by the "
                        f"install line for vfio-pci) fails there and the devices bound by address are claimed only after the "
                        f"switch to the root file system. Add base before systemd in HOOKS")
    return warnings, errors


def _later_resets(dropins: list) -> list:
    mine = DROPIN[len(DROPIN_DIR):]
    warnings = []
    for path, text in dropins:
        if _version_key(path[len(DROPIN_DIR):]) <= _version_key(mine):
            continue
        for a in parse(text):
            if a.name in ("MODULES", "FILES") and not a.append:
                warnings.append(f"{path}:{a.start + 1} sets {a.name}= after {DROPIN} is read, which drops the vfio entries: "
                                f"make it {a.name}+=(...)")
    return warnings


def plan(view, current: dict, tool_version=None) -> dict:
    main = current.get(MAIN)
    if main is None:
        return cfg.result(errors=[f"{MAIN} is missing: mkinitcpio cannot build an image without it; nothing changed"])
    base, error = cfg.strip_ours(main)
    if error:
        return cfg.result(errors=[f"{MAIN}: {error}: fix or remove the marked block by hand, nothing changed"])
    if view.empty:
        return cfg.result(files={MAIN: {"content": base, "mode": 0o644}, DROPIN: None})
    mode, why, warnings, errors = _mode(current, tool_version)
    if errors:
        return cfg.result(errors=errors)
    tokens = module_tokens(view)
    dropins = _dropins(current)
    if mode == "dropin":
        more, errors = _hook_checks(view, [base] + [t for _p, t in dropins], f"{MAIN} and {DROPIN_DIR}")
        files = {MAIN: {"content": base, "mode": 0o644}, DROPIN: {"content": render_dropin(view, tokens), "mode": 0o644}}
        return cfg.result(files=files, warnings=warnings + more + _later_resets(dropins), errors=errors)
    more, errors = _hook_checks(view, [base], MAIN)
    text, error = _edit_in_place(base, view, tokens)
    if error:
        wanted = f"MODULES starting with {' '.join(tokens)}" + (f", FILES with {' '.join(view.other_files)}" if view.other_files else "")
        errors.append(f"{error} (drop-ins are not used: {why}). Make it {wanted} by hand, or report it; nothing changed")
    return cfg.result(files={MAIN: {"content": text, "mode": 0o644}, DROPIN: None}, warnings=warnings + more, errors=errors)


def regenerate_commands(kernels: list, root_is_live: bool, distro_family=None) -> list:
    """``mkinitcpio -P``: every preset in /etc/mkinitcpio.d, which is how the images of all installed
    kernels are named and built (the libalpm hook does the same). Its autodetect hook probes the
    machine that runs it; the presets decide (a fallback preset uses ``-S autodetect``)."""
    return [["mkinitcpio", "-P"]]


def image_candidates(kernel: str, distro_family=None) -> dict:
    pkgbase = cfg.arch_pkgbase(kernel)
    paths = [f"/boot/initramfs-{pkgbase}.img"] + ([] if pkgbase == "linux" else ["/boot/initramfs-linux.img"])
    m = re.match(r"(\d+)\.(\d+)", kernel)
    if m:   # Manjaro's presets: linux66.preset -> /boot/initramfs-6.6-x86_64.img
        paths.append(f"/boot/initramfs-{m.group(1)}.{m.group(2)}-x86_64.img")
    return {"paths": paths, "by_version": False,
            "note": "mkinitcpio names images after presets, not kernel versions: /etc/mkinitcpio.d/<pkgbase>.preset "
                    "sets default_image (<pkgbase> is in /usr/lib/modules/<version>/pkgbase); these are the usual names"}


def list_command(image: str) -> list:
    return ["lsinitcpio", image]
