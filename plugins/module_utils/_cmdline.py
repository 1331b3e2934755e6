# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kernel command line parsing that keeps order, duplicates and quoting."""
from __future__ import annotations


def split_cmdline(text: str) -> list:
    """Split like the kernel does: whitespace separates, double quotes group."""
    words, cur, quoted, started = [], [], False, False
    for ch in (text or "").strip():
        if ch == '"':
            quoted = not quoted
            cur.append(ch)
            started = True
        elif ch.isspace() and not quoted:
            if started:
                words.append("".join(cur))
            cur, started = [], False
        else:
            cur.append(ch)
            started = True
    if started:
        words.append("".join(cur))
    return words


def parse_cmdline(text: str) -> list:
    """``[{"name": ..., "value": str or None}]`` in order; quotes around values are removed."""
    params = []
    for word in split_cmdline(text):
        name, sep, value = word.partition("=")
        params.append({"name": name.strip('"'), "value": value.strip('"') if sep else None})
    return params


def param_values(params: list, name: str) -> list:
    """All values given for ``name`` (the kernel reads the last; some drivers read all)."""
    norm = name.replace("-", "_")
    return [p["value"] for p in params if p["name"].replace("-", "_") == norm]


def last_value(params: list, name: str):
    values = param_values(params, name)
    return values[-1] if values else None


def has_flag(params: list, name: str, value: str) -> bool:
    """True if ``name=value`` is set, also as one of a comma list (``intel_iommu=on,sm_on``)."""
    for v in param_values(params, name):
        if v is not None and value in v.split(","):
            return True
    return False
