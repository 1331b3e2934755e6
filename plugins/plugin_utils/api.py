# -*- coding: utf-8 -*-
# Copyright: exliar.vfio contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The public API of exliar.vfio extension plugins: the only Python surface plugin authors use.

A plugin is a directory with a ``plugin.toml`` manifest and a Python module exporting
``create_plugin()``, which returns an instance of a :class:`VfioPlugin` subclass. The manager
calls its hooks at each stage of the lifecycle (see :data:`LIFECYCLE`) with a
:class:`PluginContext` and the stage's typed data object. Every hook has a no-op default.

Compatibility: :data:`API_VERSION` is (major, minor). A plugin built for (1, x) loads when
x <= our minor; additions (new hooks, new optional arguments) raise the minor only.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from ansible_collections.exliar.vfio.plugins.module_utils._gpu import vendor_of

API_VERSION = (1, 1)

# The lifecycle, in the order the spec gives; a host runs these in this order.
LIFECYCLE = (
    "on_load", "register_commands", "register_ui_elements",
    "on_system_detected", "on_device_enumeration", "on_gpu_detected",
    "on_pre_vfio_bind", "on_post_vfio_bind",
    "on_pre_initramfs_update", "on_post_initramfs_update",
    "on_pre_bootloader_update", "on_post_bootloader_update",
    "on_pre_vm_start", "on_post_vm_shutdown",
    "on_cleanup", "on_unload",
)
# Hooks outside the stage sequence.
EVENT_HOOKS = ("on_ui_event",)
HOOKS = LIFECYCLE + EVENT_HOOKS
# Hooks whose argument a plugin may change, and the permission that allows it; a change is
# kept only if the hook returns cleanly.
MUTATING_HOOKS = {"on_pre_vm_start": "vm:modify"}


class PluginError(Exception):
    """Raised by plugins (or by the manager about a plugin). Carries the plugin and hook."""

    def __init__(self, message: str, plugin: str | None = None, hook: str | None = None):
        super().__init__(message)
        self.plugin = plugin
        self.hook = hook


class PermissionDenied(PluginError):
    """A plugin used a service its approved permissions do not cover."""


# ---- typed data objects -----------------------------------------------------------------

@dataclass
class SystemInfo:
    distribution: str | None = None
    version: str | None = None
    kernel: str | None = None
    cpu_vendor: str | None = None
    virtualization: bool = False
    boot_mode: str | None = None
    secure_boot: bool | None = None
    laptop: bool | None = None
    iommu_enabled: bool = False
    iommu_type: str | None = None
    bootloader: str | None = None
    initramfs: str | None = None

    @classmethod
    def from_facts(cls, facts: dict) -> "SystemInfo":
        s = facts.get("system") or {}
        dist = s.get("distribution") or {}
        cpu = s.get("cpu") or {}
        return cls(
            distribution=dist.get("id"), version=dist.get("version_id"),
            kernel=(s.get("kernel") or {}).get("running"), cpu_vendor=cpu.get("vendor"),
            virtualization=bool(cpu.get("virtualization_enabled")),
            boot_mode=(s.get("boot") or {}).get("mode"), secure_boot=(s.get("boot") or {}).get("secure_boot"),
            laptop=(s.get("machine") or {}).get("laptop"),
            iommu_enabled=bool((facts.get("iommu") or {}).get("enabled")),
            iommu_type=(facts.get("iommu") or {}).get("type"),
            bootloader=(facts.get("bootloader") or {}).get("name"),
            initramfs=(facts.get("initramfs") or {}).get("name"),
        )


@dataclass
class PciDevice:
    address: str
    vendor_id: str | None = None
    device_id: str | None = None
    class_code: str | None = None
    driver: str | None = None
    iommu_group: int | None = None
    vendor_name: str | None = None
    device_name: str | None = None
    reset_methods: list | None = None   # the kernel's reset_method, in order (None: not read; API 1.1)

    def bdf(self) -> str:
        return self.address

    def vendor(self) -> str:
        return vendor_of(self.vendor_id)

    def is_gpu(self) -> bool:
        return bool(self.class_code) and self.class_code.startswith("03")

    @classmethod
    def from_fact(cls, d: dict) -> "PciDevice":
        return cls(address=d["address"], vendor_id=d.get("vendor_id"), device_id=d.get("device_id"),
                   class_code=d.get("class"), driver=d.get("driver"), iommu_group=d.get("iommu_group"),
                   vendor_name=d.get("vendor_name"), device_name=d.get("device_name"),
                   reset_methods=list(d["reset_methods"]) if isinstance(d.get("reset_methods"), list) else None)


