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


def managed_state(fs) -> dict:
    return {
        "files": {path: file_state(fs, path) for path in _bindplan.OWNED_FILES},
        "bind": _record(fs, _bindplan.PLAN_RECORD),
    }


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
