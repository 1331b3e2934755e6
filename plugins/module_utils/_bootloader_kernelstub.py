# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pop!_OS kernelstub, which writes the systemd-boot entries.

kernelstub keeps the options in ``/etc/kernelstub/configuration``, JSON written by
``json.dump(config, f, indent=2)`` (kernelstub/config.py ``save_config``). Each run writes the
``user`` section's ``kernel_options`` into ``<esp>/loader/entries/<OS>-current.conf`` and
``<OS>-oldkern.conf`` as ``options root=UUID=<root> ro <kernel_options>`` (application.py
builds ``kopts``; installer.py ``make_loader_entry``). ``kernelstub -a`` and ``-d`` edit that
list. Here ``_kernel_params.apply`` edits the same list. ``-d`` reorders the list because it
goes through a set; ``apply`` keeps the order.

kernelstub is then run the way the kernel hooks run it (data/kernel/zz-kernelstub:
``kernelstub --preserve-live-mode``). The existing entries' ``options`` lines are edited as
well, so the next boot and the read-back are right even when kernelstub cannot run in the
root. ``<esp>/EFI/<OS>-<root UUID>/cmdline`` is left alone: it is a copy of the running
``/proc/cmdline`` (installer.py ``copy_cmdline``) and nothing reads it at boot. Entries that
kernelstub did not write are never touched, such as the installer's ``Recovery-*.conf``
(pop-os/distinst, chroot_conf.rs).
"""
from __future__ import annotations

import fnmatch
import json
import re

from ansible_collections.exliar.vfio.plugins.module_utils import _kernel_params as kp
from ansible_collections.exliar.vfio.plugins.module_utils._bootloader_text import join as _join
from ansible_collections.exliar.vfio.plugins.module_utils._bootloader_text import lines as _lines
from ansible_collections.exliar.vfio.plugins.module_utils._bootloader_text import reword
from ansible_collections.exliar.vfio.plugins.module_utils._cmdline import split_cmdline

CONFIG = "/etc/kernelstub/configuration"
COMMAND = ["kernelstub", "--preserve-live-mode"]
# installer.py names the entries '<OS name>-current' and '<OS name>-oldkern'.
ENTRY_RE = re.compile(r"^(?P<os>[^/]+)-(?P<kind>current|oldkern)\.conf$")
OPTIONS_RE = re.compile(r"^(?P<lead>[ \t]*options[ \t]+)(?P<value>.*?)(?P<trail>[ \t]*)$")
KEY_RE = re.compile(r"^[ \t]*(?P<key>[a-z_-]+)(?:[ \t]+(?P<value>.*?))?[ \t]*$")
_WS = " \t\r\n"


class _Unparsable(ValueError):
    pass


def _esp(ctx) -> str:
    return (ctx.get("esp") or "/boot/efi").rstrip("/")


def inputs(ctx) -> list:
    esp = _esp(ctx)
    return [CONFIG, f"{esp}/loader/loader.conf", f"{esp}/loader/entries/*.conf"]


def outputs(ctx, files) -> list:
    return inputs(ctx)


# ---------------------------------------------------------------------------------------------
# /etc/kernelstub/configuration: the span of user.kernel_options, so the rest stays byte for byte
# ---------------------------------------------------------------------------------------------

def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _members(text: str, start: int) -> dict:
    """``{key: (key_start, value_start, value_end)}`` of the JSON object opening at ``text[start]``
    (the last one of a repeated key, as ``json.load`` keeps it)."""
    decoder = json.JSONDecoder()
    out: dict = {}
    i = _skip(text, start + 1)
    if text[i:i + 1] == "}":
        return out
    while True:
        if text[i:i + 1] != '"':
            raise _Unparsable(f"a key expected at character {i}")
        key, end = json.decoder.scanstring(text, i + 1)
        j = _skip(text, end)
        if text[j:j + 1] != ":":
            raise _Unparsable(f"':' expected at character {j}")
        vstart = _skip(text, j + 1)
        vend = decoder.raw_decode(text, vstart)[1]
        out[key] = (i, vstart, vend)
        i = _skip(text, vend)
        if text[i:i + 1] == ",":
            i = _skip(text, i + 1)
            continue
        if text[i:i + 1] == "}":
            return out
        raise _Unparsable(f"',' or '}}' expected at character {i}")


def _indent_before(text: str, pos: int) -> str:
    line_start = text.rfind("\n", 0, pos) + 1
    lead = text[line_start:pos]
    return lead if not lead.strip() else ""


def _render_list(text: str, spans: dict, items: list) -> str:
    """The new ``kernel_options`` array in the file's own layout (json.dump indent=2 in kernelstub)."""
    _key, vstart, vend = spans["kernel_options"]
    old = text[vstart:vend]
    if not items:
        return "[]"
    nl = "\r\n" if "\r\n" in text else "\n"
    if "\n" in old:
        first = re.search(r"\n([ \t]*)\S", old)
        close = re.search(r"\n([ \t]*)\]\Z", old)
        item_indent = first.group(1) if first else ""
        close_indent = close.group(1) if close else _indent_before(text, spans["kernel_options"][0])
    else:
        key_indent = _indent_before(text, spans["kernel_options"][0])
        unit = _indent_before(text, spans["user"][0])
        if old != "[]" or not key_indent or not unit:
            return json.dumps(items)
        item_indent, close_indent = key_indent + unit, key_indent
    body = ("," + nl).join(item_indent + json.dumps(item) for item in items)
    return "[" + nl + body + nl + close_indent + "]"


