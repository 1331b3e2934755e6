"""Shared by the sysroot integration tests that change lab sysroots: private copies, whole-tree
snapshots to compare, and ansible-playbook runs started side by side with their per-task results."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

from labrun import REPO, VENV_BIN, ansible_env, cached_facts, recap

_DIGESTS: dict = {}


def _digest(path: str, st) -> str:
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _DIGESTS:
        with open(path, "rb") as handle:
            _DIGESTS[key] = hashlib.sha256(handle.read()).hexdigest()
    return _DIGESTS[key]


def tree(root: Path, skip: str | None = None) -> dict:
    """Every path below ``root`` (but ``skip``): (``dir``, mode) / (``link``, target) / (``file``, mode, sha256)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if skip and (rel == skip or rel.startswith(skip + "/")):
                continue
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), _digest(path, st))
    return out


def differences(before: dict, after: dict) -> list:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def copy_root(src: Path, dst: Path) -> Path:
    """copytree(symlinks=True); the two big name databases (read only for the collection) are hard links."""

    def copy(s, d):
        if os.path.basename(s) in ("hwdb.bin", "pci.ids"):
            try:
                os.link(s, d)
                return d
            except OSError:
                pass
        return shutil.copy2(s, d)

    shutil.copytree(src, dst, symlinks=True, copy_function=copy)
    return dst


# ---- running the playbooks -------------------------------------------------------------------------

_HEADER = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(?P<task>.+)\] \*+$")
_RESULT = re.compile(r"^(?P<status>ok|changed|skipping|fatal): \[(?P<host>[^\]]+)\](?:: FAILED!)? => (?P<json>\{.*\})$")


class Run:
    def __init__(self, work: Path, name: str, *args: str, inventory: Path):
        self.name = name
        self.tmp = work / name
        self.tmp.mkdir()
        self.out, self.err = self.tmp / "stdout", self.tmp / "stderr"
        env = ansible_env(self.tmp, XDG_CONFIG_HOME=str(self.tmp / "config"), XDG_CACHE_HOME=str(self.tmp / "cache"),
                          EXLIAR_VFIO_REPORT_DIR="")
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.started = time.monotonic()
            self.proc = subprocess.Popen([str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), *args],
                                         cwd=REPO, env=env, stdout=out, stderr=err, text=True)

    def wait(self) -> Run:
        self.returncode = self.proc.wait(timeout=900)
        self.seconds = time.monotonic() - self.started
        self.stdout, self.stderr = self.out.read_text(), self.err.read_text()
        self.recap = recap(self.stdout)
        self.results: dict = {}  # (task, host) -> (status, result)
        task = None
        for line in self.stdout.splitlines():
            m = _HEADER.match(line)
            if m:
                task = m.group("task")
                continue
            m = _RESULT.match(line)
            if m and task is not None:
                self.results[(task, m.group("host"))] = (m.group("status"), json.loads(m.group("json")))
        self.fatal = {host: res for (task_name, host), (status, res) in self.results.items() if status == "fatal"}
        return self

    def result(self, task: str, host: str):
        """(status, result) of ``task`` on ``host``, or None when it did not run there."""
        return self.results.get((task, host))

    def facts(self, host: str) -> dict:
        return cached_facts(self.tmp, host)["vfio"]

    def tail(self) -> str:
        return self.stdout[-4000:] + self.stderr[-2000:]


def private_work_dir(tmp_path_factory, name: str):
    """Generator for a module fixture: where copies live, in memory when there is /dev/shm (a sysroot is a
    thousand small files), else pytest's tmp dir."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        import tempfile  # pylint: disable=import-outside-toplevel
        work = Path(tempfile.mkdtemp(prefix=f"exliar-vfio-{name}-", dir=shm))
        yield work
        shutil.rmtree(work, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp(name)
