# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the collection itself left on the host: its owned files and the plans it applied.

Returned with the facts so that each stage can tell on the controller that a converged host
needs nothing, without another round trip.
"""
from __future__ import annotations

import hashlib
import json
import os

from ansible_collections.exliar.vfio.plugins.module_utils import _bindplan


def file_state(fs, path: str):
    """``{"sha256", "mode"}`` of a file below the root, or None when it does not exist."""
    data = fs.read_bytes(path)
    if data is None:
        return None
    try:
        mode = os.stat(fs.path(path)).st_mode & 0o7777
    except OSError:
        mode = None
    return {"sha256": hashlib.sha256(data).hexdigest(), "mode": mode}


def _record(fs, path: str):
    text = fs.read_text(path)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        fs.warn(f"{path.lstrip('/')}: not valid JSON; the plan it recorded is ignored")
        return None
    return value if isinstance(value, dict) else None


# modprobe.d(5): a file name seen in an earlier directory masks the same name in later ones.
MODPROBE_DIRS = ("etc/modprobe.d", "run/modprobe.d", "usr/local/lib/modprobe.d", "usr/lib/modprobe.d", "lib/modprobe.d")
VFIO_DIRECTIVES = ("options", "install", "remove", "blacklist")


def foreign_vfio_config(fs) -> dict:
    """Lines of other modprobe.d files that configure vfio-pci (they would fight ours: vfio-pci's
    ``ids`` is one string, the last ``options`` wins), and the ones this collection disabled."""
    seen, entries, contents = set(), [], {}
    for directory in MODPROBE_DIRS:
        for name in fs.listdir(directory):
            if not name.endswith(".conf") or name in seen:
                continue
            seen.add(name)
            path = f"/{directory}/{name}"
            text = fs.read_text(path) if path != _bindplan.MODPROBE_CONF else None
            found = False
            for number, raw in enumerate((text or "").splitlines(), 1):
                line, state = raw.strip(), "active"
                if line.startswith(_bindplan.DISABLED_MARK):
                    line, state = line[len(_bindplan.DISABLED_MARK):].strip(), "disabled"
                elif line.startswith("#"):
                    continue
                tokens = line.split()
                if len(tokens) >= 2 and tokens[0] in VFIO_DIRECTIVES and tokens[1].replace("-", "_") == "vfio_pci":
                    entries.append({"path": path, "line_no": number, "line": line, "directive": tokens[0],
                                    "state": state, "args": tokens[2:]})
                    found = True
            if found and path.startswith("/etc/modprobe.d/"):
                contents[path] = text
    return {"entries": entries, "contents": contents}


def managed_state(fs) -> dict:
    return {
        "files": {path: file_state(fs, path) for path in _bindplan.OWNED_FILES},
        "bind": _record(fs, _bindplan.PLAN_RECORD),
        "foreign_vfio_config": foreign_vfio_config(fs),
    }


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