@dataclass
class GpuDevice(PciDevice):
    kind: str | None = None
    boot_vga: bool = False
    companions: list = field(default_factory=list)
    group_viable: bool | None = None
    group_blockers: list = field(default_factory=list)
    identical_to: list = field(default_factory=list)

    def model_name(self) -> str:
        return self.device_name or f"{self.vendor_id}:{self.device_id}"

    @classmethod
    def from_fact(cls, d: dict) -> "GpuDevice":
        base = PciDevice.from_fact(d)
        return cls(**base.__dict__, kind=d.get("kind"), boot_vga=bool(d.get("boot_vga")),
                   companions=list(d.get("companions") or []), group_viable=d.get("group_viable"),
                   group_blockers=list(d.get("group_blockers") or []), identical_to=list(d.get("identical_to") or []))


@dataclass
class BootloaderConfig:
    """The bootloader stage's view of one host: which bootloader, the parameters it manages
    (``{"name", "value", "state"}``), where the command line lives, and, after the update, what
    the next boot gets."""

    name: str | None
    kernel_params: list = field(default_factory=list)
    config_path: str | None = None
    evidence: list = field(default_factory=list)
    next_boot_cmdline: str | None = None
    reboot_required: bool | None = None


@dataclass
class VmConfig:
    """A VM as the VM stage will define it; ``on_pre_vm_start`` may change it.

    ``features`` holds what the domain XML renders: ``hypervisor_hidden`` (the guest's CPUID
    hypervisor bit off), ``vendor_id`` (Hyper-V vendor id), ``kvm_hidden`` (KVM signature hidden).
    ``monitor`` asks the VM stage to sample the VM's QEMU process on the host while it runs
    (``request_sampling``); the samples come back in :class:`VmStats`. (API 1.1)
    """

    name: str
    memory_mib: int = 4096
    vcpus: int = 4
    devices: list = field(default_factory=list)  # PciDevice / GpuDevice
    features: dict = field(default_factory=dict)
    monitor: dict = field(default_factory=dict)

    def add_hypervisor_hidden(self, hidden: bool = True) -> None:
        self.features["hypervisor_hidden"] = bool(hidden)

    def add_vendor_id(self, vendor_id: str) -> None:
        if not isinstance(vendor_id, str) or not 1 <= len(vendor_id) <= 12 or not vendor_id.isprintable():
            raise PluginError("vendor_id must be 1 to 12 printable characters (Hyper-V vendor id)")
        self.features["vendor_id"] = vendor_id

    def add_kvm_hidden(self, hidden: bool = True) -> None:
        self.features["kvm_hidden"] = bool(hidden)

    def request_sampling(self, interval_seconds: float = 1.0) -> None:
        """Sample the VM's QEMU process (CPU, memory; GPU busy where the host driver exposes it)
        every ``interval_seconds`` while the stage waits for the VM to shut down. (API 1.1)"""
        try:
            interval = float(interval_seconds)
        except (TypeError, ValueError):
            raise PluginError("request_sampling: interval_seconds must be a number") from None
        if not 0.1 <= interval <= 3600:
            raise PluginError("request_sampling: interval_seconds must be between 0.1 and 3600")
        current = self.monitor.get("interval_seconds")
        self.monitor["interval_seconds"] = interval if current is None else min(float(current), interval)


@dataclass
class VmStats:
    """What the VM stage measured for one VM run, given to ``on_post_vm_shutdown``.

    ``samples`` (API 1.1; only when a plugin asked with ``VmConfig.request_sampling``): one dict
    per sample, ``{"t": seconds since start, "cpu_seconds": QEMU's CPU time so far, "rss_mib": its
    resident memory, "gpu_busy": {address: percent}}`` (``gpu_busy`` only where readable).
    """

    name: str
    runtime_seconds: float = 0.0
    cpu_time_seconds: float | None = None
    max_memory_mib: float | None = None
    gpu: dict = field(default_factory=dict)
    samples: list = field(default_factory=list)
    shutdown: str | None = None          # "shutdown" (the guest powered off), "timeout", "crashed", ...


@dataclass
class UiEvent:
    panel: str
    action: str
    data: dict = field(default_factory=dict)


@dataclass
class UiPanel:
    id: str
    title: str
    render: Callable
    plugin: str | None = None


class UiRegistry:
    """Panels plugins add to the run report; ``render(ctx)`` returns text or a dict of figures."""

    def __init__(self, plugin: str | None = None, allowed: bool = True):
        self.plugin = plugin
        self.allowed = allowed
        self.panels: dict = {}

    def register_panel(self, panel_id: str, title: str, render: Callable) -> None:
        if not self.allowed:
            raise PermissionDenied(f"plugin {self.plugin!r} needs the 'ui' permission to register panels",
                                   plugin=self.plugin)
        if not callable(render):
            raise PluginError(f"panel {panel_id!r}: render must be callable")
        if panel_id in self.panels:
            raise PluginError(f"panel {panel_id!r} is already registered")
        self.panels[panel_id] = UiPanel(panel_id, title, render, self.plugin)


