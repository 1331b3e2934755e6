"""plugin.toml: what a plugin author writes, and the errors they get for mistakes."""
from __future__ import annotations

import textwrap

import pytest

from ansible_collections.exliar.vfio.plugins.plugin_utils import _manifest
from ansible_collections.exliar.vfio.plugins.plugin_utils._manifest import ManifestError, load_manifest
from ansible_collections.exliar.vfio.plugins.plugin_utils.api import PluginDependency, PluginError

BASE = """\
name = "example-plugin"
version = "0.1.0"
description = "An example plugin"
author = "Example Author"
api_version = "1.0"
"""


def make_plugin(tmp_path, toml: str, name: str = "example-plugin", files: dict | None = None):
    plugin = tmp_path / name
    plugin.mkdir()
    (plugin / "plugin.toml").write_text(textwrap.dedent(toml))
    for rel, text in (files if files is not None else {"plugin.py": "def create_plugin():\n    pass\n"}).items():
        (plugin / rel).parent.mkdir(parents=True, exist_ok=True)
        (plugin / rel).write_text(text)
    return plugin


def error_of(plugin) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest(plugin)
    return str(info.value)


def test_minimal_manifest_gets_the_defaults(tmp_path):
    plugin = make_plugin(tmp_path, BASE)
    meta = load_manifest(plugin)
    assert (meta.name, meta.version, meta.description, meta.author) == (
        "example-plugin", "0.1.0", "An example plugin", "Example Author")
    assert meta.api_version == (1, 0)
    assert meta.entry == "plugin.py"
    assert meta.critical is False
    assert meta.timeout == 30
    assert meta.permissions == [] and meta.dependencies == [] and meta.tested_api == []
    assert meta.path == str(plugin)
    assert meta.source == "directory"
    assert meta.warnings == []


def test_full_manifest_with_both_dependency_forms(tmp_path):
    plugin = make_plugin(tmp_path, BASE + """\
        tested_api = ["1.0", "1.1"]
        entry = "src/main.py"
        critical = true
        timeout = 12.5
        permissions = ["system:read", "devices:read", "system:read"]

        [dependencies]
        nvidia-handler = ">=1.0.0"
        any-version = ""

        [dependencies.perf-monitor]
        version = ">=0.5.0"
        optional = true
        """, files={"src/main.py": "def create_plugin():\n    pass\n"})
    meta = load_manifest(plugin, source="builtin")
    assert meta.tested_api == [(1, 0), (1, 1)]
    assert meta.entry == "src/main.py"
    assert meta.critical is True
    assert meta.timeout == 12.5
    assert meta.permissions == ["system:read", "devices:read"]
    assert meta.source == "builtin"
    assert meta.dependencies == [
        PluginDependency("nvidia-handler", ">=1.0.0", False),
        PluginDependency("any-version", "", False),
        PluginDependency("perf-monitor", ">=0.5.0", True),
    ]


def test_manifest_error_is_a_plugin_error_with_file_and_key(tmp_path):
    plugin = make_plugin(tmp_path, BASE + "timeout = 0\n")
    with pytest.raises(PluginError) as info:
        load_manifest(plugin)
    assert isinstance(info.value, ManifestError)
    assert info.value.file == str(plugin / "plugin.toml")
    assert info.value.key == "timeout"


def test_name_differing_from_directory_is_only_a_warning(tmp_path):
    plugin = make_plugin(tmp_path, BASE, name="renamed-dir")
    meta = load_manifest(plugin)
    assert meta.name == "example-plugin"
    assert len(meta.warnings) == 1
    assert "example-plugin" in meta.warnings[0] and "renamed-dir" in meta.warnings[0]


def test_missing_manifest(tmp_path):
    plugin = tmp_path / "empty"
    plugin.mkdir()
    msg = error_of(plugin)
    assert str(plugin / "plugin.toml") in msg and "no plugin manifest" in msg


def test_toml_syntax_error_names_file_and_line(tmp_path):
    plugin = make_plugin(tmp_path, BASE + 'permissions = ["system:read"\ntimeout = 5\n')
    msg = error_of(plugin)
    assert msg.startswith(f"{plugin / 'plugin.toml'}:")
    assert "TOML syntax error at line 7" in msg


def test_toml_syntax_error_at_end_of_file_names_the_last_line(tmp_path):
    plugin = make_plugin(tmp_path, BASE + 'permissions = ["system:read"\n')
    msg = error_of(plugin)
    assert msg.startswith(f"{plugin / 'plugin.toml'}:6: TOML syntax error at the end of the file (line 6)")
    assert "Unclosed array" in msg


@pytest.mark.parametrize("key", ["name", "version", "description", "author", "api_version"])
def test_missing_required_key(tmp_path, key):
    toml = "".join(line + "\n" for line in BASE.splitlines() if not line.startswith(key + " "))
    msg = error_of(make_plugin(tmp_path, toml))
    assert f"plugin.toml: key '{key}': required key is missing" in msg
    assert f"{key} = " in msg  # shows an example to add


@pytest.mark.parametrize("extra, key, words", [
    ('permission = ["system:read"]\n', "permission", "did you mean 'permissions'"),
    ("homepage = 'x'\n", "homepage", "unknown key"),
    ('[dependencies.other]\nversion = ">=1"\noptinal = true\n', "dependencies.other.optinal",
     "did you mean 'optional'"),
])
def test_unknown_keys(tmp_path, extra, key, words):
    msg = error_of(make_plugin(tmp_path, BASE + extra))
    assert f"plugin.toml: key '{key}'" in msg and words in msg


