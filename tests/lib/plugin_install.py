"""Install test plugins the way a user does: copied into a directory no one else can write to,
and approved (digest and permissions) in a private approvals file."""
from __future__ import annotations

import shutil
from pathlib import Path

from ansible_collections.exliar.vfio.plugins.plugin_utils._manifest import load_manifest
from ansible_collections.exliar.vfio.plugins.plugin_utils._security import Approvals, hash_manifest, plugin_digest

TEST_PLUGINS = Path(__file__).resolve().parents[1] / "integration" / "plugins"


def install_plugins(base: Path, names, approve=None, sources: Path = TEST_PLUGINS) -> tuple:
    """Copy plugins from ``sources`` into ``base/plugins`` and approve ``approve`` (default: all of
    them) in ``base/approvals.json``; returns (plugin directory, approvals file)."""
    pdir = base / "plugins"
    pdir.mkdir(mode=0o755)
    for name in names:
        shutil.copytree(sources / name, pdir / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path in [pdir, *pdir.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o022)
    approvals = Approvals.load(base / "approvals.json")
    for name in names if approve is None else approve:
        meta = load_manifest(pdir / name)
        approvals.approve(meta, plugin_digest(hash_manifest(meta.path)), meta.permissions)
    return pdir, base / "approvals.json"
