# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Limine: ``limine.conf`` (Limine 8 and later), the legacy ``limine.cfg`` (Limine 7 syntax, read
by Limine 8.x and older), and Arch's limine-entry-tool.

The parsing follows Limine's common/lib/config.c and common/menu.c. Lines are trimmed of blanks
and carriage returns. A line starting with ``/`` (``:`` in limine.cfg) opens an entry, and each
extra ``/`` is one level deeper. ``+`` before the title expands a directory. An entry is a
directory when a sub-entry follows it directly. Options are ``key: value`` with the key matched
case-insensitively (``KEY=VALUE``, case-sensitive, in limine.cfg). An entry's command line is
its first ``kernel_cmdline``, else its first ``cmdline`` (menu.c). Global options count only
before the first entry: config.c ends the global text there. ``${NAME}=value`` lines define
macros that are expanded everywhere.

Which entries get the parameters: Linux entries (``protocol: linux``, or an EFI protocol with a
command line, as limine-entry-tool and archinstall write for UKIs; a UKI with a built-in command
line ignores it under Secure Boot, which is warned). On fallback entries (title or words for
fallback, recovery, single-user, rescue) they are replaced and removed but never added, as for
GRUB's recovery entries. Snapshot entries (a ``Snapshots`` directory, or written by
limine-snapper-sync) are left as they are: they are restore points of an earlier system.

limine-entry-tool (packages limine-entry-tool, limine-mkinitcpio-hook) rewrites the entries
from ``KERNEL_CMDLINE[...]`` assignments. It reads them from /usr/share/limine-entry-tool.d/*.conf,
/etc/limine-entry-tool.conf, /etc/limine-entry-tool.d/*.conf and /etc/default/limine, the last
one winning. That order is quoted from its limine-common-functions ``load_config`` by the
Omarchy tooling. The tool's own source (gitlab.com/Zesko/limine-entry-tool) could not be read
here. When /etc/default/limine exists, its ``KERNEL_CMDLINE[default]`` is edited too, for
future kernels, and ``limine-update`` regenerates the entries. Parameters are added with
``+=`` and a leading blank, the form Omarchy's drop-ins use (etc/limine-entry-tool.d), so
they are safe whether the tool joins the values with a blank or without. With no
``KERNEL_CMDLINE`` at all the tool builds the line from elsewhere (/etc/kernel/cmdline), and
an added ``+=`` could drop ``root=``: that layout is refused.
"""
from __future__ import annotations

import re

from ansible_collections.exliar.vfio.plugins.module_utils import _kernel_params as kp
from ansible_collections.exliar.vfio.plugins.module_utils._bootloader_text import join as _join
from ansible_collections.exliar.vfio.plugins.module_utils._bootloader_text import lines as _lines
from ansible_collections.exliar.vfio.plugins.module_utils._bootloader_text import newline as _newline
from ansible_collections.exliar.vfio.plugins.module_utils._bootloader_text import reword
from ansible_collections.exliar.vfio.plugins.module_utils._cmdline import split_cmdline

DEFAULTS = "/etc/default/limine"
TOOL_LAYERS = ("/usr/share/limine-entry-tool.d/*.conf", "/etc/limine-entry-tool.conf", "/etc/limine-entry-tool.d/*.conf",
               DEFAULTS)
TOOL_COMMANDS = ("limine-update", "limine-mkinitcpio")
FALLBACK_RE = re.compile(r"fallback|recovery|rescue|single|emergency", re.I)
FALLBACK_WORDS = {"single", "s", "1", "emergency", "rescue", "systemd.unit=rescue.target", "systemd.unit=emergency.target"}
EFI_PROTOCOLS = ("efi", "uefi", "efi_chainload")
MAX_VALUE = 4095  # CONFIG.md: an option's value is truncated at 4095 characters
ASSIGN_RE = re.compile(r"^(?P<lead>[ \t]*)KERNEL_CMDLINE(?:\[(?P<key>[^\]]*)\])?(?P<op>\+?=)(?P<rest>.*)$")
MACRO_RE = re.compile(r"^\$\{(?P<name>[^}\n]*)\}=(?P<value>.*)$")
USE_RE = re.compile(r"\$\{([^}\n]*)\}")


class _Unparsable(ValueError):
    pass


class _Syntax:
    """limine.conf (8.x and later) or limine.cfg (7.x syntax; config.c ``config_format_old`` in 8.x)."""

    def __init__(self, legacy: bool):
        self.legacy = legacy
        self.marker = ":" if legacy else "/"
        self.option_re = re.compile(r"^(?P<key>[A-Za-z0-9_]+)=" if legacy else r"^(?P<key>[A-Za-z0-9_]+):[ \t]*")

    def key(self, name: str) -> str:
        """The key as Limine compares it: exact in limine.cfg, case-insensitive in limine.conf."""
        return name if self.legacy else name.upper()


def _esp(ctx) -> str:
    return (ctx.get("esp") or "/boot/efi").rstrip("/")


def _unique(paths) -> list:
    out = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out


def _candidates(ctx, ext: str) -> list:
    """Config paths in the order Limine tries them (CONFIG.md, trunk): the EFI application's
    directory, then /boot/limine, /boot, /limine and / on the ESP; then /boot of the root
    (BIOS installs, archboot). ``EFI/*`` stands for the application's directory."""
    esp = _esp(ctx)
    return _unique([f"{esp}/EFI/limine/limine.{ext}", f"{esp}/EFI/*/limine.{ext}", f"{esp}/EFI/BOOT/limine.{ext}",
                    f"{esp}/boot/limine/limine.{ext}", f"{esp}/boot/limine.{ext}", f"{esp}/limine/limine.{ext}",
                    f"{esp}/limine.{ext}", f"/boot/limine/limine.{ext}", f"/boot/limine.{ext}"])


