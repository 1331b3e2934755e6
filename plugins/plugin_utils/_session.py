# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One host's plugin session inside an Ansible run: settings, discovery, state, stage hooks.

A stage's action plugin opens the session, runs its hooks and saves it; the summary
callback closes it (``on_cleanup``, ``on_unload``) when the playbook ends. With no plugin
installed, ``open_session`` returns None after a few directory checks: no hook point
costs a task or a round trip.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ansible_collections.exliar.vfio.plugins.plugin_utils import api
from ansible_collections.exliar.vfio.plugins.plugin_utils import _state as state_store
from ansible_collections.exliar.vfio.plugins.plugin_utils._manager import CriticalPluginFailure, HookFailure, PluginManager
from ansible_collections.exliar.vfio.plugins.plugin_utils._manifest import load_manifest
from ansible_collections.exliar.vfio.plugins.plugin_utils._security import (
    Approvals, SecurityPolicy, evaluate,
)

COLLECTION_ROOT = Path(__file__).resolve().parents[2]
BUILTIN_DIR = COLLECTION_ROOT / "builtin_plugins"
SYSTEM_DIR = Path("/usr/share/exliar-vfio/plugins")
ENTRY_POINT_GROUP = "exliar_vfio.plugins"


PLUGIN_VARS = ("vfio_plugins", "vfio_plugin_dirs", "vfio_plugin_default_dirs", "vfio_plugins_enabled",
               "vfio_plugin_require_signatures", "vfio_plugin_trusted_keys", "vfio_plugin_pins",
               "vfio_plugin_approvals_file", "vfio_builtin_plugins")


def config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "exliar-vfio"


def builtin_names() -> list:
    """The built-in plugins the collection ships (directories of ``builtin_plugins/`` with a manifest)."""
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "plugin.toml").is_file())