@pytest.mark.parametrize("replace, key, words", [
    (('version = "0.1.0"', "version = 1.0"), "version", 'must be a string, got a number (quote it: version = "1.0")'),
    (('version = "0.1.0"', 'version = "one"'), "version", "'one' is not a valid version"),
    (('name = "example-plugin"', 'name = "Example_Plugin"'), "name", "not a valid plugin name"),
    (('name = "example-plugin"', 'name = "-x"'), "name", "not a valid plugin name"),
    (('description = "An example plugin"', 'description = ""'), "description", "must not be empty"),
    (('author = "Example Author"', "author = ['a']"), "author", "must be a string, got a list"),
    (('api_version = "1.0"', "api_version = 1.0"), "api_version", "must be a string"),
    (('api_version = "1.0"', 'api_version = "1"'), "api_version", 'is not "MAJOR.MINOR"'),
    (('api_version = "1.0"', 'api_version = "1.0.0"'), "api_version", 'is not "MAJOR.MINOR"'),
])
def test_bad_required_values(tmp_path, replace, key, words):
    msg = error_of(make_plugin(tmp_path, BASE.replace(*replace)))
    assert f"plugin.toml: key '{key}'" in msg and words in msg


@pytest.mark.parametrize("extra, key, words", [
    ('tested_api = "1.0"\n', "tested_api", "must be a list"),
    ('tested_api = ["1.x"]\n', "tested_api", 'is not "MAJOR.MINOR"'),
    ("critical = 1\n", "critical", "must be true or false"),
    ("timeout = 0\n", "timeout", "more than 0 and at most 600"),
    ("timeout = 601\n", "timeout", "more than 0 and at most 600"),
    ("timeout = -1\n", "timeout", "more than 0"),
    ('timeout = "30"\n', "timeout", "must be a number of seconds"),
    ("timeout = true\n", "timeout", "must be a number of seconds"),
    ('permissions = "system:read"\n', "permissions", "must be a list"),
    ('permissions = ["system:reed"]\n', "permissions", "unknown permission 'system:reed' (did you mean 'system:read'?)"),
    ("permissions = [1]\n", "permissions", "must be a string"),
    ('dependencies = ">=1"\n', "dependencies", "must be a table"),
    ('[dependencies]\nother = "1.0.0"\n', "dependencies.other", "is not a version requirement"),
    ('[dependencies]\nother = 1\n', "dependencies.other", "must be a version requirement string"),
    ('[dependencies]\nBad_Name = ">=1"\n', "dependencies.Bad_Name", "not a valid plugin name"),
    ('[dependencies]\nexample-plugin = ">=1"\n', "dependencies.example-plugin", "cannot depend on itself"),
    ('[dependencies.other]\nversion = "=>1"\n', "dependencies.other.version", "is not a version requirement"),
    ('[dependencies.other]\nversion = 1\n', "dependencies.other.version", "must be a string"),
    ('[dependencies.other]\noptional = "yes"\n', "dependencies.other.optional", "must be true or false"),
])
def test_bad_optional_values(tmp_path, extra, key, words):
    msg = error_of(make_plugin(tmp_path, BASE + extra))
    assert f"{tmp_path / 'example-plugin' / 'plugin.toml'}: key '{key}'" in msg
    assert words in msg


def test_long_form_dependency_without_version_means_any(tmp_path):
    meta = load_manifest(make_plugin(tmp_path, BASE + "[dependencies.other]\noptional = true\n"))
    assert meta.dependencies == [PluginDependency("other", "", True)]


@pytest.mark.parametrize("entry, files, words", [
    ("missing.py", {"plugin.py": ""}, "does not exist"),
    ("plugin.so", {"plugin.so": ""}, "must be a Python file ending in .py"),
    ("../outside.py", {"plugin.py": ""}, "without '..'"),
    ("/etc/passwd.py", {"plugin.py": ""}, "relative to the plugin directory"),
    ("pkg", {"pkg/__init__.py": ""}, "ending in .py"),
])
def test_bad_entry(tmp_path, entry, files, words):
    msg = error_of(make_plugin(tmp_path, BASE + f'entry = "{entry}"\n', files=files))
    assert "plugin.toml: key 'entry'" in msg and words in msg


def test_default_entry_must_exist(tmp_path):
    msg = error_of(make_plugin(tmp_path, BASE, files={}))
    assert "key 'entry'" in msg and "'plugin.py' does not exist" in msg


def test_entry_symlinked_outside_the_directory(tmp_path):
    outside = tmp_path / "elsewhere.py"
    outside.write_text("def create_plugin():\n    pass\n")
    plugin = make_plugin(tmp_path, BASE, files={})
    (plugin / "plugin.py").symlink_to(outside)
    msg = error_of(plugin)
    assert "key 'entry'" in msg and "outside the plugin directory" in msg


def test_invalid_utf8(tmp_path):
    plugin = make_plugin(tmp_path, BASE)
    (plugin / "plugin.toml").write_bytes(BASE.encode() + b'author2 = "\xff"\n')
    msg = error_of(plugin)
    assert "plugin.toml:6: not valid UTF-8" in msg


def test_without_packaging_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(_manifest, "HAS_PACKAGING", False)
    with pytest.raises(PluginError, match="pip install packaging"):
        load_manifest(make_plugin(tmp_path, BASE))
