# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only access to a host's files under a root path (``/``, a chroot or a test sysroot).

Every read of the detection code goes through :class:`RootFS`, which never raises for a
missing or unreadable file: it returns ``None``/empty and, where a file was expected but could
not be read, records a warning so the caller can report what it could not see.
"""
from __future__ import annotations

import os


class RootFS:
    def __init__(self, root: str = "/"):
        self.root = os.path.abspath(root or "/")
        self.warnings: list = []

    def _raw(self, rel: str) -> str:
        return os.path.join(self.root, rel.lstrip("/"))

    def path(self, rel: str) -> str:
        """Host path of ``rel``; below a root other than ``/``, symlinks resolve inside the root.

        An absolute link such as ``/etc/os-release -> /usr/lib/os-release`` must not reach the
        controller's own files. The kernel's sysfs and procfs only use relative links, so
        those paths are joined directly (they are most of the reads).
        """
        rel = rel.lstrip("/")
        if self.root != "/" and not rel.startswith(("sys/", "proc/")):
            resolved = self.resolve(rel)
            if resolved is not None:
                rel = resolved.lstrip("/")
        return os.path.join(self.root, rel)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def exists(self, rel: str) -> bool:
        """True if ``rel`` exists, a dangling symlink included."""
        return os.path.lexists(self._raw(rel)) or os.path.lexists(self.path(rel))

    def isdir(self, rel: str) -> bool:
        return os.path.isdir(self.path(rel))

    def isfile(self, rel: str) -> bool:
        return os.path.isfile(self.path(rel))

    def is_executable(self, rel: str) -> bool:
        p = self.path(rel)
        return os.path.isfile(p) and os.access(p, os.X_OK)

    def read_bytes(self, rel: str, expected: bool = False):
        try:
            with open(self.path(rel), "rb") as f:
                return f.read()
        except FileNotFoundError:
            if expected:
                self.warn(f"{rel}: missing")
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in a path built from host data
            self.warn(f"{rel}: cannot read ({getattr(exc, 'strerror', None) or exc})")
        return None

    def read_text(self, rel: str, expected: bool = False):
        data = self.read_bytes(rel, expected)
        if data is None:
            return None
        return data.decode("utf-8", errors="replace")

    def read_line(self, rel: str, expected: bool = False):
        text = self.read_text(rel, expected)
        return None if text is None else text.strip()

    def listdir(self, rel: str, expected: bool = False) -> list:
        try:
            return sorted(os.listdir(self.path(rel)))
        except FileNotFoundError:
            if expected:
                self.warn(f"{rel}: missing")
        except NotADirectoryError:
            self.warn(f"{rel}: not a directory")
        except (OSError, ValueError) as exc:
            self.warn(f"{rel}: cannot list ({getattr(exc, 'strerror', None) or exc})")
        return []

    def readlink(self, rel: str):
        """Target of a symlink as stored (sysfs links are relative), or None."""
        try:
            return os.readlink(self._raw(rel))
        except (OSError, ValueError):
            return None

    def link_name(self, rel: str):
        """Last component of a symlink's target: ``driver`` -> ``vfio-pci``."""
        target = self.readlink(rel)
        return None if target is None else os.path.basename(target.rstrip("/"))

    def resolve(self, rel: str):
        """Path of ``rel`` after following symlinks, relative to the root (``/sys/devices/...``).

        Absolute link targets are taken as relative to the root, so a sysroot never escapes.
        """
        parts = [p for p in rel.strip("/").split("/") if p]
        done: list = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            if part == ".":
                continue
            candidate = "/".join(done + [part])
            target = self.readlink(candidate)
            if target is None:
                done.append(part)
                continue
            hops += 1
            if hops > 40:
                return None
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
        return "/" + "/".join(done)
