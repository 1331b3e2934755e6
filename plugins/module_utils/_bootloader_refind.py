# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""rEFInd: ``refind_linux.conf`` beside the kernels, and manual stanzas in ``refind.conf``.

Each line of ``/boot/refind_linux.conf`` is a menu choice ``"Title" "options"``. The first one
is what rEFInd boots by default (config.c ``GetFirstOptionsFromFile``). The others appear in
the entry's submenu (linux.c ``AddKernelToSubmenu``). The file ``refind-install`` and
``mkrlconf`` write has three lines: "Boot with standard options", then the same plus
``single``, then "Boot with minimal options" (``ro root=...`` only). The rEFInd manual
(docs/refind/linux.html) describes the last two as the maintenance and debugging choices.

Which lines get the parameters: the first line always does. Another line gets them unless
its title or words mark it as a fallback: single-user, rescue or emergency, a fallback
initramfs, or minimal options (only ``ro``/``rw``/``root=``/``initrd=`` words). On those
lines the parameters are replaced and removed in place but never added, the same rule as
GRUB's recovery entries, so a fallback still boots without the VFIO binding. rEFInd takes the
second token of a line as the whole option string: an unquoted string with blanks would lose all
but its first word, so such a line is refused as unparsable.

Manual stanzas (``menuentry "T" { loader ...; options "..."; submenuentry ... }`` in
``<esp>/EFI/refind/refind.conf`` and the files it ``include``s) are edited the same way when
they boot a Linux kernel (a loader named vmlinuz*, bzImage* or kernel*, rEFInd's
LINUX_PREFIXES, or ``ostype Linux``) and are not ``disabled``. A ``submenuentry``'s
``options`` line replaces the stanza's options and follows the fallback rule by its title.
Its ``add_options`` line adds to the stanza's options: parameters are replaced and removed
there but never added (config.c ``AddSubmenu``). The tokenizer follows config.c
``ReadTokenLine``: blanks, ``=`` and ``,`` separate tokens; quotes group them; ``""`` inside
quotes is one quote; ``#`` outside quotes ends the line. No command is needed: rEFInd reads
the files at every boot.
"""
from __future__ import annotations

import re

from ansible_collections.exliar.vfio.plugins.module_utils import _kernel_params as kp
from ansible_collections.exliar.vfio.plugins.module_utils._bootloader_text import join as _join
from ansible_collections.exliar.vfio.plugins.module_utils._bootloader_text import lines as _lines
from ansible_collections.exliar.vfio.plugins.module_utils._bootloader_text import reword
from ansible_collections.exliar.vfio.plugins.module_utils._cmdline import split_cmdline

LINUX_CONFS = ("/boot/refind_linux.conf", "/boot/refind-linux.conf")  # config.c LINUX_OPTIONS_FILENAMES, in order
LINUX_PREFIXES = ("vmlinuz", "bzimage", "kernel")  # global.h LINUX_PREFIXES (x86), compared case-insensitively
FALLBACK_TITLE_RE = re.compile(r"single|minimal|fallback|recovery|rescue|emergency|safe mode", re.I)
FALLBACK_WORDS = {"single", "s", "1", "emergency", "rescue", "systemd.unit=rescue.target", "systemd.unit=emergency.target"}
MINIMAL_PREFIXES = ("root=", "initrd=", "rootfstype=", "rootflags=")
SEPARATORS = " \t=,"


class _Unparsable(ValueError):
    pass


def _esp(ctx) -> str:
    return (ctx.get("esp") or "/boot/efi").rstrip("/")


def _confs(ctx) -> tuple:
    """refind.conf where refind-install puts it, and where it lands as the fallback loader."""
    esp = _esp(ctx)
    return (f"{esp}/EFI/refind/refind.conf", f"{esp}/EFI/BOOT/refind.conf")


def inputs(ctx) -> list:
    esp = _esp(ctx)
    return [*LINUX_CONFS, *_confs(ctx), f"{esp}/EFI/refind/*.conf", f"{esp}/EFI/BOOT/*.conf"]


def outputs(ctx, files) -> list:
    return inputs(ctx)


def tokens(line: str) -> list:
    """``[(text, start, end, quoted)]`` of one line as config.c ``ReadTokenLine`` splits it;
    ``start``/``end`` delimit the raw text (inside the quotes of a quoted token)."""
    out = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in SEPARATORS:
            i += 1
        if i >= n or line[i] == "#":
            break
        if line[i] == '"':
            j, buf = i + 1, []
            while True:
                if j >= n:
                    raise _Unparsable("a quote that is not closed on its line")
                if line[j] == '"':
                    if j + 1 < n and line[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(line[j])
                j += 1
            out.append(("".join(buf), i + 1, j, True))
            i = j + 1
        else:
            j = i
            while j < n and line[j] not in SEPARATORS + '#"':
                j += 1
            out.append((line[i:j], i, j, False))
            i = j
    return out


def is_fallback(title: str, words: list, secondary: bool = True) -> bool:
    """A choice meant to boot when the normal one does not (see the module docstring). Minimal
    options mark only a secondary choice: a main entry may well be just ``root=... ro``."""
    if FALLBACK_TITLE_RE.search(title or ""):
        return True
    if any(w.lower() in FALLBACK_WORDS for w in words):
        return True
    return secondary and bool(words) and all(w in ("ro", "rw") or w.startswith(MINIMAL_PREFIXES) for w in words)


# ---------------------------------------------------------------------------------------------
# refind_linux.conf
# ---------------------------------------------------------------------------------------------

def linux_conf_choices(path: str, text: str) -> list:
    """``[{"line", "title", "words", "start", "end"}]`` of the option lines, in order."""
    out = []
    for i, (body, _end) in enumerate(_lines(text)):
        try:
            toks = tokens(body)
        except _Unparsable as exc:
            raise _Unparsable(f"{path} line {i + 1} has {exc}") from exc
        if not toks:
            continue
        if len(toks) < 2:
            raise _Unparsable(f"{path} line {i + 1} has a title but no option string: rEFInd stops reading the "
                              f"file there (linux.c AddKernelToSubmenu); give it \"options\" or comment it out")
        opts = toks[1]
        if not opts[3] and len(toks) > 2:
            raise _Unparsable(f"{path} line {i + 1}: the option string is not quoted, so rEFInd passes only "
                              f"{opts[0]!r}; put the options in double quotes")
        out.append({"line": i, "title": toks[0][0], "words": split_cmdline(opts[0]), "text": opts[0],
                    "start": opts[1], "end": opts[2], "quoted": opts[3]})
    return out


def _rewrite(lines: list, choice: dict, words: list) -> None:
    body = lines[choice["line"]][0]
    new = reword(choice["text"], words).replace('"', '""')  # config.c KeepReading: "" is one quote
    if not choice["quoted"]:
        new = f'"{new}"'
    lines[choice["line"]][0] = body[:choice["start"]] + new + body[choice["end"]:]


def _edit_linux_conf(path: str, text: str, entries: list) -> str:
    choices = linux_conf_choices(path, text)
    if not choices:
        raise _Unparsable(f"{path} has no option line: rEFInd then guesses the options from /etc/fstab; "
                          f"write it with mkrlconf (rEFInd) and run again")
    lines = _lines(text)
    for n, choice in enumerate(choices):
        append = n == 0 or not is_fallback(choice["title"], choice["words"])
        words = kp.apply(choice["words"], entries, append=append)
        if words != choice["words"]:
            _rewrite(lines, choice, words)
    return _join(lines)


# ---------------------------------------------------------------------------------------------
# refind.conf manual stanzas
# ---------------------------------------------------------------------------------------------

def stanzas(path: str, text: str) -> list:
    """The ``menuentry`` stanzas of one file: ``{"title", "loader", "ostype", "disabled",
    "options" (a line record or None), "submenus", "line"}``; line records carry the token span."""
    out, stanza, sub = [], None, None
    for i, (body, _end) in enumerate(_lines(text)):
        try:
            toks = tokens(body)
        except _Unparsable as exc:
            if stanza is None:
                continue  # rEFInd reads global options leniently; only stanzas are edited
            raise _Unparsable(f"{path} line {i + 1} has {exc}") from exc
        if not toks:
            continue
        key = toks[0][0].lower()
        if stanza is None:
            if key == "menuentry" and len(toks) > 1:
                stanza = {"title": toks[1][0], "loader": "", "ostype": "", "disabled": False, "options": None,
                          "submenus": [], "line": i, "path": path}
            continue
        target = sub if sub is not None else stanza
        if key == "}":
            if sub is not None:
                stanza["submenus"].append(sub)
                sub = None
            else:
                out.append(stanza)
                stanza = None
        elif key == "submenuentry" and sub is None and len(toks) > 1:
            sub = {"title": toks[1][0], "disabled": False, "options": None, "add_options": [], "line": i,
                   "loader": None, "cleared": False}
        elif key == "disabled":
            target["disabled"] = True
        elif key == "options" and len(toks) == 1 and sub is not None:
            sub["cleared"], sub["options"] = True, None  # a bare 'options' clears them (config.c AddSubmenu)
        elif key in ("options", "add_options") and len(toks) > 1:
            if not toks[1][3] and len(toks) > 2:
                raise _Unparsable(f"{path} line {i + 1}: the {key} value is not quoted, so rEFInd passes only "
                                  f"{toks[1][0]!r}; put the options in double quotes")
            record = {"line": i, "words": split_cmdline(toks[1][0]), "text": toks[1][0], "start": toks[1][1],
                      "end": toks[1][2], "quoted": toks[1][3]}
            if key == "add_options":
                if sub is not None:
                    sub["add_options"].append(record)
            else:
                target["options"] = record
        elif key == "loader" and len(toks) > 1:
            target["loader"] = toks[1][0]
        elif key == "ostype" and len(toks) > 1 and sub is None:
            stanza["ostype"] = toks[1][0]
    if stanza is not None:
        raise _Unparsable(f"{path} line {stanza['line'] + 1}: menuentry {stanza['title']!r} has no closing '}}'")
    return out


def boots_linux(stanza: dict) -> bool:
    name = re.split(r"[\\/]", stanza["loader"])[-1].lower()
    return name.startswith(LINUX_PREFIXES) or stanza["ostype"][:1] == "L"


def _sub_boots_stanza_kernel(sub: dict) -> bool:
    """A submenu boots the stanza's kernel unless it names another loader or clears the options."""
    loader = re.split(r"[\\/]", sub["loader"] or "")[-1].lower()
    return not sub["disabled"] and not sub["cleared"] and (sub["loader"] is None or loader.startswith(LINUX_PREFIXES))


