# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""GRUB 2 with a generated grub.cfg (Debian, Ubuntu, Arch, openSUSE, older Fedora/RHEL).

grub-mkconfig sources ``/etc/default/grub`` and then, on Debian, Ubuntu and Arch, every
``/etc/default/grub.d/*.cfg`` in order (Debian's "default-grub-d" patch, Arch's
0003-support-dropins-for-default-configuration.patch): a drop-in that assigns
``GRUB_CMDLINE_LINUX_DEFAULT`` (Ubuntu cloud images' ``50-cloudimg-settings.cfg``) overrides the
main file, so the edit goes where the value really comes from. 10_linux gives normal entries
``GRUB_CMDLINE_LINUX GRUB_CMDLINE_LINUX_DEFAULT`` and recovery entries only
``GRUB_CMDLINE_LINUX``: parameters are added to ``_DEFAULT`` (recovery mode keeps booting without
them), removed and replaced wherever they are.

The file the firmware reads: on UEFI the ESP's ``EFI/<id>/grub.cfg`` is usually a stub that
``configfile``s ``/boot/grub{,2}/grub.cfg``; when it has menu entries itself (Fedora before 34,
RHEL 8 on UEFI) it is the real one and grub2-mkconfig must write it.
"""
from __future__ import annotations

import re

from ansible_collections.exliar.vfio.plugins.module_utils import _kernel_params as kp

MAIN = "/etc/default/grub"
DROPINS = "/etc/default/grub.d/*.cfg"
CONFIGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
LINUX = "GRUB_CMDLINE_LINUX"
DEFAULT = "GRUB_CMDLINE_LINUX_DEFAULT"
ASSIGN_RE = re.compile(r"^(?P<lead>\s*(?:export\s+)?)(?P<var>GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=(?P<rest>.*)$")
# Any other shell that sets or clears the two variables: appends, conditional or chained assignments, unset.
MENTION_RE = re.compile(r"\bGRUB_CMDLINE_LINUX(?:_DEFAULT)?\+?=|\bunset\b.*\bGRUB_CMDLINE_LINUX")
OPENERS, CLOSERS = {"if", "case", "for", "while", "until", "{"}, {"fi", "esac", "done", "}"}
FORCE_PARTUUID_RE = re.compile(r"""^\s*(?:export\s+)?GRUB_FORCE_PARTUUID=["']?([^"'\s#]*)""")
LINUX_CMDS = ("linux", "linuxefi", "linux16")
# The ESP directory of each distribution's GRUB (grub-install --bootloader-id, or the shim package).
ESP_IDS = {"rhel": ("redhat",), "ol": ("redhat",), "scientific": ("redhat",), "centos": ("centos",),
           "opensuse-leap": ("opensuse",), "opensuse-tumbleweed": ("opensuse",), "sles": ("sles",)}


class _Unparsable(Exception):
    pass


def _esp_dir(ctx) -> str:
    return f"{(ctx.get('esp') or '/boot/efi').rstrip('/')}/EFI/"


def _esp_stubs(ctx) -> str:
    return f"{_esp_dir(ctx)}*/grub.cfg"


def inputs(ctx) -> list:
    return [MAIN, DROPINS, *CONFIGS, _esp_stubs(ctx), f"{_esp_dir(ctx)}*/grubenv", "/boot/grub/grubenv", "/boot/grub2/grubenv"]


def outputs(ctx, files) -> list:
    real = real_config(files, ctx)
    return list(dict.fromkeys([real, _env_path(real), "/boot/grub/grubenv", "/boot/grub2/grubenv"]))


def _parse_value(rest: str) -> tuple:
    """(quote, value, trailing) of the right-hand side of a shell assignment on one line."""
    if rest[:1] in ('"', "'"):
        q = rest[0]
        i, n = 1, len(rest)
        while i < n:
            if rest[i] == "\\" and q == '"':
                raise _Unparsable("a backslash escape")
            if rest[i] == q:
                break
            i += 1
        else:
            raise _Unparsable("a quoted value that continues on the next line")
        value, trailing = rest[1:i], rest[i + 1:]
    else:
        m = re.match(r"^([^\s#;&|]*)(.*)$", rest)
        q, value, trailing = "", m.group(1), m.group(2)
    if "`" in value or "$(" in value or (q == "" and any(c in value for c in "\"'\\")):
        raise _Unparsable("a command substitution or quoting inside the value")
    if trailing.strip() and not trailing.strip().startswith("#"):
        raise _Unparsable(f"more shell after the value ({trailing.strip()[:40]!r})")
    return q, value, trailing