def inputs(ctx) -> list:
    return [*_candidates(ctx, "conf"), *_candidates(ctx, "cfg"), *TOOL_LAYERS]


def outputs(ctx, files) -> list:
    return inputs(ctx)


def config_paths(files: dict, ctx) -> tuple:
    """(existing config files, primary first; legacy syntax?). limine.conf wins over limine.cfg
    (config.c ``init_config_disk`` in 8.x tries every .conf name first; 9.0.0 dropped .cfg)."""
    for ext, legacy in (("conf", False), ("cfg", True)):
        found = []
        cands = _candidates(ctx, ext)
        for cand in cands:
            if "*" in cand:  # other application directories (archinstall's EFI/arch-limine), before EFI/BOOT
                prefix = cand.split("*", 1)[0]
                found.extend(sorted(p for p in files if p.startswith(prefix) and p.endswith(f"/limine.{ext}")
                                    and p.count("/") == cand.count("/") and files[p] is not None and p not in cands))
            elif files.get(cand) is not None:
                found.append(cand)
        found = _unique(found)
        if found:
            return found, legacy
    return [], False


# ---------------------------------------------------------------------------------------------
# limine.conf / limine.cfg
# ---------------------------------------------------------------------------------------------

def parse(path: str, text: str, legacy: bool = False) -> dict:
    """``{"entries": [...], "globals": {KEY: value}, "macros": {name: value}}``. Each entry:
    ``title, depth, expanded, line, options {KEY: [(value, line, start, end)]}, children, parent``."""
    syntax = _Syntax(legacy)
    entries, stack, globals_, macros = [], [], {}, {}
    for i, (body, _end) in enumerate(_lines(text)):
        trimmed = body.strip(" \t\r")
        lead = len(body) - len(body.lstrip(" \t\r"))
        if not trimmed or trimmed.startswith("#"):
            continue
        macro = MACRO_RE.match(trimmed)
        if macro:
            macros[macro.group("name")] = macro.group("value")
            continue
        if trimmed.startswith(syntax.marker):
            depth = len(trimmed) - len(trimmed.lstrip(syntax.marker))
            rest = trimmed[depth:]
            expanded = rest.startswith("+")
            title = (rest[1:] if expanded else rest).lstrip(" ")
            parent_depth = stack[-1]["depth"] if stack else 0
            if depth > parent_depth + 1:
                raise _Unparsable(f"{path} line {i + 1}: entry {title!r} is {depth} levels deep right after an entry of "
                                  f"level {parent_depth} (Limine: 'Parentless child'); fix the '{syntax.marker}'s")
            while stack and stack[-1]["depth"] >= depth:
                stack.pop()
            node = {"title": title, "depth": depth, "expanded": expanded, "line": i, "options": {}, "children": [],
                    "parent": stack[-1] if stack else None}
            (stack[-1]["children"] if stack else entries).append(node)
            stack.append(node)
            continue
        m = syntax.option_re.match(trimmed)
        if not m:
            continue
        key = syntax.key(m.group("key"))
        start = lead + m.end()
        record = (trimmed[m.end():], i, start, lead + len(trimmed))
        if stack:
            stack[-1]["options"].setdefault(key, []).append(record)
        else:
            globals_.setdefault(key, record[0])  # config.c: the first occurrence, before the first entry
    for entry in walk(entries):  # config.c expands every macro before it builds the menu
        entry["title"] = expand(entry["title"], macros)
    return {"entries": entries, "globals": globals_, "macros": macros, "legacy": legacy}