def _edit_conf(path: str, text: str, entries: list, warnings: list) -> tuple:
    """(new text, number of enabled Linux stanzas with an options line)."""
    lines = _lines(text)
    edited = 0
    for st in stanzas(path, text):
        if st["disabled"] or not boots_linux(st):
            continue
        if st["options"] is None:
            warnings.append(f"{path} line {st['line'] + 1}: menuentry {st['title']!r} boots Linux without an options "
                            "line; add one by hand if the kernel needs parameters from rEFInd")
            continue
        edited += 1
        rec = st["options"]
        words = kp.apply(rec["words"], entries, append=not is_fallback(st["title"], rec["words"], secondary=False))
        if words != rec["words"]:
            _rewrite(lines, rec, words)
        for sub in st["submenus"]:
            if not _sub_boots_stanza_kernel(sub):
                continue
            if sub["options"] is not None:
                rec = sub["options"]
                words = kp.apply(rec["words"], entries, append=not is_fallback(sub["title"], rec["words"]))
                if words != rec["words"]:
                    _rewrite(lines, rec, words)
            for rec in sub["add_options"]:
                words = kp.apply(rec["words"], entries, append=False)
                if words != rec["words"]:
                    _rewrite(lines, rec, words)
    return _join(lines), edited


def _includes(text: str) -> list:
    """The files ``include``d by the main refind.conf (one level, config.c ``ReadConfig``)."""
    out = []
    for body, _end in _lines(text):
        try:
            toks = tokens(body)
        except _Unparsable:
            continue
        if len(toks) == 2 and toks[0][0].lower() == "include":
            out.append(toks[1][0].replace("\\", "/"))
    return out