def _edit_config(text: str, entries: list) -> tuple:
    """(new text, old options list, user section) of the configuration."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise _Unparsable(f"is not valid JSON ({exc}); kernelstub cannot read it either: fix it, or remove it "
                          f"and run 'kernelstub' to write it anew") from exc
    if not isinstance(data, dict):
        raise _Unparsable("is not a JSON object")
    if not isinstance(data.get("user"), dict):
        raise _Unparsable("has no 'user' section: run 'kernelstub' once, it copies the 'default' section there "
                          "(kernelstub/config.py load_config)")
    user = data["user"]
    options = user.get("kernel_options")
    start = _skip(text, 0)
    top = _members(text, start)
    spans = _members(text, top["user"][1])
    spans["user"] = top["user"]
    if isinstance(options, str):
        # config_rev < 3 kept the options as one string; kernelstub splits it on blanks (config.py)
        new_value = kp.edit(options, entries)
        if new_value == options:
            return text, options.split(), user
        new = json.dumps(new_value)
    elif isinstance(options, list) and all(isinstance(o, str) for o in options):
        words = kp.apply(options, entries)
        if words == options:
            return text, list(options), user
        new = _render_list(text, spans, words)
    else:
        raise _Unparsable("has no list of strings in user.kernel_options: kernelstub stops on it "
                          "('Malformed configuration', application.py); fix the file")
    _key, vstart, vend = spans["kernel_options"]
    out = text[:vstart] + new + text[vend:]
    check = json.loads(out)
    expected = dict(data, user=dict(user, kernel_options=json.loads(new)))
    if check != expected:  # pragma: no cover - a safety net for the span edit
        raise _Unparsable("could not be edited in place")
    return out, options.split() if isinstance(options, str) else list(options), user


# ---------------------------------------------------------------------------------------------
# The loader entries kernelstub writes
# ---------------------------------------------------------------------------------------------

def _values(text: str, key: str) -> list:
    out = []
    for body, _end in _lines(text):
        m = KEY_RE.match(body)
        if m and m.group("key") == key:
            out.append(m.group("value") or "")
    return out


def kernelstub_entries(files: dict, esp: str) -> list:
    """The entries kernelstub wrote: ``<OS>-current.conf``/``<OS>-oldkern.conf`` booting
    ``/EFI/<OS>-<root UUID>/`` (installer.py ``setup_kernel``, ``backup_old``)."""
    prefix = f"{esp}/loader/entries/"
    out = []
    for path in sorted(files):
        if not path.startswith(prefix) or files[path] is None:
            continue
        m = ENTRY_RE.match(path[len(prefix):])
        if m and any(v.startswith(f"/EFI/{m.group('os')}-") for v in _values(files[path], "linux")):
            out.append(path)
    return out


def _edit_entry(text: str, entries: list) -> str:
    """The entry with its ``options`` lines edited: replaced and removed in place on every line,
    what is still missing added to the last one (systemd-boot joins all ``options`` lines)."""
    lines = _lines(text)
    found = []
    for i, (body, _end) in enumerate(lines):
        m = OPTIONS_RE.match(body)
        if m:
            found.append(i)
            words = split_cmdline(m.group("value"))
            new = kp.apply(words, entries, append=False)
            if new != words:
                lines[i][0] = m.group("lead") + reword(m.group("value"), new) + m.group("trail")
    if not found:
        return text
    combined = []
    for i in found:
        combined.extend(split_cmdline(OPTIONS_RE.match(lines[i][0]).group("value")))
    todo = [e for e in entries if e["state"] == "present" and not kp.satisfied(combined, e)]
    if todo:
        m = OPTIONS_RE.match(lines[found[-1]][0])
        words = kp.apply(split_cmdline(m.group("value")), todo)
        lines[found[-1]][0] = m.group("lead") + reword(m.group("value"), words) + m.group("trail")
    return _join(lines)


def plan(files: dict, entries: list, ctx) -> dict:
    out = {"files": {}, "commands": [], "errors": [], "warnings": [], "config_path": CONFIG}
    text = files.get(CONFIG)
    if text is None:
        out["errors"].append(f"{CONFIG} does not exist: this is not a kernelstub layout, nothing was changed "
                             f"(run 'kernelstub' once to write it, or set vfio_bootloader to the bootloader really in use)")
        return out
    try:
        new_config, old_options, user = _edit_config(text, entries)
    except ValueError as exc:  # _Unparsable included
        out["errors"].append(f"{CONFIG} {exc}")
        return out
    esp = _esp(ctx)
    if new_config != text:
        out["files"][CONFIG] = {"content": new_config, "mode": None}
    if str(user.get("esp_path") or "/boot/efi").rstrip("/") != esp:
        out["warnings"].append(f"{CONFIG} names the ESP {user.get('esp_path')!r} but {esp} was searched for the loader "
                               f"entries: kernelstub writes them below {user.get('esp_path')!r}")
    if user.get("live_mode") is True:
        out["warnings"].append(f"{CONFIG} has live_mode true: 'kernelstub --preserve-live-mode' does nothing in a "
                               "live session; run 'kernelstub' once by hand on the installed system")
    if user.get("setup_loader") is False:
        out["warnings"].append(f"{CONFIG} has setup_loader false: kernelstub writes no systemd-boot entries here; "
                               "the options reach the firmware boot entry only when kernelstub runs")
    stub_entries = kernelstub_entries(files, esp)
    if not stub_entries and user.get("setup_loader") is not False:
        out["warnings"].append(f"no loader entry written by kernelstub below {esp}/loader/entries: running kernelstub "
                               "writes them")
    for path in stub_entries:
        current = files[path]
        words = split_cmdline(" ".join(_values(current, "options")))
        if words[2:] != old_options or not words[:1] or not words[0].startswith("root="):
            out["warnings"].append(f"{path} does not carry {CONFIG}'s user.kernel_options (it was edited by hand?): "
                                   "kernelstub rewrites it from the configuration at its next run")
        new = _edit_entry(current, entries)
        if new != current:
            out["files"][path] = {"content": new, "mode": None}
    out["commands"] = [list(COMMAND)]
    return out


# ---------------------------------------------------------------------------------------------
# Read-back: loader.conf's default entry
# ---------------------------------------------------------------------------------------------

def _default_pattern(text) -> str:
    pattern = None
    for value in _values(text or "", "default"):
        pattern = value.strip()
    return pattern


def _matches(path: str, pattern: str) -> bool:
    """systemd-boot matches the glob against the entry id; older versions strip '.conf' from it."""
    name = path.rsplit("/", 1)[-1].lower()
    pattern = pattern.lower()
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name[:-len(".conf")], pattern)


def next_boot(files: dict, ctx) -> dict:
    esp = _esp(ctx)
    loader_conf = f"{esp}/loader/loader.conf"
    prefix = f"{esp}/loader/entries/"
    out = {"cmdline": None, "source": None, "entries": [], "errors": [], "warnings": []}
    for path in sorted(p for p in files if p.startswith(prefix) and p.endswith(".conf") and files[p] is not None):
        titles = _values(files[path], "title")
        out["entries"].append({"title": titles[0] if titles else path[len(prefix):],
                               "cmdline": " ".join(_values(files[path], "options")), "source": path})
    if not out["entries"]:
        out["errors"].append(f"no loader entry below {prefix}: kernelstub did not write any (setup_loader false?)")
        return out
    pattern = _default_pattern(files.get(loader_conf))
    chosen = None
    if pattern and not pattern.startswith("@"):
        chosen = next((e for e in out["entries"] if _matches(e["source"], pattern)), None)
        if chosen is None:
            out["warnings"].append(f"{loader_conf}: default {pattern!r} matches no entry")
    elif pattern:
        out["warnings"].append(f"{loader_conf}: default {pattern!r} is decided by an EFI variable at boot; "
                               "the entry kernelstub marks current is reported")
    if chosen is None:
        current = [p for p in kernelstub_entries(files, esp) if p.endswith("-current.conf")]
        chosen = next((e for e in out["entries"] if current and e["source"] == current[0]), out["entries"][0])
    out["cmdline"], out["source"] = chosen["cmdline"], chosen["source"]
    return out