def walk(entries: list):
    for e in entries:
        yield e
        yield from walk(e["children"])


def cmdline_record(entry: dict):
    """The option Limine passes: the first ``kernel_cmdline``, else the first ``cmdline`` (menu.c)."""
    for key in ("KERNEL_CMDLINE", "CMDLINE"):
        if entry["options"].get(key):
            return entry["options"][key][0]
    return None


def _first(entry: dict, key: str) -> str:
    values = entry["options"].get(key) or []
    return values[0][0] if values else ""


def expand(value: str, macros: dict) -> str:
    """User macros expanded; Limine's built-ins (ARCH, FW_TYPE, LOADER_ARCH) are kept as written."""
    return USE_RE.sub(lambda m: macros.get(m.group(1), m.group(0)), value)


def _in_snapshots(entry: dict) -> bool:
    node = entry
    while node is not None:
        if node["title"].strip().lower() == "snapshots" or "limine-snapper-sync" in " ".join(
                v[0] for values in node["options"].values() for v in values):
            return True
        node = node["parent"]
    return False


def _is_fallback(entry: dict, words: list) -> bool:
    return bool(FALLBACK_RE.search(entry["title"])) or any(w.lower() in FALLBACK_WORDS for w in words)


def boots_linux(entry: dict) -> bool:
    protocol = _first(entry, "PROTOCOL").strip().lower()
    return protocol == "linux" or (protocol in EFI_PROTOCOLS and cmdline_record(entry) is not None)


def _edit_config(path: str, text: str, entries: list, legacy: bool, warnings: list, efi_edited: list) -> tuple:
    """(new text, number of Linux entries found); the titles of edited EFI-protocol entries go to ``efi_edited``."""
    conf = parse(path, text, legacy)
    lines = _lines(text)
    found = 0
    for entry in walk(conf["entries"]):
        if entry["children"] or not boots_linux(entry) or _in_snapshots(entry):
            continue
        found += 1
        record = cmdline_record(entry)
        if record is None:
            warnings.append(f"{path} line {entry['line'] + 1}: entry {entry['title']!r} boots Linux without a cmdline; "
                            "add one by hand if the kernel needs parameters from Limine")
            continue
        value, line, start, end = record
        if value.endswith("\\"):
            raise _Unparsable(f"{path} line {line + 1}: the command line of {entry['title']!r} continues on the next line; "
                              "join it into one line")
        words = split_cmdline(value)
        own = {kp.norm(w.partition("=")[0]) for w in words}
        macro_names = {kp.norm(w.partition("=")[0]) for w in split_cmdline(expand(value, conf["macros"]))} - own
        hidden = [e["name"] for e in entries if kp.norm(e["name"]) in macro_names]
        if hidden:
            raise _Unparsable(f"{path} line {line + 1}: a macro in the command line of {entry['title']!r} sets "
                              f"{', '.join(hidden)}; edit the macro by hand or write the parameters out")
        new = kp.apply(words, entries, append=not _is_fallback(entry, words))
        if new == words:
            continue
        new_value = reword(value, new)
        if len(new_value) > MAX_VALUE:
            raise _Unparsable(f"{path} line {line + 1}: the command line would exceed Limine's {MAX_VALUE} characters")
        body = lines[line][0]
        lines[line][0] = body[:start] + new_value + body[end:]
        if _first(entry, "PROTOCOL").strip().lower() in EFI_PROTOCOLS:
            efi_edited.append(entry["title"])
    return _join(lines), found


# ---------------------------------------------------------------------------------------------
# limine-entry-tool: KERNEL_CMDLINE[...] in its configuration layers
# ---------------------------------------------------------------------------------------------