@dataclass
class Command:
    name: str
    description: str
    handler: Callable
    plugin: str | None = None


class CommandRegistry:
    """Commands users run with ``playbooks/plugins.yml``; ``handler(args, ctx)``."""

    def __init__(self, plugin: str | None = None, allowed: bool = True):
        self.plugin = plugin
        self.allowed = allowed
        self.commands: dict = {}

    def register_command(self, name: str, description: str, handler: Callable) -> None:
        if not self.allowed:
            raise PermissionDenied(f"plugin {self.plugin!r} needs the 'commands' permission to register commands",
                                   plugin=self.plugin)
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise PluginError(f"command name {name!r}: use letters, digits, '-' and '_'")
        if not callable(handler):
            raise PluginError(f"command {name!r}: handler must be callable")
        if name in self.commands:
            raise PluginError(f"command {name!r} is already registered")
        self.commands[name] = Command(name, description, handler, self.plugin)


@dataclass
class PluginDependency:
    name: str
    version_req: str = ""
    optional: bool = False


@dataclass
class PluginMetadata:
    name: str
    version: str
    description: str = ""
    author: str = ""
    api_version: tuple = API_VERSION
    dependencies: list = field(default_factory=list)
    permissions: list = field(default_factory=list)
    critical: bool = False
    timeout: float = 30.0
    tested_api: list = field(default_factory=list)
    entry: str = "plugin.py"
    path: str | None = None
    source: str = "directory"
    hooks: list = field(default_factory=list)
    signature: str = "unsigned"
    sha256: str | None = None
    enabled: bool = True
    warnings: list = field(default_factory=list)


class Event:
    """Base class of events plugins exchange; subscribers receive instances of the class they name."""

    event_type = "event"


# ---- the plugin base class --------------------------------------------------------------

class VfioPlugin:
    """Subclass this; override the hooks you need. Identity may come from the manifest."""

    name = ""
    version = ""
    description = ""
    author = ""
    api_version = API_VERSION

    def get_dependencies(self) -> list:
        return []

    def on_load(self, ctx: "PluginContext") -> None:
        pass

    def on_unload(self, ctx: "PluginContext") -> None:
        pass

    def on_system_detected(self, ctx: "PluginContext", system: SystemInfo) -> None:
        pass

    def on_device_enumeration(self, ctx: "PluginContext", devices: list) -> None:
        pass

    def on_gpu_detected(self, ctx: "PluginContext", gpu: GpuDevice) -> None:
        pass

    def on_pre_vfio_bind(self, ctx: "PluginContext", device: PciDevice) -> None:
        pass

    def on_post_vfio_bind(self, ctx: "PluginContext", device: PciDevice) -> None:
        pass

    def on_pre_initramfs_update(self, ctx: "PluginContext") -> None:
        pass

    def on_post_initramfs_update(self, ctx: "PluginContext") -> None:
        pass

    def on_pre_bootloader_update(self, ctx: "PluginContext", bootloader: BootloaderConfig) -> None:
        pass

    def on_post_bootloader_update(self, ctx: "PluginContext", bootloader: BootloaderConfig) -> None:
        pass

    def on_pre_vm_start(self, ctx: "PluginContext", vm_config: VmConfig) -> None:
        pass

    def on_post_vm_shutdown(self, ctx: "PluginContext", vm_stats: VmStats) -> None:
        pass

    def on_cleanup(self, ctx: "PluginContext") -> None:
        pass

    def register_ui_elements(self, ctx: "PluginContext", ui_registry: UiRegistry) -> None:
        pass

    def on_ui_event(self, ctx: "PluginContext", event: UiEvent) -> None:
        pass

    def register_commands(self, ctx: "PluginContext", command_registry: CommandRegistry) -> None:
        pass


# ---- the context ------------------------------------------------------------------------

# Permission vocabulary: what a plugin may declare, and what each unlocks.
PERMISSIONS = {
    "system:read": "read the detected system information (ctx.system_info())",
    "devices:read": "read PCI devices, IOMMU groups and GPUs (ctx.device_manager())",
    "vfio:manage": "ask the binding stage to bind or release devices (ctx.vfio_manager()); critical",
    "state:write": "record operations in the host's change journal (ctx.state_tracker())",
    "vm:modify": "change a VM's configuration in on_pre_vm_start",
    "events": "subscribe to and emit events between plugins",
    "ui": "register panels in the run report",
    "commands": "register commands users can run",
    "target:read": "read files on the managed host (one round trip per call)",
    "target:exec": "run commands on the managed host; critical",
}
CRITICAL_PERMISSIONS = ("vfio:manage", "target:exec")