def config_files(files: dict, ctx) -> list:
    """Every refind.conf that exists, each followed by the files it includes (relative to its directory)."""
    out = []
    for conf in _confs(ctx):
        if files.get(conf) is None:
            continue
        out.append(conf)
        base = conf.rsplit("/", 1)[0]
        for inc in _includes(files[conf]):
            path = inc if inc.startswith("/") else f"{base}/{inc}"
            if path not in out:
                out.append(path)
    return out


def plan(files: dict, entries: list, ctx) -> dict:
    out = {"files": {}, "commands": [], "errors": [], "warnings": [], "config_path": None}
    linux_conf = next((p for p in LINUX_CONFS if files.get(p) is not None), None)
    new_texts, edited = {}, 0
    try:
        if linux_conf:
            new_texts[linux_conf] = _edit_linux_conf(linux_conf, files[linux_conf], entries)
            out["config_path"] = linux_conf
        for path in config_files(files, ctx):
            if files.get(path) is None:
                out["warnings"].append(f"{path} is included by refind.conf but was not read; check its manual stanzas by hand")
                continue
            new_texts[path], count = _edit_conf(path, files[path], entries, out["warnings"])
            edited += count
            if count and out["config_path"] is None:
                out["config_path"] = path
    except _Unparsable as exc:
        out["errors"].append(f"{exc}; nothing was changed")
        return out
    if linux_conf is None and not edited:
        out["errors"].append(f"neither {LINUX_CONFS[0]} nor an enabled manual stanza booting Linux with an options line "
                             "in refind.conf: rEFInd then guesses the options from /etc/fstab; create the file with "
                             "mkrlconf (rEFInd) and run again, nothing was changed")
        return out
    for path, text in new_texts.items():
        if text != files[path]:
            out["files"][path] = {"content": text, "mode": None}
    return out