def _builtin_list(value) -> list:
    """``vfio_builtin_plugins``: the built-ins to load (opt-in, so a run without them stays as fast)."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise api.PluginError(f"vfio_builtin_plugins must be a list of built-in plugin names, not {value!r}")
    names = [n.strip() for n in names if n.strip()]
    available = builtin_names()
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise api.PluginError(f"vfio_builtin_plugins: no built-in plugin named {', '.join(unknown)}; "
                              f"the built-ins are: {', '.join(available) or 'none'}")
    return list(dict.fromkeys(names))


def _bool(value, default: bool) -> bool:
    """Inventory and -e values arrive as strings too: 'false' must mean false."""
    if value is None:
        return default
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "on", "y"):
            return True
        if v in ("0", "false", "no", "off", "n", ""):
            return False
        raise api.PluginError(f"{value!r} is not a boolean (use true or false)")
    return bool(value)


@dataclass
class Settings:
    """The plugin settings of one host, from its variables."""

    plugins: dict = field(default_factory=dict)          # vfio_plugins
    dirs: list = field(default_factory=list)             # vfio_plugin_dirs
    default_dirs: bool = True                            # vfio_plugin_default_dirs
    enabled: bool = True                                 # vfio_plugins_enabled
    require_signatures: bool = False                     # vfio_plugin_require_signatures
    trusted_keys: list = field(default_factory=list)     # vfio_plugin_trusted_keys (paths)
    pins: dict = field(default_factory=dict)             # vfio_plugin_pins
    approvals_file: str = ""                             # vfio_plugin_approvals_file
    builtin: list = field(default_factory=list)          # vfio_builtin_plugins

    @classmethod
    def from_vars(cls, v: dict) -> "Settings":
        def listish(x):
            return [x] if isinstance(x, str) else list(x or [])

        for key in ("vfio_plugins", "vfio_plugin_pins"):
            if v.get(key) is not None and not isinstance(v.get(key), dict):
                raise api.PluginError(f"{key} must be a mapping (name: ...), not {type(v.get(key)).__name__}")
        for key in ("vfio_plugin_dirs", "vfio_plugin_trusted_keys"):
            if v.get(key) is not None and not isinstance(v.get(key), (str, list, tuple)):
                raise api.PluginError(f"{key} must be a list of paths, not {type(v.get(key)).__name__}")
        return cls(
            plugins=dict(v.get("vfio_plugins") or {}),
            dirs=[str(d) for d in listish(v.get("vfio_plugin_dirs"))],
            default_dirs=_bool(v.get("vfio_plugin_default_dirs"), True),
            enabled=_bool(v.get("vfio_plugins_enabled"), True),
            require_signatures=_bool(v.get("vfio_plugin_require_signatures"), False),
            trusted_keys=[str(k) for k in listish(v.get("vfio_plugin_trusted_keys"))],
            pins=dict(v.get("vfio_plugin_pins") or {}),
            approvals_file=str(v.get("vfio_plugin_approvals_file") or config_home() / "approvals.json"),
            builtin=_builtin_list(v.get("vfio_builtin_plugins")),
        )

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def search_dirs(self) -> list:
        dirs = [(BUILTIN_DIR, "builtin")] if self.builtin else []
        if self.default_dirs:
            dirs += [(config_home() / "plugins", "user"), (SYSTEM_DIR, "system")]
        dirs += [(Path(d).expanduser(), "directory") for d in self.dirs]
        return dirs


_ENTRY_POINTS = None


def entry_points() -> list:
    """The ``exliar_vfio.plugins`` entry points, scanned once per process.

    The summary callback calls this in ``ansible-playbook`` itself at the start of a run, so
    the forked workers inherit the result instead of scanning site-packages per host.
    """
    global _ENTRY_POINTS  # pylint: disable=global-statement
    if _ENTRY_POINTS is None:
        from importlib import metadata  # noqa: PLC0415

        try:
            _ENTRY_POINTS = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
        except Exception:  # noqa: BLE001 - a broken site-packages must not stop the run
            _ENTRY_POINTS = []
    return _ENTRY_POINTS


def _entry_point_metas(manager: PluginManager) -> list:
    """Plugins installed as Python packages: an entry point in the ``exliar_vfio.plugins`` group
    names a module whose directory holds ``plugin.toml``."""
    import importlib.util  # noqa: PLC0415

    metas = []
    for ep in entry_points():
        try:
            spec = importlib.util.find_spec(ep.module)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin:
            manager.rejected[ep.name] = f"entry point {ep.value}: module not found"
            continue
        plugin_dir = Path(spec.origin).parent
        try:
            metas.append(load_manifest(plugin_dir, "entry_point"))
        except api.PluginError as exc:
            manager.rejected[ep.name] = str(exc)
    return metas


def discover(settings: Settings, manager: PluginManager) -> list:
    metas = []
    for d, source in settings.search_dirs():
        found = manager.discover_plugins(d, source)
        if source == "builtin":  # only the built-ins vfio_builtin_plugins lists
            found = [m for m in found if m.name in settings.builtin]
        metas.extend(found)
    if settings.default_dirs:
        metas.extend(_entry_point_metas(manager))
    return metas


def disabled_file(settings: Settings) -> Path:
    """Plugins the user disabled with playbooks/plugins.yml, beside the approvals file."""
    return Path(settings.approvals_file).expanduser().parent / "disabled.json"


def load_disabled(settings: Settings) -> set:
    try:
        data = json.loads(disabled_file(settings).read_text())
        return set(data) if isinstance(data, list) else set()
    except (OSError, ValueError):
        return set()


def read_keys(paths: list) -> list:
    keys = []
    for p in paths:
        try:
            keys.append(Path(p).expanduser().read_bytes())
        except OSError as exc:
            raise api.PluginError(f"trusted key {p}: cannot read ({exc.strerror})") from exc
    return keys


def make_gate(settings: Settings):
    policy = SecurityPolicy(require_signatures=settings.require_signatures,
                            trusted_keys=read_keys(settings.trusted_keys), pinned=dict(settings.pins))
    approvals = Approvals.load(settings.approvals_file)

    def gate(meta):
        decision = evaluate(meta, policy, approvals)
        meta.signature = decision.signature
        meta.sha256 = decision.digest
        return decision.allowed, decision.reason, list(decision.warnings)

    return gate


class _ListHandler(logging.Handler):
    """Keeps a plugin's log records for the run report, and its warnings and errors for the task's result."""

    def __init__(self, sink: list, plugin: str, alerts: list):
        super().__init__(logging.DEBUG)
        self.sink = sink
        self.plugin = plugin
        self.alerts = alerts

    def emit(self, record: logging.LogRecord) -> None:
        entry = {"plugin": self.plugin, "level": record.levelname.lower(), "message": record.getMessage()}
        self.sink.append(entry)
        if record.levelno >= logging.WARNING:
            self.alerts.append(f"plugin {self.plugin}: {entry['message']}")


class Session:
    def __init__(self, host: str, settings: Settings, rdir: Path):
        self.host = host
        self.settings = settings
        self.rdir = rdir
        self.log: list = []
        self.alerts: list = []   # this task's warnings and errors of the plugins' loggers
        self.records: list = []
        self.manager = PluginManager(host, settings.plugins, gate=make_gate(settings), logger=self._logger)
        self.state: dict = {}
        self._packed = None  # storage pickled by pack(), written by save()

    def _logger(self, plugin: str) -> logging.Logger:
        logger = logging.getLogger(f"exliar.vfio.plugins.{plugin}.{self.host}")
        logger.handlers = [_ListHandler(self.log, plugin, self.alerts)]
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        return logger

    # ---- open / save -----------------------------------------------------------------
    def open(self, metas: list) -> None:
        previous = state_store.load_host_state(self.rdir, self.host)
        self.manager.disabled |= load_disabled(self.settings)
        self.manager.load_all(metas)
        self.manager.set_service("state_tracker", StateTracker(self))
        if previous and previous.get("loaded"):
            self.log.extend(previous.get("log", []))
            self.records.extend(previous.get("records", []))
            self.state = previous
            for name, blobs in (previous.get("storage") or {}).items():
                if name in self.manager.contexts:
                    storage, warnings = state_store.unpack_storage(blobs)
                    self.manager.contexts[name]._restore(storage)  # pylint: disable=protected-access
                    self.manager.warnings.extend(f"{name}: {w}" for w in warnings)
            self.manager.bus.restore(previous.get("subscriptions", []), self.manager.plugins)
            self.manager.disabled |= set(previous.get("disabled", []))
        else:
            self.state = {"calls": [], "failures": [], "loaded": True}
            self.manager.start()

    def pack(self) -> dict:
        """Pickle every plugin's storage now, so warnings about values that cannot be kept
        reach the task's result."""
        storage = {}
        for name, ctx in self.manager.contexts.items():
            blobs, warnings = state_store.pack_storage(ctx._storage)  # pylint: disable=protected-access
            storage[name] = blobs
            self.manager.warnings.extend(f"{name}: {w}" for w in warnings)
        self._packed = storage
        return storage

    def save(self) -> None:
        storage = self._packed if self._packed is not None else self.pack()
        self._packed = None
        calls = self.state.get("calls", []) + [c.__dict__ for c in self.manager.calls]
        failures = self.state.get("failures", []) + [f.as_dict() for f in self.manager.failures]
        self.manager.calls.clear()
        self.manager.failures.clear()
        metas = {n: _meta_dict(m) for n, m in self.manager.meta.items()}
        self.state = {
            "host": self.host, "loaded": True, "settings": self.settings.as_dict(),
            "storage": storage, "subscriptions": list(self.manager.bus.persistent),
            "calls": calls, "failures": failures, "log": self.log, "records": self.records,
            "plugins": metas, "rejected": dict(self.manager.rejected),
            "warnings": sorted(set(self.state.get("warnings", []) + self.manager.warnings
                                   + self.manager.warnings_of_plugins())),
            "disabled": sorted(self.manager.disabled),
            "panels": {k: {"title": p.title, "plugin": p.plugin} for k, p in self.manager.panels.items()}
            or self.state.get("panels", {}),
            "commands": {k: {"description": c.description, "plugin": c.plugin} for k, c in self.manager.commands.items()}
            or self.state.get("commands", {}),
            "finished": self.state.get("finished", False),
            "journaled": self.state.get("journaled", 0),
        }
        state_store.save_host_state(self.rdir, self.host, self.state)

    def summary(self) -> dict:
        """What a task returns about the plugins (JSON-safe)."""
        return {
            "loaded": [n for n in self.manager.plugins if n not in self.manager.disabled],
            "rejected": dict(self.manager.rejected),
            "warnings": sorted(set(self.manager.warnings + self.manager.warnings_of_plugins())) + list(dict.fromkeys(self.alerts)),
            "failures": [f.as_dict() for f in self.manager.failures],
            "calls": len(self.manager.calls),
        }

    # ---- stages ------------------------------------------------------------------------
    def detection(self, facts: dict) -> None:
        """The detection stage's hooks, in the spec's order."""
        m = self.manager
        system = api.SystemInfo.from_facts(facts)
        m.set_service("system_info", system)
        m.set_service("device_manager", DeviceManager(facts))
        m.invoke_hook("on_system_detected", system)
        m.invoke_hook("on_device_enumeration", [api.PciDevice.from_fact(d) for d in facts.get("pci_devices") or []])
        for gpu in facts.get("gpus") or []:
            m.invoke_hook("on_gpu_detected", api.GpuDevice.from_fact(gpu))

    def _stage_services(self, facts: dict, plan: dict | None = None) -> None:
        m = self.manager
        m.set_service("system_info", api.SystemInfo.from_facts(facts))
        m.set_service("device_manager", DeviceManager(facts))
        if plan is not None:
            m.set_service("vfio_manager", VfioManager(plan))

    def pre_bind(self, facts: dict, plan: dict) -> None:
        """``on_pre_vfio_bind`` once per device of the plan, before anything is bound."""
        self._stage_services(facts, plan)
        for dev in plan.get("devices") or []:
            self.manager.invoke_hook("on_pre_vfio_bind", _planned_device(dev))

    def post_bind(self, facts: dict, plan: dict) -> None:
        """``on_post_vfio_bind`` once per device, after the module bound them."""
        self._stage_services(facts, plan)
        for dev in plan.get("devices") or []:
            self.manager.invoke_hook("on_post_vfio_bind", _planned_device(dev, bound=True))

    def pre_initramfs(self, facts: dict) -> None:
        """``on_pre_initramfs_update`` before the images are rebuilt."""
        self._stage_services(facts)
        self.manager.invoke_hook("on_pre_initramfs_update")

    def post_initramfs(self, facts: dict) -> None:
        """``on_post_initramfs_update`` after every image was rebuilt and checked."""
        self._stage_services(facts)
        self.manager.invoke_hook("on_post_initramfs_update")

    def pre_bootloader(self, facts: dict, bootloader: "api.BootloaderConfig") -> None:
        """``on_pre_bootloader_update`` with the planned command line, before any file is edited."""
        self._stage_services(facts)
        self.manager.invoke_hook("on_pre_bootloader_update", bootloader)

    def post_bootloader(self, facts: dict, bootloader: "api.BootloaderConfig") -> None:
        """``on_post_bootloader_update`` with what the next boot gets, after the edit and the tool ran."""
        self._stage_services(facts)
        self.manager.invoke_hook("on_post_bootloader_update", bootloader)

    def pre_vm_start(self, facts: dict, vm_config: "api.VmConfig") -> "api.VmConfig":
        """``on_pre_vm_start``: each plugin may change the VM's configuration in turn; returns the
        configuration to define (a plugin's change is kept only when it returned cleanly and holds
        ``vm:modify``)."""
        self._stage_services(facts)
        return self.manager.invoke_hook_mut("on_pre_vm_start", vm_config)

    def post_vm_shutdown(self, facts: dict, vm_stats: "api.VmStats") -> None:
        """``on_post_vm_shutdown`` with what the VM stage measured of one VM run."""
        self._stage_services(facts)
        self.manager.invoke_hook("on_post_vm_shutdown", vm_stats)

    def unjournaled_records(self) -> list:
        """Plugin operations the host's journal has not received yet."""
        return self.records[int(self.state.get("journaled", 0)):]

    def mark_journaled(self) -> None:
        self.state["journaled"] = len(self.records)

    def run_command(self, command: str, args: list) -> str:
        """Run a command a plugin registered (``playbooks/plugins.yml``, action run)."""
        m = self.manager
        for name in m.plugins:
            if name not in m.disabled:
                m.register(name)
        cmd = m.commands.get(command)
        if cmd is None:
            known = ", ".join(sorted(m.commands)) or "none"
            raise api.PluginError(f"no plugin registered the command {command!r} (registered: {known})")
        outcome = m.call_with_isolation(cmd.plugin, f"command:{command}", lambda: cmd.handler(list(args), m.contexts[cmd.plugin]))
        return "" if outcome is None else str(outcome)

    def ui_event(self, panel: str, action: str, data: dict) -> None:
        """Deliver a UI event to the plugin owning ``panel`` (``plugin:panel`` or the plugin's name)."""
        plugin = panel.split(":", 1)[0]
        if plugin not in self.manager.plugins:
            raise api.PluginError(f"no loaded plugin owns the panel {panel!r}")
        self.manager.invoke_one(plugin, "on_ui_event", api.UiEvent(panel, action, dict(data or {})))

    def finish(self) -> list:
        """The end of the lifecycle: on_cleanup, the panels rendered for the report, on_unload.

        Returns ``[(title, content)]`` of the panels."""
        if self.state.get("finished"):
            return []
        m = self.manager
        panels = []

        def render(order):
            for name in order:
                m.panels.clear()
                m.register(name)
                panels.extend((panel.title, _render_panel(self, panel)) for panel in m.panels.values())

        m.finish(between=render)
        self.state["finished"] = True
        return panels


