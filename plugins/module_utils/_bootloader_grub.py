# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""GRUB 2 with a generated grub.cfg (Debian, Ubuntu, Arch, openSUSE, older Fedora/RHEL).

grub-mkconfig sources ``/etc/default/grub`` and then, on Debian and Ubuntu, every
``/etc/default/grub.d/*.cfg`` in order (Debian's "default-grub-d" patch): a drop-in that assigns
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
LINUX_CMDS = ("linux", "linuxefi", "linux16")


class _Unparsable(Exception):
    pass


def _esp_stubs(ctx) -> str:
    return f"{(ctx.get('esp') or '/boot/efi').rstrip('/')}/EFI/*/grub.cfg"


def inputs(ctx) -> list:
    return [MAIN, DROPINS, *CONFIGS, _esp_stubs(ctx), "/boot/grub/grubenv", "/boot/grub2/grubenv"]


def outputs(ctx, files) -> list:
    return [real_config(files, ctx), "/boot/grub/grubenv", "/boot/grub2/grubenv"]


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
    if trailing.strip() and not trailing.strip().startswith("#"):
        raise _Unparsable(f"more shell after the value ({trailing.strip()[:40]!r})")
    if "`" in value or "$(" in value or (q == "" and any(c in value for c in "\"'\\")):
        raise _Unparsable("a command substitution or quoting inside the value")
    return q, value, trailing


def assignments(files: dict) -> list:
    """Every assignment of the two variables in sourcing order: ``{path, line, var, quote, words, lead, trailing}``."""
    out = []
    paths = [MAIN] + sorted(p for p in files if p.startswith("/etc/default/grub.d/") and p.endswith(".cfg"))
    for path in paths:
        text = files.get(path)
        if text is None:
            continue
        for i, line in enumerate(text.split("\n")):
            m = ASSIGN_RE.match(line)
            if not m:
                continue
            try:
                q, value, trailing = _parse_value(m.group("rest"))
            except _Unparsable as exc:
                raise ValueError(f"{path} line {i + 1}: {m.group('var')} has {exc}; exliar.vfio edits only plain "
                                 f"assignments (VAR=\"words\"): simplify the line, or set vfio_bootloader_stage: false") from exc
            out.append({"path": path, "line": i, "var": m.group("var"), "quote": q, "words": value.split(),
                        "lead": m.group("lead"), "trailing": trailing})
    return out


def _self_ref(a: dict) -> bool:
    return any(w in (f"${a['var']}", f"${{{a['var']}}}") for w in a["words"])


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
            new.extend(words if w in (f"${var}", f"${{{var}}}") else [w])
        words = new
    return words


def real_config(files: dict, ctx) -> str:
    """The grub.cfg the firmware's GRUB reads (see the module docstring)."""
    stub_dir = f"{(ctx.get('esp') or '/boot/efi').rstrip('/')}/EFI/"
    full = sorted(p for p, t in files.items() if p.startswith(stub_dir) and p.endswith("/grub.cfg")
                  and t and ("menuentry" in t or "blscfg" in t))
    if full:
        dist = f"{stub_dir}{ctx.get('distribution') or ''}/grub.cfg"
        return dist if dist in full else full[0]
    for path in ("/boot/grub2/grub.cfg", "/boot/grub/grub.cfg"):
        if files.get(path) is not None:
            return path
    return "/boot/grub2/grub.cfg" if "grub2-mkconfig" in (ctx.get("tools") or ()) else "/boot/grub/grub.cfg"


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
    if "blscfg" in (files.get(real) or ""):
        out["errors"].append(f"{real} reads Boot Loader Specification entries (blscfg): the command line lives in "
                             f"/boot/loader/entries/*.conf; use bootloader grubby")
        return out
    try:
        assigns = assignments(files)
    except ValueError as exc:
        out["errors"].append(str(exc))
        return out
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

_TITLE_RE = re.compile(r"""^\s*(menuentry|submenu)\s+(?:'([^']*)'|"([^"]*)"|(\S+))(.*)\{\s*$""")
_ID_RE = re.compile(r"""\$menuentry_id_option\s+'([^']*)'|--id[= ]'?([^'\s]+)'?""")


def parse_menu(text: str) -> list:
    """Menu entries as a tree: ``[{"kind", "title", "id", "cmdline", "kernel", "children"}]``."""
    top: list = []
    stack: list = []
    for raw in (text or "").split("\n"):
        line = raw.strip()
        m = _TITLE_RE.match(raw)
        if m:
            title = m.group(2) if m.group(2) is not None else (m.group(3) if m.group(3) is not None else m.group(4))
            idm = _ID_RE.search(m.group(5) or "")
            node = {"kind": m.group(1), "title": title, "id": (idm.group(1) or idm.group(2)) if idm else None,
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
    pick = None
    if part.isdigit():
        pick = nodes[int(part)] if int(part) < len(nodes) else None
    else:
        pick = next((n for n in nodes if part in (n["title"], n["id"])), None)
    if pick is None:
        return None
    if rest:
        return _find(pick["children"], rest)
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
    out = {"cmdline": None, "source": real, "entries": [], "errors": []}
    if not text:
        out["errors"].append(f"{real} does not exist or is empty")
        return out
    menu = parse_menu(text)
    out["entries"] = [dict(e, source=real) for e in _flatten(menu)]
    if not out["entries"]:
        out["errors"].append(f"{real} has no menu entry with a linux line")
        return out
    env = grubenv(files.get("/boot/grub2/grubenv" if real.startswith("/boot/grub2") else "/boot/grub/grubenv"))
    spec = _default_spec(text, env)
    chosen = _find(menu, spec)
    if chosen is None or chosen["cmdline"] is None:
        out["warnings"] = [f"GRUB's default {spec!r} matches no entry: GRUB boots the first one"]
        chosen = next((n for n in _walk(menu) if n["cmdline"] is not None), None)
    out["cmdline"] = chosen["cmdline"] if chosen else None
    out["default"] = spec
    return out


def _walk(nodes: list):
    for n in nodes:
        yield n
        yield from _walk(n["children"])
