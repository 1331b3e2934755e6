# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plugin security: file hashes, ed25519 signatures, pinning, directory safety and approvals.

A plugin's identity is the sha256 of its hash manifest (every file's sha256), so pins and
approvals follow its content, not its name or version string. A signature covers the same
hash manifest, so anything that changes a file, adds one or removes one breaks it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ansible_collections.exliar.vfio.plugins.plugin_utils.api import (
    CRITICAL_PERMISSIONS,
    PERMISSIONS,
    PluginError,
    PluginMetadata,
)

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
except ImportError:  # ansible-core depends on cryptography; only a bare test venv lacks it
    HAS_CRYPTOGRAPHY = False
    InvalidSignature = ValueError
    serialization = None

    class Ed25519PrivateKey:  # placeholders so isinstance() and hints still work
        pass

    class Ed25519PublicKey:
        pass
else:
    HAS_CRYPTOGRAPHY = True

SIGNATURE_FILE = "plugin.sig"
APPROVE_COMMAND = ("ansible-playbook playbooks/plugins.yml -e vfio_plugin_action=approve "
                   "-e vfio_plugin_name={name}")
# The extra variable the plugins playbook takes to approve critical permissions.
APPROVE_CRITICAL_COMMAND = APPROVE_COMMAND + " -e vfio_plugin_critical=true"
_CHUNK = 1 << 16


class SecurityError(PluginError):
    """A plugin (or its directory, signature, pin or approval) failed a security check."""


def _need_cryptography() -> None:
    """Unsigned plugins work without cryptography; keys and signatures do not."""
    if not HAS_CRYPTOGRAPHY:
        raise SecurityError("plugin signatures need the Python package 'cryptography' on the controller "
                            "(it comes with ansible-core): pip install cryptography")


# ---- hashing ----------------------------------------------------------------------------

def _excluded(rel_parts: tuple) -> bool:
    """plugin.sig at the top, and ``__pycache__`` (with the ``*.pyc`` Python writes there).

    A ``.pyc`` elsewhere is hashed: Python imports a lone ``name.pyc`` as module ``name``.
    """
    return rel_parts == (SIGNATURE_FILE,) or "__pycache__" in rel_parts


