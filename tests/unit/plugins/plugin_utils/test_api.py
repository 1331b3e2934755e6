"""The public plugin API: context storage, permissions, configuration, data objects and registries."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import pytest

from ansible_collections.exliar.vfio.plugins.plugin_utils import api


@dataclass
class Counter:
    n: int = 0
    items: list = field(default_factory=list)


def ctx_with(permissions=(), services=None, bus=None) -> api.PluginContext:
    return api.PluginContext("tester", permissions=permissions, services=services, bus=bus, host="h1")


# ---- typed storage ---------------------------------------------------------------------------

def test_set_and_get():
    ctx = ctx_with()
    ctx.set("answer", 42)
    assert ctx.get("answer") == 42
    assert ctx.get("answer", int) == 42
    assert ctx.get("missing") is None
    assert ctx.get("missing", int, default=7) == 7
    assert ctx.keys() == ["answer"]


def test_get_with_the_wrong_type_is_an_error():
    ctx = ctx_with()
    ctx.set("name", "rtx")
    with pytest.raises(api.PluginError) as info:
        ctx.get("name", int)
    assert str(info.value) == "storage key 'name' holds str, not int"
    assert info.value.plugin == "tester"


def test_get_accepts_subclasses():
    ctx = ctx_with()
    ctx.set("gpu", api.GpuDevice("0000:01:00.0"))
    assert ctx.get("gpu", api.PciDevice).address == "0000:01:00.0"


def test_get_mut_returns_the_stored_object_so_changes_persist():
    ctx = ctx_with()
    ctx.set("counter", Counter())
    ctx.get_mut("counter", Counter).n += 2
    ctx.get_mut("counter", Counter).items.append("gpu")
    ctx.set("seen", [])
    ctx.get_mut("seen", list).append(1)
    assert ctx.get("counter") == Counter(2, ["gpu"])
    assert ctx.get("seen") == [1]
    assert ctx.get_mut("missing", list) is None
    with pytest.raises(api.PluginError, match="holds list, not dict"):
        ctx.get_mut("seen", dict)


def test_remove_returns_the_value_and_forgets_it():
    ctx = ctx_with()
    ctx.set("a", [1])
    assert ctx.remove("a", list) == [1]
    assert ctx.get("a") is None and ctx.keys() == []
    assert ctx.remove("a") is None


def test_remove_with_the_wrong_type_raises_and_keeps_the_value():
    ctx = ctx_with()
    ctx.set("a", "text")
    with pytest.raises(api.PluginError):
        ctx.remove("a", int)
    assert ctx.get("a") == "text"


def test_snapshot_is_a_deep_copy():
    ctx = ctx_with()
    ctx.set("l", [1])
    snap = ctx._snapshot()  # pylint: disable=protected-access
    ctx.get_mut("l", list).append(2)
    ctx._restore(snap)  # pylint: disable=protected-access
    assert ctx.get("l") == [1]


# ---- permissions -----------------------------------------------------------------------------

SERVICES = [
    ("system_info", "system:read"), ("device_manager", "devices:read"), ("vfio_manager", "vfio:manage"),
    ("state_tracker", "state:write"), ("target", "target:read"),
]


@pytest.mark.parametrize("service, permission", SERVICES)
def test_a_service_without_its_permission_is_denied_when_present(service, permission):
    ctx = ctx_with(permissions=[p for _s, p in SERVICES if p != permission], services={service: object()})
    with pytest.raises(api.PermissionDenied) as info:
        getattr(ctx, service)()
    assert f"plugin 'tester' needs the {permission!r} permission" in str(info.value)
    assert "declare it in plugin.toml and approve the plugin again" in str(info.value)
    assert isinstance(info.value, api.PluginError) and info.value.plugin == "tester"


@pytest.mark.parametrize("service, permission", SERVICES)
def test_a_service_the_stage_does_not_provide_is_none_even_without_permission(service, permission):
    assert getattr(ctx_with(), service)() is None
    assert getattr(ctx_with(permissions=[permission]), service)() is None


@pytest.mark.parametrize("service, permission", SERVICES)
def test_a_service_with_its_permission_is_returned(service, permission):
    marker = object()
    assert getattr(ctx_with(permissions=[permission], services={service: marker}), service)() is marker


def test_system_info_needs_system_read():
    info = api.SystemInfo(distribution="fedora")
    with pytest.raises(api.PermissionDenied):
        ctx_with(permissions=["devices:read"], services={"system_info": info}).system_info()
    assert ctx_with(permissions=["devices:read"]).system_info() is None
    assert ctx_with(permissions=["system:read"], services={"system_info": info}).system_info() is info


class _Bus:
    def __init__(self):
        self.subs = []
        self.emitted = []

    def subscribe(self, plugin, event_type, handler):
        self.subs.append((plugin, event_type, handler))

    def emit(self, plugin, event):
        self.emitted.append((plugin, event))


def test_events_need_the_events_permission():
    bus = _Bus()
    with pytest.raises(api.PermissionDenied, match="'events' permission"):
        ctx_with(bus=bus).subscribe(api.Event, print)
    with pytest.raises(api.PermissionDenied):
        ctx_with(bus=bus).emit(api.Event())
    ctx = ctx_with(permissions=["events"], bus=bus)
    ctx.subscribe(api.Event, print)
    event = api.Event()
    ctx.emit(event)
    assert bus.subs == [("tester", api.Event, print)] and bus.emitted == [("tester", event)]


def test_events_without_a_bus_are_an_error():
    with pytest.raises(api.PluginError, match="no event bus"):
        ctx_with(permissions=["events"]).emit(api.Event())


def test_permission_vocabulary():
    assert set(api.CRITICAL_PERMISSIONS) <= set(api.PERMISSIONS)
    assert {"system:read", "devices:read", "events", "ui", "commands", "state:write"} <= set(api.PERMISSIONS)


# ---- configuration ---------------------------------------------------------------------------

def test_config_sections():
    cfg = api.ConfigProvider({"p": {"on": "yes", "off": "0", "n": "12", "s": 5, "l": "one", "ll": ["a", "b"]}})
    sec = cfg.get_section("p")
    assert sec.get_bool("on") is True and sec.get_bool("off") is False and sec.get_bool("nope", False) is False
    assert sec.get_int("n") == 12 and sec.get_int("nope", 3) == 3
    assert sec.get_str("s") == "5" and sec.get_str("nope") is None
    assert sec.get_list("l") == ["one"] and sec.get_list("ll") == ["a", "b"] and sec.get_list("nope") == []
    assert cfg.get_section("other").values == {}
    with pytest.raises(api.PluginError, match="config key 'l': 'one' is not an integer"):
        sec.get_int("l")


def test_the_context_gives_the_configuration_and_a_logger():
    cfg = api.ConfigProvider({"tester": {"x": 1}})
    ctx = api.PluginContext("tester", config=cfg)
    assert ctx.config().get_section("tester").get_int("x") == 1
    assert ctx.logger().name == "exliar.vfio.plugins.tester"


# ---- data objects and registries ---------------------------------------------------------------

def test_devices_from_facts():
    fact = {"address": "0000:01:00.0", "vendor_id": "10de", "device_id": "1e87", "class": "030000",
            "driver": "nvidia", "iommu_group": 1, "kind": "discrete", "boot_vga": True,
            "companions": ["0000:01:00.1"], "group_viable": True, "device_name": "TU104"}
    gpu = api.GpuDevice.from_fact(fact)
    assert gpu.bdf() == "0000:01:00.0" and gpu.vendor() == "nvidia" and gpu.is_gpu()
    assert gpu.companions == ["0000:01:00.1"] and gpu.boot_vga is True and gpu.model_name() == "TU104"
    dev = api.PciDevice.from_fact({"address": "0000:02:00.0", "vendor_id": "1b21", "class": "0c0330"})
    assert dev.vendor() == "other" and not dev.is_gpu()
    assert api.GpuDevice("0000:03:00.0", vendor_id="1002", device_id="73bf").model_name() == "1002:73bf"


def test_system_info_from_facts():
    facts = {"system": {"distribution": {"id": "arch"}, "kernel": {"running": "6.8"}, "cpu": {"vendor": "amd",
             "virtualization_enabled": True}, "boot": {"mode": "uefi"}}, "iommu": {"enabled": True, "type": "amd"},
             "bootloader": {"name": "systemd-boot"}, "initramfs": {"name": "mkinitcpio"}}
    info = api.SystemInfo.from_facts(facts)
    assert (info.distribution, info.kernel, info.cpu_vendor, info.boot_mode) == ("arch", "6.8", "amd", "uefi")
    assert info.virtualization and info.iommu_enabled and info.iommu_type == "amd"
    assert (info.bootloader, info.initramfs) == ("systemd-boot", "mkinitcpio")
    assert api.SystemInfo.from_facts({}) == api.SystemInfo()


def test_vm_config_helpers():
    vm = api.VmConfig("win")
    vm.add_vendor_id("123456789ab")
    vm.add_kvm_hidden()
    vm.add_hypervisor_hidden(False)
    assert vm.features == {"vendor_id": "123456789ab", "kvm_hidden": True, "hypervisor_hidden": False}
    for bad in ("", "x" * 13, "tab\there", 12):
        with pytest.raises(api.PluginError, match="vendor_id must be 1 to 12 printable characters"):
            vm.add_vendor_id(bad)


def test_ui_registry():
    reg = api.UiRegistry("p")
    reg.register_panel("main", "Main", str)
    assert reg.panels["main"].plugin == "p" and reg.panels["main"].title == "Main"
    with pytest.raises(api.PluginError, match="already registered"):
        reg.register_panel("main", "Again", str)
    with pytest.raises(api.PluginError, match="render must be callable"):
        reg.register_panel("other", "Other", "not callable")


def test_registries_refuse_a_plugin_without_the_permission():
    with pytest.raises(api.PermissionDenied, match="plugin 'p' needs the 'ui' permission to register panels"):
        api.UiRegistry("p", allowed=False).register_panel("main", "Main", str)
    with pytest.raises(api.PermissionDenied, match="plugin 'p' needs the 'commands' permission to register commands"):
        api.CommandRegistry("p", allowed=False).register_command("go", "Go", str)


def test_command_registry():
    reg = api.CommandRegistry("p")
    reg.register_command("count-gpus_2", "Counts", str)
    assert reg.commands["count-gpus_2"].plugin == "p"
    for bad in ("", "has space", "semi;colon"):
        with pytest.raises(api.PluginError, match="use letters, digits"):
            reg.register_command(bad, "x", str)
    with pytest.raises(api.PluginError, match="handler must be callable"):
        reg.register_command("x", "x", None)
    with pytest.raises(api.PluginError, match="already registered"):
        reg.register_command("count-gpus_2", "again", str)


# ---- the plugin base class -------------------------------------------------------------------

def test_every_hook_has_a_noop_default_taking_ctx_first():
    plugin = api.VfioPlugin()
    assert len(set(api.HOOKS)) == len(api.HOOKS) == 17
    for hook in api.HOOKS:
        params = list(inspect.signature(getattr(plugin, hook)).parameters)
        assert params[0] == "ctx", hook
        assert len(params) <= 2, hook
    assert api.MUTATING_HOOKS == {"on_pre_vm_start": "vm:modify"}
    assert all(p in api.PERMISSIONS for p in api.MUTATING_HOOKS.values())


def test_lifecycle_follows_the_spec():
    assert api.LIFECYCLE[0] == "on_load" and api.LIFECYCLE[-2:] == ("on_cleanup", "on_unload")
    assert api.LIFECYCLE.index("on_system_detected") < api.LIFECYCLE.index("on_device_enumeration") \
        < api.LIFECYCLE.index("on_gpu_detected")
    assert api.LIFECYCLE.index("register_commands") < api.LIFECYCLE.index("register_ui_elements")
