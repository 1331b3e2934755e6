# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic writes and the host's change journal, below a root path (``/``, a chroot or a test sysroot).

Every file the collection changes goes through :class:`Journal`: the original is copied to
``backups/`` once, the new content replaces the file atomically and a JSON line records what
changed, so a later run (``restore.yml``) can bring back the exact bytes, mode and owner. Other
operations (runtime driver binds, extension plugins' operations, applied plans) are journaled
as generic records next to the file changes.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import stat
import tempfile

STATE_DIR = "/var/lib/exliar-vfio"
JOURNAL_NAME = "journal.jsonl"
LOCK_NAME = "journal.lock"
BACKUP_DIR = "backups"
DEFAULT_MODE = 0o644
DIR_MODE = 0o755
BACKUP_MODE = 0o600
_MAX_LINKS = 40  # the kernel's own limit (ELOOP)
_RESERVED_KINDS = ("file", "restore")


class JournalError(Exception):
    """A change could not be made, recorded or restored; the message names the path and what to check."""


# --------------------------------------------------------------------------- atomic writes


def _mode(value):
    """``0o644``, ``"0644"``, ``"644"`` or ``"0o644"`` -> 0o644 (Ansible users write modes as strings)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise JournalError(f"invalid file mode {value!r}: give it in octal, e.g. '0644'")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip().lower()
        text = text[2:] if text.startswith("0o") else text
        try:
            number = int(text, 8)
        except ValueError:
            raise JournalError(f"invalid file mode {value!r}: give it in octal, e.g. '0644'") from None
    if not 0 <= number <= 0o7777:
        raise JournalError(f"invalid file mode {value!r}: give it in octal, e.g. '0644'")
    return number


def _fmt_mode(number):
    return None if number is None else f"{number:04o}"


def _sha256(data):
    return None if data is None else hashlib.sha256(data).hexdigest()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: str) -> None:
    """Make a rename or a new entry durable; some file systems cannot fsync a directory, which is fine."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _makedirs(directory: str) -> list:
    """Create ``directory`` and missing parents (0o755); returns those created, outermost first.

    On failure the ones created so far are removed again, so an error leaves nothing behind.
    """
    missing = []
    current = directory
    while not os.path.lexists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    created: list = []
    try:
        for path in reversed(missing):
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:  # another run made it meanwhile: theirs, not ours to remove
                if not os.path.isdir(path):
                    raise
                continue
            created.append(path)
            os.chmod(path, DIR_MODE)  # the umask must not decide
        for path in reversed(created):
            _fsync_dir(os.path.dirname(path))
    except BaseException:
        _remove_dirs(created)
        raise
    return created


def _remove_dirs(created: list) -> None:
    for path in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _mount_point(path: str) -> str:
    current = os.path.abspath(path)
    while not os.path.lexists(current) or not os.path.ismount(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def _os_error(verb: str, path: str, exc: OSError) -> str:
    """``cannot write /boot/x: Read-only file system; is /boot mounted read-only? ...``."""
    reason = exc.strerror or str(exc)
    mount = _mount_point(path)
    if exc.errno == errno.EROFS:
        hint = f"is {mount} mounted read-only? remount it read-write (mount -o remount,rw {mount}) and run again"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = f"is {mount} full? free some space and run again"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        hint = "run as root (become: true) and check the file's attributes (lsattr; chattr -i)"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
        hint = "a parent of it exists but is not a directory"
    else:
        hint = f"check that {os.path.dirname(path)} is writable (is {mount} read-only or full?)"
    return f"cannot {verb} {path}: {reason}; {hint}"


def atomic_write(path, data: bytes, mode=None, uid=None, gid=None) -> list:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new one, never a mix.

    Mode and owner: the ones given win; otherwise an existing file keeps its own; a new file gets
    ``0o644`` and the process's owner. Missing parent directories are created (0o755). ``path``
    itself must not be a symlink (:class:`Journal` resolves links inside its root first). On any
    error nothing is left behind (no temp file, no new directory). Returns the directories created,
    outermost first.
    """
    if not isinstance(data, bytes):
        raise TypeError(f"atomic_write needs bytes, not {type(data).__name__}")
    path = os.path.abspath(os.fspath(path))
    want_mode = _mode(mode)
    directory = os.path.dirname(path)
    created: list = []
    tmp = None
    done = False
    try:
        try:
            old = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            old = None
        if old is not None and stat.S_ISLNK(old.st_mode):
            raise JournalError(f"cannot write {path}: it is a symlink; write its target instead")
        if old is not None and not stat.S_ISREG(old.st_mode):
            raise JournalError(f"cannot write {path}: it exists and is not a regular file; move it away first")
        if want_mode is None:
            want_mode = stat.S_IMODE(old.st_mode) if old is not None else DEFAULT_MODE
        want_uid = uid if uid is not None else (old.st_uid if old is not None else -1)
        want_gid = gid if gid is not None else (old.st_gid if old is not None else -1)
        created = _makedirs(directory)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".exliar-tmp", dir=directory)
        try:
            _write_all(fd, data)
            mine = os.fstat(fd)
            if (want_uid not in (-1, mine.st_uid)) or (want_gid not in (-1, mine.st_gid)):
                os.fchown(fd, want_uid, want_gid)
            os.fchmod(fd, want_mode)  # after fchown, which clears setuid/setgid bits
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(directory)
        done = True
    except OSError as exc:
        raise JournalError(_os_error("write", path, exc)) from exc
    finally:
        if not done:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            _remove_dirs(created)
    return created


def _remove(path: str) -> None:
    try:
        os.unlink(path)
        _fsync_dir(os.path.dirname(path))
    except OSError as exc:
        raise JournalError(_os_error("remove", path, exc)) from exc


def _decode(data) -> str:
    return "" if data is None else data.decode("utf-8", errors="replace")


def _result(path: str, changed: bool, before, after) -> dict:
    """The shape Ansible modules return: ``changed``, ``path`` and a ``diff`` for ``--diff``."""
    return {
        "changed": changed,
        "path": path,
        "diff": {"before": _decode(before), "after": _decode(after), "before_header": path, "after_header": path},
    }


def _host_path(path) -> str:
    """Validate a host-absolute path and normalise it (``//etc/./x`` -> ``/etc/x``)."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise JournalError(f"{path!r} is not an absolute path: give the path as seen on the host, e.g. /etc/modprobe.d/vfio.conf")
    if "\0" in path:
        raise JournalError(f"{path!r} contains a NUL byte")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise JournalError(f"{path}: '..' is not allowed in a journaled path; give the path without it")
    if not parts:
        raise JournalError(f"{path!r} is not a file path")
    return "/" + "/".join(parts)


# --------------------------------------------------------------------------- the journal


class Journal:
    """The change journal of the host below ``root``: ``<root>/var/lib/exliar-vfio/``.

    Paths given to it are host-absolute (``/etc/modprobe.d/vfio.conf``); records store them
    the same way, after symlinks are followed as a chroot would (absolute link targets stay
    below the root). Records are appended under an exclusive ``flock`` so concurrent runs on
    one host never interleave or reuse a sequence number.
    """

    def __init__(self, root: str = "/"):
        self.root = os.path.realpath(root or "/")
        self._lock_depth = 0
        state = self._resolve(STATE_DIR)
        self.state_dir = self._real(state)
        self.journal_path = os.path.join(self.state_dir, JOURNAL_NAME)
        self.lock_path = os.path.join(self.state_dir, LOCK_NAME)
        self.backup_dir = os.path.join(self.state_dir, BACKUP_DIR)
        self._state_host = state

    # ----------------------------------------------------------------- paths

    def _real(self, host: str) -> str:
        return os.path.join(self.root, host.lstrip("/"))

    def _resolve(self, host: str) -> str:
        """``host`` with every symlink followed as inside a chroot; refuses a link that climbs out of the root."""
        todo = [part for part in host.split("/") if part]
        done: list = []
        hops = 0
        while todo:
            part = todo.pop(0)
            if part == ".":
                continue
            if part == "..":
                if done:
                    done.pop()
                elif self.root != "/":
                    raise JournalError(f"{host}: a symlink below {self.root} leads out of it; refusing to write outside the root")
                continue
            try:
                target = os.readlink(self._real("/".join(done + [part])))
            except OSError:  # not a link, or missing: taken as is
                done.append(part)
                continue
            hops += 1
            if hops > _MAX_LINKS:
                raise JournalError(f"{host}: too many levels of symlinks below {self.root}")
            if target.startswith("/"):
                done = []
            todo = [item for item in target.split("/") if item] + todo
        return "/" + "/".join(done)

    def _target(self, path) -> tuple:
        """(requested path, resolved host path, real path) of a file the journal may change."""
        requested = _host_path(path)
        host = self._resolve(requested)
        if host == "/":
            raise JournalError(f"{requested} resolves to the root directory, not a file")
        own = [self._state_host + "/" + name for name in ("journal.jsonl", "journal.lock", "backups")]
        if host == self._state_host or any(host == p or host.startswith(p + "/") for p in own):
            raise JournalError(f"{requested} is part of the change journal itself ({STATE_DIR}); it is not changed through it")
        return requested, host, self._real(host)

    @staticmethod
    def _current(host: str, real: str) -> tuple:
        """(stat, bytes) of the file, or (None, None) when it does not exist."""
        try:
            st = os.lstat(real)
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        except OSError as exc:
            raise JournalError(_os_error("read", real, exc)) from exc
        if not stat.S_ISREG(st.st_mode):
            raise JournalError(f"{host} ({real}) exists and is not a regular file; move it away first")
        try:
            with open(real, "rb") as handle:
                return st, handle.read()
        except OSError as exc:
            raise JournalError(_os_error("read", real, exc)) from exc

    # ----------------------------------------------------------------- state directory and lock

    def _ensure_state_dir(self) -> None:
        try:
            created = _makedirs(self.state_dir)
            try:
                if not os.path.isdir(self.backup_dir):
                    try:
                        os.mkdir(self.backup_dir, 0o700)
                        os.chmod(self.backup_dir, 0o700)
                    except FileExistsError:  # another run made it meanwhile
                        if not os.path.isdir(self.backup_dir):
                            raise
            except BaseException:
                _remove_dirs(created)
                raise
        except OSError as exc:
            raise JournalError(
                f"cannot create the change journal in {self.state_dir}: {exc.strerror or exc}; "
                f"is {self.root} writable (a read-only root, or {STATE_DIR} not a directory)?"
            ) from exc

    @contextlib.contextmanager
    def _locked(self):
        """Exclusive lock on the journal for a read-decide-append sequence; re-entrant within this object."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self._ensure_state_dir()
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise JournalError(_os_error("open the lock file", self.lock_path, exc)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
        finally:
            os.close(fd)  # releases the flock

    # ----------------------------------------------------------------- records

    def _corrupt(self, number: int, why: str) -> JournalError:
        return JournalError(
            f"{self.journal_path} line {number} is corrupt ({why}); to start a new journal move the file away "
            f"(mv {self.journal_path} {self.journal_path}.corrupt): the original copies of changed files stay in "
            f"{self.backup_dir}/ and the old journal still says which backup belongs to which path"
        )

    def _records(self) -> list:
        try:
            with open(self.journal_path, "rb") as handle:
                raw = handle.read()
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise JournalError(_os_error("read", self.journal_path, exc)) from exc
        records = []
        for number, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:  # UnicodeDecodeError included
                raise self._corrupt(number, getattr(exc, "msg", None) or str(exc)) from None
            if not isinstance(rec, dict):
                raise self._corrupt(number, "not a JSON object")
            if not isinstance(rec.get("seq"), int) or not isinstance(rec.get("stage"), str) or not isinstance(rec.get("kind"), str):
                raise self._corrupt(number, "no seq, stage or kind")
            if rec["kind"] == "restore" and not isinstance(rec.get("upto"), int):
                raise self._corrupt(number, "a restore record without upto")
            if rec["kind"] == "file" and not isinstance(rec.get("path"), str):
                raise self._corrupt(number, "a file record without path")
            records.append(rec)
        records.sort(key=lambda rec: rec["seq"])
        return records

    @staticmethod
    def _active(records: list, stage=None, kind=None) -> list:
        restored: dict = {}
        for rec in records:
            if rec["kind"] == "restore":
                restored[rec["stage"]] = max(restored.get(rec["stage"], 0), rec["upto"])
        return [
            rec for rec in records
            if rec["kind"] != "restore" and rec["seq"] > restored.get(rec["stage"], 0)
            and (stage is None or rec["stage"] == stage) and (kind is None or rec["kind"] == kind)
        ]

    @staticmethod
    def _next_seq(records: list) -> int:
        return max((rec["seq"] for rec in records), default=0) + 1

    def _append(self, rec: dict, records: list) -> dict:
        """Append one record (under the lock) with the next seq and the time; fsynced before returning."""
        full = {"seq": self._next_seq(records), "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        full.update(rec)
        try:
            line = (json.dumps(full, separators=(",", ":"), allow_nan=False) + "\n").encode("ascii")
        except (TypeError, ValueError) as exc:
            raise JournalError(f"cannot journal a {rec.get('kind')} record of stage {rec.get('stage')}: {exc}") from exc
        new = not os.path.exists(self.journal_path)
        try:
            fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                _write_all(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:
                _fsync_dir(self.state_dir)
        except OSError as exc:
            raise JournalError(_os_error("append to", self.journal_path, exc)) from exc
        records.append(full)
        return full

    def _backup(self, seq: int, host: str, data: bytes) -> str:
        flat = host.strip("/").replace("/", "_")[:180]
        name = f"{seq:06d}_{flat}"
        atomic_write(os.path.join(self.backup_dir, name), data, mode=BACKUP_MODE)
        return name

    def _first_in_stage(self, records: list, stage: str, host: str) -> bool:
        return not any(rec.get("path") == host for rec in self._active(records, stage, "file"))

    def _file_record(self, stage, action, host, st, before, after, backup, created) -> dict:
        return {
            "stage": stage, "kind": "file", "action": action, "path": host, "existed": st is not None, "backup": backup,
            "mode": _fmt_mode(None if st is None else stat.S_IMODE(st.st_mode)),
            "uid": None if st is None else st.st_uid, "gid": None if st is None else st.st_gid,
            "sha256_before": _sha256(before), "sha256_after": _sha256(after),
            "created_dirs": ["/" + os.path.relpath(path, self.root).lstrip("/") for path in created],
        }

    @staticmethod
    def _check_stage(stage) -> None:
        if not isinstance(stage, str) or not stage:
            raise JournalError(f"a journal stage must be a non-empty string, not {stage!r}")

    # ----------------------------------------------------------------- public API

    def write_file(self, stage: str, path: str, data: bytes, mode=None, check_mode: bool = False) -> dict:
        """Make ``path`` hold ``data`` (and ``mode``, when given): backed up once per stage, atomic, journaled.

        Check mode reads only: nothing is created anywhere, yet the result is the one a real run returns.
        """
        self._check_stage(stage)
        if not isinstance(data, bytes):
            raise TypeError(f"write_file needs bytes, not {type(data).__name__}")
        want_mode = _mode(mode)
        requested, host, real = self._target(path)

        def differs(st, before):
            return before != data or (want_mode is not None and stat.S_IMODE(st.st_mode) != want_mode)

        st, before = self._current(host, real)
        if not differs(st, before) or check_mode:
            return _result(requested, differs(st, before), before, data)
        with self._locked():
            records = self._records()
            st, before = self._current(host, real)  # another run may have written it meanwhile
            if not differs(st, before):
                return _result(requested, False, before, data)
            backup = None
            if st is not None and self._first_in_stage(records, stage, host):
                backup = self._backup(self._next_seq(records), host, before)
            try:
                created = atomic_write(real, data, mode=want_mode)
            except BaseException:
                if backup:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.backup_dir, backup))
                raise
            try:
                self._append(self._file_record(stage, "write", host, st, before, data, backup, created), records)
            except BaseException:  # an unjournaled change could never be restored: undo it
                self._undo(real, st, before, created, backup)
                raise
        return _result(requested, True, before, data)

    def remove_file(self, stage: str, path: str, check_mode: bool = False) -> dict:
        """Remove ``path`` (backed up once per stage, journaled); a missing file is no change."""
        self._check_stage(stage)
        requested, host, real = self._target(path)
        st, before = self._current(host, real)
        if st is None or check_mode:
            return _result(requested, st is not None, before, None)
        with self._locked():
            records = self._records()
            st, before = self._current(host, real)
            if st is None:
                return _result(requested, False, None, None)
            backup = None
            if self._first_in_stage(records, stage, host):
                backup = self._backup(self._next_seq(records), host, before)
            try:
                _remove(real)
            except BaseException:
                if backup:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.backup_dir, backup))
                raise
            try:
                self._append(self._file_record(stage, "remove", host, st, before, None, backup, []), records)
            except BaseException:
                self._undo(real, st, before, [], backup)
                raise
        return _result(requested, True, before, None)

    def _undo(self, real: str, st, before, created: list, backup) -> None:
        with contextlib.suppress(JournalError, OSError):
            if st is None:
                os.unlink(real)
                _remove_dirs(created)
            else:
                atomic_write(real, before, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid)
            if backup:
                os.unlink(os.path.join(self.backup_dir, backup))

    def preflight(self, paths) -> None:
        """Raise JournalError, before anything is written, when one of ``paths`` (or the journal
        itself) could not be written: a parent that is a file, or a read-only file system."""
        for path in list(paths) + [STATE_DIR + "/journal.jsonl"]:
            requested = _host_path(path)
            host = self._resolve(requested)
            real = os.path.join(self.root, host.lstrip("/"))
            if os.path.lexists(real) and not os.path.isfile(real):
                raise JournalError(f"{requested}: exists and is not a regular file; move it away first. Nothing was changed")
            parent = os.path.dirname(real)
            while not os.path.lexists(parent):
                parent = os.path.dirname(parent)
            shown = "/" + os.path.relpath(parent, self.root).lstrip("./")
            if not os.path.isdir(parent):
                raise JournalError(f"cannot write {requested}: {shown} is not a directory. Nothing was changed")
            if not os.access(parent, os.W_OK):
                raise JournalError(f"cannot write {requested}: {shown} is not writable (a read-only file system?). "
                                   f"Nothing was changed")

    def record(self, stage: str, kind: str, **data) -> dict:
        """Append a generic record (``device``, ``plugin``, ``plan``, ...); returns it with ``seq`` and ``time``."""
        self._check_stage(stage)
        if not isinstance(kind, str) or not kind:
            raise JournalError(f"a journal record kind must be a non-empty string, not {kind!r}")
        if kind in _RESERVED_KINDS:
            raise JournalError(f"records of kind {kind!r} are written by write_file/remove_file/mark_restored only")
        reserved = sorted({"seq", "time"} & set(data))
        if reserved:
            raise JournalError(f"{', '.join(reserved)} are set by the journal, not by the caller")
        with self._locked():
            return self._append(dict({"stage": stage, "kind": kind}, **data), self._records())

    def records(self) -> list:
        """Every record, restores included, oldest first."""
        return self._records()

    def active(self, stage=None, kind=None) -> list:
        """Records since the last restore of their stage (restore records excluded), oldest first."""
        return self._active(self._records(), stage, kind)

    def original(self, path: str):
        """The first active file record of ``path`` over all stages: what a full restore brings back; or None."""
        host = self._resolve(_host_path(path))
        for rec in self._active(self._records(), kind="file"):
            if rec["path"] == host:
                return rec
        return None

    def restore_files(self, stage: str, check_mode: bool = False) -> list:
        """Bring back every file ``stage`` changed as it was before (bytes, mode, owner), or delete a created one.

        Most recently changed paths first; each result has the shape of :meth:`write_file`'s plus
        ``drifted`` (the file was changed by someone else after our last write). The stage is not
        marked restored: call :meth:`mark_restored` once everything of the stage is back.
        """
        self._check_stage(stage)
        lock = contextlib.nullcontext() if check_mode else self._locked()
        if not check_mode and not os.path.exists(self.journal_path):
            lock = contextlib.nullcontext()  # nothing journaled: do not create the state directory
        results = []
        with lock:
            per_path: dict = {}
            for rec in self._active(self._records(), stage, "file"):
                per_path.setdefault(rec["path"], []).append(rec)
            for host, recs in sorted(per_path.items(), key=lambda item: item[1][-1]["seq"], reverse=True):
                results.append(self._restore_one(host, recs, check_mode))
        return results

    def _read_backup(self, rec: dict) -> bytes:
        name = rec.get("backup")
        if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
            raise JournalError(f"the journal names no usable backup for {rec['path']} (record {rec['seq']}); restore it by hand")
        backup = os.path.join(self.backup_dir, name)
        try:
            with open(backup, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise JournalError(f"cannot read the backup of {rec['path']} ({backup}): {exc.strerror or exc}; restore it by hand") from exc
        if rec.get("sha256_before") and _sha256(data) != rec["sha256_before"]:
            raise JournalError(f"the backup of {rec['path']} ({backup}) does not match its recorded sha256; restore it by hand")
        return data

    def _restore_one(self, host: str, recs: list, check_mode: bool) -> dict:
        first, last = recs[0], recs[-1]
        requested, host, real = self._target(host)
        st, current = self._current(host, real)
        if first["existed"]:
            data = self._read_backup(first)
            want_mode, uid, gid = _mode(first["mode"]), first["uid"], first["gid"]
            changed = st is None or current != data or stat.S_IMODE(st.st_mode) != want_mode or (st.st_uid, st.st_gid) != (uid, gid)
            if changed and not check_mode:
                atomic_write(real, data, mode=want_mode, uid=uid, gid=gid)
        else:
            data = None
            changed = st is not None
            if not check_mode:
                if changed:
                    _remove(real)
                created = [path for rec in recs for path in rec.get("created_dirs") or []]
                for path in sorted(set(created), key=len, reverse=True):
                    with contextlib.suppress(OSError):  # not empty: someone else put files there
                        os.rmdir(self._real(_host_path(path)))
        result = _result(requested, changed, current, data)
        result["drifted"] = _sha256(current) != last.get("sha256_after")
        return result

    def mark_restored(self, stage: str, check_mode: bool = False):
        """Close ``stage``'s records: after this ``active(stage)`` is empty and the next write backs up again.

        Returns the restore record, or None when the stage had nothing active (nothing is appended).
        """
        self._check_stage(stage)
        if not self._active(self._records(), stage) or check_mode:
            return None
        with self._locked():
            records = self._records()
            if not self._active(records, stage):
                return None
            return self._append({"stage": stage, "kind": "restore", "upto": records[-1]["seq"]}, records)
