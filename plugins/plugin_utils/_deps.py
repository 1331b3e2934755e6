# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plugin API compatibility and dependency resolution (load order, rejections, warnings)."""
from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from ansible_collections.exliar.vfio.plugins.plugin_utils.api import API_VERSION, PluginError, PluginMetadata

try:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version
except ImportError:  # ansible-core depends on packaging; only a bare test venv lacks it
    HAS_PACKAGING = False
    InvalidSpecifier = InvalidVersion = ValueError
    SpecifierSet = Version = None
else:
    HAS_PACKAGING = True


def _api_tuple(value) -> tuple:
    """(major, minor) from a tuple/list of ints or a "MAJOR.MINOR" string (facts turn tuples into lists)."""
    if isinstance(value, str):
        major, _sep, minor = value.strip().partition(".")
        return int(major), int(minor or 0)
    major, minor = tuple(value)[:2]
    return int(major), int(minor)


def _api_str(value: tuple) -> str:
    return f"{value[0]}.{value[1]}"


def check_api(meta: PluginMetadata, ours: tuple = API_VERSION) -> list[str]:
    """Raise :class:`PluginError` when the plugin cannot run on API ``ours``; return warnings.

    Compatible: same major and the plugin's minor <= ours (minors only add). A plugin that lists
    ``tested_api`` without our version gets an "untested combination" warning.
    """
    ours = _api_tuple(ours)
    try:
        theirs = _api_tuple(meta.api_version)
    except (TypeError, ValueError):
        raise PluginError(f"plugin {meta.name!r}: api_version {meta.api_version!r} is not MAJOR.MINOR",
                          plugin=meta.name) from None
    if theirs[0] != ours[0]:
        raise PluginError(
            f"plugin {meta.name!r} {meta.version} is written for plugin API {_api_str(theirs)}, but this collection "
            f"provides API {_api_str(ours)} (a different major version, not compatible): use a release of the "
            f"plugin made for API {ours[0]}.x" + (", or an older exliar.vfio" if theirs[0] < ours[0] else
                                                  ", or a newer exliar.vfio"),
            plugin=meta.name)
    if theirs[1] > ours[1]:
        raise PluginError(
            f"plugin {meta.name!r} {meta.version} needs plugin API {_api_str(theirs)}, but this collection provides "
            f"only {_api_str(ours)}: update exliar.vfio, or use an older release of the plugin",
            plugin=meta.name)
    warnings = []
    if meta.tested_api:
        tested = []
        for item in meta.tested_api:
            try:
                tested.append(_api_tuple(item))
            except (TypeError, ValueError):
                continue
        if ours not in tested:
            warnings.append(
                f"plugin {meta.name!r} {meta.version}: untested combination: its author tested it with API "
                f"{', '.join(_api_str(t) for t in tested) or '(none)'}, this collection provides {_api_str(ours)}")
    return warnings


@dataclass
class Resolution:
    """The outcome of :func:`resolve`: load ``order``; ``rejected`` name -> reason; ``warnings``."""

    order: list = field(default_factory=list)
    rejected: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


def _req_text(name: str, version_req: str) -> str:
    return f"{name} {version_req}" if version_req else name