def _code(line: str) -> str:
    """The shell words of a line without comments and without the text inside quotes."""
    out, q = [], ""
    for i, c in enumerate(line):
        if q:
            if c == q:
                q = ""
            continue
        if c in "'\"`":
            q = c
            out.append(" ")
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            break
        else:
            out.append(c)
    return "".join(out)


def _depth_change(code: str) -> int:
    words = re.findall(r"[A-Za-z_]+|[{}]", code.replace(";", " ; "))
    return sum(1 for w in words if w in OPENERS) - sum(1 for w in words if w in CLOSERS)


def _check_words(a: dict) -> None:
    """Words that expand other shell variables cannot be edited safely (their value is unknown here)."""
    if a["quote"] == "'":
        return
    for w in a["words"]:
        if "$" in w and w not in (f"${a['var']}", f"${{{a['var']}}}"):
            raise _Unparsable(f"the expansion {w!r} (only ${a['var']} itself is understood)")


def _sourced(files: dict) -> list:
    """The files grub-mkconfig sources, in order: the main file, then the drop-ins (Debian, Ubuntu, Arch)."""
    return [MAIN] + sorted(p for p in files if p.startswith("/etc/default/grub.d/") and p.endswith(".cfg"))


def assignments(files: dict) -> list:
    """Every assignment of the two variables in sourcing order: ``{path, line, var, quote, words, lead, trailing}``."""
    out = []
    for path in _sourced(files):
        text = files.get(path)
        if text is None:
            continue
        depth = 0
        for i, line in enumerate(text.split("\n")):
            code = _code(line)
            m = ASSIGN_RE.match(line)
            try:
                if m and depth > 0:
                    raise _Unparsable("an assignment inside an if, case, loop or function block")
                if not m and MENTION_RE.search(code):
                    raise _Unparsable(f"shell that is not a plain assignment ({line.strip()[:60]!r})")
                depth += _depth_change(code)
                if not m:
                    continue
                q, value, trailing = _parse_value(m.group("rest"))
                a = {"path": path, "line": i, "var": m.group("var"), "quote": q, "words": value.split(),
                     "lead": m.group("lead"), "trailing": trailing}
                _check_words(a)
            except _Unparsable as exc:
                var = m.group("var") if m else "GRUB_CMDLINE_LINUX"
                raise ValueError(f"{path} line {i + 1}: {var} has {exc}; exliar.vfio edits only plain "
                                 f"assignments (VAR=\"words\"): simplify the line, or set vfio_bootloader_stage: false") from exc
            out.append(a)
    return out


def _self_ref(a: dict) -> bool:
    return a["quote"] != "'" and any(w in (f"${a['var']}", f"${{{a['var']}}}") for w in a["words"])


def live(assigns: list, var: str) -> list:
    """The assignments of ``var`` whose words reach grub-mkconfig: from the last one that does not
    build on the previous value."""
    mine = [a for a in assigns if a["var"] == var]
    start = 0
    for i, a in enumerate(mine):
        if not _self_ref(a):
            start = i
    return mine[start:]


def effective(assigns: list, var: str) -> list:
    words: list = []
    for a in live(assigns, var):
        new = []
        for w in a["words"]:
            new.extend(words if w in (f"${var}", f"${{{var}}}") and a["quote"] != "'" else [w])
        words = new
    return words


def _esp_ids(ctx) -> tuple:
    dist = (ctx.get("distribution") or "").lower()
    return ESP_IDS.get(dist, (dist,)) if dist else ()


def _full_configs(files: dict, ctx) -> list:
    """grub.cfg files on the ESP that are whole configurations, not stubs that load /boot/grub*/grub.cfg."""
    stub_dir = _esp_dir(ctx)
    return sorted(p for p, t in files.items() if p.startswith(stub_dir) and p.endswith("/grub.cfg")
                  and t and ("menuentry" in t or "blscfg" in t))


def real_config(files: dict, ctx) -> str:
    """The grub.cfg the firmware's GRUB reads (see the module docstring). A whole configuration on
    the ESP counts only in this distribution's own directory: another system's (dual boot) is never
    regenerated from this one."""
    full = _full_configs(files, ctx)
    for ident in _esp_ids(ctx):
        path = f"{_esp_dir(ctx)}{ident}/grub.cfg"
        if path in full:
            return path
    prefer = ("/boot/grub2/grub.cfg", "/boot/grub/grub.cfg") if "grub2-mkconfig" in (ctx.get("tools") or ()) \
        else ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
    for path in prefer:
        if files.get(path) is not None:
            return path
    return prefer[0]


def _env_path(real: str) -> str:
    """GRUB loads the environment block next to the configuration it reads (``$prefix/grubenv``)."""
    return real.rsplit("/", 1)[0] + "/grubenv"


