# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PluginManager: discovery, loading in dependency order, lifecycle, isolated hook dispatch."""
from __future__ import annotations

import copy
import functools
import importlib.util
import inspect
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from ansible_collections.exliar.vfio.plugins.plugin_utils import api
from ansible_collections.exliar.vfio.plugins.plugin_utils._bus import EventBus
from ansible_collections.exliar.vfio.plugins.plugin_utils._deps import check_api, resolve
from ansible_collections.exliar.vfio.plugins.plugin_utils._manifest import ManifestError, load_manifest

_NO_ARG = object()
HOOK_ARGUMENT = {
    "on_system_detected": "system", "on_device_enumeration": "devices", "on_gpu_detected": "gpu",
    "on_pre_vfio_bind": "device", "on_post_vfio_bind": "device",
    "on_pre_bootloader_update": "bootloader", "on_post_bootloader_update": "bootloader",
    "on_pre_vm_start": "vm_config", "on_post_vm_shutdown": "vm_stats", "on_ui_event": "event",
    "register_ui_elements": "ui_registry", "register_commands": "command_registry",
}


class CriticalPluginFailure(api.PluginError):
    """A plugin declared critical failed: the host must fail."""


@dataclass
class HookFailure:
    plugin: str
    hook: str
    error: str
    kind: str = "error"  # error | timeout | permission
    critical: bool = False
    host: str | None = None

    def as_dict(self) -> dict:
        return {"host": self.host, "plugin": self.plugin, "hook": self.hook, "error": self.error,
                "kind": self.kind, "critical": self.critical}


@dataclass
class HookCall:
    plugin: str
    hook: str
    ms: float
    ok: bool


def implemented_hooks(instance) -> list:
    """The hooks a plugin overrides (a hook left at the base class's no-op is skipped)."""
    cls = type(instance)
    return [h for h in api.HOOKS if getattr(cls, h, None) is not getattr(api.VfioPlugin, h)]


def misnamed_hooks(instance) -> list:
    """Methods that look like hooks but are not (``on_gpu_detect``): they would never be called."""
    out = []
    for name in dir(type(instance)):
        if (name.startswith("on_") or name.startswith("register_")) and name not in api.HOOKS \
                and callable(getattr(instance, name, None)) and not hasattr(api.VfioPlugin, name):
            out.append(name)
    return out