class ConfigSection:
    """One section of plugin configuration (``vfio_plugins.<name>.config`` in the inventory)."""

    def __init__(self, values: dict | None = None):
        self.values = dict(values or {})

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def get_bool(self, key: str, default: bool | None = None) -> bool | None:
        v = self.values.get(key, default)
        if isinstance(v, str):
            return v.strip().lower() in ("1", "true", "yes", "on")
        return default if v is None else bool(v)

    def get_int(self, key: str, default: int | None = None) -> int | None:
        v = self.values.get(key, default)
        try:
            return default if v is None else int(v)
        except (TypeError, ValueError):
            raise PluginError(f"config key {key!r}: {v!r} is not an integer") from None

    def get_str(self, key: str, default: str | None = None) -> str | None:
        v = self.values.get(key, default)
        return default if v is None else str(v)

    def get_list(self, key: str, default: list | None = None) -> list:
        v = self.values.get(key, default)
        if v is None:
            return []
        return list(v) if isinstance(v, (list, tuple)) else [v]


class ConfigProvider:
    def __init__(self, sections: dict | None = None):
        self.sections = {k: dict(v or {}) for k, v in (sections or {}).items()}

    def get_section(self, name: str) -> ConfigSection:
        return ConfigSection(self.sections.get(name))


class PluginContext:
    """What a plugin receives in every hook. One per plugin and host; storage persists
    between hooks and between the run's tasks (values must be picklable)."""

    def __init__(self, plugin: str, permissions=(), config: ConfigProvider | None = None,
                 logger: logging.Logger | None = None, bus=None, services: dict | None = None,
                 host: str | None = None):
        self.plugin = plugin
        self.host = host
        self.permissions = frozenset(permissions)
        self._storage: dict = {}
        self._config = config or ConfigProvider()
        self._logger = logger or logging.getLogger(f"exliar.vfio.plugins.{plugin}")
        self._bus = bus
        self._services = dict(services or {})

    # storage
    def set(self, key: str, value: Any) -> None:
        self._storage[key] = value

    def get(self, key: str, type_: type | None = None, default: Any = None) -> Any:
        """The stored value, or ``default``. With ``type_``, a value of another type is an error."""
        if key not in self._storage:
            return default
        value = self._storage[key]
        if type_ is not None and not isinstance(value, type_):
            raise PluginError(f"storage key {key!r} holds {type(value).__name__}, not {type_.__name__}",
                              plugin=self.plugin)
        return value

    def get_mut(self, key: str, type_: type | None = None) -> Any:
        """The stored object itself, to change in place (lists, dicts, dataclasses)."""
        return self.get(key, type_)

    def remove(self, key: str, type_: type | None = None) -> Any:
        value = self.get(key, type_)
        self._storage.pop(key, None)
        return value

    def keys(self) -> list:
        return sorted(self._storage)

    # events
    def _require(self, permission: str) -> None:
        if permission not in self.permissions:
            raise PermissionDenied(
                f"plugin {self.plugin!r} needs the {permission!r} permission for this; declare it in "
                f"plugin.toml and approve the plugin again", plugin=self.plugin)

    def subscribe(self, event_type: type, handler: Callable) -> None:
        self._require("events")
        if self._bus is None:
            raise PluginError("no event bus in this context", plugin=self.plugin)
        self._bus.subscribe(self.plugin, event_type, handler)

    def emit(self, event: Event) -> None:
        self._require("events")
        if self._bus is None:
            raise PluginError("no event bus in this context", plugin=self.plugin)
        self._bus.emit(self.plugin, event)

    # services
    def logger(self) -> logging.Logger:
        return self._logger

    def config(self) -> ConfigProvider:
        return self._config

    def _service(self, name: str, permission: str):
        service = self._services.get(name)
        if service is None:
            return None  # this stage does not provide it
        self._require(permission)
        return service

    def system_info(self) -> SystemInfo | None:
        return self._service("system_info", "system:read")

    def device_manager(self):
        return self._service("device_manager", "devices:read")

    def vfio_manager(self):
        return self._service("vfio_manager", "vfio:manage")

    def state_tracker(self):
        tracker = self._service("state_tracker", "state:write")
        return tracker.for_plugin(self.plugin) if hasattr(tracker, "for_plugin") else tracker

    def target(self):
        """Access to the managed host when the stage runs against one: ``read_file(path)``
        (``target:read``) and ``run(argv)`` (``target:exec``). Each call is one round trip."""
        target = self._service("target", "target:read")
        return target.for_plugin(self.plugin, self.permissions) if hasattr(target, "for_plugin") else target

    # used by the manager
    def _snapshot(self) -> dict:
        return copy.deepcopy(self._storage)

    def _restore(self, snapshot: dict) -> None:
        self._storage = snapshot
