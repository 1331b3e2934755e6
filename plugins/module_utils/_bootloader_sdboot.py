# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""systemd-boot: the ``options`` of every Boot Loader Specification type #1 entry, and
``/etc/kernel/cmdline`` for the kernels kernel-install adds later.

Where the entries are: systemd-boot reads ``/loader/entries/*.conf`` and ``/EFI/Linux/*.efi`` on the
ESP and on the XBOOTLDR partition (src/boot/boot.c ``config_load_type1_entries``,
``config_load_xbootldr``); kernel-install writes new entries to ``$BOOT_ROOT/loader/entries`` where
BOOT_ROOT is the XBOOTLDR partition when there is one, else the ESP (90-loaderentry.install). With
the ESP on ``/efi`` or ``/boot/efi``, ``/boot`` is taken as the XBOOTLDR mount (bootctl's default
layout; ``ctx["xbootldr"]`` overrides it).

An entry may have several ``options`` lines: systemd-boot joins them with a space
(``boot_entry_add_type1``). Words are replaced and removed on every line in place; missing ones are
appended to the last line.

``/etc/kernel/cmdline``: kernel-install takes a new entry's options from it, else from
``/usr/lib/kernel/cmdline``, else from ``/proc/cmdline`` without ``BOOT_IMAGE=`` and ``initrd=``
(90-loaderentry.install.in). The /proc fallback means a kernel installed before the reboot would lose
the parameters, so the file is created when absent: from ``/usr/lib/kernel/cmdline`` when that exists
(the distribution's intended base), else from the default entry's options.

Unified kernel images (type #2, ``EFI/Linux/*.efi``, or type #1 entries with ``uki``) carry their
command line inside the signed image and ignore ``options`` under Secure Boot; when the default
entry is one, planning stops with an error instead of editing files that would not change the boot.

What this cannot see: the EFI variables ``LoaderEntryDefault`` (``bootctl set-default``),
``LoaderEntryOneShot`` and ``LoaderEntryLastBooted`` (``default @saved``) override loader.conf at
boot; the read-back says so when it matters.
"""
from __future__ import annotations

import functools
import re

from ansible_collections.exliar.vfio.plugins.module_utils import _kernel_params as kp
from ansible_collections.exliar.vfio.plugins.module_utils._cmdline import split_cmdline

KERNEL_CMDLINE = "/etc/kernel/cmdline"
USR_CMDLINE = "/usr/lib/kernel/cmdline"
# boot.c LOADER_TYPE_*: which keys make an entry a kernel, a UKI or another EFI program
LINUX_KEYS = ("linux",)
UKI_KEYS = ("uki", "uki-url")
EFI_KEYS = ("efi",)
_LINE_RE = re.compile(r"^(?P<lead>[ \t]*)(?P<key>[^ \t#][^ \t]*)(?P<sep>[ \t]+)(?P<value>.*?)(?P<trail>[ \t]*)$")
_TRIES_RE = re.compile(r"^(?P<stem>.*)\+(?P<left>\d+)(?:-(?P<done>\d+))?(?P<suffix>\.(?:conf|efi))$", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Helpers shared with the other BLS-based modules
# ---------------------------------------------------------------------------------------------

def strverscmp(a, b) -> int:
    """systemd's ``strverscmp_improved`` (src/fundamental/string-util-fundamental.c): rpmvercmp with
    ``~`` (older), ``-`` (version/release), ``^`` (patched) and ``.`` as ordered separators."""
    a, b = a or "", b or ""
    i = j = 0

    def valid(c):
        return c.isascii() and (c.isalnum() or c in "~-^.")

    def at(s, k):
        return s[k] if k < len(s) else ""

    while True:
        while i < len(a) and not valid(a[i]):
            i += 1
        while j < len(b) and not valid(b[j]):
            j += 1
        if at(a, i) == "~" or at(b, j) == "~":
            if (at(a, i) != "~") != (at(b, j) != "~"):
                return 1 if at(a, i) != "~" else -1
            i, j = i + 1, j + 1
        if i >= len(a) or j >= len(b):
            return (i < len(a)) - (j < len(b))
        for sep in "-^.":
            if at(a, i) == sep or at(b, j) == sep:
                if (at(a, i) != sep) != (at(b, j) != sep):
                    return 1 if at(a, i) != sep else -1
                i, j = i + 1, j + 1
        if at(a, i).isdigit() or at(b, j).isdigit():
            ea = re.match(r"[0-9]*", a[i:]).end() + i
            eb = re.match(r"[0-9]*", b[j:]).end() + j
            if (ea > i) != (eb > j):
                return 1 if ea > i else -1
            na, nb = a[i:ea].lstrip("0"), b[j:eb].lstrip("0")
            if len(na) != len(nb):
                return 1 if len(na) > len(nb) else -1
            if na != nb:
                return 1 if na > nb else -1
        else:
            ea = re.match(r"[A-Za-z]*", a[i:]).end() + i
            eb = re.match(r"[A-Za-z]*", b[j:]).end() + j
            sa, sb = a[i:ea], b[j:eb]
            n = min(len(sa), len(sb))
            if sa[:n] != sb[:n]:
                return 1 if sa[:n] > sb[:n] else -1
            if len(sa) != len(sb):
                return 1 if len(sa) > len(sb) else -1
        i, j = ea, eb


def fnmatch(pattern: str, name: str) -> bool:
    """systemd-boot's ``efi_fnmatch`` (src/boot/efi-string.c): ``*``, ``?``, ``[set]`` with ranges
    and backslash escapes; no ``!`` negation (a ``!`` in a set is a plain character)."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            k, first, members = i + 1, True, []
            while k < len(pattern) and (pattern[k] != "]" or first):
                if pattern[k] == "\\" and k + 1 < len(pattern):
                    k += 1
                    members.append(re.escape(pattern[k]))
                elif pattern[k] == "-" and not first and k + 1 < len(pattern) and pattern[k + 1] != "]" and members:
                    k += 1
                    members.append("-" + re.escape(pattern[k]))
                else:
                    members.append(re.escape(pattern[k]))
                first = False
                k += 1
            if k >= len(pattern):
                return False  # efi_fnmatch: an unterminated set never matches
            out.append("[" + "".join(members) + "]")
            i = k
        else:
            out.append(re.escape(c))
        i += 1
    return re.fullmatch("".join(out), name, re.DOTALL) is not None


def edit_cmdline_file(text: str, entries: list) -> str:
    """``/etc/kernel/cmdline`` after ``entries``: kernel-install reads every line (``tr -s "$IFS" ' '``),
    so words are replaced and removed on every line and missing ones appended to the last non-empty
    line; untouched lines stay byte for byte."""
    lines = text.split("\n")
    words_all = []
    for i, line in enumerate(lines):
        cr = "\r" if line.endswith("\r") else ""
        body = line[:-1] if cr else line
        words = split_cmdline(body)
        new = kp.apply(words, entries, append=False)
        if new != words:
            lines[i] = " ".join(new) + cr
        words_all.extend(new)
    todo = [e for e in entries if e["state"] == "present" and not kp.satisfied(words_all, e)]
    if todo:
        added = " ".join(kp.word(e) for e in todo)
        filled = [i for i, line in enumerate(lines) if line.strip()]
        if filled:
            k = filled[-1]
            cr = "\r" if lines[k].endswith("\r") else ""
            body = lines[k][:-1] if cr else lines[k]
            end = len(body.rstrip())
            lines[k] = body[:end] + " " + added + body[end:] + cr
        elif text == "":
            return added + "\n"
        else:
            lines[0] = added + lines[0]
    return "\n".join(lines)


def cmdline_file_words(text) -> list:
    return split_cmdline(" ".join((text or "").split("\n")))


# ---------------------------------------------------------------------------------------------
# Entries
# ---------------------------------------------------------------------------------------------

def _esp(ctx) -> str:
    return (ctx.get("esp") or "").rstrip("/") or None


def _xbootldr(ctx):
    """The XBOOTLDR mount, or None when the ESP is /boot itself (see the module docstring)."""
    esp = _esp(ctx)
    x = ctx.get("xbootldr")
    if x is None:
        x = "/boot" if esp and esp != "/boot" else None
    return (x or "").rstrip("/") or None


def roots(ctx) -> list:
    out = []
    for r in (_esp(ctx), _xbootldr(ctx)):
        if r and r not in out:
            out.append(r)
    return out


def inputs(ctx) -> list:
    out = []
    esp = _esp(ctx)
    if esp:
        out.append(f"{esp}/loader/loader.conf")
    for r in roots(ctx):
        out += [f"{r}/loader/entries/*.conf", f"{r}/EFI/Linux/*.efi"]
    return out + [KERNEL_CMDLINE, USR_CMDLINE]


def outputs(ctx, files) -> list:
    return inputs(ctx)


def parse_lines(text: str) -> list:
    """``[{"index", "key", "value", "lead", "sep", "trail", "cr"}]`` for every key/value line; comments and
    blank lines are skipped like ``line_get_key_value`` (src/boot/efi-string.c) does."""
    out = []
    for i, line in enumerate((text or "").split("\n")):
        cr = "\r" if line.endswith("\r") else ""
        m = _LINE_RE.match(line[:-1] if cr else line)
        if m:
            out.append(dict(m.groupdict(), index=i, cr=cr))
    return out


def _id_and_tries(name: str) -> tuple:
    """The entry id (file name, boot counter removed, lower case) and the tries left (-1: none);
    boot.c ``boot_entry_parse_tries``."""
    m = _TRIES_RE.match(name)
    if not m:
        return name.lower(), -1
    return (m.group("stem") + m.group("suffix")).lower(), int(m.group("left"))


def type1_entry(path: str, text: str) -> dict:
    name = path.rsplit("/", 1)[-1]
    entry_id, tries = _id_and_tries(name)
    e = {"path": path, "name": name, "id": entry_id, "tries_left": tries, "title": None, "version": None,
         "sort_key": None, "machine_id": None, "kind": None, "options": [], "lines": parse_lines(text), "text": text}
    for ln in e["lines"]:
        key, value = ln["key"], ln["value"]
        if key in ("title", "version", "machine-id", "sort-key"):
            e[{"machine-id": "machine_id", "sort-key": "sort_key"}.get(key, key)] = value
        elif key in LINUX_KEYS + UKI_KEYS + EFI_KEYS:
            kind = "linux" if key in LINUX_KEYS else ("uki" if key in UKI_KEYS else "efi")
            e["kind"] = kind if e["kind"] in (None, kind) else "bad"  # boot.c: mixed kinds make it LOADER_BAD
        elif key == "options":
            e["options"].append(ln)
    e["cmdline"] = " ".join(ln["value"] for ln in e["options"])
    return e


def _pe_sections(data: bytes) -> dict:
    """Name -> bytes of the sections of a PE image before any ``.profile`` (the base profile)."""
    out: dict = {}
    if data[:2] != b"MZ" or len(data) < 0x40:
        return out
    pe = int.from_bytes(data[0x3c:0x40], "little")
    if data[pe:pe + 4] != b"PE\0\0":
        return out
    count = int.from_bytes(data[pe + 6:pe + 8], "little")
    table = pe + 24 + int.from_bytes(data[pe + 20:pe + 22], "little")
    for n in range(count):
        off = table + 40 * n
        name = data[off:off + 8].rstrip(b"\0").decode("ascii", "replace")
        if name == ".profile":
            break
        size = min(int.from_bytes(data[off + 8:off + 12], "little"), int.from_bytes(data[off + 16:off + 20], "little"))
        start = int.from_bytes(data[off + 20:off + 24], "little")
        out.setdefault(name, data[start:start + size])
    return out


def _os_release(text: str) -> dict:
    """KEY=value lines; a value in double quotes is unquoted as ``line_get_key_value`` does."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _sep, value = line.partition("=")
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = value[1:-1]
        out[key.strip()] = value
    return out


def type2_entry(path: str, text) -> dict:
    """A unified kernel image: sort key, version and title from ``.osrel``
    (bootspec-fundamental.c ``bootspec_pick_name_version_sort_key``), the command line from ``.cmdline``."""
    name = path.rsplit("/", 1)[-1]
    entry_id, tries = _id_and_tries(name)
    data = (text or "").encode("utf-8", "surrogateescape")
    sections = _pe_sections(data)
    osr = _os_release(sections.get(".osrel", b"").decode("utf-8", "replace"))
    cmdline = sections.get(".cmdline")
    return {"path": path, "name": name, "id": entry_id, "tries_left": tries, "kind": "type2",
            "title": osr.get("PRETTY_NAME") or osr.get("IMAGE_ID") or osr.get("NAME") or osr.get("ID"),
            "version": osr.get("IMAGE_VERSION") or osr.get("VERSION") or osr.get("VERSION_ID") or osr.get("BUILD_ID"),
            "sort_key": osr.get("IMAGE_ID") or osr.get("ID"), "machine_id": None,
            "cmdline": None if cmdline is None else " ".join(cmdline.rstrip(b"\0").decode("utf-8", "replace").split()),
            "options": []}


def _compare(a: dict, b: dict) -> int:
    """boot.c ``boot_entry_compare``: no tries left last; entries with a sort key first, ordered by
    sort key, machine id, version (newest first); then by id, newest first."""
    r = (a["tries_left"] == 0) - (b["tries_left"] == 0)
    if r:
        return r
    r = (not a["sort_key"]) - (not b["sort_key"])
    if r:
        return r
    if a["sort_key"] and b["sort_key"]:
        r = (a["sort_key"] > b["sort_key"]) - (a["sort_key"] < b["sort_key"])
        if r:
            return r
        ma, mb = a["machine_id"] or "", b["machine_id"] or ""
        r = (ma > mb) - (ma < mb)
        if r:
            return r
        r = -strverscmp(a["version"], b["version"])
        if r:
            return r
    r = -strverscmp(a["id"], b["id"])
    if r:
        return r
    if a["tries_left"] < 0 or b["tries_left"] < 0:
        return 0
    return -((a["tries_left"] > b["tries_left"]) - (a["tries_left"] < b["tries_left"]))


def collect(files: dict, ctx) -> list:
    """Every entry systemd-boot shows, in its menu order."""
    out = []
    for r in roots(ctx):
        for path in sorted(files):
            text = files[path]
            if text is None:
                continue
            name = path.rsplit("/", 1)[-1]
            if name.startswith(".") or name.lower().startswith("auto-"):
                continue
            if path.startswith(f"{r}/loader/entries/") and path.count("/") == r.count("/") + 3 and name.lower().endswith(".conf"):
                e = type1_entry(path, text)
                if e["kind"] not in (None, "bad"):  # boot.c: entries without a loader key are dropped
                    out.append(e)
            elif path.startswith(f"{r}/EFI/Linux/") and path.count("/") == r.count("/") + 3 and name.lower().endswith(".efi"):
                e = type2_entry(path, text)
                if e["title"]:  # boot.c: an image without a usable .osrel is not shown
                    out.append(e)
    return sorted(out, key=functools.cmp_to_key(_compare))


def loader_default(text) -> str:
    """The last ``default`` of loader.conf, lower-cased; '@' values other than @saved are ignored
    (boot.c ``config_defaults_load_from_file``)."""
    value = None
    for ln in parse_lines(text or ""):
        if ln["key"] == "default":
            v = ln["value"]
            if len(v) >= 2 and v.startswith('"') and v.endswith('"'):
                v = v[1:-1]
            if v.startswith("@") and v.lower() != "@saved":
                continue
            value = v
    return value.lower() if value else None


def default_entry(files: dict, ctx, entries=None) -> tuple:
    """(entry or None, spec, notes): boot.c ``config_select_default_entry`` without the EFI variables."""
    entries = collect(files, ctx) if entries is None else entries
    esp = _esp(ctx)
    spec = loader_default(files.get(f"{esp}/loader/loader.conf")) if esp else None
    notes = ["an EFI variable set by 'bootctl set-default' or 'set-oneshot' would override this choice; "
             "it cannot be read from files"]
    if spec == "@saved":
        notes.append("loader.conf says 'default @saved': systemd-boot boots the entry booted last (EFI variable "
                     "LoaderEntryLastBooted); assumed to be the first entry")
    elif spec:
        for e in entries:
            if fnmatch(spec, e["id"]):
                return e, spec, notes
        notes.append(f"loader.conf 'default {spec}' matches no entry: systemd-boot boots the first one")
    first = next((e for e in entries if e["kind"] in ("linux", "uki", "type2", "efi")), None)
    return first, spec, notes


def uki_error(e: dict) -> str:
    return (f"the default boot entry {e['path']} is a unified kernel image: its command line is built into the "
            f"signed image and loader entry options do not change it; edit {KERNEL_CMDLINE} and rebuild the UKI "
            f"with your tool (kernel-install, ukify, mkinitcpio, dracut --uefi), or make a type #1 entry the default")


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------

def edit_entry(e: dict, entries: list) -> str:
    """The entry text with its options lines edited (see the module docstring)."""
    lines = e["text"].split("\n")
    values = {ln["index"]: ln["value"] for ln in e["options"]}
    words_all = []
    for ln in e["options"]:
        words = split_cmdline(ln["value"])
        new = kp.apply(words, entries, append=False)
        if new != words:
            values[ln["index"]] = " ".join(new)
        words_all.extend(new)
    todo = [x for x in entries if x["state"] == "present" and not kp.satisfied(words_all, x)]
    if todo:
        added = " ".join(kp.word(x) for x in todo)
        if e["options"]:
            last = e["options"][-1]["index"]
            values[last] = f"{values[last]} {added}" if values[last].strip() else added
        else:
            at = len(lines) - 1 if lines and lines[-1] == "" else len(lines)
            lines.insert(at, f"options {added}")
    for ln in e["options"]:
        if values[ln["index"]] != ln["value"]:
            lines[ln["index"]] = _render(dict(ln, value=values[ln["index"]]))
    return "\n".join(lines)


def _render(ln: dict) -> str:
    return f"{ln['lead']}{ln['key']}{ln['sep']}{ln['value']}{ln['trail']}{ln['cr']}"


def plan(files: dict, entries: list, ctx) -> dict:
    out = {"files": {}, "commands": [], "errors": [], "warnings": [], "config_path": KERNEL_CMDLINE}
    if not _esp(ctx):
        out["errors"].append("no EFI system partition was found: systemd-boot's loader entries cannot be located "
                             "(mount the ESP, or set vfio_bootloader to the bootloader really in use)")
        return out
    found = collect(files, ctx)
    linux = [e for e in found if e["kind"] == "linux"]
    if not found:
        out["errors"].append(f"no loader entries in {' or '.join(r + '/loader/entries' for r in roots(ctx))}: this "
                             f"systemd-boot layout is unknown, nothing was changed")
        return out
    default, _spec, _notes = default_entry(files, ctx, found)
    if default and default["kind"] in ("type2", "uki"):
        out["errors"].append(uki_error(default))
        return out
    if default and default["kind"] == "efi":
        out["errors"].append(f"the default boot entry {default['path']} starts an EFI program ('efi' line), not a "
                             f"Linux kernel: its options are not a kernel command line; make a Linux entry the default")
        return out
    for e in linux:
        new = edit_entry(e, entries)
        if new != e["text"]:
            out["files"][e["path"]] = {"content": new, "mode": None}
    if default:
        out["config_path"] = default["path"]
    current = files.get(KERNEL_CMDLINE)
    if current is None:
        base = files.get(USR_CMDLINE)
        if base is None:
            if default is None:
                out["errors"].append(f"{KERNEL_CMDLINE} does not exist and no default entry was found to create it from")
                out["files"] = {}
                return out
            base = " ".join(w for w in split_cmdline(default["cmdline"]) if not w.startswith(kp.LOADER_WORDS))
            base += "\n"
        if not base.strip():
            # a file with only our words would replace kernel-install's /proc/cmdline fallback, root= and all
            out["warnings"].append(f"{KERNEL_CMDLINE} does not exist and the default entry has no options to create it from: "
                                   f"kernels installed before the reboot take /proc/cmdline and miss these parameters")
            return out
        out["files"][KERNEL_CMDLINE] = {"content": edit_cmdline_file(base, entries), "mode": 0o644}
        out["warnings"].append(f"{KERNEL_CMDLINE} did not exist: kernel-install would have taken the next kernel's "
                               f"options from {'/usr/lib/kernel/cmdline' if files.get(USR_CMDLINE) is not None else '/proc/cmdline'}; "
                               f"it was created so that new kernels keep these parameters")
    else:
        new = edit_cmdline_file(current, entries)
        if new != current:
            out["files"][KERNEL_CMDLINE] = {"content": new, "mode": None}
    return out


# ---------------------------------------------------------------------------------------------
# Read-back
# ---------------------------------------------------------------------------------------------

def next_boot(files: dict, ctx) -> dict:
    out = {"cmdline": None, "source": None, "entries": [], "errors": [], "warnings": []}
    found = collect(files, ctx)
    out["entries"] = [{"title": e["title"] or e["id"], "cmdline": e["cmdline"], "source": e["path"]} for e in found]
    if not found:
        out["errors"].append("no systemd-boot entries were found")
        return out
    default, spec, notes = default_entry(files, ctx, found)
    out["warnings"].extend(notes)
    out["default"] = spec
    if default is None:
        out["errors"].append("no entry systemd-boot would boot by default")
        return out
    out["source"] = default["path"]
    out["cmdline"] = default["cmdline"]
    if default["kind"] in ("type2", "uki"):
        out["errors"].append(uki_error(default))
    elif default["kind"] == "efi":
        out["errors"].append(f"the default boot entry {default['path']} starts an EFI program, not a Linux kernel")
    return out