def _parse_value(rest: str) -> tuple:
    """(quote, value, value offset in ``rest``, end offset) of a plain shell-like value."""
    if rest[:1] in ('"', "'"):
        q = rest[0]
        end = rest.find(q, 1)
        if end < 0:
            raise _Unparsable("a quoted value that continues on the next line")
        value = rest[1:end]
        tail = rest[end + 1:]
        if q == '"' and any(c in value for c in "\\$`"):
            raise _Unparsable("an escape, variable or command substitution inside the value")
        start, stop = 1, end
    else:
        m = re.match(r"^([^\s#;&|'\"\\$`]*)", rest)
        value, tail, start = m.group(1), rest[m.end():], 0
        stop = m.end()
    if tail.strip() and not tail.strip().startswith("#"):
        raise _Unparsable(f"more after the value ({tail.strip()[:40]!r})")
    return rest[:1] if rest[:1] in ('"', "'") else "", value, start, stop


def tool_assignments(files: dict) -> list:
    """Every ``KERNEL_CMDLINE[...]`` assignment in the layers, in loading order:
    ``{path, line, key, op, quote, value, start, end}``."""
    paths = []
    for layer in TOOL_LAYERS:
        if "*" in layer:
            prefix = layer.split("*", 1)[0]
            paths.extend(sorted(p for p in files if p.startswith(prefix) and p.endswith(".conf") and "/" not in p[len(prefix):]))
        else:
            paths.append(layer)
    out = []
    for path in paths:
        text = files.get(path)
        if text is None:
            continue
        for i, (body, _end) in enumerate(_lines(text)):
            m = ASSIGN_RE.match(body)
            if not m:
                continue
            if m.group("key") is None:
                raise _Unparsable(f"{path} line {i + 1}: KERNEL_CMDLINE without an index; exliar.vfio edits "
                                  f"KERNEL_CMDLINE[default] only: write it that way")
            try:
                quote, value, start, stop = _parse_value(m.group("rest"))
            except _Unparsable as exc:
                raise _Unparsable(f"{path} line {i + 1}: KERNEL_CMDLINE has {exc}; simplify the line") from exc
            offset = m.start("rest")
            out.append({"path": path, "line": i, "key": m.group("key").strip("\"'"), "op": m.group("op"),
                        "quote": quote, "value": value, "start": offset + start, "end": offset + stop})
    return out


def tool_words(assigns: list, key: str) -> list:
    """The words of ``KERNEL_CMDLINE[key]`` after all layers (``=`` sets, ``+=`` appends)."""
    words: list = []
    for a in assigns:
        if a["key"] == key:
            words = split_cmdline(a["value"]) if a["op"] == "=" else words + split_cmdline(a["value"])
    return words


def live(assigns: list) -> list:
    """The assignments that reach the tool: for each key, from its last ``=`` on."""
    last_set = {a["key"]: n for n, a in enumerate(assigns) if a["op"] == "="}
    return [a for n, a in enumerate(assigns) if n >= last_set.get(a["key"], 0)]


def _set_value(lines: list, a: dict, value: str) -> None:
    """Write the value into its line (quoted when it was bare) and keep the record in step."""
    body = lines[a["line"]][0]
    if not a["quote"]:
        lines[a["line"]][0] = body[:a["start"]] + f'"{value}"' + body[a["end"]:]
        a["quote"], a["start"] = '"', a["start"] + 1
    else:
        lines[a["line"]][0] = body[:a["start"]] + value + body[a["end"]:]
    a["end"] = a["start"] + len(value)
    a["value"] = value