class DeviceManager:
    """Read-only view of the host's devices for plugins (``ctx.device_manager()``)."""

    def __init__(self, facts: dict):
        self._devices = [api.PciDevice.from_fact(d) for d in facts.get("pci_devices") or []]
        self._gpus = [api.GpuDevice.from_fact(g) for g in facts.get("gpus") or []]
        self._groups = {g["id"]: list(g["devices"]) for g in facts.get("iommu_groups") or []}

    def devices(self) -> list:
        return list(self._devices)

    def gpus(self) -> list:
        return list(self._gpus)

    def get(self, address: str):
        return next((d for d in self._devices if d.address == address), None)

    def iommu_group(self, number: int) -> list:
        return list(self._groups.get(number, []))


def _planned_device(dev: dict, bound: bool = False) -> api.PciDevice:
    return api.PciDevice(address=dev["address"], vendor_id=dev.get("vendor_id"), device_id=dev.get("device_id"),
                         class_code=dev.get("class"), driver="vfio-pci" if bound else dev.get("driver"),
                         iommu_group=dev.get("iommu_group"), device_name=dev.get("name"))


class VfioManager:
    """The binding plan of the host, for plugins (``ctx.vfio_manager()``, permission ``vfio:manage``)."""

    def __init__(self, plan: dict):
        self._plan = plan

    def devices(self) -> list:
        """Every function the stage binds, as :class:`api.PciDevice`."""
        return [_planned_device(d) for d in self._plan.get("devices") or []]

    def is_selected(self, address: str) -> bool:
        return any(d["address"] == address for d in self._plan.get("devices") or [])

    def driver_before(self, address: str):
        """The host driver the device leaves (None: it had none)."""
        return next((d.get("driver_before") for d in self._plan.get("devices") or [] if d["address"] == address), None)

    def ids(self) -> list:
        """vendor:device ids bound through ``options vfio-pci ids=``."""
        return list(self._plan.get("ids") or [])

    def by_address(self) -> list:
        """Addresses claimed one by one at early boot (their id is shared with a host device)."""
        return list(self._plan.get("by_address") or [])


