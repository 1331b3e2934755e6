"""vfio_builtin_plugins: built-ins are discovered in the collection's builtin_plugins/ but load only when listed."""
from __future__ import annotations

import pytest

from ansible_collections.exliar.vfio.plugins.plugin_utils import api
from ansible_collections.exliar.vfio.plugins.plugin_utils._hooks import run_stage_hooks
from ansible_collections.exliar.vfio.plugins.plugin_utils._manifest import load_manifest
from ansible_collections.exliar.vfio.plugins.plugin_utils._security import hash_manifest
from ansible_collections.exliar.vfio.plugins.plugin_utils._session import (
    BUILTIN_DIR, PLUGIN_VARS, Settings, builtin_names, open_session,
)

BUILTINS = ["amd-reset", "nvidia-handler", "performance-monitor"]


def test_the_collection_ships_three_builtins_with_valid_non_critical_manifests():
    assert builtin_names() == BUILTINS
    for name in BUILTINS:
        meta = load_manifest(BUILTIN_DIR / name, "builtin")
        assert (meta.name, meta.version, meta.api_version, meta.author) == (name, "1.0.0", (1, 1), "Exliar VFIO developers")
        assert meta.warnings == []
        assert not set(meta.permissions) & set(api.CRITICAL_PERMISSIONS), "a built-in must load without an approval"
        assert set(hash_manifest(meta.path)) == {"README.md", "plugin.py", "plugin.toml"}, "stray files in the built-in"


def test_by_default_no_builtin_is_searched_or_loaded(host_vars, tmp_path):
    assert "vfio_builtin_plugins" in PLUGIN_VARS
    settings = Settings.from_vars({})
    assert settings.builtin == [] and all(source != "builtin" for _d, source in settings.search_dirs())
    assert open_session(host_vars([]), "h1", tmp_path / "run") is None, "no plugin: no session, as before"


def test_only_the_listed_builtins_load_and_they_need_no_approval(host_vars):
    result = run_stage_hooks({}, host_vars(["performance-monitor", "nvidia-handler"]), "detection", {})
    plugins = result["vfio_plugins"]
    assert sorted(plugins["loaded"]) == ["nvidia-handler", "performance-monitor"]
    assert plugins["rejected"] == {} and plugins["failures"] == []
    assert not any("unsigned" in w for w in plugins["warnings"]), "built-ins are not reported as unsigned plugins"


@pytest.mark.parametrize("value", [["nvidia-handlr"], "nvidia-handlr"])
def test_an_unknown_builtin_is_a_clear_error(host_vars, value):
    with pytest.raises(api.PluginError) as err:
        Settings.from_vars({"vfio_builtin_plugins": value})
    assert str(err.value) == ("vfio_builtin_plugins: no built-in plugin named nvidia-handlr; the built-ins are: "
                              "amd-reset, nvidia-handler, performance-monitor")
    result = run_stage_hooks({}, dict(host_vars([]), vfio_builtin_plugins=value), "detection", {})
    assert result["failed"] is True
    assert result["msg"].startswith("extension plugins: vfio_builtin_plugins: no built-in plugin named nvidia-handlr")


def test_vfio_builtin_plugins_must_be_a_list_of_names():
    with pytest.raises(api.PluginError, match="must be a list of built-in plugin names"):
        Settings.from_vars({"vfio_builtin_plugins": {"nvidia-handler": True}})