def _plan_tool(files: dict, entries: list, out: dict) -> None:
    assigns = tool_assignments(files)
    if not assigns:
        raise _Unparsable(f"no KERNEL_CMDLINE[...] in {DEFAULTS} or limine-entry-tool's other configuration files: the "
                          f"tool then takes the command line from elsewhere (/etc/kernel/cmdline), and an added line could "
                          f"lose root=; set KERNEL_CMDLINE[default] in {DEFAULTS} to the whole command line and run again")
    if not any(a["key"] == "default" for a in assigns):
        raise _Unparsable(f"no KERNEL_CMDLINE[default] in limine-entry-tool's configuration; set it in {DEFAULTS}")
    lines = _lines(files[DEFAULTS])
    for a in live(assigns):
        words = split_cmdline(a["value"])
        new = kp.apply(words, entries, append=False)
        if new == words:
            continue
        if a["path"] != DEFAULTS:
            if any(e["state"] == "absent" and not kp.satisfied(words, e) for e in entries):
                raise _Unparsable(f"{a['path']} line {a['line'] + 1} sets what is to be removed; exliar.vfio edits only "
                                  f"{DEFAULTS}: remove it from that file by hand")
            continue  # a stale value there: the value added to DEFAULTS comes later and wins
        _set_value(lines, a, reword(a["value"], new))
    todo = [e for e in entries if e["state"] == "present" and not kp.satisfied(tool_words(assigns, "default"), e)]
    if todo:
        mine = [a for a in assigns if a["path"] == DEFAULTS and a["key"] == "default"]
        if mine:
            a = mine[-1]
            value = reword(a["value"], kp.apply(split_cmdline(a["value"]), todo))
            _set_value(lines, a, value)
        else:
            if lines and not lines[-1][1]:
                lines[-1][1] = _newline(lines)
            lines.append([f'KERNEL_CMDLINE[default]+=" {" ".join(kp.word(e) for e in todo)}"', _newline(lines)])
    others = sorted({a["key"] for a in assigns} - {"default"})
    for key in others:
        if any(e["state"] == "present" and not kp.satisfied(tool_words(assigns, key), e) for e in entries):
            out["warnings"].append(f"KERNEL_CMDLINE[{key}] is set for that kernel: if it replaces [default], add the "
                                   f"parameters there too (exliar.vfio edits [default])")
    new_text = _join(lines)
    if new_text != files[DEFAULTS]:
        out["files"][DEFAULTS] = {"content": new_text, "mode": None}


def plan(files: dict, entries: list, ctx) -> dict:
    out = {"files": {}, "commands": [], "errors": [], "warnings": [], "config_path": None}
    configs, legacy = config_paths(files, ctx)
    tool = files.get(DEFAULTS) is not None
    if not configs and not tool:
        out["errors"].append("no limine.conf in the places Limine reads it (the ESP's EFI/<loader dir>, /boot/limine, "
                             "/boot, /limine, /) and no /etc/default/limine: this Limine layout is unknown, nothing was "
                             "changed (set vfio_bootloader to the bootloader really in use)")
        return out
    new_texts, found, efi_edited = {}, 0, []
    try:
        for path in configs:
            new_texts[path], count = _edit_config(path, files[path], entries, legacy, out["warnings"], efi_edited)
            found += count
        if configs and not found and not tool:
            raise _Unparsable(f"{configs[0]} has no Linux entry (protocol: linux, or an EFI entry with a cmdline)")
        if tool:
            _plan_tool(files, entries, out)
    except _Unparsable as exc:
        out["errors"].append(f"{exc}; nothing was changed")
        out["files"] = {}
        return out
    out["config_path"] = DEFAULTS if tool else configs[0]
    if not tool and files.get(TOOL_LAYERS[1]) is not None:
        out["warnings"].append(f"limine-entry-tool is installed ({TOOL_LAYERS[1]}) but {DEFAULTS} does not exist: the tool "
                               f"rewrites the entries at the next kernel update without these parameters; create {DEFAULTS} "
                               "with KERNEL_CMDLINE[default] holding the whole command line and run again")
    if len(configs) > 1:
        out["warnings"].append(f"several Limine configurations ({', '.join(configs)}): Limine reads only the first one it "
                               f"finds; all were edited")
    if efi_edited and not tool:
        out["warnings"].append(f"{', '.join(repr(t) for t in efi_edited)} boot an EFI image (a unified kernel image?): its "
                               "cmdline reaches the kernel only when the image has no built-in command line, and systemd-stub "
                               "ignores it under Secure Boot; rebuild the image with the parameters if it has one")
    if legacy:
        out["warnings"].append(f"{configs[0]} uses the Limine 7 syntax that Limine 9.0.0 stopped reading: convert it "
                               "to limine.conf before upgrading Limine past 8.x")
    changed = [p for p in configs if new_texts[p] != files[p]]
    for path in changed:
        out["files"][path] = {"content": new_texts[path], "mode": None}
    enrolled = tool and any(re.search(r"^\s*ENABLE_ENROLL_LIMINE_CONFIG=\"?yes", files.get(p) or "", re.M)
                            for p in (DEFAULTS, "/etc/limine-entry-tool.conf"))
    if changed and not enrolled:
        out["warnings"].append("if a checksum of the Limine configuration is enrolled in the Limine EFI binary "
                               "('limine enroll-config', needed with Secure Boot), enroll it again: Limine refuses a "
                               "changed file")
    if tool:
        tools = ctx.get("tools") or ()
        out["commands"] = [[next((t for t in TOOL_COMMANDS if t in tools), TOOL_COMMANDS[0])]]
    return out