class StateTracker:
    """Records the operations plugins perform (``ctx.state_tracker().record(...)``).

    Entries name the plugin, are kept with the host's run state and shown in the run report;
    the host's change journal receives them once a stage that writes to the host runs.
    """

    def __init__(self, session: Session, plugin: str | None = None):
        self._session = session
        self._plugin = plugin

    def for_plugin(self, plugin: str) -> "StateTracker":
        return StateTracker(self._session, plugin)

    def record(self, operation: str, **details) -> None:
        self._session.records.append({"plugin": self._plugin, "operation": str(operation),
                                      "details": {k: str(v) for k, v in details.items()}})


def _meta_dict(m) -> dict:
    return {"name": m.name, "version": m.version, "source": m.source, "path": m.path, "hooks": list(m.hooks),
            "permissions": list(m.permissions), "signature": m.signature, "sha256": m.sha256,
            "api_version": ".".join(str(x) for x in m.api_version), "critical": m.critical,
            "warnings": list(m.warnings), "description": m.description, "author": m.author}


def plugin_vars(task_vars: dict, template=None) -> dict:
    """The plugin variables of a host, templated (inventory values may hold Jinja)."""
    out = {}
    for key in PLUGIN_VARS:
        if key in task_vars:
            out[key] = template(task_vars[key]) if template is not None else task_vars[key]
    return out