def _matches(version_req: str, version: str) -> bool | None:
    """Does ``version`` satisfy ``version_req``? None when either cannot be parsed.

    Pre-releases count: the installed plugin is what the user chose to install.
    """
    try:
        return SpecifierSet(version_req).contains(Version(version), prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return None


def _canonical_cycle(path: list) -> str:
    """'a -> b -> c -> a', rotated to start at the smallest name so every member names it alike."""
    body = path[:-1]
    start = body.index(min(body))
    body = body[start:] + body[:start]
    return " -> ".join(body + [body[0]])


def _cycle_through(node: str, edges: dict, members: set) -> list:
    """Shortest cycle node -> ... -> node inside ``members`` (BFS)."""
    prev = {}
    queue = deque([node])
    seen = {node}
    while queue:
        cur = queue.popleft()
        for nxt in edges.get(cur, ()):
            if nxt not in members:
                continue
            if nxt == node:
                path = [cur]
                while path[-1] != node:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [node]
            if nxt not in seen:
                seen.add(nxt)
                prev[nxt] = cur
                queue.append(nxt)
    return [node, node]


def _strongly_connected(nodes: list, edges: dict) -> list:
    """Tarjan's algorithm, iterative; returns the components (lists of names)."""
    index = {}
    low = {}
    on_stack = set()
    stack = []
    comps = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                comps.append(comp)
    return comps


def _reaches(start: str, goal: str, edges: dict) -> bool:
    seen = {start}
    queue = deque([start])
    while queue:
        cur = queue.popleft()
        if cur == goal:
            return True
        for nxt in edges.get(cur, ()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return False


def resolve(metas: dict[str, PluginMetadata], rejected: dict[str, str] | None = None) -> Resolution:
    """Work out which plugins can load and in which order.

    ``metas``: every installed plugin by name. ``rejected``: plugins already refused for another
    reason (API, security, disabled...); they count as installed-but-unloadable, so their dependents
    are rejected with the chain rather than told the dependency is missing.

    Rules: a missing or mismatched required dependency rejects the plugin; a required-dependency
    cycle rejects every member; dependents of a rejected plugin are rejected, transitively; an
    optional dependency that is missing, mismatched or rejected is a warning only, and one that is
    present is ordered before its dependent (unless that would close a cycle: then a warning).
    Among plugins with no order between them, names sort alphabetically.
    """
    if not HAS_PACKAGING:
        raise PluginError("resolving plugin dependencies needs the Python package 'packaging' on the controller "
                          "(it comes with ansible-core): pip install packaging")
    res = Resolution()
    names = sorted(set(metas) | set(rejected or {}))
    for name, reason in sorted((rejected or {}).items()):
        res.rejected[name] = reason
    # chain[name] = (path of names to the root cause, root cause reason) for the reason text
    chain = {name: ([name], reason) for name, reason in res.rejected.items()}

    required: dict[str, list] = {n: [] for n in names}
    optional: dict[str, list] = {n: [] for n in names}

    def reject(name: str, reason: str) -> None:
        if name not in res.rejected:
            res.rejected[name] = reason
            chain[name] = ([name], reason)

    # 1. each plugin's own dependencies
    for name in sorted(metas):
        meta = metas[name]
        for dep in meta.dependencies or []:
            dep_name = dep.name
            version_req = (dep.version_req or "").strip()
            want = _req_text(dep_name, version_req)
            try:
                SpecifierSet(version_req)
            except InvalidSpecifier:
                reject(name, f"declares an invalid version requirement {version_req!r} for {dep_name}; "
                             f"fix its plugin.toml")
                continue
            installed = metas.get(dep_name)
            if dep.optional:
                if dep_name not in metas and dep_name not in res.rejected:
                    res.warnings.append(f"plugin {name!r}: optional dependency {want} is not installed; "
                                        f"the features that use it are off")
                    continue
                if installed is not None and version_req and not _matches(version_req, installed.version):
                    res.warnings.append(f"plugin {name!r}: optional dependency {want} is not satisfied "
                                        f"({dep_name} {installed.version} is installed); the features that "
                                        f"use it may not work")
                optional[name].append(dep_name)
                continue
            if dep_name not in metas and dep_name not in res.rejected:
                reject(name, f"needs {want} which is not installed")
                continue
            if installed is not None and version_req and not _matches(version_req, installed.version):
                reject(name, f"needs {want} but {dep_name} {installed.version} is installed")
                continue
            required[name].append(dep_name)

    # 2. cycles among required dependencies
    for comp in _strongly_connected(names, required):
        members = set(comp)
        if len(comp) == 1 and comp[0] not in required.get(comp[0], ()):
            continue
        for member in sorted(comp):
            cycle = _canonical_cycle(_cycle_through(member, required, members))
            reject(member, f"is part of a dependency cycle: {cycle}")

    # 3. dependents of rejected plugins, in rounds so the chain reported is a shortest one
    while True:
        newly = {}
        for name in names:
            if name in res.rejected:
                continue
            for dep_name in required[name]:
                if dep_name in res.rejected:
                    path, root_reason = chain[dep_name]
                    newly[name] = ([name] + path, root_reason, dep_name)
                    break
        if not newly:
            break
        for name, (path, root_reason, dep_name) in newly.items():
            root = path[-1]
            res.rejected[name] = (f"needs {dep_name}, which cannot load ({' -> '.join(path)}: "
                                  f"{root} {root_reason})")
            chain[name] = (path, root_reason)

    # 4. order what is left: required edges, then optional edges that do not close a cycle
    alive = [n for n in names if n in metas and n not in res.rejected]
    alive_set = set(alive)
    edges = {n: [d for d in required[n] if d in alive_set] for n in alive}
    for name in alive:
        for dep_name in optional[name]:
            if dep_name in res.rejected:
                res.warnings.append(f"plugin {name!r}: optional dependency {dep_name} cannot load "
                                    f"({res.rejected[dep_name]}); the features that use it are off")
                continue
            if dep_name not in alive_set or dep_name in edges[name]:
                continue
            if _reaches(dep_name, name, edges):
                res.warnings.append(f"plugin {name!r}: optional dependency {dep_name} also depends on "
                                    f"{name}; {dep_name} loads after {name}")
                continue
            edges[name].append(dep_name)

    dependents: dict[str, list] = {n: [] for n in alive}
    waiting = {n: len(edges[n]) for n in alive}
    for name in alive:
        for dep_name in edges[name]:
            dependents[dep_name].append(name)
    ready = [n for n in alive if waiting[n] == 0]
    heapq.heapify(ready)
    while ready:
        name = heapq.heappop(ready)
        res.order.append(name)
        for nxt in dependents[name]:
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                heapq.heappush(ready, nxt)
    return res