def _walk_error(exc: OSError) -> None:
    """os.walk skips unreadable directories silently; a skipped directory would escape the hashes."""
    raise SecurityError(f"{exc.filename}: cannot read ({exc.strerror}); every file of a plugin must be readable")


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def hash_manifest(plugin_dir) -> dict[str, str]:
    """sha256 of every regular file below ``plugin_dir``, by relative posix path, sorted.

    Left out: ``plugin.sig`` at the top and Python's byte-code caches (``__pycache__``
    directories, with the ``*.pyc`` files Python rewrites there on import). A symlink to a file inside the directory is hashed as that
    file; a symlink leading outside, a symlink to a directory and special files are refused.
    """
    root = Path(plugin_dir).resolve()
    if not root.is_dir():
        raise SecurityError(f"{plugin_dir}: not a directory")
    hashes = {}
    for dirpath, dirnames, filenames in os.walk(root, onerror=_walk_error, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for entry in sorted(dirnames + filenames):
            full = here / entry
            rel = full.relative_to(root)
            if _excluded(rel.parts):
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                target = Path(os.path.realpath(full))
                if not target.is_relative_to(root):
                    raise SecurityError(f"{full}: symlink to {target}, outside the plugin directory {root}; "
                                        f"copy the file into the plugin instead")
                if not target.exists():
                    raise SecurityError(f"{full}: dangling symlink to {target}; remove it")
                if target.is_dir():
                    raise SecurityError(f"{full}: symlink to a directory; replace it with a real directory")
                if not target.is_file():
                    raise SecurityError(f"{full}: symlink to {target}, which is not a regular file; remove it")
                hashes[rel.as_posix()] = _sha256_file(str(target))
            elif stat.S_ISDIR(st.st_mode):
                continue  # walked by os.walk
            elif stat.S_ISREG(st.st_mode):
                hashes[rel.as_posix()] = _sha256_file(str(full))
            else:
                raise SecurityError(f"{full}: not a regular file (a device, pipe or socket); remove it from "
                                    f"the plugin directory")
    return dict(sorted(hashes.items()))


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def plugin_digest(hashes: dict[str, str]) -> str:
    """The plugin's identity: sha256 hex of the canonical JSON of its hash manifest."""
    return hashlib.sha256(_canonical(hashes)).hexdigest()


# ---- keys and signatures ----------------------------------------------------------------

def generate_keypair() -> tuple[bytes, bytes]:
    """A new ed25519 key pair as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    _need_cryptography()
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return private_pem, public_pem


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key) -> str:
    """The id a signature names its key by: sha256 hex of the raw 32-byte public key, first 16."""
    return hashlib.sha256(_raw_public(_load_public(key))).hexdigest()[:16]


def _load_private(private_key) -> Ed25519PrivateKey:
    _need_cryptography()
    if isinstance(private_key, Ed25519PrivateKey):
        return private_key
    if isinstance(private_key, str):
        private_key = private_key.encode("ascii")
    try:
        key = serialization.load_pem_private_key(private_key, password=None)
    except (ValueError, TypeError) as exc:
        raise SecurityError(f"cannot read the signing key: {exc} (expected an unencrypted ed25519 PEM "
                            f"private key, as generate_keypair() writes)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SecurityError(f"the signing key is a {type(key).__name__}, not an ed25519 key")
    return key


def _load_public(key) -> Ed25519PublicKey:
    """An ed25519 public key from a key object, a PEM (bytes or str) or 32 raw bytes."""
    _need_cryptography()
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    if isinstance(key, str):
        key = key.encode("ascii")
    if isinstance(key, (bytes, bytearray)):
        key = bytes(key)
        if len(key) == 32:
            return Ed25519PublicKey.from_public_bytes(key)
        try:
            loaded = serialization.load_pem_public_key(key)
        except (ValueError, TypeError) as exc:
            raise SecurityError(f"cannot read a trusted key: {exc} (expected an ed25519 PEM public key "
                                f"or 32 raw bytes)") from None
        if not isinstance(loaded, Ed25519PublicKey):
            raise SecurityError(f"a trusted key is a {type(loaded).__name__}, not an ed25519 key")
        return loaded
    raise SecurityError(f"a trusted key is a {type(key).__name__}; give PEM bytes or 32 raw bytes")


def _write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write via a temp file in the same directory, fsync, rename: readers see old or new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(str(path.parent), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def sign_plugin(plugin_dir, private_key) -> Path:
    """Write ``<plugin_dir>/plugin.sig``: the hash manifest, its ed25519 signature and the key id."""
    key = _load_private(private_key)
    files = hash_manifest(plugin_dir)
    signature = key.sign(_canonical(files))
    doc = {
        "files": files,
        "signature": base64.b64encode(signature).decode("ascii"),
        "key_id": key_id(key.public_key()),
    }
    out = Path(plugin_dir) / SIGNATURE_FILE
    _write_atomic(out, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii"), mode=0o644)
    return out


@dataclass
class SignatureStatus:
    """``status``: "valid" (``key_id`` says by which key) or "unsigned". ``digest``: the plugin's identity."""

    status: str
    key_id: str | None = None
    digest: str | None = None


def _read_signature(sig_path: Path) -> dict:
    try:
        doc = json.loads(sig_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SecurityError(f"{sig_path}: cannot read the signature file: {exc}; sign the plugin again") from None
    if (not isinstance(doc, dict) or not isinstance(doc.get("files"), dict)
            or not isinstance(doc.get("signature"), str) or not isinstance(doc.get("key_id"), str)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc["files"].items())):
        raise SecurityError(f"{sig_path}: malformed signature file (needs 'files', 'signature' and 'key_id'); "
                            f"sign the plugin again")
    return doc


def verify_plugin(plugin_dir, trusted_keys: list, hashes: dict[str, str] | None = None) -> SignatureStatus:
    """Check ``plugin.sig`` against the trusted keys and the files as they are now.

    Returns status "unsigned" when there is no ``plugin.sig``; raises :class:`SecurityError` for
    a key not in ``trusted_keys``, a bad signature, or files changed, added or removed since signing.
    ``hashes``: the plugin's :func:`hash_manifest` when the caller already has it.
    """
    plugin_dir = Path(plugin_dir)
    current = hash_manifest(plugin_dir) if hashes is None else hashes
    digest = plugin_digest(current)
    sig_path = plugin_dir / SIGNATURE_FILE
    if not sig_path.exists() and not sig_path.is_symlink():
        return SignatureStatus("unsigned", None, digest)
    if sig_path.is_symlink() or not sig_path.is_file():
        raise SecurityError(f"{sig_path}: must be a regular file, not a symlink or directory")
    _need_cryptography()
    doc = _read_signature(sig_path)
    keys = {}
    for index, key in enumerate(trusted_keys or []):
        try:
            public = _load_public(key)
        except SecurityError as exc:
            raise SecurityError(f"trusted key #{index + 1}: {exc}") from None
        keys[key_id(public)] = public
    kid = doc["key_id"]
    public = keys.get(kid)
    if public is None:
        raise SecurityError(f"{plugin_dir}: signed by unknown key {kid}; add its public key to the trusted keys "
                            f"if you trust whoever signed it")
    try:
        signature = base64.b64decode(doc["signature"], validate=True)
        public.verify(signature, _canonical(doc["files"]))
    except (InvalidSignature, binascii.Error, ValueError):
        raise SecurityError(f"{sig_path}: bad signature (key {kid}): the signature file was altered or made "
                            f"with another key; do not load this plugin, get it again from its author") from None
    signed = doc["files"]
    modified = sorted(p for p in signed if p in current and current[p] != signed[p])
    added = sorted(p for p in current if p not in signed)
    removed = sorted(p for p in signed if p not in current)
    if modified or added or removed:
        parts = []
        for label, items in (("modified", modified), ("added", added), ("removed", removed)):
            if items:
                parts.append(f"{label}: {', '.join(items)}")
        raise SecurityError(f"{plugin_dir}: files changed since the plugin was signed ({'; '.join(parts)}); "
                            f"reinstall the plugin, or have its author sign it again")
    return SignatureStatus("valid", kid, digest)


# ---- directory safety -------------------------------------------------------------------

def _owner_ok(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def _chain(path: Path):
    """``path`` and its parents, stopping before '/'."""
    while path != path.parent:
        yield path
        path = path.parent


def check_directory_safe(path) -> None:
    """Raise :class:`SecurityError` when someone other than root or us could change the plugin.

    Refused: the plugin directory or a parent (up to, not including, '/') owned by another user
    or writable by group/other without the sticky bit (checked for the path as given and after
    resolving symlinks); anything inside the plugin directory owned by another user or writable
    by group/other. Inside the plugin the sticky bit does not help: adding a file (a module that
    shadows an import) is enough to take it over.
    """
    given = Path(os.path.abspath(path))
    real = Path(os.path.realpath(path))
    if not real.is_dir():
        raise SecurityError(f"{path}: not a directory")
    fix = "fix it with: chmod go-w {p} (or chown to root or yourself), or move the plugin elsewhere"
    checked = set()
    for base in (given, real):
        for index, ancestor in enumerate(_chain(base)):
            if ancestor in checked:
                continue
            checked.add(ancestor)
            st = os.stat(ancestor)
            mode = stat.S_IMODE(st.st_mode)
            what = "plugin directory" if index == 0 else "parent directory"
            if not _owner_ok(st):
                raise SecurityError(f"{ancestor}: {what} of {path} is owned by uid {st.st_uid}, not by root or "
                                    f"you (uid {os.geteuid()}): that user could change the plugin; "
                                    + fix.format(p=ancestor))
            loose = mode & (stat.S_IWGRP | stat.S_IWOTH)
            sticky = mode & stat.S_ISVTX and index > 0
            if loose and not sticky:
                raise SecurityError(f"{ancestor}: {what} of {path} is writable by "
                                    f"{_who(mode)} (mode {mode:04o}): they could change the plugin; "
                                    + fix.format(p=ancestor))
    for dirpath, dirnames, filenames in os.walk(real, onerror=_walk_error, followlinks=False):
        for entry in dirnames + filenames:
            full = os.path.join(dirpath, entry)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                continue  # its target is inside (hash_manifest refuses others) and checked as itself
            mode = stat.S_IMODE(st.st_mode)
            if not _owner_ok(st):
                raise SecurityError(f"{full}: owned by uid {st.st_uid}, not by root or you (uid {os.geteuid()}): "
                                    f"that user could change the plugin; fix it with: chown -R {os.geteuid()} {real}")
            if mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise SecurityError(f"{full}: writable by {_who(mode)} (mode {mode:04o}): they could change "
                                    f"the plugin; fix it with: chmod -R go-w {real}")


def _who(mode: int) -> str:
    return " and ".join(w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if mode & bit)


# ---- policy and approvals ---------------------------------------------------------------

@dataclass
class SecurityPolicy:
    """``require_signatures``: refuse unsigned plugins. ``pinned``: name -> expected digest."""

    require_signatures: bool = False
    trusted_keys: list = field(default_factory=list)
    pinned: dict = field(default_factory=dict)


@dataclass
class ApprovalStatus:
    """``status`` is one of approved, not_approved, changed, permissions_grown, critical_not_approved."""

    approved: bool
    status: str
    reason: str | None = None
    record: dict | None = None


class Approvals:
    """The user's approvals of plugins, kept in a JSON file (mode 0600, written atomically)."""

    FORMAT = 1

    def __init__(self, path, records: dict | None = None):
        self.path = Path(path).expanduser()
        self.records: dict = dict(records or {})

    @classmethod
    def load(cls, path) -> "Approvals":
        """Read the file; a missing file is no approvals. One that others can write is refused."""
        path = Path(path).expanduser()
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return cls(path)
        mode = stat.S_IMODE(st.st_mode)
        if not _owner_ok(st) or mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise SecurityError(f"{path}: the approvals file is owned by uid {st.st_uid} with mode {mode:04o}; "
                                f"only root or you may be able to write it (chmod 600 {path})")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise SecurityError(f"{path}: cannot read the approvals file: {exc}; fix or remove it "
                                f"(then approve the plugins again)") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("plugins"), dict):
            raise SecurityError(f"{path}: malformed approvals file (no 'plugins' table); fix or remove it")
        return cls(path, doc["plugins"])

    def save(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        doc = {"format": self.FORMAT, "plugins": dict(sorted(self.records.items()))}
        _write_atomic(self.path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8"), mode=0o600)

    def approve(self, meta: PluginMetadata, digest: str, permissions=None, critical: bool = False) -> dict:
        """Record (and save) the user's approval of this plugin's content and permissions.

        ``permissions`` defaults to the plugin's declared ones; ``critical`` allows the critical
        permissions among them (see ``api.CRITICAL_PERMISSIONS``).
        """
        perms = list(meta.permissions if permissions is None else permissions)
        unknown = [p for p in perms if p not in PERMISSIONS]
        if unknown:
            raise SecurityError(f"cannot approve unknown permission(s) {', '.join(unknown)} for {meta.name}")
        record = {
            "name": meta.name,
            "version": meta.version,
            "digest": digest,
            "permissions": sorted(set(perms)),
            "critical": bool(critical),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.records[meta.name] = record
        self.save()
        return record

    def revoke(self, name: str) -> bool:
        """Forget the approval of ``name`` (saved); True when there was one."""
        if name not in self.records:
            return False
        del self.records[name]
        self.save()
        return True

    def get(self, name: str) -> dict | None:
        return self.records.get(name)

    def check(self, meta: PluginMetadata, digest: str) -> ApprovalStatus:
        """Is this exact plugin (content and version) approved with all it now declares?"""
        record = self.records.get(meta.name)
        approve = APPROVE_COMMAND.format(name=meta.name)
        if not isinstance(record, dict):
            return ApprovalStatus(False, "not_approved",
                                  f"plugin {meta.name} {meta.version} is not approved (permissions: "
                                  f"{', '.join(meta.permissions) or 'none'}); approve it with: {approve}")
        if record.get("digest") != digest or record.get("version") != meta.version:
            changes = []
            if record.get("version") != meta.version:
                changes.append(f"version {record.get('version')} -> {meta.version}")
            if record.get("digest") != digest:
                changes.append("its files changed")
            return ApprovalStatus(False, "changed",
                                  f"plugin {meta.name} changed since it was approved ({', '.join(changes)}); "
                                  f"review it and approve it again with: {approve}", record)
        granted = set(record.get("permissions") or [])
        grown = sorted(set(meta.permissions) - granted)
        if grown:
            return ApprovalStatus(False, "permissions_grown",
                                  f"plugin {meta.name} now declares permissions that were not approved: "
                                  f"{', '.join(grown)}; approve it again with: {approve}", record)
        critical = sorted(p for p in meta.permissions if p in CRITICAL_PERMISSIONS)
        if critical and not record.get("critical"):
            return ApprovalStatus(False, "critical_not_approved",
                                  f"plugin {meta.name} uses critical permission(s) {', '.join(critical)}, which "
                                  f"need an explicit approval of critical operations: "
                                  f"{APPROVE_CRITICAL_COMMAND.format(name=meta.name)}", record)
        return ApprovalStatus(True, "approved", None, record)


# ---- the decision -----------------------------------------------------------------------

@dataclass
class Decision:
    """May the plugin load? ``signature``: valid, unsigned, invalid or unchecked; ``digest``: identity."""

    allowed: bool
    reason: str | None = None
    warnings: list = field(default_factory=list)
    signature: str = "unchecked"
    digest: str = ""


def _norm_digest(value) -> str:
    text = str(value).strip().lower()
    return text[len("sha256:"):] if text.startswith("sha256:") else text


def evaluate(meta: PluginMetadata, policy: SecurityPolicy | None = None, approvals: Approvals | None = None,
             trusted_keys: list | None = None) -> Decision:
    """Run every security check on one plugin, in order: directory, hash and pin, signature, approval.

    ``trusted_keys`` adds to ``policy.trusted_keys``. Built-in plugins (``source == "builtin"``)
    are hashed and pinned like the others, do not need a signature and count as approved for
    their non-critical permissions; their critical permissions need an approval like any plugin's.
    """
    policy = policy or SecurityPolicy()
    decision = Decision(allowed=False)
    builtin = meta.source == "builtin"
    if not meta.path:
        decision.reason = f"plugin {meta.name}: no directory to check"
        return decision
    try:
        check_directory_safe(meta.path)
        hashes = hash_manifest(meta.path)
    except SecurityError as exc:
        decision.reason = f"plugin {meta.name}: {exc}"
        return decision
    decision.digest = plugin_digest(hashes)

    pin = policy.pinned.get(meta.name)
    if pin is not None and _norm_digest(pin) != decision.digest:
        decision.reason = (f"plugin {meta.name} {meta.version} does not match its pinned digest (pinned "
                           f"{_norm_digest(pin)}, found {decision.digest}): its files changed; if you trust the "
                           f"new version, update the pin")
        return decision

    try:
        status = verify_plugin(meta.path, list(policy.trusted_keys or []) + list(trusted_keys or []), hashes)
    except SecurityError as exc:
        decision.signature = "invalid"
        decision.reason = f"plugin {meta.name}: {exc}"
        return decision
    decision.signature = status.status
    if status.status == "unsigned" and not builtin:
        if policy.require_signatures:
            decision.reason = (f"plugin {meta.name} {meta.version} is unsigned and signatures are required; "
                               f"sign it (with a key you trust) or get a signed release")
            return decision
        decision.warnings.append(f"unsigned plugin: {meta.name} {meta.version} ({meta.path})")

    critical = [p for p in meta.permissions if p in CRITICAL_PERMISSIONS]
    if builtin and not critical:
        decision.allowed = True
        return decision
    approval = (approvals or Approvals(os.devnull)).check(meta, decision.digest)
    if not approval.approved:
        decision.reason = approval.reason
        return decision
    decision.allowed = True
    return decision