# ---------------------------------------------------------------------------------------------
# Read-back: the default entry
# ---------------------------------------------------------------------------------------------

def _visible(entries: list) -> list:
    """Entries in menu order as menu.c ``print_tree`` counts them: a directory's children only
    when it is expanded."""
    out = []
    for e in entries:
        out.append(e)
        if e["children"] and e["expanded"]:
            out.extend(_visible(e["children"]))
    return out


def _path_components(spec: str) -> list:
    """``default_entry`` as a path (Limine 11.0.0+): ``/`` separates, ``\\`` escapes, a final
    ``#N`` picks the Nth duplicate (menu.c ``parse_path_component``)."""
    parts, name, i = [], [], 0
    while i <= len(spec):
        c = spec[i] if i < len(spec) else "/"
        if c == "\\" and i + 1 < len(spec):
            name.append(spec[i + 1])
            i += 2
            continue
        if c == "/":
            text = "".join(name)
            m = re.match(r"^(.*)#([0-9]+)$", text)
            parts.append((m.group(1), int(m.group(2))) if m else (text, 0))
            name = []
        else:
            name.append(c)
        i += 1
    return parts


def _find_path(entries: list, parts: list):
    level = entries
    for n, (name, dup) in enumerate(parts):
        same = [e for e in level if e["title"] == name]
        if dup >= len(same):
            return None
        node = same[dup]
        last = n == len(parts) - 1
        if last:
            return node if not node["children"] else None
        if not node["children"]:
            return None
        node["expanded"] = True
        level = node["children"]
    return None


def _title_path(entry: dict) -> str:
    titles = []
    node = entry
    while node is not None:
        titles.append(node["title"])
        node = node["parent"]
    return " > ".join(reversed(titles))


def next_boot(files: dict, ctx) -> dict:
    out = {"cmdline": None, "source": None, "entries": [], "errors": [], "warnings": []}
    configs, legacy = config_paths(files, ctx)
    if not configs:
        out["errors"].append("no limine.conf found where Limine reads it")
        return out
    path = configs[0]
    try:
        conf = parse(path, files[path], legacy)
    except _Unparsable as exc:
        out["errors"].append(str(exc))
        return out
    for macro_name in ("ARCH", "FW_TYPE", "LOADER_ARCH"):
        conf["macros"].pop(macro_name, None)
    for entry in walk(conf["entries"]):
        record = cmdline_record(entry)
        if not entry["children"] and record is not None:
            entry["cmdline"] = expand(record[0], conf["macros"])
            out["entries"].append({"title": _title_path(entry), "cmdline": entry["cmdline"], "source": path})
    if not out["entries"]:
        out["errors"].append(f"{path} has no entry with a command line")
        return out
    key = "DEFAULT_ENTRY"
    spec = (conf["globals"].get(key) or "1").strip()
    chosen = None
    if spec.isdigit():
        visible = _visible(conf["entries"])
        index = max(int(spec) - 1, 0)
        chosen = visible[index if index < len(visible) else 0] if visible else None
    else:
        chosen = _find_path(conf["entries"], _path_components(spec))
        if chosen is None:
            out["warnings"].append(f"{path}: default_entry {spec!r} names no entry; Limine selects the first one")
            visible = _visible(conf["entries"])
            chosen = visible[0] if visible else None
    if (conf["globals"].get("REMEMBER_LAST_ENTRY") or "").strip().lower() == "yes":
        out["warnings"].append(f"{path}: remember_last_entry is on; Limine boots the entry booted last, the "
                               "default entry is reported")
    if chosen is None or chosen["children"] or chosen.get("cmdline") is None:
        title = chosen["title"] if chosen else spec
        out["warnings"].append(f"{path}: the default entry {title!r} is a directory or has no command line (Limine then "
                               "waits in its menu); the first entry with a command line is reported")
        chosen = next(e for e in walk(conf["entries"]) if e.get("cmdline") is not None)
    out["cmdline"], out["source"] = chosen["cmdline"], path
    out["default"] = _title_path(chosen)
    return out
