# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plugin state that outlives one Ansible task: a controller-side run directory.

Every task runs in a new worker process forked from ``ansible-playbook``, so nothing in
memory survives between stages. Each host's plugin state (storage, subscriptions, calls,
failures) is kept in ``<run dir>/hosts/<host>.pickle``; the run directory is named after the
``ansible-playbook`` process (its pid and start time), which workers see as their parent and
the callback plugin as itself. ``EXLIAR_VFIO_RUN_DIR`` overrides the location.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
import time
from pathlib import Path

STATE_VERSION = 1
KEEP_RUNS = 20


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "exliar-vfio"


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def run_dir(main_pid: int | None = None) -> Path:
    """The run directory of the ansible-playbook process ``main_pid`` (default: our parent)."""
    override = os.environ.get("EXLIAR_VFIO_RUN_DIR")
    if override:
        return Path(override)
    pid = main_pid if main_pid is not None else os.getppid()
    return cache_home() / "runs" / f"{pid}-{_start_time(pid)}"


def _safe(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", host) or "_"


def host_state_path(rdir: Path, host: str) -> Path:
    return rdir / "hosts" / f"{_safe(host)}.pickle"


def _trusted(path: Path) -> bool:
    """Only unpickle state that this user wrote, in a directory nobody else can write."""
    try:
        for p in (path, path.parent, path.parent.parent):
            st = p.stat()
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                return False
    except OSError:
        return False
    return True


def load_host_state(rdir: Path, host: str):
    path = host_state_path(rdir, host)
    if path.exists() and not _trusted(path):
        return None
    try:
        with open(path, "rb") as f:
            state = pickle.load(f)
    except FileNotFoundError:
        return None
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        return None
    return state


def save_host_state(rdir: Path, host: str, state: dict) -> None:
    """Write atomically: a worker killed mid-write leaves the previous state intact."""
    path = host_state_path(rdir, host)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent.parent, 0o700)
    state = dict(state, version=STATE_VERSION, saved=time.time())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def all_host_states(rdir: Path) -> dict:
    out = {}
    hosts = rdir / "hosts"
    if not hosts.is_dir():
        return out
    for p in sorted(hosts.glob("*.pickle")):
        state = load_host_state(rdir, p.stem)
        if state is not None:
            out[state.get("host", p.stem)] = state
    return out


def pack_storage(storage: dict) -> tuple:
    """(picklable blobs per key, warnings for keys that cannot outlive the task)."""
    blobs, warnings = {}, []
    for key, value in storage.items():
        try:
            blobs[key] = pickle.dumps(value)
        except Exception as exc:  # noqa: BLE001 - any unpicklable value
            warnings.append(f"storage key {key!r} ({type(value).__name__}) cannot be kept after this stage: {exc}")
    return blobs, warnings


def unpack_storage(blobs: dict) -> tuple:
    storage, warnings = {}, []
    for key, blob in blobs.items():
        try:
            storage[key] = pickle.loads(blob)
        except Exception as exc:  # noqa: BLE001
            warnings.append(f"storage key {key!r} could not be restored: {exc}")
    return storage, warnings


def prune_runs(keep: int = KEEP_RUNS) -> None:
    runs = cache_home() / "runs"
    if not runs.is_dir():
        return
    dirs = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in dirs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
