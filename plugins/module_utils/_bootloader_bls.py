# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""GRUB with Boot Loader Specification entries (Fedora, RHEL 8/9/10, CentOS Stream, Rocky, Alma):
what ``grubby --update-kernel=ALL --args=... --remove-args=...`` changes, done as file edits so the
stage journals every write (grubby-bls 8.40, ``update_bls_fragment``):

* the ``options`` line of every ``/boot/loader/entries/*.conf``. ``ALL`` is every file grubby lists,
  rescue entries (``*-0-rescue*``) included, so they are edited too: their options are a copy of a
  kernel entry's (dracut 51-dracut-rescue.install) and grubby keeps them in step.
* an entry whose options use ``$kernelopts`` (RHEL 8, Fedora before 33) is left alone and
  ``kernelopts=`` in ``/boot/grub2/grubenv`` is edited instead; GRUB's blscfg expands the variable
  at boot (grub-core/commands/blscfg.c ``expand_val``). Literal words next to the variable are
  replaced or removed in place. The grubenv is a fixed-size block padded with '#' that GRUB rewrites
  in place (grub-core/lib/envblk.c); its size is kept and an edit that would not fit is an error.
* ``GRUB_CMDLINE_LINUX`` in ``/etc/default/grub`` (grubby 8.40-41, "also update GRUB_CMDLINE_LINUX"):
  Fedora's grub2-mkconfig rewrites every entry's options from ``root=... ro GRUB_CMDLINE_LINUX
  GRUB_CMDLINE_LINUX_DEFAULT`` (Fedora grub2 patch "Add BLS support to grub-mkconfig",
  ``update_bls_cmdline``), so a later mkconfig run would otherwise drop the parameters. Words are
  replaced or removed in both variables, missing ones added to GRUB_CMDLINE_LINUX as grubby does.
* ``/etc/kernel/cmdline`` (grubby 8.40-64): new kernels' entries take their options from it
  (grub2's 20-grub.install, kernel-install). grubby creates it from an entry when absent; so does
  this, except on ``$kernelopts`` layouts, where new entries get ``options $kernelopts`` instead.

No command is needed: GRUB reads the entries and the grubenv at boot. The files are returned with
``/etc/default/grub`` before ``/etc/kernel/cmdline``: 20-grub.install reruns grub2-mkconfig when
the cmdline file is older than /etc/default/grub.
"""
from __future__ import annotations

import functools
import re

from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_grub as grub
from ansible_collections.exliar.vfio.plugins.module_utils import _bootloader_sdboot as sdboot
from ansible_collections.exliar.vfio.plugins.module_utils import _kernel_params as kp
from ansible_collections.exliar.vfio.plugins.module_utils._cmdline import split_cmdline

ENTRIES_DIR = "/boot/loader/entries"
GRUBENV = "/boot/grub2/grubenv"
DEFAULT_GRUB = "/etc/default/grub"
KERNEL_CMDLINE = "/etc/kernel/cmdline"
ENV_SIGNATURE = "# GRUB Environment Block\n"
KERNELOPTS = "$kernelopts"
_VAR_RE = re.compile(r"\$\{?([A-Za-z0-9_]+)\}?")


def inputs(ctx) -> list:
    return [DEFAULT_GRUB, f"{ENTRIES_DIR}/*.conf", GRUBENV, KERNEL_CMDLINE]


def outputs(ctx, files) -> list:
    return inputs(ctx)


# ---------------------------------------------------------------------------------------------
# Entries and their order
# ---------------------------------------------------------------------------------------------

def vercmp(a, b) -> int:
    """GRUB blscfg's ``vercmp`` (rpmvercmp): alphanumeric segments, numbers newer than letters, '~' oldest."""
    a, b = a or "", b or ""
    if a == b:
        return 0
    i = j = 0

    def alnum(c):
        return c.isascii() and c.isalnum()

    while i < len(a) or j < len(b):
        while i < len(a) and not alnum(a[i]) and a[i] != "~":
            i += 1
        while j < len(b) and not alnum(b[j]) and b[j] != "~":
            j += 1
        ta, tb = a[i:i + 1] == "~", b[j:j + 1] == "~"
        if ta or tb:
            if not ta:
                return 1
            if not tb:
                return -1
            i, j = i + 1, j + 1
            continue
        if i >= len(a) or j >= len(b):
            break
        pattern = r"[0-9]*" if a[i].isdigit() else r"[A-Za-z]*"
        isnum = a[i].isdigit()
        sa = re.match(pattern, a[i:]).group()
        sb = re.match(pattern, b[j:]).group()
        if not sb:
            return 1 if isnum else -1
        i, j = i + len(sa), j + len(sb)
        if isnum:
            sa, sb = sa.lstrip("0"), sb.lstrip("0")
            if len(sa) != len(sb):
                return 1 if len(sa) > len(sb) else -1
        if sa != sb:
            return 1 if sa > sb else -1
    if i >= len(a) and j >= len(b):
        return 0
    return -1 if i >= len(a) else 1


def parse_entry(path: str, text: str) -> dict:
    """Key/value lines as GRUB's blscfg ``read_entry`` reads them; ``options`` keeps every line found."""
    name = path.rsplit("/", 1)[-1]
    e = {"path": path, "id": name[:-len(".conf")], "title": None, "version": None, "linux": None,
         "options": [], "text": text}
    for ln in sdboot.parse_lines(text):
        if ln["key"] == "options":
            e["options"].append(ln)
        elif ln["key"] in ("title", "version", "linux") and e[ln["key"]] is None:
            e[ln["key"]] = ln["value"]
    return e


def entries_of(files: dict) -> list:
    """The entries in GRUB's menu order: by version when every entry has one, then by file name,
    newest first (blscfg.c ``bls_cmp`` and ``find_entry``)."""
    found = [parse_entry(p, t) for p, t in files.items()
             if t is not None and p.startswith(ENTRIES_DIR + "/") and p.count("/") == ENTRIES_DIR.count("/") + 1
             and p.endswith(".conf") and not p.rsplit("/", 1)[-1].startswith(".")]
    use_version = all(e["version"] for e in found)

    def cmp(x, y):
        if use_version:
            r = vercmp(x["version"], y["version"])
            if r:
                return -r
        return -vercmp(x["id"], y["id"])

    return sorted(found, key=functools.cmp_to_key(cmp))


def uses_kernelopts(e: dict) -> bool:
    return any(KERNELOPTS in split_cmdline(ln["value"]) or "${kernelopts}" in split_cmdline(ln["value"])
               for ln in e["options"][:1])


def expand(value: str, env: dict) -> str:
    """GRUB's ``expand_val``: every ``$var`` from the environment block; an unset one expands to nothing."""
    return " ".join(_VAR_RE.sub(lambda m: env.get(m.group(1), ""), value or "").split())


# ---------------------------------------------------------------------------------------------
# The grubenv block
# ---------------------------------------------------------------------------------------------

class EnvError(ValueError):
    pass


def env_set(text: str, key: str, value: str) -> str:
    """``text`` with ``key=value`` replaced in place, padding adjusted so the byte size stays the same."""
    if not text.startswith(ENV_SIGNATURE):
        raise EnvError(f"{GRUBENV} does not start with '{ENV_SIGNATURE.strip()}': not a GRUB environment block")
    body = text.rstrip("#")
    size = len(text.encode("utf-8", "surrogateescape"))
    lines = body.split("\n")
    idx = next((i for i, ln in enumerate(lines) if ln.startswith(key + "=")), None)
    if idx is None:
        raise EnvError(f"{GRUBENV} has no {key}= line")
    lines[idx] = f"{key}={value}"
    new_body = "\n".join(lines)
    pad = size - len(new_body.encode("utf-8", "surrogateescape"))
    if pad < 0:
        raise EnvError(f"{key} would not fit into the {size}-byte {GRUBENV} ({-pad} bytes too long): GRUB cannot grow "
                       f"the block; shorten the other variables in it (grub2-editenv list) and run again")
    return new_body + "#" * pad


# ---------------------------------------------------------------------------------------------
# /etc/default/grub
# ---------------------------------------------------------------------------------------------

def _render_assign(a: dict, words: list) -> str:
    q = a["quote"] or '"'
    return f"{a['lead']}{a['var']}={q}{' '.join(words)}{q}{a['trailing']}"


def edit_default_grub(text: str, entries: list) -> str:
    """GRUB_CMDLINE_LINUX(_DEFAULT) after ``entries`` (see the module docstring); ValueError when a
    value is not a plain assignment."""
    assigns = grub.assignments({grub.MAIN: text})
    lines = text.split("\n")
    for var in (grub.LINUX, grub.DEFAULT):
        for a in grub.live(assigns, var):
            words = kp.apply(a["words"], entries, append=False)
            if words != a["words"]:
                a["words"] = words
                lines[a["line"]] = _render_assign(a, words)
    combined = grub.effective(assigns, grub.LINUX) + grub.effective(assigns, grub.DEFAULT)
    todo = [e for e in entries if e["state"] == "present" and not kp.satisfied(combined, e)]
    if todo:
        target = (grub.live(assigns, grub.LINUX) or [None])[-1]
        if target is None:
            line = f'{grub.LINUX}="{" ".join(kp.word(e) for e in todo)}"'
            lines.insert(len(lines) - 1 if lines and lines[-1] == "" else len(lines), line)
        else:
            target["words"] = kp.apply(target["words"], todo)
            lines[target["line"]] = _render_assign(target, target["words"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------

def _edit_options(e: dict, entries: list, append: bool) -> str:
    lines = e["text"].split("\n")
    ln = e["options"][0]
    new = kp.edit(ln["value"], entries, append)
    if new != ln["value"]:
        lines[ln["index"]] = f"{ln['lead']}{ln['key']}{ln['sep']}{new}{ln['trail']}{ln['cr']}"
    return "\n".join(lines)


def plan(files: dict, entries: list, ctx) -> dict:
    out = {"files": {}, "commands": [], "errors": [], "warnings": [], "config_path": None}
    found = entries_of(files)
    if not found:
        out["errors"].append(f"no Boot Loader Specification entries in {ENTRIES_DIR}: this grubby layout is unknown, "
                             f"nothing was changed (set vfio_bootloader to the bootloader really in use)")
        return out
    for e in found:
        if len(e["options"]) > 1:
            out["errors"].append(f"{e['path']} has {len(e['options'])} options lines: GRUB reads only the first and "
                                 f"grubby would overwrite them all; merge them into one line and run again")
    if out["errors"]:
        return out
    env_text = files.get(GRUBENV)
    env = grub.grubenv(env_text)
    legacy = [e for e in found if uses_kernelopts(e)]
    new_files: dict = {}
    if files.get(DEFAULT_GRUB) is not None:
        try:
            new = edit_default_grub(files[DEFAULT_GRUB], entries)
        except ValueError as exc:
            out["errors"].append(str(exc))
            return out
        if new != files[DEFAULT_GRUB]:
            new_files[DEFAULT_GRUB] = new
    for e in found:
        if not e["options"]:
            out["warnings"].append(f"{e['path']} has no options line; grubby leaves such an entry alone and so does this")
            continue
        new = _edit_options(e, entries, append=e not in legacy)
        if new != e["text"]:
            new_files[e["path"]] = new
    if legacy:
        if env_text is None or "kernelopts" not in env:
            out["errors"].append(f"{legacy[0]['path']} boots with $kernelopts but {GRUBENV} "
                                 f"{'does not exist' if env_text is None else 'has no kernelopts='}: GRUB would boot "
                                 f"it without a root= (repair it with 'grub2-mkconfig -o /boot/grub2/grub.cfg'), nothing was changed")
            return out
        if "\\" in env["kernelopts"]:
            out["errors"].append(f"kernelopts in {GRUBENV} contains backslash escapes; edit it with grub2-editenv, "
                                 f"exliar.vfio does not rewrite escaped values")
            return out
        new_opts = kp.edit(env["kernelopts"], entries)
        if new_opts != env["kernelopts"]:
            try:
                new_files[GRUBENV] = env_set(env_text, "kernelopts", new_opts)
            except EnvError as exc:
                out["errors"].append(str(exc))
                return out
    default, _spec, _notes = default_of(found, env, files)
    out["config_path"] = GRUBENV if default in legacy else (default or found[0])["path"]
    current = files.get(KERNEL_CMDLINE)
    if current is not None:
        new = sdboot.edit_cmdline_file(current, entries)
        if new != current:
            new_files[KERNEL_CMDLINE] = new
    elif not legacy:
        base = default or found[0]
        words = [w for w in split_cmdline(expand(base["options"][0]["value"] if base["options"] else "", env))
                 if not w.startswith(kp.LOADER_WORDS)]
        if words:
            new_files[KERNEL_CMDLINE] = sdboot.edit_cmdline_file(" ".join(words) + "\n", entries)
            out["warnings"].append(f"{KERNEL_CMDLINE} did not exist: it was created from {base['path']} as grubby does, "
                                   f"so that kernels installed before the reboot get these parameters too")
        else:
            # only our words in it would replace the /proc/cmdline fallback of 20-grub.install, root= and all
            out["warnings"].append(f"{KERNEL_CMDLINE} does not exist and {base['path']} has no options to create it from")
    for path, text in new_files.items():
        out["files"][path] = {"content": text, "mode": 0o644 if files.get(path) is None else None}
    return out


# ---------------------------------------------------------------------------------------------
# Read-back
# ---------------------------------------------------------------------------------------------

def _default_setting(files: dict) -> str:
    """GRUB_DEFAULT from /etc/default/grub ('saved' when unset: Fedora's anaconda writes it so)."""
    value = "saved"
    for line in (files.get(DEFAULT_GRUB) or "").split("\n"):
        m = re.match(r"""^\s*(?:export\s+)?GRUB_DEFAULT=["']?([^"'#]*?)["']?\s*(?:#.*)?$""", line)
        if m:
            value = m.group(1)
    return value


def default_of(found: list, env: dict, files: dict) -> tuple:
    """(entry, spec, notes): GRUB's default lookup over the BLS menu: an index, an id (file name without
    .conf) or a title (grub-core/normal/menu.c); ``saved`` reads ``saved_entry`` from the grubenv."""
    notes = []
    setting = _default_setting(files)
    spec = env.get("saved_entry", "") if setting == "saved" else setting
    if env.get("next_entry"):
        notes.append(f"grubenv next_entry={env['next_entry']}: GRUB boots that entry once, before the default")
    if not spec:
        return (found[0] if found else None), spec, notes
    if spec.isdigit():
        idx = int(spec)
        if idx < len(found):
            return found[idx], spec, notes
    for e in found:
        if spec in (e["id"], e["title"]):
            return e, spec, notes
    notes.append(f"GRUB's default {spec!r} matches no entry: GRUB boots the first one")
    return (found[0] if found else None), spec, notes


def next_boot(files: dict, ctx) -> dict:
    out = {"cmdline": None, "source": None, "entries": [], "errors": [], "warnings": []}
    found = entries_of(files)
    env = grub.grubenv(files.get(GRUBENV))
    out["entries"] = [{"title": e["title"] or e["id"], "id": e["id"], "source": e["path"],
                       "cmdline": expand(e["options"][0]["value"], env) if e["options"] else ""} for e in found]
    if not found:
        out["errors"].append(f"no entries in {ENTRIES_DIR}")
        return out
    default, spec, notes = default_of(found, env, files)
    out["warnings"].extend(notes)
    out["default"] = spec
    out["source"] = default["path"]
    out["cmdline"] = expand(default["options"][0]["value"], env) if default["options"] else ""
    if uses_kernelopts(default) and "kernelopts" not in env:
        out["errors"].append(f"{default['path']} uses $kernelopts but {GRUBENV} does not define it")
    return out
