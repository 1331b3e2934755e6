# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plugin management for playbooks/plugins.yml and the plugins lookup.

Listing never executes a plugin: the hooks it implements are read from its source with
``ast``, so an unapproved plugin is inspected without running any of its code.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

from ansible_collections.exliar.vfio.plugins.plugin_utils import api
from ansible_collections.exliar.vfio.plugins.plugin_utils._deps import check_api
from ansible_collections.exliar.vfio.plugins.plugin_utils._manager import PluginManager
from ansible_collections.exliar.vfio.plugins.plugin_utils._security import (
    Approvals, SecurityError, SecurityPolicy, evaluate, generate_keypair, sign_plugin, verify_plugin,
)
from ansible_collections.exliar.vfio.plugins.plugin_utils._security import _load_private as load_private_key
from ansible_collections.exliar.vfio.plugins.plugin_utils._session import (
    Settings, disabled_file, discover, load_disabled, read_keys,
)


def _save_disabled(settings: Settings, names: set) -> None:
    path = disabled_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(sorted(names)) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)


def static_hooks(meta: api.PluginMetadata) -> list:
    """Hook names defined in the plugin's entry module (read, not executed)."""
    try:
        tree = ast.parse((Path(meta.path) / meta.entry).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return []
    names = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return [h for h in api.HOOKS if h in names]


def _all(settings: Settings):
    probe = PluginManager()
    return discover(settings, probe), probe.rejected


def _find(settings: Settings, name: str) -> api.PluginMetadata:
    metas, rejected = _all(settings)
    for m in metas:
        if m.name == name:
            return m
    if name in rejected:
        raise api.PluginError(f"plugin {name}: {rejected[name]}")
    known = ", ".join(sorted(m.name for m in metas)) or "none"
    raise api.PluginError(f"no plugin named {name!r} in the plugin directories (found: {known})")


def describe(settings: Settings) -> list:
    """Every plugin found, with what a user decides on: version, source, API compatibility,
    signature, permissions, hooks, approval and enablement."""
    metas, rejected = _all(settings)
    policy = SecurityPolicy(settings.require_signatures, read_keys(settings.trusted_keys), dict(settings.pins))
    approvals = Approvals.load(settings.approvals_file)
    disabled = load_disabled(settings) | {n for n, c in settings.plugins.items()
                                          if isinstance(c, dict) and c.get("enabled") is False}
    out = []
    for m in metas:
        try:
            api_notes = check_api(m)
            api_status = "compatible" + (f" ({'; '.join(api_notes)})" if api_notes else "")
        except api.PluginError as exc:
            api_status = f"incompatible: {exc}"
        decision = evaluate(m, policy, approvals)
        out.append({
            "name": m.name, "version": m.version, "description": m.description, "author": m.author,
            "source": m.source, "path": m.path, "api_version": ".".join(map(str, m.api_version)),
            "api": api_status, "signature": decision.signature, "digest": decision.digest,
            "permissions": list(m.permissions), "critical": m.critical, "hooks": static_hooks(m),
            "dependencies": [{"name": d.name, "version": d.version_req, "optional": d.optional} for d in m.dependencies],
            "loadable": decision.allowed, "reason": decision.reason, "warnings": list(decision.warnings),
            "enabled": m.name not in disabled,
        })
    for name, reason in sorted(rejected.items()):
        out.append({"name": name, "loadable": False, "reason": reason, "enabled": False})
    return out


def approve(settings: Settings, name: str, critical: bool = False) -> dict:
    meta = _find(settings, name)
    check_api(meta)
    decision = evaluate(meta, SecurityPolicy(settings.require_signatures, read_keys(settings.trusted_keys),
                                             dict(settings.pins)), Approvals(Path("/dev/null")))
    if not decision.digest:
        raise api.PluginError(decision.reason or f"plugin {name} cannot be hashed")
    if decision.signature == "invalid":
        raise api.PluginError(decision.reason)
    approvals = Approvals.load(settings.approvals_file)
    return approvals.approve(meta, decision.digest, meta.permissions, critical)


def revoke(settings: Settings, name: str) -> bool:
    return Approvals.load(settings.approvals_file).revoke(name)


def set_enabled(settings: Settings, name: str, enabled: bool) -> bool:
    """Returns True when the state changed."""
    _find(settings, name)
    names = load_disabled(settings)
    before = set(names)
    (names.discard if enabled else names.add)(name)
    if names != before:
        _save_disabled(settings, names)
    return names != before


def verify(settings: Settings, name: str | None = None) -> list:
    rows = [r for r in describe(settings) if name in (None, "", r["name"])]
    if name and not rows:
        raise api.PluginError(f"no plugin named {name!r}")
    return rows


def keygen(path: str) -> dict:
    priv, pub = generate_keypair()
    key = Path(path).expanduser()
    if key.exists():
        raise api.PluginError(f"{key} exists; choose another path (a key is never overwritten)")
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes(priv)
    key.chmod(0o600)
    Path(f"{key}.pub").write_bytes(pub)
    return {"private_key": str(key), "public_key": f"{key}.pub"}


def sign(settings: Settings, name: str, key_path: str) -> dict:
    meta = _find(settings, name)
    try:
        sig = sign_plugin(meta.path, Path(key_path).expanduser().read_bytes())
        status = verify_plugin(meta.path, [load_private_key(Path(key_path).expanduser().read_bytes()).public_key()])
    except (OSError, SecurityError) as exc:
        raise api.PluginError(f"cannot sign {name}: {exc}") from exc
    return {"signature_file": str(sig), "key_id": status.key_id}