# ---------------------------------------------------------------------------------------------
# Read-back
# ---------------------------------------------------------------------------------------------

def next_boot(files: dict, ctx) -> dict:
    out = {"cmdline": None, "source": None, "entries": [], "errors": [], "warnings": []}
    try:
        linux_conf = next((p for p in LINUX_CONFS if files.get(p) is not None), None)
        if linux_conf:
            for choice in linux_conf_choices(linux_conf, files[linux_conf]):
                out["entries"].append({"title": choice["title"], "cmdline": " ".join(choice["words"]),
                                       "source": linux_conf})
        manual = []
        for path in config_files(files, ctx):
            for st in stanzas(path, files.get(path) or ""):
                if st["disabled"] or not boots_linux(st) or st["options"] is None:
                    continue
                entry = {"title": st["title"], "cmdline": " ".join(st["options"]["words"]), "source": path}
                manual.append(entry)
                for sub in st["submenus"]:
                    if sub["disabled"] or (sub["loader"] is not None and not boots_linux(dict(st, loader=sub["loader"]))):
                        continue
                    words = list(sub["options"]["words"] if sub["options"] else [] if sub["cleared"] else st["options"]["words"])
                    for rec in sub["add_options"]:
                        words += rec["words"]
                    manual.append({"title": f"{st['title']} > {sub['title']}", "cmdline": " ".join(words), "source": path})
        out["entries"].extend(manual)
    except _Unparsable as exc:
        out["errors"].append(str(exc))
        return out
    if not out["entries"]:
        out["errors"].append(f"no option line in {LINUX_CONFS[0]} and no enabled manual Linux stanza in refind.conf")
        return out
    out["cmdline"], out["source"] = out["entries"][0]["cmdline"], out["entries"][0]["source"]
    return out