def _render(a: dict, words: list) -> str:
    q = a["quote"] or '"'
    return f"{a['lead']}{a['var']}={q}{' '.join(words)}{q}{a['trailing']}"


def plan(files: dict, entries: list, ctx) -> dict:
    out = {"files": {}, "commands": [], "errors": [], "warnings": [], "config_path": MAIN}
    if files.get(MAIN) is None:
        out["errors"].append(f"{MAIN} does not exist: this GRUB layout is unknown, nothing was changed "
                             f"(create it, or set vfio_bootloader to the bootloader really in use)")
        return out
    real = real_config(files, ctx)
    foreign = [p for p in _full_configs(files, ctx) if p != real]
    if foreign:
        out["warnings"].append(f"{', '.join(foreign)} on the ESP belongs to another system or an old installation: "
                               f"it is left alone; this system's GRUB reads {real}")
    if "blscfg" in (files.get(real) or ""):
        out["errors"].append(f"{real} reads Boot Loader Specification entries (blscfg): the command line lives in "
                             f"/boot/loader/entries/*.conf; use bootloader grubby")
        return out
    try:
        assigns = assignments(files)
    except ValueError as exc:
        out["errors"].append(str(exc))
        return out
    forced = [m.group(1) for p in _sourced(files) for m in map(FORCE_PARTUUID_RE.match, (files.get(p) or "").split("\n"))
              if m and m.group(1)]
    if forced:
        out["warnings"].append("GRUB_FORCE_PARTUUID is set (Ubuntu cloud images' 40-force-partuuid.cfg): GRUB first boots the "
                               "kernel without the initramfs, so drivers the initramfs would load early (vfio-pci) load later; "
                               "remove that file to boot with the initramfs")
    lines = {p: files[p].split("\n") for p in {a["path"] for a in assigns}}
    lines.setdefault(MAIN, files[MAIN].split("\n"))
    # 1. replace and remove in place, wherever the words reach grub-mkconfig
    for var in (LINUX, DEFAULT):
        for a in live(assigns, var):
            words = kp.apply(a["words"], entries, append=False)
            if words != a["words"]:
                a["words"] = words
                lines[a["path"]][a["line"]] = _render(a, words)
    # 2. add what the combined command line still lacks to the last live GRUB_CMDLINE_LINUX_DEFAULT
    combined = effective(assigns, LINUX) + effective(assigns, DEFAULT)
    todo = [e for e in entries if e["state"] == "present" and not kp.satisfied(combined, e)]
    if todo:
        target = (live(assigns, DEFAULT) or [None])[-1]
        if target is None:
            text = lines[MAIN]
            if text and text[-1] == "":
                text.insert(len(text) - 1, f'{DEFAULT}="{" ".join(kp.word(e) for e in todo)}"')
            else:
                text.append(f'{DEFAULT}="{" ".join(kp.word(e) for e in todo)}"')
        else:
            target["words"] = kp.apply(target["words"], todo)
            lines[target["path"]][target["line"]] = _render(target, target["words"])
            out["config_path"] = target["path"]
    for path, text in lines.items():
        new = "\n".join(text)
        if new != files.get(path):
            out["files"][path] = {"content": new, "mode": None}
    out["commands"] = [_mkconfig(ctx, real)]
    out["generated"] = real
    return out


def _mkconfig(ctx, real: str) -> list:
    tools = ctx.get("tools") or ()
    if "update-grub" in tools and real == "/boot/grub/grub.cfg":
        return ["update-grub"]
    if "grub2-mkconfig" in tools:
        return ["grub2-mkconfig", "-o", real]
    return ["grub-mkconfig", "-o", real]


# ---------------------------------------------------------------------------------------------
# Read-back: the entries of a generated grub.cfg and the default one
# ---------------------------------------------------------------------------------------------

_ENTRY_RE = re.compile(r"^\s*(menuentry|submenu)\s+(.*?)\{\s*$")


def _grub_words(text: str) -> list:
    """Words of a GRUB script line: '...' literal, "..." with backslash escapes, \\x outside quotes
    (grub-mkconfig quotes titles as 'it'\\''s')."""
    words, cur, started, i, n = [], [], False, 0, len(text)
    while i < n:
        c = text[i]
        if c == "'":
            j = text.find("'", i + 1)
            j = n if j < 0 else j
            cur.append(text[i + 1:j])
            started, i = True, j + 1
            continue
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                cur.append(text[i])
                i += 1
            started, i = True, i + 1
            continue
        if c == "\\" and i + 1 < n:
            cur.append(text[i + 1])
            started, i = True, i + 2
            continue
        if c.isspace():
            if started:
                words.append("".join(cur))
            cur, started = [], False
        else:
            cur.append(c)
            started = True
        i += 1
    if started:
        words.append("".join(cur))
    return words