@functools.lru_cache(maxsize=1024)
def _arity(func, bound: bool) -> int | None:
    """How many of (ctx, arg) a hook function accepts; None when it takes ``*args``."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return max(len(positional) - (1 if bound else 0), 0)


def _call(fn, ctx, arg):
    """Call a hook with as many of (ctx, arg) as it accepts (hooks may take a subset)."""
    args = [ctx] if arg is _NO_ARG else [ctx, arg]
    func = getattr(fn, "__func__", None)
    n = _arity(func, True) if func is not None else _arity(fn, False)
    return fn(*(args if n is None else args[:n]))


class _Worker:
    """One thread that runs plugin calls in turn, so a call can be abandoned at its timeout.

    Starting a thread per call cost about half of a call; a timed-out worker is left to
    finish (or hang) on its own and a fresh one takes over.
    """

    def __init__(self):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="exliar-vfio-plugin-worker", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            job, done = self.jobs.get()
            job()
            done.set()

    def run(self, job, timeout: float) -> bool:
        """True when ``job`` finished within ``timeout`` seconds."""
        done = threading.Event()
        self.jobs.put((job, done))
        return done.wait(timeout)


class PluginManager:
    def __init__(self, host: str | None = None, config: dict | None = None, gate=None,
                 services: dict | None = None, logger=None):
        """``config``: ``vfio_plugins`` from the inventory (name -> {enabled, config});
        ``gate(meta) -> (allowed, reason, warnings)`` applies the security policy."""
        self.host = host
        self.config = dict(config or {})
        self.gate = gate
        self.services = dict(services or {})
        self.logger = logger
        self.plugins: dict = {}
        self.meta: dict = {}
        self.contexts: dict = {}
        self.disabled: set = set()
        self.hooks: dict = {}
        self.failures: list = []
        self.calls: list = []
        self.rejected: dict = {}
        self.warnings: list = []
        self.panels: dict = {}
        self.commands: dict = {}
        self.bus = EventBus(self._deliver)
        self._worker = None

    # ---- discovery and loading ---------------------------------------------------------
    def discover_plugins(self, plugin_dir, source: str = "directory") -> list:
        """Manifests of the plugins in a directory (one sub-directory each); nothing is imported."""
        found = []
        base = Path(plugin_dir).expanduser()
        if not base.is_dir():
            return found
        for sub in sorted(p for p in base.iterdir() if p.is_dir() and (p / "plugin.toml").exists()):
            try:
                found.append(load_manifest(sub, source))
            except ManifestError as exc:
                self.rejected[sub.name] = str(exc)
        return found

    def load_all(self, metas: list) -> list:
        """Load plugins in dependency order; returns the names loaded."""
        by_name = {}
        for m in metas:
            if m.name in by_name:
                self.warnings.append(f"plugin {m.name}: also found at {m.path}; using {by_name[m.name].path}")
                continue
            by_name[m.name] = m
        for name, m in list(by_name.items()):
            if self._config_of(name).get("enabled", True) is False:
                self.disabled.add(name)
        res = resolve(by_name)
        self.rejected.update(res.rejected)
        self.warnings.extend(res.warnings)
        loaded = []
        for name in res.order:
            if name in self.disabled:  # a disabled plugin's code is never imported
                self.meta[name] = by_name[name]
                by_name[name].enabled = False
                continue
            missing = [d.name for d in by_name[name].dependencies
                       if not d.optional and d.name not in self.plugins]
            if missing:
                why = "disabled" if any(m in self.disabled for m in missing) else "not loaded"
                self.rejected[name] = f"not loaded because its dependency {', '.join(missing)} was {why}"
                continue
            try:
                self._load(by_name[name])
                loaded.append(name)
            except api.PluginError as exc:
                self.rejected[name] = str(exc)
        return loaded

    def load_plugin(self, path) -> api.PluginMetadata:
        """Load one plugin directory (its dependencies must already be loaded)."""
        meta = load_manifest(Path(path))
        missing = [d.name for d in meta.dependencies if not d.optional and d.name not in self.plugins]
        if missing:
            raise api.PluginError(f"plugin {meta.name} needs {', '.join(missing)}: load it first", plugin=meta.name)
        self._load(meta)
        return meta

    def _load(self, meta: api.PluginMetadata) -> None:
        meta.warnings.extend(check_api(meta))
        if self.gate is not None:
            allowed, reason, warnings = self.gate(meta)
            meta.warnings.extend(warnings)
            if not allowed:
                raise api.PluginError(reason, plugin=meta.name)
        instance = self._instantiate(meta)
        for attr in ("name", "version", "description", "author"):
            if not getattr(instance, attr, None):
                setattr(instance, attr, getattr(meta, attr))
        if instance.name != meta.name:
            raise api.PluginError(f"plugin.toml says {meta.name!r} but create_plugin() returned {instance.name!r}",
                                  plugin=meta.name)
        meta.hooks = implemented_hooks(instance)
        for bad in misnamed_hooks(instance):
            meta.warnings.append(f"{bad}() looks like a hook but is not one, so it is never called "
                                 f"(hooks: {', '.join(api.HOOKS)})")
        declared = {d.name for d in meta.dependencies}
        for dep in instance.get_dependencies() or []:
            if dep.name not in declared:
                meta.warnings.append(f"get_dependencies() names {dep.name}, which plugin.toml does not declare")
        self.plugins[meta.name] = instance
        self.meta[meta.name] = meta
        self.contexts[meta.name] = self._context(meta)
        for hook in meta.hooks:
            self.hooks.setdefault(hook, []).append(meta.name)

    def _instantiate(self, meta: api.PluginMetadata):
        entry = Path(meta.path) / meta.entry
        mod_name = f"exliar_vfio_plugin_{meta.name.replace('-', '_')}"
        try:
            if mod_name in sys.modules and getattr(sys.modules[mod_name], "__file__", None) == str(entry):
                module = sys.modules[mod_name]
            else:
                spec = importlib.util.spec_from_file_location(mod_name, entry)
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                # no __pycache__ in the plugin directory: it would change the plugin's hash and,
                # created group-writable under a 002 umask, make the directory unsafe to load
                saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True
                try:
                    spec.loader.exec_module(module)
                finally:
                    sys.dont_write_bytecode = saved
            factory = getattr(module, "create_plugin", None)
            if not callable(factory):
                raise api.PluginError(f"{entry}: no create_plugin() function", plugin=meta.name)
            instance = factory()
        except api.PluginError:
            raise
        except Exception as exc:  # a broken plugin must not stop the others
            raise api.PluginError(f"{entry}: failed to load: {type(exc).__name__}: {exc}", plugin=meta.name) from exc
        if not isinstance(instance, api.VfioPlugin):
            raise api.PluginError(f"{entry}: create_plugin() must return a VfioPlugin", plugin=meta.name)
        return instance

    def _config_of(self, name: str) -> dict:
        c = self.config.get(name)
        return c if isinstance(c, dict) else {}

    def _context(self, meta) -> api.PluginContext:
        import logging  # noqa: PLC0415

        sections = {name: (self._config_of(name).get("config") or {}) for name in self.config}
        return api.PluginContext(
            meta.name, permissions=meta.permissions, config=api.ConfigProvider(sections),
            logger=self.logger(meta.name) if callable(self.logger) else logging.getLogger(f"exliar.vfio.plugins.{meta.name}"),
            bus=self.bus, services=self.services, host=self.host)

    # ---- management ----------------------------------------------------------------------
    def unload_plugin(self, name: str) -> None:
        if name not in self.plugins:
            raise api.PluginError(f"plugin {name} is not loaded", plugin=name)
        self.invoke_one(name, "on_unload")
        self.bus.drop(name)
        for names in self.hooks.values():
            if name in names:
                names.remove(name)
        del self.plugins[name]
        del self.contexts[name]

    def enable_plugin(self, name: str) -> None:
        if name not in self.meta:
            raise api.PluginError(f"no plugin named {name}", plugin=name)
        self.disabled.discard(name)
        self.meta[name].enabled = True

    def disable_plugin(self, name: str) -> None:
        if name not in self.meta:
            raise api.PluginError(f"no plugin named {name}", plugin=name)
        self.disabled.add(name)
        self.meta[name].enabled = False

    def list_plugins(self) -> list:
        for name, m in self.meta.items():
            m.enabled = name not in self.disabled
        return [self.meta[n] for n in self.meta]

    def get_plugin(self, name: str):
        return self.plugins.get(name)

    def set_service(self, name: str, value) -> None:
        """Make a stage's service available to plugins (None when the stage does not provide it)."""
        self.services[name] = value
        for ctx in self.contexts.values():
            ctx._services[name] = value  # pylint: disable=protected-access

    # ---- dispatch ----------------------------------------------------------------------
    def warnings_of_plugins(self) -> list:
        """Load-time warnings (unsigned, untested API, misnamed hooks) of every plugin, attributed."""
        return [f"plugin {m.name}: {w}" for m in self.meta.values() for w in m.warnings]

    def active(self, hook: str) -> list:
        return [n for n in self.hooks.get(hook, []) if n not in self.disabled and n in self.plugins]

    def invoke_hook(self, hook: str, arg=_NO_ARG) -> list:
        """Call ``hook`` on every enabled plugin implementing it; returns the failures."""
        if hook not in api.HOOKS:
            raise api.PluginError(f"unknown hook {hook!r}")
        failures = []
        for name in self.active(hook):
            # each plugin gets its own copy: what one plugin does to it never reaches the next
            _ok, failure, _result = self._run(name, hook, lambda: copy.deepcopy(arg) if arg is not _NO_ARG else arg)
            if failure:
                failures.append(failure)
        return failures

    def invoke_hook_mut(self, hook: str, arg):
        """Let each plugin change ``arg`` in turn; a plugin's change is kept only if it returned cleanly."""
        if hook not in api.HOOKS:
            raise api.PluginError(f"unknown hook {hook!r}")
        permission = api.MUTATING_HOOKS.get(hook)
        current = arg
        for name in self.active(hook):
            candidate = copy.deepcopy(current)
            ok, _failure, _result = self._run(name, hook, lambda c=candidate: c)
            if not ok:
                continue
            if permission and permission not in self.meta[name].permissions and candidate != current:
                failure = HookFailure(name, hook, f"changed the {HOOK_ARGUMENT.get(hook, 'argument')} without the "
                                      f"{permission!r} permission; the change was discarded", "permission",
                                      self.meta[name].critical, self.host)
                self.failures.append(failure)
                if self.meta[name].critical:
                    raise CriticalPluginFailure(f"critical plugin {name} failed in {hook}: {failure.error}",
                                                plugin=name, hook=hook)
                continue
            current = candidate
        return current

    def invoke_one(self, name: str, hook: str, arg=_NO_ARG):
        """Call one plugin's hook (skipped when the plugin leaves it at the no-op default)."""
        if hook not in self.meta[name].hooks:
            return True, None, None
        return self._run(name, hook, lambda: arg)

    def _run(self, name: str, hook: str, make_arg):
        meta = self.meta[name]
        fn = getattr(self.plugins[name], hook)
        ctx = self.contexts[name]
        outcome: dict = {}

        def target():
            try:
                outcome["result"] = _call(fn, ctx, make_arg())
            except CriticalPluginFailure as exc:
                if exc.plugin == name:
                    outcome["exc"] = exc
                else:  # another (critical) plugin's event handler failed: that fails the host, not us
                    outcome["critical"] = exc
            except BaseException as exc:  # noqa: BLE001 - isolation: report any failure
                outcome["exc"] = exc
                outcome["tb"] = traceback.format_exc(limit=4)

        start = time.monotonic()
        if self._worker is None:
            self._worker = _Worker()
        if threading.current_thread() is self._worker.thread:
            target()  # plugin code calling back into the manager: already isolated by the outer call
            finished = True
        else:
            finished = self._worker.run(target, meta.timeout)
        ms = (time.monotonic() - start) * 1000
        failure = None
        if not finished:
            self._worker = None  # stuck in the plugin: leave it, the next call gets a new thread
            failure = HookFailure(name, hook, f"did not return within {meta.timeout:g} s", "timeout", meta.critical, self.host)
        elif "exc" in outcome:
            exc = outcome["exc"]
            kind = "permission" if isinstance(exc, api.PermissionDenied) else "error"
            failure = HookFailure(name, hook, f"{type(exc).__name__}: {exc}", kind, meta.critical, self.host)
        self.calls.append(HookCall(name, hook, round(ms, 2), failure is None))
        if "critical" in outcome:
            raise outcome["critical"]
        if failure:
            self.failures.append(failure)
            if meta.critical:
                raise CriticalPluginFailure(
                    f"critical plugin {name} failed in {hook}: {failure.error}", plugin=name, hook=hook)
            return False, failure, None
        return True, None, outcome.get("result")

    def _deliver(self, plugin: str, handler, event) -> None:
        if plugin in self.disabled or plugin not in self.plugins:
            return
        self._run_callable(plugin, "event:" + type(event).__name__, handler, event)

    def _run_callable(self, plugin: str, label: str, fn, arg) -> None:
        self.call_with_isolation(plugin, label, lambda: fn(arg))

    def call_with_isolation(self, plugin: str, label: str, thunk):
        """Run plugin code that is not a hook (event handlers, commands): errors are recorded."""
        meta = self.meta[plugin]
        start = time.monotonic()
        result = None
        try:
            result = thunk()
            ok = True
        except Exception as exc:  # noqa: BLE001 - isolation
            ok = False
            self.failures.append(HookFailure(plugin, label, f"{type(exc).__name__}: {exc}", "error", meta.critical, self.host))
        self.calls.append(HookCall(plugin, label, round((time.monotonic() - start) * 1000, 2), ok))
        if not ok and meta.critical:
            raise CriticalPluginFailure(f"critical plugin {plugin} failed in {label}: {self.failures[-1].error}",
                                        plugin=plugin, hook=label)
        return result

    # ---- lifecycle helpers -------------------------------------------------------------
    def start(self) -> None:
        """on_load, then registration of commands and UI panels, for every plugin in load order."""
        for name in list(self.plugins):
            if name in self.disabled:
                continue
            self.invoke_one(name, "on_load")
            self.register(name)

    def register(self, name: str) -> None:
        perms = self.meta[name].permissions
        ui = api.UiRegistry(name, allowed="ui" in perms)
        cmds = api.CommandRegistry(name, allowed="commands" in perms)
        if "register_commands" in self.meta[name].hooks:
            self.invoke_one(name, "register_commands", cmds)
        if "register_ui_elements" in self.meta[name].hooks:
            self.invoke_one(name, "register_ui_elements", ui)
        for cname in cmds.commands:
            owner = self.commands.get(cname)
            if owner is not None and owner.plugin != name:
                self.warnings.append(f"command {cname!r} of plugin {name} replaces the one of plugin {owner.plugin}")
        self.panels.update({f"{name}:{k}": v for k, v in ui.panels.items()})
        self.commands.update(cmds.commands)

    def finish(self, between=None) -> None:
        """on_cleanup for every plugin, then ``between(order)`` (the run report renders the panels
        there), then on_unload in reverse load order."""
        order = [n for n in self.plugins if n not in self.disabled]
        for name in order:
            self.invoke_one(name, "on_cleanup")
        if between is not None:
            between(order)
        for name in reversed(order):
            self.invoke_one(name, "on_unload")
