# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading and validating a plugin's ``plugin.toml`` manifest.

Validation is strict: an unknown key is far more often a typo (``permission`` for
``permissions``, ``optinal`` for ``optional``) than an intention, and a typo silently ignored
would load a plugin with other permissions or dependencies than its author meant.
"""
from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path

from ansible_collections.exliar.vfio.plugins.plugin_utils.api import (
    PERMISSIONS,
    PluginDependency,
    PluginError,
    PluginMetadata,
)

from ansible_collections.exliar.vfio.plugins.plugin_utils._deps import (  # one guarded import of packaging
    HAS_PACKAGING,
    InvalidSpecifier,
    InvalidVersion,
    SpecifierSet,
    Version,
)

MANIFEST = "plugin.toml"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
NAME_MAX = 64
API_RE = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
TIMEOUT_MAX = 600

REQUIRED_KEYS = ("name", "version", "description", "author", "api_version")
OPTIONAL_KEYS = ("tested_api", "entry", "critical", "timeout", "permissions", "dependencies")
KNOWN_KEYS = REQUIRED_KEYS + OPTIONAL_KEYS
DEPENDENCY_KEYS = ("version", "optional")


class ManifestError(PluginError):
    """A ``plugin.toml`` that cannot be used. ``file`` and ``key`` say where."""

    def __init__(self, message: str, file: str | Path | None = None, key: str | None = None,
                 plugin: str | None = None):
        super().__init__(message, plugin=plugin)
        self.file = str(file) if file is not None else None
        self.key = key


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


class _Reader:
    """Validation helpers that know the file, so every error names it and the key."""

    def __init__(self, file: Path, data: dict):
        self.file = file
        self.data = data

    def fail(self, key: str, problem: str) -> ManifestError:
        return ManifestError(f"{self.file}: key '{key}': {problem}", file=self.file, key=key,
                             plugin=self.data.get("name") if isinstance(self.data.get("name"), str) else None)

    def string(self, key: str, value, *, nonempty: bool = True) -> str:
        if not isinstance(value, str):
            hint = f' (quote it: {key} = "{value}")' if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
            raise self.fail(key, f"must be a string, got {_type_name(value)}{hint}")
        if nonempty and not value.strip():
            raise self.fail(key, "must not be empty")
        return value

    def api(self, key: str, value) -> tuple:
        text = self.string(key, value)
        match = API_RE.match(text.strip())
        if not match:
            raise self.fail(key, f'{text!r} is not "MAJOR.MINOR" (for example "1.0")')
        return int(match.group(1)), int(match.group(2))

    def name(self, key: str, value) -> str:
        text = self.string(key, value)
        if not NAME_RE.match(text) or len(text) > NAME_MAX:
            raise self.fail(key, f"{text!r} is not a valid plugin name: use lower-case letters, digits and '-', "
                                 f"starting with a letter or digit, at most {NAME_MAX} characters")
        return text


def _parse_toml(file: Path) -> dict:
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{file}: no plugin manifest: a plugin directory needs a {MANIFEST} "
                            f"(name, version, description, author, api_version)", file=file) from None
    except OSError as exc:
        raise ManifestError(f"{file}: cannot read the manifest: {exc.strerror or exc}", file=file) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ManifestError(f"{file}:{line}: not valid UTF-8 (byte {exc.start}); save the file as UTF-8",
                            file=file) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's TOMLDecodeError has no lineno attribute; the message ends "(at line L, column C)".
        msg = str(exc)
        where = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        if where:
            problem = msg[:where.start()].strip()
            raise ManifestError(f"{file}:{where.group(1)}: TOML syntax error at line {where.group(1)}, column "
                                f"{where.group(2)}: {problem}", file=file) from None
        if msg.endswith("(at end of document)"):
            last = text.count("\n") + (0 if text.endswith("\n") else 1)
            problem = msg[:-len("(at end of document)")].strip()
            raise ManifestError(f"{file}:{last}: TOML syntax error at the end of the file (line {last}): {problem}",
                                file=file) from None
        raise ManifestError(f"{file}: TOML syntax error: {msg}", file=file) from None


def _dependencies(rd: _Reader, value, own_name: str) -> list:
    if not isinstance(value, dict):
        raise rd.fail("dependencies", f"must be a table ([dependencies]), got {_type_name(value)}")
    deps = []
    for dep_name, spec in value.items():
        key = f"dependencies.{dep_name}"
        if not NAME_RE.match(dep_name) or len(dep_name) > NAME_MAX:
            raise rd.fail(key, f"{dep_name!r} is not a valid plugin name: use lower-case letters, digits and '-'")
        if dep_name == own_name:
            raise rd.fail(key, "a plugin cannot depend on itself; remove this entry")
        optional = False
        if isinstance(spec, str):
            version_req = spec
            vkey = key
        elif isinstance(spec, dict):
            for sub in spec:
                if sub not in DEPENDENCY_KEYS:
                    raise rd.fail(f"{key}.{sub}", f"unknown key{_suggest(sub, DEPENDENCY_KEYS)}; a dependency table "
                                                  f"takes only 'version' and 'optional'")
            version_req = spec.get("version", "")
            vkey = f"{key}.version"
            if not isinstance(version_req, str):
                raise rd.fail(vkey, f'must be a string such as ">=1.0.0", got {_type_name(version_req)}')
            optional = spec.get("optional", False)
            if not isinstance(optional, bool):
                raise rd.fail(f"{key}.optional", f"must be true or false, got {_type_name(optional)}")
        else:
            raise rd.fail(key, f'must be a version requirement string (other = ">=1.0.0") or a table with '
                               f"'version' and 'optional', got {_type_name(spec)}")
        version_req = version_req.strip()
        try:
            SpecifierSet(version_req)
        except InvalidSpecifier:
            raise rd.fail(vkey, f"{version_req!r} is not a version requirement: write it like \">=1.0.0\", "
                                f"\">=1.0,<2\" or \"==1.2.3\" (empty for any version)") from None
        deps.append(PluginDependency(name=dep_name, version_req=version_req, optional=optional))
    return deps


def load_manifest(plugin_dir: Path, source: str = "directory") -> PluginMetadata:
    """Read and validate ``<plugin_dir>/plugin.toml``; raise :class:`ManifestError` on any problem."""
    if not HAS_PACKAGING:
        raise PluginError("reading plugin manifests needs the Python package 'packaging' on the controller "
                          "(it comes with ansible-core): pip install packaging")
    plugin_dir = Path(plugin_dir)
    file = plugin_dir / MANIFEST
    data = _parse_toml(file)
    rd = _Reader(file, data)

    for key in data:
        if key not in KNOWN_KEYS:
            raise rd.fail(key, f"unknown key{_suggest(key, KNOWN_KEYS)}; known keys: {', '.join(KNOWN_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise rd.fail(key, f"required key is missing; add it, e.g. {_EXAMPLES[key]}")

    name = rd.name("name", data["name"])
    version = rd.string("version", data["version"]).strip()
    try:
        Version(version)
    except InvalidVersion:
        raise rd.fail("version", f"{version!r} is not a valid version: use semantic versioning such as "
                                 f"\"0.1.0\" or \"1.2.0rc1\"") from None
    description = rd.string("description", data["description"])
    author = rd.string("author", data["author"])
    api_version = rd.api("api_version", data["api_version"])

    tested_api = []
    if "tested_api" in data:
        value = data["tested_api"]
        if not isinstance(value, list):
            raise rd.fail("tested_api", f'must be a list such as ["1.0"], got {_type_name(value)}')
        for item in value:
            parsed = rd.api("tested_api", item)
            if parsed not in tested_api:
                tested_api.append(parsed)

    entry = data.get("entry", "plugin.py")
    entry = rd.string("entry", entry)
    _check_entry(rd, plugin_dir, entry)

    critical = data.get("critical", False)
    if not isinstance(critical, bool):
        raise rd.fail("critical", f"must be true or false, got {_type_name(critical)}")

    timeout = data.get("timeout", 30)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise rd.fail("timeout", f"must be a number of seconds, got {_type_name(timeout)}")
    if not 0 < timeout <= TIMEOUT_MAX:
        raise rd.fail("timeout", f"must be more than 0 and at most {TIMEOUT_MAX} seconds, got {timeout}")

    permissions = []
    if "permissions" in data:
        value = data["permissions"]
        if not isinstance(value, list):
            raise rd.fail("permissions", f'must be a list such as ["system:read"], got {_type_name(value)}')
        for perm in value:
            if not isinstance(perm, str):
                raise rd.fail("permissions", f"each permission must be a string, got {_type_name(perm)}")
            if perm not in PERMISSIONS:
                raise rd.fail("permissions", f"unknown permission {perm!r}{_suggest(perm, PERMISSIONS)}; "
                                             f"known permissions: {', '.join(PERMISSIONS)}")
            if perm not in permissions:
                permissions.append(perm)

    dependencies = _dependencies(rd, data["dependencies"], name) if "dependencies" in data else []

    warnings = []
    if name != plugin_dir.name:
        warnings.append(f"{file}: plugin name {name!r} differs from its directory name {plugin_dir.name!r}")

    return PluginMetadata(
        name=name, version=version, description=description, author=author, api_version=api_version,
        dependencies=dependencies, permissions=permissions, critical=critical, timeout=float(timeout),
        tested_api=tested_api, entry=entry, path=str(plugin_dir), source=source, warnings=warnings,
    )


_EXAMPLES = {
    "name": 'name = "my-plugin"',
    "version": 'version = "0.1.0"',
    "description": 'description = "What the plugin does"',
    "author": 'author = "Your Name"',
    "api_version": 'api_version = "1.0"',
}


def _check_entry(rd: _Reader, plugin_dir: Path, entry: str) -> None:
    """The entry module must be a .py file inside the plugin directory (after resolving symlinks)."""
    rel = Path(entry)
    if rel.is_absolute() or ".." in rel.parts:
        raise rd.fail("entry", f"{entry!r} must be a path relative to the plugin directory, without '..'")
    if rel.suffix != ".py":
        raise rd.fail("entry", f"{entry!r} must be a Python file ending in .py (exporting create_plugin())")
    root = plugin_dir.resolve()
    target = (plugin_dir / rel).resolve()
    if not target.is_relative_to(root):
        raise rd.fail("entry", f"{entry!r} resolves to {target}, outside the plugin directory {root}; "
                               f"keep the plugin's code inside its directory")
    if not target.is_file():
        raise rd.fail("entry", f"{entry!r} does not exist in {plugin_dir}; create it (it must define "
                               f"create_plugin()) or point 'entry' at the plugin's module")