def open_session(task_vars: dict, host: str, rdir: Path | None = None, template=None):
    """The host's session, or None when plugins are switched off or none is installed."""
    settings = Settings.from_vars(plugin_vars(task_vars, template))
    if not settings.enabled:
        return None
    probe = PluginManager(host)
    metas = discover(settings, probe)
    if not metas and not probe.rejected:
        return None
    session = Session(host, settings, rdir or state_store.run_dir())
    session.manager.rejected.update(probe.rejected)
    session.open(metas)
    return session


def finish_run(rdir: Path) -> dict:
    """End the lifecycle of every host that loaded plugins in this run; returns per host the
    plugin summary and the rendered UI panels for the report."""
    out = {}
    for host, state in state_store.all_host_states(rdir).items():
        settings = Settings(**state.get("settings", {}))
        probe = PluginManager(host)
        metas = discover(settings, probe)
        session = Session(host, settings, rdir)
        panels = []
        try:
            session.open(metas)
            panels = session.finish()
        except CriticalPluginFailure as exc:  # the run is over: report it, finish the other hosts
            session.manager.warnings.append(f"critical plugin failure at the end of the run: {exc}")
            session.state["finished"] = True
        session.save()
        st = session.state
        plugins = {n: dict(m, enabled=n not in st.get("disabled", [])) for n, m in st.get("plugins", {}).items()}
        out[host] = {
            "summary": {"plugins": plugins, "failures": st.get("failures", []), "rejected": st.get("rejected", {}),
                        "warnings": st.get("warnings", []),
                        "calls": st.get("calls", []), "log": st.get("log", []), "records": st.get("records", [])},
            "panels": panels,
        }
    state_store.prune_runs()
    return out


def _render_panel(session: Session, panel):
    ctx = session.manager.contexts.get(panel.plugin)
    try:
        return panel.render(ctx)
    except Exception as exc:  # noqa: BLE001 - a broken panel shows its error, not a broken report
        session.manager.failures.append(
            HookFailure(panel.plugin, f"panel:{panel.id}", f"{type(exc).__name__}: {exc}", host=session.host))
        return f"panel failed: {type(exc).__name__}: {exc}"