def _entry_id(args: list):
    for i, w in enumerate(args):
        if w in ("$menuentry_id_option", "${menuentry_id_option}", "--id") and i + 1 < len(args):
            return args[i + 1]
        if w.startswith("--id="):
            return w[5:]
    return None


def parse_menu(text: str) -> list:
    """Menu entries as a tree: ``[{"kind", "title", "id", "cmdline", "kernel", "children"}]``. An
    entry with several linux lines (Ubuntu's GRUB_FORCE_PARTUUID if/else) keeps the last one: the
    branch GRUB takes unless the previous boot failed."""
    top: list = []
    stack: list = []
    for raw in (text or "").split("\n"):
        line = raw.strip()
        m = _ENTRY_RE.match(raw)
        words = _grub_words(m.group(2)) if m else []
        if m and words:
            node = {"kind": m.group(1), "title": words[0], "id": _entry_id(words[1:]),
                    "cmdline": None, "kernel": None, "children": []}
            (stack[-1]["children"] if stack else top).append(node)
            stack.append(node)
            continue
        if not stack:
            continue
        if line == "}":
            stack.pop()
            continue
        parts = line.split()
        if parts and parts[0] in LINUX_CMDS and len(parts) >= 2 and stack[-1]["kind"] == "menuentry":
            stack[-1]["kernel"] = parts[1]
            stack[-1]["cmdline"] = " ".join(parts[2:])
        # braces of if/fi blocks inside entries do not open lines ending with '{' here
    return top


def _default_spec(text: str, env: dict) -> str:
    """The default GRUB boots next: a one-time ``next_entry`` (grub-reboot) first, then ``set default``."""
    if env.get("next_entry"):
        return env["next_entry"]
    spec = "0"
    for raw in (text or "").split("\n"):
        m = re.match(r"""^\s*set\s+default=["']?([^"']*)["']?\s*$""", raw)
        if m and m.group(1) not in ("${next_entry}", "$next_entry"):
            spec = m.group(1)
    if spec in ("${saved_entry}", "$saved_entry"):
        spec = env.get("saved_entry") or "0"
    return spec


def _find(nodes: list, spec: str):
    """GRUB's default lookup: an index, a title or an id, with '>' between submenu levels."""
    part, _sep, rest = spec.partition(">")
    part = part.strip()
    if part.isdigit():
        pick = nodes[int(part)] if int(part) < len(nodes) else None
    else:
        pick = next((n for n in nodes if part in (n["title"], n["id"])), None)
    if pick is None:
        return None
    if rest:
        return _find(pick["children"], rest) if pick["kind"] == "submenu" else None
    while pick["kind"] == "submenu" and pick["children"]:
        pick = pick["children"][0]
    return pick


def _flatten(nodes: list, trail=()) -> list:
    out = []
    for n in nodes:
        if n["kind"] == "submenu":
            out.extend(_flatten(n["children"], trail + (n["title"],)))
        elif n["cmdline"] is not None:
            out.append({"title": " > ".join(trail + (n["title"],)), "cmdline": n["cmdline"], "kernel": n["kernel"]})
    return out


def grubenv(text: str) -> dict:
    env = {}
    for line in (text or "").split("\n"):
        if line and not line.startswith("#") and "=" in line:
            k, _sep, v = line.partition("=")
            env[k] = v
    return env


def next_boot(files: dict, ctx) -> dict:
    real = real_config(files, ctx)
    text = files.get(real)
    out = {"cmdline": None, "source": real, "entries": [], "errors": [], "warnings": []}
    if not text:
        out["errors"].append(f"{real} does not exist or is empty")
        return out
    menu = parse_menu(text)
    out["entries"] = [dict(e, source=real) for e in _flatten(menu)]
    if not out["entries"]:
        out["errors"].append(f"{real} has no menu entry with a linux line")
        return out
    env_text = files.get(_env_path(real))
    if env_text is None and real.startswith(_esp_dir(ctx)):
        env_text = files.get("/boot/grub2/grubenv")          # RHEL 7: a symlink to the ESP's grubenv
    spec = _default_spec(text, grubenv(env_text))
    out["default"] = spec
    chosen = _find(menu, spec)
    if chosen is None:
        out["warnings"].append(f"GRUB's default {spec!r} matches no entry: GRUB boots the first one")
        chosen = _find(menu, "0")
    if chosen is None or chosen["cmdline"] is None:
        title = chosen["title"] if chosen else spec
        out["errors"].append(f"the entry GRUB boots by default ({title!r}) starts no Linux kernel from this system")
        return out
    out["cmdline"] = chosen["cmdline"]
    out["title"] = chosen["title"]
    return out
